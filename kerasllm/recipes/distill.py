"""Knowledge distillation as a trainer hook (`finetune.teacher`; `kerasllm compress RUN --method distill`).

The run's model is the student, built from scratch like any new run; the hook wraps it in Keras'
`keras.distillation.Distiller` with a `LogitsDistillation` loss (Hinton et al., 2015), and the trainer fits that
wrapper: the same loop, checkpoints (they hold the student, the frozen teacher and the optimizer: a resumed run is
exact), progress and early stopping as every run. The loss of a training step is

    alpha × task loss(labels, student) + (1 - alpha) × T² × KL(softmax(teacher / T) ‖ softmax(student / T))

with T = `finetune.distill_temperature` and alpha = `finetune.distill_alpha` (Keras' `student_loss_weight`).
Validation and the final metrics are the student's own task loss and metrics, as for any run of its model, so a
distilled student compares with one trained from scratch (validation also logs `val_distillation_loss`, the distance
to the teacher). `model.keras` is the student alone.

Two things Keras 3.15.1's `Distiller.compute_loss` leaves out are added here: sample weights (a chat run's reply
mask, a seq2seq run's padding, class weights) weight both terms, and a model whose last layer is a softmax
(`spec.output == "probabilities"`: the LSTMs, the CNN) is compared through the logs of its probabilities, which
are its logits up to a constant.
"""

from __future__ import annotations

from pathlib import Path

import keras

from kerasllm import catalog, runs
from kerasllm.core import compat
from kerasllm.core import config as config_lib
from kerasllm.core.errors import UserError
from kerasllm.core.files import file_sha256
from kerasllm.export import saving
from kerasllm.recipes import compress, finetune, runner
from kerasllm.train.hooks import BuildContext, Hook

# Keras is imported at the top: only the trainer and `compress --method distill` import this module, once Keras has loaded.

EPSILON = 1e-7


def as_logits(outputs, spec_output: str):
    """Logits from a model's outputs: the outputs themselves, or the log of a softmax's probabilities."""
    if spec_output == "logits":
        return outputs
    return keras.ops.log(keras.ops.clip(outputs, EPSILON, 1.0))


class StudentDistiller(keras.distillation.Distiller):
    """Keras' Distiller with sample weights, softmax outputs, and the student's own loss when not training."""

    def __init__(self, teacher, student, *, temperature: float, alpha: float, teacher_output: str, student_output: str):
        super().__init__(teacher, student, self.distillation_loss(temperature), student_loss_weight=alpha)
        self.temperature, self.alpha = temperature, alpha
        self.teacher_output, self.student_output = teacher_output, student_output
        self.built = True  # both models are built: a resumed run loads its checkpoint before the first step

    @staticmethod
    def distillation_loss(temperature: float):
        """Keras' LogitsDistillation, its KL loss given as an instance: the default, the string "kl_divergence",
        resolves to Keras' plain function, which `LogitsDistillation.compute_loss` does not recognise as KL, so it
        skipped the softmaxes and the T² and compared the clipped raw logits (checked on Keras 3.15.1;
        tests/recipes/test_distillation.py compares the loss with the formula)."""
        return keras.distillation.LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence())

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        student_loss = self._student_loss(y, y_pred, sample_weight)  # the task's loss object: weights as in any run
        teacher = as_logits(self.teacher(x, training=False), self.teacher_output)
        student = as_logits(y_pred, self.student_output)
        if sample_weight is None:
            distillation_loss = self.distillation_losses[0].compute_loss(teacher, student)
        else:
            distillation_loss = weighted_kl(teacher, student, sample_weight, self.temperature)
        total = self.alpha * student_loss + (1.0 - self.alpha) * distillation_loss
        self.student_loss_tracker.update_state(student_loss)
        self.distillation_loss_tracker.update_state(distillation_loss)  # validation too: how far the student is from the teacher
        self.total_loss_tracker.update_state(total)
        # validation's loss is the student's own, comparable with a run of its model trained alone
        return compat.scale_loss_for_replicas(total if training else student_loss)


def weighted_kl(teacher, student, sample_weight, temperature: float):
    """T² × KL(softmax(teacher / T) ‖ softmax(student / T)) per example (per position), averaged with the weights."""
    ops = keras.ops
    log_teacher = ops.log_softmax(teacher / temperature, axis=-1)
    log_student = ops.log_softmax(student / temperature, axis=-1)
    kl = ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), axis=-1)
    weights = ops.cast(ops.reshape(sample_weight, ops.shape(kl)), kl.dtype)
    return temperature ** 2 * ops.sum(kl * weights) / ops.maximum(ops.sum(weights), EPSILON)


def check_teacher(path: str, sha256: str) -> Path:
    """The teacher's model file, unchanged since the run started (a resumed run needs the same teacher)."""
    teacher = Path(path)
    if not teacher.is_file():
        raise UserError(f"the teacher {teacher} is gone; a distillation run needs its teacher's model file (restore it, or "
                        "start a new `kerasllm compress --method distill`)")
    if sha256 and file_sha256(teacher) != sha256:
        raise UserError(f"the teacher {teacher} changed since this run started (sha256 differs); start a new distillation "
                        "run from it")
    return teacher


