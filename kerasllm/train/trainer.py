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
from kerasllm.core import config as config_lib
from kerasllm.core.config import RunConfig
from kerasllm.core.errors import UserError
from kerasllm.core.interrupts import graceful_stop
from kerasllm.data.splits import check_unchanged
from kerasllm.export import saving
from kerasllm.train import memory, reports
from kerasllm.train.building import Recompile, build_model, build_optimizer, compile_model, seed_everything
from kerasllm.train.checkpoints import Checkpointing, TrainState, checkpoints, latest_checkpoint, load_best, read_state, restore_checkpoint
from kerasllm.train.hooks import NO_HOOKS, BuildContext, Hooks
from kerasllm.train.loops import LOOPS, StepClock, TimeBudget, TimedTensorBoard, spread_subset
from kerasllm.train.progress import Reporter
from kerasllm.train.reports import parameter_counts
from kerasllm.train.timings import Timings, process_seconds

# Lazy imports: TensorFlow is imported inside the function that needs it: on the JAX backend it is not used.


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


@dataclass
class Prepared:
    """What `prepare` hands on: the strategy's view of the run, the checkpoint's state, the data and the summary so far."""

    strategy: Any
    chief: bool
    checkpoint: Path | None
    state: TrainState
    summary: dict
    data: Any = None
    validation: Any = None
    replicas: int = 1
    loop_name: str = "fit"
    global_batch: int = 0


@dataclass
class Built:
    """What `build` hands on: the model, what the loop fits (the model, or a distiller around it), the hooks' context,
    the loop, and the run folder (written now for a new run: `created`)."""

    model: Any
    trained: Any
    context: BuildContext
    training_loop: Any
    run_dir: Path
    created: bool = False
    warmup: int = 0  # the warmup steps the schedule took (`kerasllm.train.building.warmup_steps`)
    seeds: list = dataclasses.field(default_factory=list)  # a resumed run's dropout RNG states, as the checkpoint had them


@dataclass
class Looped:
    """What `loop` hands on: this session's steps and seconds, and the step clock and time budget that watched them."""

    first_step: int
    session_seconds: float
    idle_after_last_step: float
    clock: StepClock
    budget: TimeBudget | None


