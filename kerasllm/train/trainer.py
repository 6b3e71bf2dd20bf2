"""The shared trainer: every zoo model is built, trained, checkpointed and resumed here.

`Trainer(config, run_dir, ...).run()` (or `train(...)`) goes through four stages:

1. **prepare**: the task loads the data (and, on resume, the run's tokenizer or labels);
   the newest checkpoint's state is read.
2. **build**: the model inside the strategy's scope, compiled with the task's loss and
   metrics objects. Hooks (`kerasllm.train.hooks`) change the model here: fine-tuning starts from a parent's
   weights and freezes layers or adds LoRA adapters (`kerasllm.recipes.finetune.FinetuneHook`); distillation
   fits a `keras.distillation.Distiller` around the model (`kerasllm.recipes.distill.DistillHook`), which the
   loop and the checkpoints then hold, while `model.keras` is the model alone.
   Only now is the run folder written (`files.claim_run_dir`).
3. **loop**: `fit` (Keras, the default) or `custom` (a `tf.function` step run with
   `strategy.run` and reduced with `strategy.reduce`; it runs where `fit` cannot, e.g.
   under `MultiWorkerMirroredStrategy`). Both share `TrainState`, checkpointing, early
   stopping, progress and resume through the same Keras callbacks.
4. **finalize**: best weights, `model.keras` (written beside, then renamed), metrics,
   history, curves, the model card.

Optimizers live in `kerasllm.train.optimizers`, checkpoints in `kerasllm.train.checkpoints`, the two
loops and their callbacks in `kerasllm.train.loops`. Each epoch's data order depends only on
(seed, epoch), so a resumed run sees the same batches as a straight one.

The learning-rate schedule is fixed when a run starts (`TrainState.schedule_steps`):
`--resume RUN --epochs N` with a larger N continues the same schedule, whose cosine
decay has ended, so the extra epochs train at its floor (`min_learning_rate_ratio` ×
the peak rate); a resumed run's first epochs are identical to the original's.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras

from kerasllm import catalog, distribute
from kerasllm.core import compat, files, quiet
from kerasllm.core.config import RunConfig, TrainConfig
from kerasllm.core.errors import UserError
from kerasllm.core.interrupts import graceful_stop
from kerasllm.data.splits import check_unchanged
from kerasllm.export import saving
from kerasllm.train import diagnostics, memory, optimizers, reports
from kerasllm.train.checkpoints import Checkpointing, TrainState, checkpoints, latest_checkpoint, load_checkpoint_weights, read_state, restore_checkpoint
from kerasllm.train.hooks import NO_HOOKS, BuildContext, Hooks
from kerasllm.train.loops import LOOPS, StepClock, TimeBudget, TimedTensorBoard, spread_subset
from kerasllm.train.progress import Reporter
from kerasllm.train.reports import parameter_counts
from kerasllm.train.timings import Timings, process_seconds

# Lazy imports: TensorFlow is imported inside the function that needs it: on the JAX backend it is not used.


def seed_everything(config: RunConfig) -> None:
    keras.utils.set_random_seed(config.train.seed)
    if config.runtime.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def compile_model(model, spec, task, config: RunConfig, schedule_steps: int, train: TrainConfig | None = None) -> None:
    metrics = {"weighted_metrics" if task.weighted_metrics else "metrics": task.metrics(spec)}
    model.compile(
        optimizer=optimizers.make_optimizer(train or config.train, schedule_steps),
        loss=task.loss(spec, config),
        **metrics,
        jit_compile=config.runtime.jit_compile,
        steps_per_execution=config.runtime.steps_per_execution,
    )


def float32_outputs(model):
    """The model with float32 outputs: under a mixed precision policy the last layers compute in 16 bits, but logits
    (and so the loss and the softmax) stay float32. A model whose outputs already are float32 is returned as it is."""
    outputs = model.outputs if isinstance(model.outputs, list) else [model.outputs]
    if all(keras.backend.standardize_dtype(output.dtype) == "float32" for output in outputs):
        return model
    cast = [keras.layers.Activation("linear", dtype="float32", name=f"float32_logits{'_' + str(i) if i else ''}")(output)
            for i, output in enumerate(outputs)]
    return keras.Model(model.inputs, cast if len(cast) > 1 else cast[0], name=model.name)


def build_model(spec, config: RunConfig, data, strategy):
    """The model inside `strategy.scope()`. `runtime.precision` sets the layers' dtype policy while they are built
    (mixed_float16 also gets loss scaling from `compile`)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.runtime.precision)
    try:
        with strategy.scope():
            model = spec.build(config.model_args, data.info)
            if config.runtime.precision != "float32":
                model = float32_outputs(model)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model