class DistillHook(Hook):
    """`finetune.teacher`: the frozen teacher, loaded in Keras' safe mode, and the Distiller the trainer fits."""

    def __init__(self, config):
        self.config = config

    def trained_model(self, model, context: BuildContext):
        finetune, spec = self.config.finetune, context.spec
        teacher_file = check_teacher(finetune.teacher, finetune.teacher_sha256)
        teacher = saving.load_model(teacher_file)
        teacher_output = runs.load_run(teacher_file.parent).spec.output
        try:
            return StudentDistiller(teacher, model, temperature=finetune.distill_temperature, alpha=finetune.distill_alpha,
                                    teacher_output=teacher_output, student_output=spec.output)
        except ValueError as error:  # Keras checks that inputs and outputs have the same shapes and dtypes
            raise UserError(f"the teacher and the student do not fit together: {str(error).splitlines()[0]}; distill into a "
                            "model of the same task, tokenizer and labels") from error

    def summary(self, model) -> dict:
        finetune = self.config.finetune
        return {"distillation": {"teacher": finetune.teacher, "teacher_sha256": finetune.teacher_sha256,
                                 "temperature": finetune.distill_temperature, "alpha": finetune.distill_alpha,
                                 "loss": f"{finetune.distill_alpha:g} × task loss + {1 - finetune.distill_alpha:g} × T² × "
                                         f"KL(teacher ‖ student) at T = {finetune.distill_temperature:g}"}}


def distill_config(teacher, student: str | None, overrides: list[str], flags: list[str]):
    """A distillation run's spec and config. `teacher` is the source run (`finetuning.Base`); `student` is a preset of
    the teacher's model (`tiny`), another model of the same task (`lstm-classifier`), or None (the teacher's model and
    settings, changed by `--set model_args.*`). The student reads the teacher's data with its tokenizer and settings
    (data, train, runtime and task sections), then `overrides`, then `flags` (the teacher, temperature, alpha)."""
    run = teacher.run
    spec, preset = run.spec, None
    if student in run.spec.presets:
        preset = student
    elif student is not None:
        if student not in catalog.names():
            presets = ", ".join(run.spec.presets) or "none"
            raise UserError(f"--student {student} is neither a preset of {run.spec.name} ({presets}) nor a model; see `kerasllm list`")
        spec = catalog.model(student)
    elif not any(item.partition("=")[0].strip().startswith("model_args.") for item in overrides):
        raise UserError(f"name a smaller student: --student PRESET (of {run.spec.name}: {', '.join(run.spec.presets) or 'none'}), "
                        "--student MODEL (another model of the same task), or --set model_args.KEY=VALUE")
    if catalog.task_for(spec, run.config.train.objective).name != run.task.name:
        raise UserError(f"the student {spec.name} is {catalog.task_for(spec).name} model and the teacher {run.spec.name} "
                        f"{run.task.name}; distill into a model of the same task")
    parent = run.config
    inherited = {"data": dict(vars(parent.data)), "train": dict(vars(parent.train)), "runtime": dict(vars(parent.runtime)),
                 **{name: dict(vars(section)) for name, section in parent.sections.items() if name in spec.sections}}
    if spec is run.spec and preset is None:
        inherited["model_args"] = dict(vars(parent.model_args))
    config = config_lib.resolve(spec, overrides=[*overrides, *flags, f"finetune.teacher={teacher.source}",
                                                 f"finetune.teacher_sha256={teacher.sha256}"], preset=preset, inherited=inherited)
    for key in ("tokenizer", "vocab_size"):
        if getattr(config.data, key) != getattr(parent.data, key):
            raise UserError(f"--set data.{key}: the student reads text with the teacher's tokenizer; drop it")
    return spec, config


def run(source: Path, student: str | None, overrides: list[str], settings: dict, *, out: Path | None, overwrite: bool,
        unsafe: bool, **options) -> tuple[Path, dict]:
    """`compress --method distill`: train a student from scratch on the run's data and tokenizer, matching the run's
    outputs (Keras' Distiller through the trainer), then measure it against the run. `settings`: config keys the
    command's flags set (`train.epochs`, `data.source`, `finetune.distill_temperature`, `finetune.distill_alpha`; None:
    not set); `options`: the trainer's (progress, console, command)."""
    found = finetune.resolve_base(str(source))
    compress.check_not_a_copy(source)
    flags = config_lib.flag_overrides(settings)
    spec, config = distill_config(found, student, overrides, flags)
    finetune.load_base_model(found, unsafe)  # refuses a quantized teacher, or one that needs --unsafe, before training starts
    run_dir = runner.train_new_run(f"{spec.name}-distill", found, config, out, overwrite,
                                   artifacts=dict(found.run.artifacts), **options)  # the teacher's tokenizer and labels
    return run_dir, compress.trained_report(source, run_dir, unsafe)
