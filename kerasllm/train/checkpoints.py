"""Checkpoints: `checkpoints/step-NNNNNNNN/` written whole or not at all, listed, pruned, read back.

A checkpoint holds `model.weights.h5` (the model's and the optimizer's variables), `seeds.npz`
(the dropout random-number states) and `state.json` (`TrainState`); hooks may add files
(LoRA adapters). It is written as `step-NNNNNNNN.partial/` and renamed once complete, so an
unfinished one is never taken for a checkpoint. The newest `train.keep_checkpoints` plus
the best are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from kerasllm.core import compat, files
from kerasllm.core.config import TrainConfig
from kerasllm.core.errors import UserError
from kerasllm.train.building import current_learning_rate, optimizer_step
from kerasllm.train.hooks import NO_HOOKS, Hooks

CHECKPOINT_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    """What a checkpoint records besides weights and optimizer variables."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps done inside epoch `epoch` (step checkpoints)
    global_step: int = 0
    best_val_loss: float = math.inf  # the best value of `train.monitor` so far, lower is better (accuracies are negated)
    best_checkpoint: str = ""
    best_epoch: int = 0  # the epoch whose weights `best_checkpoint` holds (what model.keras keeps)
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    schedule_steps: int = 0  # total steps of the learning-rate schedule, fixed at the start
    train_seconds: float = 0.0  # training-loop time up to this checkpoint, over all sessions
    history: dict = field(default_factory=dict)


def _write_state(path: Path, state: TrainState) -> None:
    files.write_json(path, dataclasses.asdict(state))  # written beside, fsynced, renamed