class Trainer:
    """One training run: `run()` is prepare → build → loop → finalize, each phase handing its values to the next
    (`Prepared`, `Built`, `Looped`); the trainer itself keeps only what it was given.

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
        strategy = distribute.get_strategy(self.config.runtime.strategy, self.config.runtime.worker_timeout)
        with distribute.peer_failures(strategy, self.config.runtime.worker_timeout):
            with self.timings.section("data"):
                prepared = self.prepare(strategy)
            if isinstance(prepared, dict):  # a resumed run that had finished: its summary
                return prepared
            with self.timings.section("build"):
                built = self.build(prepared)
            with self.timings.section("training loop"):
                looped = self.loop(prepared, built)
            return self.finalize(prepared, built, looped)

    # 1. prepare --------------------------------------------------------------------------------
    def prepare(self, strategy) -> Prepared | dict:
        """The checkpoint's state and the data; on a resumed run that already finished, its summary."""
        config, run_dir, resume = self.config, self.run_dir, self.options.resume
        checkpoint = latest_checkpoint(run_dir) if resume else None
        prepared = Prepared(strategy, distribute.is_chief(strategy), checkpoint, read_state(checkpoint) if checkpoint else TrainState(), {})
        saved_record = None
        if resume:
            finished, saved_record = self._check_resume(prepared)
            if finished is not None:
                return finished
        seed_everything(config)
        prepared.replicas = strategy.num_replicas_in_sync
        prepared.loop_name = distribute.loop_for(config.runtime.loop, strategy, config.runtime.jit_compile)
        prepared.global_batch = config.train.batch_size * prepared.replicas  # per replica in the config; the pipeline batches globally
        data_config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=prepared.global_batch))
        prepared.data = self.task.prepare(data_config, self.spec, self.task.load_artifacts(run_dir) if resume else self.artifacts)
        prepared.validation = prepared.data.validation
        if distribute.needs_full_batches(strategy):  # JAX splits every batch evenly over the devices: drop a short last one
            prepared.validation = prepared.validation.rebatch(prepared.global_batch, drop_remainder=True)
        if resume:
            check_unchanged(prepared.data.record, saved_record, action="start a new run on it (resuming needs the same data)")
        return prepared

    def _check_resume(self, prepared: Prepared) -> tuple[dict | None, dict]:
        """(the finished run's summary or None, the data record the run was trained on)."""
        state, run_dir, config = prepared.state, self.run_dir, self.config
        if prepared.checkpoint is None:
            raise UserError(f"{run_dir} has no checkpoint: training stopped before the first one was written; start it "
                            f"again with `kerasllm train --config {run_dir / files.CONFIG_FILE} --out {run_dir} --overwrite`")
        prepared.summary = files.read_json(run_dir / files.METRICS_FILE)
        saved_record = files.read_json(run_dir / files.DATA_FILE)
        planned = prepared.summary.get("epochs_planned", state.epoch)
        finished = state.epoch >= config.train.epochs or (state.stopped_early and config.train.epochs <= planned)
        if finished and saving.is_complete(run_dir / files.MODEL_FILE) and "after_training" in prepared.summary:
            return dict(prepared.summary, nothing_to_do=True), saved_record  # (a missing or broken model.keras is written again below)
        if state.stopped_early and not finished:  # asked for more epochs than the early stop left
            state.stopped_early, state.epochs_without_improvement = False, 0
        return None, saved_record  # config.yaml (e.g. the new epoch count) is written once every check has passed: `build`

    # 2. build ----------------------------------------------------------------------------------
    def build(self, prepared: Prepared) -> Built:
        """The model (changed by the hooks, compiled, checked against memory), restored from the checkpoint or
        evaluated untrained; the run folder's records as they stand before the loop (a new run's folder written now)."""
        config, state, strategy, data = self.config, prepared.state, prepared.strategy, prepared.data
        state.schedule_steps = state.schedule_steps or data.steps_per_epoch * config.train.epochs
        model = build_model(self.spec, config, data, strategy)
        recompile = Recompile(self.spec, self.task, config)  # a hook's new phase: a fresh optimizer
        context = BuildContext(self.spec, self.task, config, data, strategy, recompile, self._announce_line)
        with strategy.scope():
            self.hooks.before_compile(model, context)
            trained = recompile.model = self.hooks.trained_model(model, context)  # the model, or a distiller around it
            warmup = compile_model(trained, self.spec, self.task, config, state.schedule_steps)
        self.hooks.after_compile(model, context, state)
        memory.check_batch(model, prepared.global_batch, memory.example_length(prepared.validation.element_spec), training=True,
                           setting="--batch-size", replicas=prepared.replicas, on_cpu=distribute.device_kind(strategy) == "CPU")
        built = Built(model, trained, context, LOOPS[prepared.loop_name](trained, self.task, self.spec, strategy, config), self.run_dir,
                      warmup=warmup)
        if prepared.checkpoint:  # a resumed run: the checkpoint's weights (and optimizer) and dropout RNG states
            built.seeds = restore_checkpoint(prepared.checkpoint, trained, self.hooks.restores_optimizer(state), self.hooks, strategy)
        else:  # a new run: its optimizer built, as a restore builds it (the same objects before the loop)
            build_optimizer(trained, strategy)
        # the restored or untrained weights on the validation split (for a resumed run, a check of its checkpoint),
        # which also traces the validation step where the other kind of run does, so both find their compiled
        # programs under the same names (the cache); after the seeds were read: that makes tensors, whose names count
        compat.align_trace_names()
        if prepared.checkpoint:
            with self.timings.section("evaluation at resume"):
                report = self.task.report(built.training_loop.evaluate(prepared.validation), data.record)
        else:
            with self.timings.section("evaluation before training"):
                report = self.task.report(built.training_loop.evaluate(prepared.validation), data.record)
        for seed, value in zip(compat.seed_states(trained), built.seeds):  # evaluating drew from the dropout RNGs: the
            seed.assign(value)  # checkpoint's states again, or the resumed run would not be exact
        if prepared.checkpoint:
            prepared.summary["at_resume"] = report
        else:
            prepared.summary = {"model": self.spec.name, "parameters": int(model.count_params()), "before_training": report,
                                **self.hooks.summary(model)}
        default_warmup = config_lib.default_config(self.spec).train.warmup_steps
        prepared.summary.update(epochs_planned=config.train.epochs, parameter_counts=parameter_counts(model), warmup_steps=warmup,
                                notes=self.task.notes(data.record) + reports.warmup_notes(config.train, default_warmup, warmup,
                                                                                          state.schedule_steps))
        if self.options.on_built:
            self.options.on_built(model)
        self._announce_line(f"{distribute.describe(strategy, prepared.replicas)}; global batch {prepared.global_batch} = "
                            f"{config.train.batch_size} per replica × {prepared.replicas}")  # once every check has passed
        if prepared.chief:  # every check has passed: the run folder is written (a new one) or changes (a resumed one)
            built.run_dir = reports.write_run_folder(built.run_dir, config, data, prepared.summary, new=not prepared.checkpoint,
                                                     overwrite=self.options.overwrite)
            built.created = not prepared.checkpoint
        return built

    def _announce_line(self, line: str) -> None:
        if self.options.console is not None and self.options.progress == "rich":
            self.options.console.print(line, highlight=False)

    # 3. loop -----------------------------------------------------------------------------------
    def loop(self, prepared: Prepared, built: Built) -> Looped:
        """`fit` or the custom loop over each phase; a failed new run with no checkpoint leaves no folder behind."""
        config, state, data, run_dir = self.config, prepared.state, prepared.data, built.run_dir
        checkpointing = Checkpointing(run_dir, state, config.train, prepared.chief, self.hooks, self.timings)
        checkpointing.step_offset = self.hooks.step_offset(state)
        checkpointing.steps_per_epoch = data.steps_per_epoch
        clock = StepClock(self.timings)
        reporter = Reporter(self.options.progress, config.train.epochs, data.steps_per_epoch, data.items_per_step, data.unit, data.sample,
                            self.options.console)
        budget = TimeBudget(config.train.max_seconds, state.train_seconds) if config.train.max_seconds else None
        callbacks = [*self.hooks.callbacks(), checkpointing, clock, reporter]  # a hook's before a checkpoint
        if budget:
            callbacks.insert(0, budget)
        if prepared.chief:
            callbacks.insert(1, TimedTensorBoard(run_dir / files.LOGS_DIR, write_graph=False, update_freq="epoch", profile_batch=0,
                                                 timings=self.timings))
        if state.step_in_epoch:  # a step checkpoint inside an epoch resumes with the rest of that epoch
            checkpointing.steps_done_at_start = reporter.steps_done_at_start = state.step_in_epoch
        epoch_validation = spread_subset(prepared.validation, config.train.validation_steps)
        looped = Looped(state.global_step, 0.0, 0.0, clock, budget)
        started = time.perf_counter()
        compat.align_trace_names()  # a resumed run traces its train step under a new run's name: the cache finds it
        try:
            with graceful_stop(checkpointing.request_stop, where=str(run_dir)):
                for first, last, steps, skip in self._phases(state, data.steps_per_epoch):
                    if first >= last or state.stopped_early or (budget and budget.expired):
                        continue
                    if self.hooks.start_phase(built.model, first, built.context):  # recompiled: a new optimizer, a new loop
                        built.training_loop = LOOPS[prepared.loop_name](built.trained, self.task, self.spec, prepared.strategy, config)
                        checkpointing.step_offset = self.hooks.step_offset(state)
                    built.training_loop.fit(data.train(first, last, skip), epoch_validation, initial_epoch=first, epochs=last,
                                            steps_per_epoch=steps, callbacks=callbacks)
                    if clock.last_step is not None:
                        looped.idle_after_last_step = max(looped.idle_after_last_step, time.perf_counter() - clock.last_step)
                    if checkpointing.interrupted:  # Ctrl-C / SIGTERM: the checkpoint is written; the CLI says how to resume
                        raise KeyboardInterrupt
        except BaseException:
            if built.created and not checkpoints(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: no circle of advice
            raise
        finally:
            reporter.close()
        looped.session_seconds = time.perf_counter() - started
        return looped

    def _phases(self, state: TrainState, steps: int) -> list[tuple]:
        """(first epoch, last epoch, steps, skip): a step checkpoint inside an epoch resumes with the rest of that epoch."""
        phases = []
        if state.step_in_epoch:
            phases.append((state.epoch, state.epoch + 1, steps - state.step_in_epoch, state.step_in_epoch))
        phases.append((state.epoch + bool(state.step_in_epoch), self.config.train.epochs, steps, 0))
        return self.hooks.split_phases(phases)

    # 4. finalize -------------------------------------------------------------------------------
    def finalize(self, prepared: Prepared, built: Built, looped: Looped) -> dict:
        """The best epoch's weights, final metrics, model.keras and the run's records."""
        state, data, summary, spec = prepared.state, prepared.data, prepared.summary, self.spec
        with self.timings.section("best weights"):
            kept_epoch = load_best(built.run_dir, state, built.trained, self.hooks)  # the one source of the kept epoch
        with self.timings.section("final evaluation"):
            after = self.task.report(built.training_loop.evaluate(prepared.validation), data.record)
        steps_this_session = state.global_step - looped.first_step
        # the loop's wall time split into its steps (median × steps) and the train and validation steps' compilation
        # (their first call beyond a steady one): metrics.json's `timings`, written with the run's results
        self.timings.profile(steps_this_session, looped.clock.median_step_seconds() or 0.0, looped.clock.compilation_estimates())
        throughput = (data.items_per_step * steps_this_session / max(looped.session_seconds, 1e-9) if steps_this_session
                      else summary.get(f"{data.unit}_per_second", 0.0))
        summary.update(
            after_training=after,
            epochs_completed=state.epoch, stopped_early=state.stopped_early,
            stopped_by_time_budget=bool(looped.budget and looped.budget.expired), best_checkpoint=state.best_checkpoint,
            train_seconds=state.train_seconds, steps=state.global_step, schedule_steps=state.schedule_steps,
            seconds_after_last_step=looped.idle_after_last_step, median_step_seconds=looped.clock.median_step_seconds(),
            **{f"{data.unit}_per_second": throughput},
            backend=keras.backend.backend(), strategy=distribute.describe(prepared.strategy, prepared.replicas),
            replicas=prepared.replicas, global_batch=prepared.global_batch, precision=self.config.runtime.precision,
            jit_compile=(bool(getattr(built.trained, "jit_compile", False)) if built.training_loop.name == "fit"
                         else self.config.runtime.jit_compile),
            loop=built.training_loop.name,
            kept_epoch=kept_epoch, overfitting=reports.overfitting(state.history, spec.overfitting_fixes, kept_epoch),
            command=self.options.command or " ".join(sys.argv),
            **self.hooks.results(built.model),
        )
        if not prepared.chief:
            return summary
        with self.timings.section("card and curves"):
            reports.plot_curves(state.history, built.run_dir / files.CURVES_FILE, title=f"{spec.name} on {data.record.get('source')}")
            card = reports.model_card(spec, self.task, self.config, data.record, summary, built.run_dir)
        reports.write_results(built.run_dir, built.model, self.hooks.finalize, card, summary, state.history, self.timings,
                              self.heard_from)
        return summary


def train(config: RunConfig, run_dir: Path, *, hooks: Hooks | None = None, artifacts: dict | None = None, **options) -> dict:
    """Train `config.model` into `run_dir` (a new run, or an old one with `resume=True`): `Trainer(...).run()`.
    `hooks` change the run (the recipes hand theirs over, `kerasllm.recipes.runner`); `options` are `RunOptions`' fields.

    Returns the summary also written to metrics.json; `summary["nothing_to_do"]` is True when a resumed run had
    already finished.
    """
    return Trainer(config, run_dir, RunOptions(**options), hooks=hooks, artifacts=artifacts).run()
