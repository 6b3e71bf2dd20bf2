"""The shared trainer: every zoo model is compiled, fitted, checkpointed and resumed here.

`train(config, run_dir)` builds the model inside the chosen strategy's scope,
trains it with `model.fit`, checkpoints every epoch (and every N steps if asked),
stops early on validation loss, and writes the run folder (see `kerasllm.runs`).

A checkpoint is `checkpoints/step-NNNNNNNN/` with `model.weights.h5` (the model's
and the optimizer's variables: moments and the iteration count that drives the
learning-rate schedule) and `state.json` (epoch, step, early-stopping counters, history). `resume=True`
restores all of them from the newest checkpoint; each epoch's data order depends
only on (seed, epoch), so a resumed run sees the same batches a straight run would.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras

from kerasllm import registry, reports, tasks
from kerasllm.config import RunConfig, TrainConfig
from kerasllm.distribute import get_strategy
from kerasllm.errors import UserError
from kerasllm.runs import CONFIG_FILE, DATA_FILE, MODEL_FILE, read_json, write_json

CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    """What a checkpoint records besides weights and optimizer variables."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps done inside epoch `epoch` (step checkpoints)
    global_step: int = 0
    best_val_loss: float = math.inf
    best_checkpoint: str = ""
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: dict = field(default_factory=dict)


def make_optimizer(train: TrainConfig, total_steps: int):
    """The optimizer named in the config, with warmup + cosine decay and gradient clipping."""
    learning_rate = train.learning_rate
    if train.schedule == "cosine":
        warmup = min(train.warmup_steps, max(total_steps - 1, 0))
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else train.learning_rate,
            decay_steps=max(total_steps - warmup, 1),
            alpha=train.min_learning_rate_ratio,
            warmup_target=train.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    clip = {"global_clipnorm": train.clip_norm} if train.clip_norm > 0 else {}
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=train.weight_decay, **clip)
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate, **clip)
    return keras.optimizers.SGD(learning_rate, momentum=train.momentum, **clip)


# --- checkpoints -------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, model, state: TrainState) -> Path:
    """Write a checkpoint atomically (a half-written one is never taken for complete)."""
    folder = Path(run_dir) / CHECKPOINTS / f"step-{state.global_step:08d}"
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_weights(partial / "model.weights.h5")  # a compiled model's optimizer variables go in too
    write_json(partial / "state.json", dataclasses.asdict(state))
    shutil.rmtree(folder, ignore_errors=True)  # the same step saved again (epoch end on a step checkpoint)
    partial.rename(folder)
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    folders = sorted(p for p in (Path(run_dir) / CHECKPOINTS).glob("step-*") if (p / "state.json").is_file())
    return folders[-1] if folders else None


def restore_checkpoint(folder: Path, model) -> TrainState:
    """Load weights and optimizer variables into a compiled model; return the saved state."""
    model.optimizer.build(model.trainable_variables)  # so that load_weights fills the optimizer too
    try:
        model.load_weights(folder / "model.weights.h5")
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"checkpoint {folder} is unreadable or does not fit this model ({str(error).splitlines()[0][:150]}); "
                        "delete it to resume from an earlier one") from error
    return TrainState(**read_json(folder / "state.json"))


class Checkpointing(keras.callbacks.Callback):
    """Keeps `TrainState`: history, early stopping on val_loss, and checkpoints."""

    def __init__(self, run_dir: Path, state: TrainState, every_steps: int, patience: int):
        super().__init__()
        self.run_dir, self.state, self.every_steps, self.patience = Path(run_dir), state, every_steps, patience
        self.steps_done_at_start = 0  # set by the trainer when resuming inside an epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.offset, self.steps_done_at_start = self.steps_done_at_start, 0

    def _global_step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps:
            step = self._global_step()
            if step // self.every_steps > self.state.global_step // self.every_steps:
                self.state.global_step, self.state.step_in_epoch = step, self.offset + batch + 1
                save_checkpoint(self.run_dir, self.model, self.state)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {}, learning_rate=float(self.model.optimizer.learning_rate.numpy()))
        for key, value in logs.items():
            self.state.history.setdefault(key, []).append(float(value))
        state = self.state
        state.epoch, state.step_in_epoch, state.global_step = epoch + 1, 0, self._global_step()
        val_loss = logs.get("val_loss", logs["loss"])
        improved = val_loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.epochs_without_improvement = float(val_loss), 0
            state.best_checkpoint = f"step-{state.global_step:08d}"
        else:
            state.epochs_without_improvement += 1
        if self.patience and state.epochs_without_improvement >= self.patience:
            state.stopped_early = self.model.stop_training = True
        save_checkpoint(self.run_dir, self.model, state)