def write_run_files(run_dir: Path, config: RunConfig, data, overwrite: bool) -> Path:
    run_dir = files.claim_run_dir(run_dir, overwrite, config.model)
    files.write_text_atomic(run_dir / files.CONFIG_FILE, config.to_yaml())
    files.write_json(run_dir / files.DATA_FILE, data.record)
    for artifact in data.artifacts:
        artifact.save(run_dir)
    return run_dir


@dataclass
class RunOptions:
    """How a run is carried out, beside its config.

    Args:
        resume: continue the run folder from its newest checkpoint.
        overwrite: replace an existing run folder made by kerasllm.
        progress: `rich`, `json` or `quiet` (`kerasllm.train.progress.Reporter`).
        console: a rich console for progress and messages.
        command: the command line recorded in metrics.json.
        on_built: `on_built(model)`, called once the model is built, before training.
    """

    resume: bool = False
    overwrite: bool = False
    progress: str = "rich"
    console: Any = None
    command: str = ""
    on_built: Callable | None = None


class Trainer:
    """One training run: `run()` is prepare → build → loop → finalize.

    Args:
        config: the resolved run config.
        run_dir: the run folder (written only once the data has loaded and the model is built).
        options: `RunOptions` (resume, overwrite, progress, ...).
        hooks: `kerasllm.train.hooks.Hooks` that change the run (the recipes' hooks, `kerasllm.recipes.runner.hooks_for`;
            default: none).
        artifacts: preprocessing a new run inherits (a fine-tuning base's tokenizer).
    """

    def __init__(self, config: RunConfig, run_dir: Path, options: RunOptions | None = None, *, hooks: Hooks | None = None,
                 artifacts: dict | None = None):
        self.config, self.run_dir, self.options = config, Path(run_dir), options or RunOptions()
        self.resume, self.overwrite = self.options.resume, self.options.overwrite
        self.progress, self.console = self.options.progress, self.options.console
        self.hooks = hooks if hooks is not None else NO_HOOKS
        self.artifacts = artifacts
        self.spec = catalog.model(config.model)
        self.task = catalog.task_for(self.spec, config.train.objective)
        self.timings = Timings()  # this session's wall time by section: metrics.json's `timings`
        self.heard_from = quiet.heard_mark()  # library.log holds what the libraries said from here on

    def run(self) -> dict:
        """Train; returns the summary also written to metrics.json (`nothing_to_do` when a resumed run had finished)."""
        # first: a multi-worker strategy must be made before any TensorFlow op runs
        started = process_seconds()
        if started is not None:
            self.timings.add("start-up", started)  # the process's start: Python, imports, the command line
        self.strategy = distribute.get_strategy(self.config.runtime.strategy, self.config.runtime.worker_timeout)
        with distribute.peer_failures(self.strategy, self.config.runtime.worker_timeout):
            with self.timings.section("data"):
                finished = self.prepare()
            if finished is not None:
                return finished
            with self.timings.section("build"):
                self.build()
            with self.timings.section("training loop"):
                self.loop()
            return self.finalize()

    # 1. prepare --------------------------------------------------------------------------------
    def prepare(self) -> dict | None:
        """The checkpoint's state and the data; on a resumed run that already finished, its summary."""
        config, run_dir = self.config, self.run_dir
        self.chief = distribute.is_chief(self.strategy)
        self.checkpoint = latest_checkpoint(run_dir) if self.resume else None
        self.state = read_state(self.checkpoint) if self.checkpoint else TrainState()
        self.summary = {}
        if self.resume:
            finished = self._check_resume()
            if finished is not None:
                return finished
        seed_everything(config)
        self.replicas = self.strategy.num_replicas_in_sync
        self.loop_name = distribute.loop_for(config.runtime.loop, self.strategy, config.runtime.jit_compile)
        self.global_batch = config.train.batch_size * self.replicas  # per replica in the config; the pipeline batches globally
        data_config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=self.global_batch))
        self.data = self.task.prepare(data_config, self.spec, self.task.load_artifacts(run_dir) if self.resume else self.artifacts)
        self.validation = self.data.validation
        if distribute.needs_full_batches(self.strategy):  # JAX splits every batch evenly over the devices: drop a short last one
            self.validation = self.validation.rebatch(self.global_batch, drop_remainder=True)
        if self.resume:
            check_unchanged(self.data.record, self.saved_data_record, action="start a new run on it (resuming needs the same data)")
        return None

    def _check_resume(self) -> dict | None:
        state, run_dir, config = self.state, self.run_dir, self.config
        if self.checkpoint is None:
            raise UserError(f"{run_dir} has no checkpoint: training stopped before the first one was written; start it "
                            f"again with `kerasllm train --config {run_dir / files.CONFIG_FILE} --out {run_dir} --overwrite`")
        self.summary = files.read_json(run_dir / files.METRICS_FILE)
        self.saved_data_record = files.read_json(run_dir / files.DATA_FILE)
        planned = self.summary.get("epochs_planned", state.epoch)
        finished = state.epoch >= config.train.epochs or (state.stopped_early and config.train.epochs <= planned)
        if finished and saving.is_complete(run_dir / files.MODEL_FILE) and "after_training" in self.summary:
            return dict(self.summary, nothing_to_do=True)  # (a missing or broken model.keras is written again below)
        if state.stopped_early and not finished:  # asked for more epochs than the early stop left
            state.stopped_early, state.epochs_without_improvement = False, 0
        return None  # config.yaml (e.g. the new epoch count) is written once every check has passed: `build`

    # 2. build ----------------------------------------------------------------------------------
    def _recompile(self, schedule_steps: int, train: TrainConfig) -> None:
        compile_model(self.trained, self.spec, self.task, self.config, schedule_steps, train)

    def build(self) -> None:
        """The model (changed by the hooks, compiled), restored from the checkpoint or written into a new run folder."""
        config, state = self.config, self.state
        state.schedule_steps = state.schedule_steps or self.data.steps_per_epoch * config.train.epochs
        self.model = build_model(self.spec, config, self.data, self.strategy)
        memory.check_batch(self.model, self.global_batch, memory.example_length(self.validation.element_spec), training=True,
                           setting="--batch-size", replicas=self.replicas, on_cpu=distribute.device_kind(self.strategy) == "CPU")
        self.context = BuildContext(self.spec, self.task, config, self.data, self.strategy, self._recompile)
        with self.strategy.scope():
            self.hooks.before_compile(self.model, self.context)
            self.trained = self.hooks.trained_model(self.model, self.context)  # the model, or a distiller around it
            compile_model(self.trained, self.spec, self.task, config, state.schedule_steps)
        self.hooks.after_compile(self.model, self.context, state)
        self.training_loop = LOOPS[self.loop_name](self.trained, self.task, self.spec, self.strategy, config)
        self.created = False
        if self.checkpoint:
            with self.strategy.scope():
                restore_checkpoint(self.checkpoint, self.trained, with_optimizer=self.hooks.restores_optimizer(state), hooks=self.hooks)
            if self.chief:  # every check has passed: the run's "reproduce me" file may change now
                files.write_text_atomic(self.run_dir / files.CONFIG_FILE, config.to_yaml())
            # the restored weights on the validation split: a check of the checkpoint, which also traces the validation
            # step where a new run does, so both find their compiled programs under the same names (the cache)
            seeds = [keras.ops.convert_to_numpy(seed) for seed in compat.seed_states(self.trained)]
            compat.align_trace_names()  # after reading the seeds: that makes tensors, whose names count too
            self.summary["at_resume"] = self._evaluate("evaluation at resume")
            for seed, value in zip(compat.seed_states(self.trained), seeds):  # evaluating draws from the dropout RNGs:
                seed.assign(value)  # the checkpoint's states again, or the resumed run would not be exact
        else:
            with self.strategy.scope():  # built now, as a resume's restore builds it (the same objects before the loop)
                self.trained.optimizer.build(self.trained.trainable_variables)
            compat.align_trace_names()
            if self.chief:
                self.run_dir = write_run_files(self.run_dir, config, self.data, self.overwrite)
                self.created = True
            self.summary = {"model": self.spec.name, "parameters": int(self.model.count_params()),
                            "before_training": self._evaluate("evaluation before training"),
                            **self.hooks.summary(self.model)}
        warmup = optimizers.warmup_steps(config.train.warmup_steps, self.state.schedule_steps)
        shortened = ([f"train.warmup_steps={config.train.warmup_steps} is more than a quarter of the run's "
                      f"{self.state.schedule_steps:,} steps, so warmup took {warmup} (a tenth) and the learning rate "
                      "reached its peak"] if warmup != config.train.warmup_steps and config.train.schedule == "cosine" else [])
        self.summary.update(epochs_planned=config.train.epochs, parameter_counts=parameter_counts(self.model),
                            notes=self.task.notes(self.data.record) + shortened, warmup_steps=warmup)
        if self.options.on_built:
            self.options.on_built(self.model)
        if self.console is not None and self.progress == "rich":  # announced once every check has passed
            self.console.print(f"{distribute.describe(self.strategy, self.replicas)}; global batch {self.global_batch} = "
                               f"{config.train.batch_size} per replica × {self.replicas}", highlight=False)
        if self.chief:
            files.write_json(self.run_dir / files.METRICS_FILE, self.summary)

    # 3. loop -----------------------------------------------------------------------------------
    def _callbacks(self) -> list:
        config, state = self.config, self.state
        self.checkpointing = Checkpointing(self.run_dir, state, config.train, self.chief, self.hooks, self.timings)
        self.checkpointing.step_offset = self.hooks.step_offset(state)
        self.checkpointing.steps_per_epoch = self.data.steps_per_epoch
        self.clock = StepClock(self.timings)
        self.reporter = Reporter(self.progress, config.train.epochs, self.data.steps_per_epoch, self.data.items_per_step,
                                 self.data.unit, self.data.sample, self.console)
        self.budget = TimeBudget(config.train.max_seconds, state.train_seconds) if config.train.max_seconds else None
        callbacks = [*self.hooks.callbacks(), self.checkpointing, self.clock, self.reporter]  # a hook's before a checkpoint
        if self.budget:
            callbacks.insert(0, self.budget)
        if self.chief:
            callbacks.insert(1, TimedTensorBoard(self.run_dir / files.LOGS_DIR, write_graph=False, update_freq="epoch", profile_batch=0,
                                                 timings=self.timings))
        return callbacks

    def _phases(self) -> list[tuple]:
        """(first epoch, last epoch, steps, skip): a step checkpoint inside an epoch resumes with the rest of that epoch."""
        state, steps = self.state, self.data.steps_per_epoch
        phases = []
        if state.step_in_epoch:
            phases.append((state.epoch, state.epoch + 1, steps - state.step_in_epoch, state.step_in_epoch))
            self.checkpointing.steps_done_at_start = self.reporter.steps_done_at_start = state.step_in_epoch
        phases.append((state.epoch + bool(state.step_in_epoch), self.config.train.epochs, steps, 0))
        return self.hooks.split_phases(phases)

    def loop(self) -> None:
        """`fit` or the custom loop over each phase; a failed new run with no checkpoint leaves no folder behind."""
        callbacks = self._callbacks()
        epoch_validation = spread_subset(self.validation, self.config.train.validation_steps)
        self.first_step, started, self.idle_after_last_step = self.state.global_step, time.perf_counter(), 0.0
        compat.align_trace_names()  # a resumed run traces its train step under a new run's name: the cache finds it
        try:
            with graceful_stop(self.checkpointing.request_stop, where=str(self.run_dir)):
                self._run_phases(callbacks, epoch_validation)
        except BaseException:
            if self.created and not checkpoints(self.run_dir):
                shutil.rmtree(self.run_dir, ignore_errors=True)  # nothing worth keeping: no circle of advice
            raise
        finally:
            self.reporter.close()
        self.session_seconds = time.perf_counter() - started

    def _run_phases(self, callbacks: list, epoch_validation) -> None:
        for first, last, steps, skip in self._phases():
            if first >= last or self.state.stopped_early or (self.budget and self.budget.expired):
                continue
            if self.hooks.start_phase(self.model, first, self.context):  # recompiled: a new optimizer, a new loop
                self.training_loop = LOOPS[self.loop_name](self.trained, self.task, self.spec, self.strategy, self.config)
                self.checkpointing.step_offset = self.hooks.step_offset(self.state)
            self.training_loop.fit(self.data.train(first, last, skip), epoch_validation, initial_epoch=first, epochs=last,
                                   steps_per_epoch=steps, callbacks=callbacks)
            if self.clock.last_step is not None:
                self.idle_after_last_step = max(self.idle_after_last_step, time.perf_counter() - self.clock.last_step)
            if self.checkpointing.interrupted:  # Ctrl-C / SIGTERM: the checkpoint is written; the CLI says how to resume
                raise KeyboardInterrupt

    # 4. finalize -------------------------------------------------------------------------------
    def finalize(self) -> dict:
        """The best epoch's weights, final metrics, model.keras and the run's records."""
        state, run_dir, data, model = self.state, self.run_dir, self.data, self.model
        best = run_dir / files.CHECKPOINTS_DIR / state.best_checkpoint
        if state.best_checkpoint and best.is_dir():
            with self.timings.section("best weights"):
                load_checkpoint_weights(best, self.trained, self.hooks)
        steps_this_session = state.global_step - self.first_step
        throughput = (data.items_per_step * steps_this_session / max(self.session_seconds, 1e-9) if steps_this_session
                      else self.summary.get(f"{data.unit}_per_second", 0.0))
        self.summary.update(
            after_training=self._evaluate("final evaluation"),
            epochs_completed=state.epoch, stopped_early=state.stopped_early,
            stopped_by_time_budget=bool(self.budget and self.budget.expired), best_checkpoint=state.best_checkpoint,
            train_seconds=state.train_seconds, steps=state.global_step, schedule_steps=state.schedule_steps,
            seconds_after_last_step=self.idle_after_last_step, median_step_seconds=self.clock.median_step_seconds(),
            **{f"{data.unit}_per_second": throughput},
            backend=keras.backend.backend(), strategy=distribute.describe(self.strategy, self.replicas), replicas=self.replicas,
            global_batch=self.global_batch, precision=self.config.runtime.precision,
            jit_compile=(bool(getattr(self.trained, "jit_compile", False)) if self.training_loop.name == "fit"
                         else self.config.runtime.jit_compile),
            loop=self.training_loop.name,
            overfitting=diagnostics.overfitting(state.history, self.spec.overfitting_fixes),
            command=self.options.command or " ".join(sys.argv),
            **self.hooks.results(model),
        )
        if self.chief:
            self._write_results()
        return self.summary

    def _evaluate(self, section: str) -> dict:
        with self.timings.section(section):
            return self.task.report(self.training_loop.evaluate(self.validation), self.data.record)

    def _profile(self) -> dict:
        """This session's wall time by section (seconds): start-up, data, build, the training loop split into its steps
        (the median step × steps), the train and validation steps' compilation (estimated: their first call beyond a
        steady one), validation, checkpoints, TensorBoard and the rest of the loop; the evaluations, the model file."""
        steps = self.state.global_step - self.first_step
        median = self.clock.median_step_seconds() or 0.0
        compilation = self.clock.compilation_estimates()  # "train step compilation", "validation compilation"
        self.timings.split("training loop", {"train steps": steps * median,
                                             **{name: value for name, value in compilation.items() if name.startswith("train")}})
        self.timings.split("validation", {name: value for name, value in compilation.items() if name.startswith("validation")})
        if "training loop" in self.timings.seconds:
            self.timings.seconds["training loop, other"] = self.timings.seconds.pop("training loop")
        return self.timings.as_dict()

    def _write_results(self) -> None:
        run_dir, summary, spec = self.run_dir, self.summary, self.spec
        with self.timings.section("model file"):
            saving.save_model(self.model, run_dir / files.MODEL_FILE)  # LoRA adapters are merged into the kernels as Keras saves
            self.hooks.finalize(self.model, run_dir)
        with self.timings.section("card and curves"):
            reports.plot_curves(self.state.history, run_dir / files.CURVES_FILE, title=f"{spec.name} on {self.data.record.get('source')}")
            files.write_text_atomic(run_dir / files.CARD_FILE, reports.model_card(spec, self.task, self.config, self.data.record, summary,
                                                                                 run_dir))
        summary["timings"] = self._profile()
        files.write_json(run_dir / files.METRICS_FILE, summary)
        files.write_json(run_dir / files.HISTORY_FILE, self.state.history)
        heard = quiet.heard_since(self.heard_from)  # what the libraries said during this run, not before it
        if heard:
            files.write_text_atomic(run_dir / files.LIBRARY_LOG_FILE, heard)


def train(config: RunConfig, run_dir: Path, *, hooks: Hooks | None = None, artifacts: dict | None = None, **options) -> dict:
    """Train `config.model` into `run_dir` (a new run, or an old one with `resume=True`): `Trainer(...).run()`.
    `hooks` change the run (the recipes hand theirs over, `kerasllm.recipes.runner`); `options` are `RunOptions`' fields.

    Returns the summary also written to metrics.json; `summary["nothing_to_do"]` is True when a resumed run had
    already finished.
    """
    return Trainer(config, run_dir, RunOptions(**options), hooks=hooks, artifacts=artifacts).run()
