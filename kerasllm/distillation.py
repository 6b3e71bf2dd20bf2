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

from kerasllm import compat, runs, saving
from kerasllm.errors import UserError
from kerasllm.files import file_sha256
from kerasllm.hooks import BuildContext, Hook

# Keras is imported at the top: only the trainer imports this module, and it has loaded Keras already.

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
        tests/test_distillation.py compares the loss with the formula)."""
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