# --- the training routine ----------------------------------------------------------------

def build_and_compile(spec, config: RunConfig, data, strategy):
    """The model inside `strategy.scope()`, compiled with the task's loss and metrics."""
    task = tasks.get(spec.task)
    with strategy.scope():
        model = spec.build(config.model_args, data.info)
        model.compile(
            optimizer=make_optimizer(config.train, data.steps_per_epoch * config.train.epochs),
            loss=task.loss(),
            metrics=task.metrics(),
            jit_compile=config.runtime.jit_compile,
            steps_per_execution=config.runtime.steps_per_execution,
        )
    return model


def seed_everything(config: RunConfig) -> None:
    import keras

    keras.utils.set_random_seed(config.train.seed)
    if config.runtime.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def train(config: RunConfig, run_dir: Path, *, resume: bool = False, progress: str = "rich",
          console=None, command: str = "") -> dict:
    """Train `config.model` into `run_dir` (created by `runs.new_run_dir`, or an old run if `resume`).

    Returns the summary also written to metrics.json.
    """
    from kerasllm.progress import Reporter

    run_dir = Path(run_dir)
    spec = registry.get(config.model)
    task = tasks.get(spec.task)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise UserError(f"{run_dir} has no checkpoint to resume from; start a new run with `kerasllm train`")
    seed_everything(config)
    data = task.prepare(config, **(task.load_artifacts(run_dir) if resume else {}))
    if not resume:
        config.save(run_dir / CONFIG_FILE)
        write_json(run_dir / DATA_FILE, data.record)
        for artifact in data.artifacts:
            artifact.save(run_dir)

    strategy = get_strategy(config.runtime.strategy)
    model = build_and_compile(spec, config, data, strategy)
    if checkpoint:
        with strategy.scope():
            state = restore_checkpoint(checkpoint, model)
        summary = read_json(run_dir / "metrics.json")
    else:
        state = TrainState()
        summary = {"model": spec.name, "parameters": int(model.count_params()),
                   "before_training": task.report(model.evaluate(data.validation, verbose=0, return_dict=True), data.record)}
        write_json(run_dir / "metrics.json", summary)

    epochs = config.train.epochs
    checkpointing = Checkpointing(run_dir, state, config.train.checkpoint_every_steps, config.train.early_stopping_patience)
    reporter = Reporter(progress, epochs, data.steps_per_epoch, data.items_per_step, data.unit, data.sample, console)
    callbacks = [
        checkpointing,
        keras.callbacks.TensorBoard(run_dir / "logs", write_graph=False, update_freq="epoch", profile_batch=0),
        reporter,
    ]
    # A step checkpoint inside an epoch resumes with the rest of that epoch first.
    phases = []
    if state.step_in_epoch:
        phases.append((state.epoch, state.epoch + 1, data.steps_per_epoch - state.step_in_epoch, state.step_in_epoch))
        checkpointing.steps_done_at_start = reporter.steps_done_at_start = state.step_in_epoch
    phases.append((state.epoch + bool(state.step_in_epoch), epochs, data.steps_per_epoch, 0))

    first_step, started = state.global_step, time.perf_counter()
    try:
        for first, last, steps, skip in phases:
            if first >= last or state.stopped_early:
                continue
            model.fit(data.train(first, last, skip), validation_data=data.validation, epochs=last,
                      initial_epoch=first, steps_per_epoch=steps, callbacks=callbacks, shuffle=False, verbose=0)
    finally:
        reporter.close()
    train_seconds = time.perf_counter() - started

    if state.best_checkpoint:  # keep the weights with the lowest validation loss
        model.load_weights(run_dir / CHECKPOINTS / state.best_checkpoint / "model.weights.h5")
    model.save(run_dir / MODEL_FILE)
    after = task.report(model.evaluate(data.validation, verbose=0, return_dict=True), data.record)
    summary.update(
        after_training=after,
        epochs_completed=state.epoch,
        stopped_early=state.stopped_early,
        best_checkpoint=state.best_checkpoint,
        train_seconds=summary.get("train_seconds", 0.0) + train_seconds,
        steps=state.global_step,
        **{f"{data.unit}_per_second": data.items_per_step * (state.global_step - first_step) / max(train_seconds, 1e-9)},
        backend=keras.backend.backend(),
        strategy=type(strategy).__name__,
        replicas=strategy.num_replicas_in_sync,
        command=command or " ".join(sys.argv),
    )
    write_json(run_dir / "metrics.json", summary)
    write_json(run_dir / "history.json", state.history)
    reports.plot_curves(state.history, run_dir / "curves.png", title=f"{spec.name} on {data.record.get('source')}")
    (run_dir / "README.md").write_text(reports.model_card(spec, config, data.record, summary, run_dir))
    return summary