def save_checkpoint(run_dir: Path, model, state: TrainState, hooks: Hooks = NO_HOOKS) -> Path:
    """Write `step-N.partial/`, then rename it to `step-N/`: a complete checkpoint or none."""
    folder = Path(run_dir) / files.CHECKPOINTS_DIR / f"step-{state.global_step:08d}"
    partial = folder.with_name(folder.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        model.save_weights(partial / files.CHECKPOINT_WEIGHTS)  # a compiled model's optimizer variables go in too
        hooks.on_checkpoint_save(model, partial)
        np.savez(partial / files.CHECKPOINT_SEEDS, *[keras.ops.convert_to_numpy(state) for state in compat.seed_states(model)])
        _write_state(partial / files.CHECKPOINT_STATE, state)
        shutil.rmtree(folder, ignore_errors=True)  # the same step saved again (epoch end on a step checkpoint)
        partial.rename(folder)
    except OSError as error:
        raise UserError(f"cannot write a checkpoint in {run_dir} ({error.strerror or error}); "
                        "make the run folder writable or free some space, then --resume") from error
    return folder


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (`.partial` folders and folders missing a file are not)."""
    folder = Path(run_dir) / files.CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CHECKPOINT_NAME.match(p.name)
                  and (p / files.CHECKPOINT_STATE).is_file() and (p / files.CHECKPOINT_WEIGHTS).is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int, best: str) -> None:
    """Delete all but the newest `keep` complete checkpoints and the best one (keep 0: keep all)."""
    if keep <= 0:
        return
    found = checkpoints(run_dir)
    for folder in found[:-keep]:
        if folder.name != best:
            shutil.rmtree(folder, ignore_errors=True)


def read_state(folder: Path) -> TrainState:
    saved = files.read_json(folder / files.CHECKPOINT_STATE)
    known = {f.name for f in dataclasses.fields(TrainState)}
    state = TrainState(**{key: value for key, value in saved.items() if key in known})
    if state.best_checkpoint and not state.best_epoch:  # written before kerasllm kept `best_epoch`: the best's own
        best = Path(folder).parent / state.best_checkpoint
        found = (best / files.CHECKPOINT_STATE).is_file() and best != Path(folder)
        state.best_epoch = read_state(best).epoch if found else state.epoch
    return state


def restore_checkpoint(folder: Path, model, with_optimizer: bool = True, hooks: Hooks = NO_HOOKS, strategy=None) -> list:
    """Load weights (and, unless the optimizer was just replaced, its variables) and the dropout RNG states into a
    compiled model (inside `strategy.scope()` when given). Returns those RNG states as numpy arrays: evaluating the
    restored weights, a check of the checkpoint, draws from them, so the caller assigns them again before training."""
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        load_seeds(folder, model)  # (not in the weights file: the same whether before or after it)
        _restore(folder, model, with_optimizer, hooks)
    return [keras.ops.convert_to_numpy(seed) for seed in compat.seed_states(model)]


def _restore(folder: Path, model, with_optimizer: bool, hooks: Hooks) -> None:
    if with_optimizer:
        model.optimizer.build(model.trainable_variables)  # so that load_weights fills the optimizer too
    try:
        with warnings.catch_warnings():  # an unbuilt optimizer's variables are skipped, with a warning
            warnings.simplefilter("ignore")
            load_checkpoint_weights(folder, model, hooks)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"checkpoint {folder} is unreadable or does not fit this model ({str(error).splitlines()[0][:150]}); "
                        "delete it to resume from an earlier one") from error


def load_best(run_dir: Path, state: TrainState, model, hooks: Hooks = NO_HOOKS) -> int:
    """The best checkpoint's weights into `model` (where it still exists; its dropout RNG states do not matter to a
    saved model); returns the epoch whose weights the model now holds: the one source of "the epoch model.keras keeps"
    (the last epoch where no best was kept)."""
    best = Path(run_dir) / files.CHECKPOINTS_DIR / state.best_checkpoint
    if not (state.best_checkpoint and best.is_dir()):
        return state.epoch
    load_checkpoint_weights(best, model, hooks)
    return state.best_epoch or state.epoch


def load_checkpoint_weights(folder: Path, model, hooks: Hooks = NO_HOOKS) -> None:
    """The checkpoint's weights (and optimizer variables, where built) into `model`, then the hooks' own state."""
    model.load_weights(folder / files.CHECKPOINT_WEIGHTS)
    hooks.on_checkpoint_restore(model, folder)


def load_seeds(folder: Path, model) -> None:
    """The dropout RNG states as the checkpoint had them (exact resume)."""
    seeds = folder / files.CHECKPOINT_SEEDS
    if seeds.is_file():  # checkpoints written before kerasllm kept them have none
        with np.load(seeds) as saved:
            states = compat.seed_states(model)
            if len(saved.files) == len(states):
                for index, state in enumerate(states):
                    state.assign(saved[f"arr_{index}"])


class Checkpointing(keras.callbacks.Callback):
    """Keeps `TrainState`: history, the best epoch and early stopping on `train.monitor`, checkpoints (written by the
    chief only)."""

    def __init__(self, run_dir: Path, state: TrainState, train: TrainConfig, chief: bool = True, hooks: Hooks = NO_HOOKS,
                 timings=None):
        super().__init__()
        self.run_dir, self.state, self.chief, self.hooks = Path(run_dir), state, chief, hooks
        self.timings = timings  # `kerasllm.train.timings.Timings`: writing checkpoints counts as `checkpoints`
        self.every_steps, self.patience, self.keep = train.checkpoint_every_steps, train.early_stopping_patience, train.keep_checkpoints
        self.monitor = train.monitor
        self.steps_done_at_start = 0  # set by the trainer when resuming inside an epoch
        self.step_offset = 0  # steps before the optimizer was replaced (unfreezing restarts its count)
        self.seconds_at_start, self.started = state.train_seconds, time.perf_counter()
        self.steps_per_epoch = 0  # set by the trainer: an interrupt at an epoch's last step lets the epoch end first
        self.stop_requested = False  # a signal asked to stop (`kerasllm.core.interrupts`): checkpoint at the next step's end
        self.interrupted = False  # that checkpoint is written and the loop told to stop

    def request_stop(self) -> None:
        self.stop_requested = True

    def on_epoch_begin(self, epoch, logs=None):
        self.offset, self.steps_done_at_start = self.steps_done_at_start, 0

    def save(self) -> None:
        started = time.perf_counter()
        self.state.train_seconds = self.seconds_at_start + started - self.started
        if self.chief:
            save_checkpoint(self.run_dir, self.model, self.state, self.hooks)
            prune_checkpoints(self.run_dir, self.keep, self.state.best_checkpoint)
        if self.timings is not None:
            self.timings.add("checkpoints", time.perf_counter() - started)

    def on_train_batch_end(self, batch, logs=None):
        done = self.offset + batch + 1  # steps done in this epoch
        if self.steps_per_epoch and done >= self.steps_per_epoch:
            return  # the epoch's own checkpoint follows its last step (with validation); a stop asked now waits for it
        stop = self.stop_requested and not self.interrupted
        if not (stop or self.every_steps):
            return
        step = self.step_offset + optimizer_step(self.model.optimizer)
        if stop or step // self.every_steps > self.state.global_step // self.every_steps:
            self.state.global_step, self.state.step_in_epoch = step, done
            self.save()
            if stop:
                self.interrupted = self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.interrupted:  # the epoch did not end: the step checkpoint holds where it stopped
            return
        self._end_epoch(epoch, logs)
        if self.stop_requested:  # asked at the epoch's last step: the epoch's checkpoint is written, now stop
            self.interrupted = self.model.stop_training = True

    def _end_epoch(self, epoch, logs=None):
        # train_seconds: the training loop's time so far, over all sessions (time to a validation figure)
        logs = dict(logs or {}, learning_rate=current_learning_rate(self.model.optimizer),
                    train_seconds=self.seconds_at_start + time.perf_counter() - self.started)
        for key, value in logs.items():
            self.state.history.setdefault(key, []).append(float(value))
        state = self.state
        state.epoch, state.step_in_epoch, state.global_step = epoch + 1, 0, self.step_offset + optimizer_step(self.model.optimizer)
        value = next((logs[key] for key in (self.monitor, self.monitor.removeprefix("val_"), "loss") if key in logs), None)
        if value is None:
            raise UserError(f"epoch {epoch + 1} ran no training step, so it has no {self.monitor} (the data ran out); "
                            f"continue with `kerasllm train --resume {self.run_dir}`")
        score = float(value) if "loss" in self.monitor else -float(value)  # lower is better
        if score < state.best_val_loss and self.hooks.may_be_best(state):
            state.best_val_loss, state.epochs_without_improvement = score, 0
            state.best_checkpoint, state.best_epoch = f"step-{state.global_step:08d}", state.epoch
        else:
            state.epochs_without_improvement += 1
        if self.patience and state.epochs_without_improvement >= self.patience:
            state.stopped_early = self.model.stop_training = True
        self.save()
