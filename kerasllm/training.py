"""The shared trainer: every zoo model is built, trained, checkpointed and resumed here.

`train(config, run_dir)` goes through four stages:

1. **prepare**: the task loads the data (and, on resume, the run's tokenizer or labels);
   the newest checkpoint's state is read.
2. **build**: the model inside the strategy's scope, compiled with the task's loss and
   metrics objects (optionally starting from a parent model's weights, for fine-tuning).
   Only now is the run folder written (`runs.claim_run_dir`).
3. **loop**: `fit` (Keras, the default) or `custom` (a `tf.function` step run with
   `strategy.run` and reduced with `strategy.reduce`; it runs where `fit` cannot, e.g.
   under `MultiWorkerMirroredStrategy`). Both share `TrainState`, checkpointing, early
   stopping, progress and resume through the same Keras callbacks.
4. **finalize**: best weights, `model.keras` (written beside, then renamed), metrics,
   history, curves, the model card.

A checkpoint is `checkpoints/step-NNNNNNNN/` with `model.weights.h5` (the model's and
the optimizer's variables) and `state.json`; it is written as `step-NNNNNNNN.partial/`
and renamed once complete, so an unfinished one is never taken for a checkpoint. The
newest `train.keep_checkpoints` plus the best are kept. Each epoch's data order depends
only on (seed, epoch), so a resumed run sees the same batches as a straight one.

The learning-rate schedule is fixed when a run starts (`TrainState.schedule_steps`):
`--resume RUN --epochs N` with a larger N continues the same schedule, whose cosine
decay has ended, so the extra epochs train at its floor (`min_learning_rate_ratio` ×
the peak rate); a resumed run's first epochs are identical to the original's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from kerasllm import diagnostics, distribute, finetuning, registry, reports, runs, tasks
from kerasllm.config import RunConfig, TrainConfig
from kerasllm.errors import UserError

CHECKPOINT_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    """What a checkpoint records besides weights and optimizer variables."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps done inside epoch `epoch` (step checkpoints)
    global_step: int = 0
    best_val_loss: float = math.inf  # the best value of `train.monitor` so far, lower is better (accuracies are negated)
    best_checkpoint: str = ""
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    schedule_steps: int = 0  # total steps of the learning-rate schedule, fixed at the start
    train_seconds: float = 0.0  # training-loop time up to this checkpoint, over all sessions
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
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=train.weight_decay, beta_1=train.beta_1, beta_2=train.beta_2,
                                           **clip)
        if not train.decay_all_weights:  # as GPT-2 / nanoGPT: biases and normalisation scales are not decayed
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    elif train.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, beta_1=train.beta_1, beta_2=train.beta_2, **clip)
    else:
        optimizer = keras.optimizers.SGD(learning_rate, momentum=train.momentum, **clip)
    clip_across_replicas(optimizer)
    return optimizer


def clip_across_replicas(optimizer) -> None:
    """Make `global_clipnorm` clip the gradient of the global batch when several replicas train.

    Keras clips inside `apply_gradients`, which tf.distribute runs on each replica before the gradients are summed
    across replicas: each replica's part was clipped to the norm on its own, so runs with clipping active diverged
    from one device at the same global batch (lstm-textgen, 40 steps at lr 1e-2 on 2 replicas: validation loss 2.843
    against 2.762; 2.5720 for both with clipping off). Here the replicas first sum their gradients to take the
    global norm, then scale their own part by the same factor, so the sum the optimizer then takes is the clipped
    global gradient. One replica, or the JAX backend (one global gradient), clips as before.
    """
    if not optimizer.global_clipnorm or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    clip_locally, clip_norm = optimizer._clip_gradients, optimizer.global_clipnorm

    def clip(grads):
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return clip_locally(grads)
        present = [tf.convert_to_tensor(g) for g in grads if g is not None]
        norm = tf.linalg.global_norm(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
        factor = tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))
        return [None if g is None else g * tf.cast(factor, g.dtype) for g in grads]

    optimizer._clip_gradients = clip


def current_learning_rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def optimizer_step(optimizer) -> int:
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


# --- checkpoints -------------------------------------------------------------------------

def _write_state(path: Path, state: TrainState) -> None:
    runs.write_json(path, dataclasses.asdict(state))  # written beside, fsynced, renamed


def save_checkpoint(run_dir: Path, model, state: TrainState) -> Path:
    """Write `step-N.partial/`, then rename it to `step-N/`: a complete checkpoint or none."""
    folder = Path(run_dir) / runs.CHECKPOINTS_DIR / f"step-{state.global_step:08d}"
    partial = folder.with_name(folder.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        model.save_weights(partial / runs.CHECKPOINT_WEIGHTS)  # a compiled model's optimizer variables go in too
        if finetuning.uses_lora(model):  # save_weights merges LoRA adapters into kernels: keep them apart too
            finetuning.save_adapter(model, partial / finetuning.ADAPTER_FILE)
        np.savez(partial / runs.CHECKPOINT_SEEDS, *[keras.ops.convert_to_numpy(state) for state in seed_states(model)])
        _write_state(partial / runs.CHECKPOINT_STATE, state)
        shutil.rmtree(folder, ignore_errors=True)  # the same step saved again (epoch end on a step checkpoint)
        partial.rename(folder)
    except OSError as error:
        raise UserError(f"cannot write a checkpoint in {run_dir} ({error.strerror or error}); "
                        "make the run folder writable or free some space, then --resume") from error
    return folder


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (`.partial` folders and folders missing a file are not)."""
    folder = Path(run_dir) / runs.CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CHECKPOINT_NAME.match(p.name)
                  and (p / runs.CHECKPOINT_STATE).is_file() and (p / runs.CHECKPOINT_WEIGHTS).is_file())


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
    saved = runs.read_json(folder / runs.CHECKPOINT_STATE)
    known = {f.name for f in dataclasses.fields(TrainState)}
    return TrainState(**{key: value for key, value in saved.items() if key in known})


def restore_checkpoint(folder: Path, model, with_optimizer: bool = True) -> None:
    """Load weights (and, unless the optimizer was just replaced, its variables) into a compiled model."""
    import warnings

    if with_optimizer:
        model.optimizer.build(model.trainable_variables)  # so that load_weights fills the optimizer too
    try:
        with warnings.catch_warnings():  # an unbuilt optimizer's variables are skipped, with a warning
            warnings.simplefilter("ignore")
            load_checkpoint_weights(folder, model)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"checkpoint {folder} is unreadable or does not fit this model ({str(error).splitlines()[0][:150]}); "
                        "delete it to resume from an earlier one") from error


def seed_states(model) -> list:
    """The random-number states of the model's dropout (and other random) layers, in a fixed order.

    `save_weights` leaves them out; a checkpoint keeps them so that a resumed run draws the same
    dropout masks as a straight one.
    """
    return [generator.state for layer in model._flatten_layers(include_self=True, recursive=True)
            for generator in getattr(layer, "_seed_generators", [])]


def load_checkpoint_weights(folder: Path, model) -> None:
    model.load_weights(folder / runs.CHECKPOINT_WEIGHTS)
    seeds = folder / runs.CHECKPOINT_SEEDS
    if seeds.is_file():  # checkpoints written before kerasllm kept them have none
        with np.load(seeds) as saved:
            states = seed_states(model)
            if len(saved.files) == len(states):
                for index, state in enumerate(states):
                    state.assign(saved[f"arr_{index}"])
    if finetuning.uses_lora(model):
        finetuning.restore_lora(model, folder / finetuning.ADAPTER_FILE)


class Checkpointing(keras.callbacks.Callback):
    """Keeps `TrainState`: history, the best epoch and early stopping on `train.monitor`, checkpoints (written by the
    chief only)."""

    def __init__(self, run_dir: Path, state: TrainState, train: TrainConfig, chief: bool = True):
        super().__init__()
        self.run_dir, self.state, self.chief = Path(run_dir), state, chief
        self.every_steps, self.patience, self.keep = train.checkpoint_every_steps, train.early_stopping_patience, train.keep_checkpoints
        self.monitor = train.monitor
        self.steps_done_at_start = 0  # set by the trainer when resuming inside an epoch
        self.step_offset = 0  # steps before the optimizer was replaced (unfreezing restarts its count)
        self.seconds_at_start, self.started = state.train_seconds, time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.offset, self.steps_done_at_start = self.steps_done_at_start, 0

    def save(self) -> None:
        self.state.train_seconds = self.seconds_at_start + time.perf_counter() - self.started
        if self.chief:
            save_checkpoint(self.run_dir, self.model, self.state)
            prune_checkpoints(self.run_dir, self.keep, self.state.best_checkpoint)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps:
            step = self.step_offset + optimizer_step(self.model.optimizer)
            if step // self.every_steps > self.state.global_step // self.every_steps:
                self.state.global_step, self.state.step_in_epoch = step, self.offset + batch + 1
                self.save()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {}, learning_rate=current_learning_rate(self.model.optimizer))
        for key, value in logs.items():
            self.state.history.setdefault(key, []).append(float(value))
        state = self.state
        state.epoch, state.step_in_epoch, state.global_step = epoch + 1, 0, self.step_offset + optimizer_step(self.model.optimizer)
        value = logs.get(self.monitor, logs.get(self.monitor.removeprefix("val_"), logs["loss"]))
        score = float(value) if "loss" in self.monitor else -float(value)  # lower is better
        if score < state.best_val_loss:
            state.best_val_loss, state.epochs_without_improvement = score, 0
            state.best_checkpoint = f"step-{state.global_step:08d}"
        else:
            state.epochs_without_improvement += 1
        if self.patience and state.epochs_without_improvement >= self.patience:
            state.stopped_early = self.model.stop_training = True
        self.save()


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `max_seconds` of training time (all sessions) have passed."""

    def __init__(self, max_seconds: float, seconds_before: float):
        super().__init__()
        self.deadline = time.perf_counter() + max_seconds - seconds_before
        self.expired = False

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() >= self.deadline:
            self.expired = self.model.stop_training = True


class StepClock(keras.callbacks.Callback):
    """Step timing: the median seconds per step between batch callbacks (with `steps_per_execution`
    a callback covers several steps), and the time of the last step (the gap from there to the loop
    returning showed tf.data's idle wait)."""

    def __init__(self):
        super().__init__()
        self.last_step, self.previous, self.per_step = None, None, []

    def on_epoch_begin(self, epoch, logs=None):
        self.previous = None  # the first interval of an epoch holds its start-up

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.previous is not None and batch > self.previous[1]:
            self.per_step.append((now - self.previous[0]) / (batch - self.previous[1]))
        self.previous, self.last_step = (now, batch), now

    def median_step_seconds(self) -> float | None:
        return statistics.median(self.per_step) if self.per_step else None


# --- loops -------------------------------------------------------------------------------

class FitLoop:
    """Keras `model.fit` and `model.evaluate`."""

    name = "fit"

    def __init__(self, model, task, spec, strategy, config):
        self.model = model

    def fit(self, dataset, validation, *, initial_epoch, epochs, steps_per_epoch, callbacks):
        self.model.fit(dataset, validation_data=validation, epochs=epochs, initial_epoch=initial_epoch,
                       steps_per_epoch=steps_per_epoch, callbacks=callbacks, shuffle=False, verbose=0)

    def evaluate(self, dataset) -> dict:
        return self.model.evaluate(dataset, verbose=0, return_dict=True)


class CustomLoop:
    """A `tf.function` train step run on every replica with `strategy.run`, reduced with `strategy.reduce`.

    The loss comes from `model.compute_loss` (the compiled loss object plus regularisation,
    scaled for the replicas), gradients go through the model's optimizer (which all-reduces
    them across replicas), and the task's metric objects are updated on each replica.
    Callbacks (checkpointing, progress, TensorBoard) are driven as `fit` drives them.
    """

    name = "custom"

    def __init__(self, model, task, spec, strategy, config):
        import tensorflow as tf

        self.model, self.strategy = model, strategy
        with strategy.scope():
            self.train_metrics, self.val_metrics = task.metrics(spec), task.metrics(spec)
            model.optimizer.build(model.trainable_variables)  # its variables must exist before the first traced step
        replicas = strategy.num_replicas_in_sync
        jit = config.runtime.jit_compile

        weighted = task.weighted_metrics

        def forward_backward(x, y, sample_weight=None):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)  # ÷ replicas
                scaled = model.optimizer.scale_loss(loss)  # mixed_float16: a LossScaleOptimizer scales; else unchanged
            gradients = tape.gradient(scaled, model.trainable_variables)  # apply_gradients unscales them
            # dense, so every replica all-reduces the same shapes (a sparse embedding gradient's size varies)
            gradients = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]
            return loss * replicas, gradients, y_pred

        forward_backward = tf.function(forward_backward, jit_compile=jit) if jit else forward_backward

        def replica_train_step(x, y, sample_weight=None):
            loss, gradients, y_pred = forward_backward(x, y, sample_weight)
            model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            for metric in self.train_metrics:
                metric.update_state(y, y_pred, sample_weight=sample_weight if weighted else None)
            return loss

        def replica_test_step(x, y, sample_weight=None):
            y_pred = model(x, training=False)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False) * replicas
            for metric in self.val_metrics:
                metric.update_state(y, y_pred, sample_weight=sample_weight if weighted else None)
            count = tf.cast(tf.shape(y)[0], tf.float32)
            return loss * count, count

        @tf.function
        def train_step(batch):
            per_replica = strategy.run(replica_train_step, args=batch)
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

        @tf.function
        def test_step(batch):
            loss_sum, count = strategy.run(replica_test_step, args=batch)
            total = strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None)
            return total, strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None)

        self.train_step, self.test_step = train_step, test_step

    @staticmethod
    def _results(metrics) -> dict:
        return {metric.name: float(keras.ops.convert_to_numpy(metric.result())) for metric in metrics}

    def fit(self, dataset, validation, *, initial_epoch, epochs, steps_per_epoch, callbacks):
        callback_list = keras.callbacks.CallbackList(callbacks, model=self.model)
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
        self.model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for metric in self.train_metrics:
                metric.reset_state()
            callback_list.on_epoch_begin(epoch)
            total = 0.0
            for step in range(steps_per_epoch):
                callback_list.on_train_batch_begin(step)
                total += float(self.train_step(next(iterator)))
                callback_list.on_train_batch_end(step, {"loss": total / (step + 1)})
                if self.model.stop_training:  # a time budget ends the epoch early
                    break
            logs = {"loss": total / max(step + 1, 1), **self._results(self.train_metrics)}
            logs.update({f"val_{key}": value for key, value in self.evaluate(validation).items()})
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end()

    def evaluate(self, dataset) -> dict:
        for metric in self.val_metrics:
            metric.reset_state()
        loss_sum, count = 0.0, 0.0
        for batch in self.strategy.experimental_distribute_dataset(dataset):
            batch_loss, batch_count = self.test_step(batch)
            loss_sum, count = loss_sum + float(batch_loss), count + float(batch_count)
        return {"loss": loss_sum / max(count, 1.0), **self._results(self.val_metrics)}


LOOPS = {"fit": FitLoop, "custom": CustomLoop}


def spread_subset(dataset, batches: int):
    """`batches` batches spread evenly over a finite dataset (all of it when 0 or when it is smaller)."""
    total = int(dataset.cardinality())
    if not batches or total < 0 or total <= batches:
        return dataset
    return dataset.shard(total // batches, 0).take(batches)


# --- the stages --------------------------------------------------------------------------

def seed_everything(config: RunConfig) -> None:
    keras.utils.set_random_seed(config.train.seed)
    if config.runtime.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def transfer_weights(parent, model, fresh: tuple = ()) -> tuple[list[str], list[str]]:
    """Copy the weights of `parent`'s layers into `model`'s layers of the same name and shapes.

    Returns (copied, skipped) layer names: a new head for another task (or named in `fresh`) is
    skipped and keeps its fresh initialisation.
    """
    parents = {layer.name: layer for layer in parent.layers}
    copied, skipped = [], []
    for layer in model.layers:
        source = parents.get(layer.name)
        if source is None or not layer.weights:
            continue
        if layer.name in fresh:
            skipped.append(layer.name)
            continue
        if [tuple(w.shape) for w in source.weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(source.get_weights())
            copied.append(layer.name)
        else:
            skipped.append(layer.name)
    return copied, skipped


def compile_model(model, spec, task, config: RunConfig, schedule_steps: int, train: TrainConfig | None = None) -> None:
    metrics = {"weighted_metrics" if task.weighted_metrics else "metrics": task.metrics(spec)}
    model.compile(
        optimizer=make_optimizer(train or config.train, schedule_steps),
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


def build(spec, task, config: RunConfig, data, strategy, schedule_steps: int, parent=None, fresh: tuple = ()):
    """The model inside `strategy.scope()` (from a parent's weights and with `config.finetune`'s method when
    fine-tuning), compiled with the task's loss and metric objects. `runtime.precision` sets the layers' dtype
    policy while they are built (mixed_float16 also gets loss scaling from `compile`)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.runtime.precision)
    try:
        with strategy.scope():
            model = spec.build(config.model_args, data.info)
            if config.runtime.precision != "float32":
                model = float32_outputs(model)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    with strategy.scope():
        if parent is not None:
            model.transferred_layers = transfer_weights(parent, model, fresh)
        if config.finetune.base:
            finetuning.apply_method(model, config, spec)
        compile_model(model, spec, task, config, schedule_steps)
    return model


class Unfreezing:
    """`finetune.method=freeze` with `unfreeze_after=N`: after epoch N the whole model trains, with a fresh
    optimizer at `unfreeze_learning_rate_ratio` × the learning rate over the remaining steps."""

    def __init__(self, config: RunConfig, steps_per_epoch: int):
        finetune = config.finetune
        self.epoch = finetune.unfreeze_after if finetune.base and finetune.method == "freeze" else 0
        self.steps_before = self.epoch * steps_per_epoch
        self.train = dataclasses.replace(config.train, learning_rate=config.train.learning_rate * finetune.unfreeze_learning_rate_ratio)
        self.steps_after = (config.train.epochs - self.epoch) * steps_per_epoch

    def split(self, phases: list[tuple]) -> list[tuple]:
        """Phases (first epoch, last epoch, steps, skip) cut at the unfreezing epoch."""
        if not self.epoch:
            return phases
        cut = []
        for first, last, steps, skip in phases:
            if first < self.epoch < last:
                cut += [(first, self.epoch, steps, skip), (self.epoch, last, steps, 0)]
            else:
                cut.append((first, last, steps, skip))
        return cut

    def apply(self, model, spec, task, config, strategy) -> None:
        with strategy.scope():
            finetuning.unfreeze(model)
            compile_model(model, spec, task, config, self.steps_after, self.train)


def write_run_files(run_dir: Path, config: RunConfig, data, overwrite: bool) -> Path:
    run_dir = runs.claim_run_dir(run_dir, overwrite, config.model)
    runs.write_text_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())
    runs.write_json(run_dir / runs.DATA_FILE, data.record)
    for artifact in data.artifacts:
        artifact.save(run_dir)
    return run_dir


def save_model(model, path: Path) -> None:
    """`model.keras` written beside (`.model.partial.keras`) and renamed: never half a file."""
    partial = path.with_name(".model.partial.keras")
    try:
        model.save(partial)
        os.replace(partial, path)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror or error}); make the run folder writable, "
                        f"then `kerasllm train --resume {path.parent}`") from error


def train(config: RunConfig, run_dir: Path, *, resume: bool = False, overwrite: bool = False, progress: str = "rich",
          console=None, command: str = "", parent=None, parent_record: dict | None = None, artifacts: dict | None = None,
          on_built=None) -> dict:
    """Train `config.model` into `run_dir` (a new run, or an old one if `resume`).

    Args:
        parent: a Keras model whose weights start the new model (fine-tuning).
        parent_record: what to record about the parent (path, sha256, class names) in metrics and the card.
        artifacts: preprocessing a new run inherits (a fine-tuning base's tokenizer).
        on_built: `on_built(model)`, called once the model is built, before training (e.g. to print parameters).

    Returns the summary also written to metrics.json; `summary["nothing_to_do"]` is True
    when a resumed run had already finished.
    """
    # first: a multi-worker strategy must be made before any TensorFlow op runs
    strategy = distribute.get_strategy(config.runtime.strategy, config.runtime.worker_timeout)
    with distribute.peer_failures(strategy, config.runtime.worker_timeout):
        return _train(config, Path(run_dir), strategy, resume=resume, overwrite=overwrite, progress=progress, console=console,
                      command=command, parent=parent, parent_record=parent_record, artifacts=artifacts, on_built=on_built)


def _train(config: RunConfig, run_dir: Path, strategy, *, resume, overwrite, progress, console, command, parent, parent_record,
           artifacts, on_built) -> dict:
    from kerasllm.progress import Reporter

    spec = registry.get(config.model)
    task = tasks.get(spec.task_for(config.train.objective))
    chief = distribute.is_chief(strategy)

    # 1. prepare
    checkpoint = latest_checkpoint(run_dir) if resume else None
    state = read_state(checkpoint) if checkpoint else TrainState()
    if resume:
        if checkpoint is None:
            raise UserError(f"{run_dir} has no checkpoint: training stopped before the first one was written; start it "
                            f"again with `kerasllm train --config {run_dir / runs.CONFIG_FILE} --out {run_dir} --overwrite`")
        summary = runs.read_json(run_dir / runs.METRICS_FILE)
        data_record = runs.read_json(run_dir / runs.DATA_FILE)
        finished = state.epoch >= config.train.epochs or (state.stopped_early and config.train.epochs <= summary.get("epochs_planned", state.epoch))
        if finished and (run_dir / runs.MODEL_FILE).is_file() and "after_training" in summary:
            return dict(summary, nothing_to_do=True)
        if state.stopped_early and not finished:  # asked for more epochs than the early stop left
            state.stopped_early, state.epochs_without_improvement = False, 0
        if chief:
            runs.write_text_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())  # e.g. the new epoch count
    seed_everything(config)
    replicas = strategy.num_replicas_in_sync
    loop_name = distribute.loop_for(config.runtime.loop, strategy, config.runtime.jit_compile)
    global_batch = config.train.batch_size * replicas  # train.batch_size is per replica; the pipeline batches globally
    if console is not None and progress == "rich":
        console.print(f"{distribute.describe(strategy)}: {replicas} replica(s), global batch {global_batch} = "
                      f"{config.train.batch_size} per replica × {replicas}", highlight=False)
    data_config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=global_batch))
    data = task.prepare(data_config, spec, task.load_artifacts(run_dir) if resume else artifacts)
    validation = data.validation
    if distribute.needs_full_batches(strategy):  # JAX splits every batch evenly over the devices: drop a short last one
        validation = validation.rebatch(global_batch, drop_remainder=True)
    if resume:
        from kerasllm.data.splits import check_unchanged

        check_unchanged(data.record, data_record, action="start a new run on it (resuming needs the same data)")

    # 2. build, then write the run folder
    state.schedule_steps = state.schedule_steps or data.steps_per_epoch * config.train.epochs
    parent_classes = (parent_record or {}).get("class_names")
    same_head = parent_record is not None and parent_record.get("task") == task.name and parent_classes == data.record.get("class_names")
    model = build(spec, task, config, data, strategy, state.schedule_steps, parent, fresh=() if same_head else spec.head_layers)
    unfreezing = Unfreezing(config, data.steps_per_epoch)
    if unfreezing.epoch and state.epoch >= unfreezing.epoch:
        unfreezing.apply(model, spec, task, config, strategy)
    loop = LOOPS[loop_name](model, task, spec, strategy, config)
    created = False
    if checkpoint:
        with strategy.scope():  # a checkpoint from the unfreezing epoch holds the replaced optimizer's variables: skip them
            restore_checkpoint(checkpoint, model, with_optimizer=not (unfreezing.epoch and state.epoch == unfreezing.epoch
                                                                       and not state.step_in_epoch))
    else:
        if chief:
            run_dir = write_run_files(run_dir, config, data, overwrite)
            created = True
        summary = {"model": spec.name, "parameters": int(model.count_params()),
                   "before_training": task.report(loop.evaluate(validation), data.record)}
        if parent_record:
            summary["parent"] = dict(parent_record, layers_copied=len(model.transferred_layers[0]) if parent is not None else 0,
                                     layers_new=model.transferred_layers[1] if parent is not None else list(spec.head_layers))
    summary["epochs_planned"] = config.train.epochs
    summary["parameter_counts"] = finetuning.parameter_counts(model)
    summary["notes"] = task.notes(data.record)
    if on_built:
        on_built(model)
    if chief:
        runs.write_json(run_dir / runs.METRICS_FILE, summary)

    # 3. loop
    epochs = config.train.epochs
    checkpointing = Checkpointing(run_dir, state, config.train, chief)
    if unfreezing.epoch and state.epoch >= unfreezing.epoch:
        checkpointing.step_offset = unfreezing.steps_before
    clock = StepClock()
    reporter = Reporter(progress, epochs, data.steps_per_epoch, data.items_per_step, data.unit, data.sample, console)
    callbacks = [checkpointing, clock, reporter]
    budget = TimeBudget(config.train.max_seconds, state.train_seconds) if config.train.max_seconds else None
    if budget:
        callbacks.insert(0, budget)
    if chief:
        callbacks.insert(1, keras.callbacks.TensorBoard(run_dir / runs.LOGS_DIR, write_graph=False, update_freq="epoch", profile_batch=0))
    phases = []  # a step checkpoint inside an epoch resumes with the rest of that epoch first
    if state.step_in_epoch:
        phases.append((state.epoch, state.epoch + 1, data.steps_per_epoch - state.step_in_epoch, state.step_in_epoch))
        checkpointing.steps_done_at_start = reporter.steps_done_at_start = state.step_in_epoch
    phases.append((state.epoch + bool(state.step_in_epoch), epochs, data.steps_per_epoch, 0))
    epoch_validation = spread_subset(validation, config.train.validation_steps)
    first_step, started, idle_after_last_step = state.global_step, time.perf_counter(), 0.0
    try:
        for first, last, steps, skip in unfreezing.split(phases):
            if first >= last or state.stopped_early or (budget and budget.expired):
                continue
            if unfreezing.epoch and first == unfreezing.epoch and not checkpointing.step_offset:
                unfreezing.apply(model, spec, task, config, strategy)
                loop = LOOPS[loop_name](model, task, spec, strategy, config)
                checkpointing.step_offset = unfreezing.steps_before
            loop.fit(data.train(first, last, skip), epoch_validation, initial_epoch=first, epochs=last,
                     steps_per_epoch=steps, callbacks=callbacks)
            if clock.last_step is not None:
                idle_after_last_step = max(idle_after_last_step, time.perf_counter() - clock.last_step)
    except BaseException:
        if created and not checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: no circle of advice
        raise
    finally:
        reporter.close()
    session_seconds = time.perf_counter() - started

    # 4. finalize
    if state.best_checkpoint and (run_dir / runs.CHECKPOINTS_DIR / state.best_checkpoint).is_dir():
        load_checkpoint_weights(run_dir / runs.CHECKPOINTS_DIR / state.best_checkpoint, model)
    after = task.report(loop.evaluate(validation), data.record)
    steps_this_session = state.global_step - first_step
    summary.update(
        after_training=after,
        epochs_completed=state.epoch,
        stopped_early=state.stopped_early,
        stopped_by_time_budget=bool(budget and budget.expired),
        best_checkpoint=state.best_checkpoint,
        train_seconds=state.train_seconds,
        steps=state.global_step,
        schedule_steps=state.schedule_steps,
        seconds_after_last_step=idle_after_last_step,
        median_step_seconds=clock.median_step_seconds(),
        **{f"{data.unit}_per_second": data.items_per_step * steps_this_session / max(session_seconds, 1e-9)
           if steps_this_session else summary.get(f"{data.unit}_per_second", 0.0)},
        backend=keras.backend.backend(),
        strategy=distribute.describe(strategy),
        replicas=replicas,
        global_batch=global_batch,
        precision=config.runtime.precision,
        jit_compile=bool(getattr(model, "jit_compile", False)) if loop.name == "fit" else config.runtime.jit_compile,
        loop=loop.name,
        overfitting=diagnostics.overfitting(state.history, spec.overfitting_fixes),
        command=command or " ".join(sys.argv),
    )
    if chief:
        save_model(model, run_dir / runs.MODEL_FILE)  # LoRA adapters are merged into the kernels as Keras saves
        if finetuning.uses_lora(model):
            finetuning.save_adapter(model, run_dir / finetuning.ADAPTER_FILE,
                                    {"base": config.finetune.base, "base_sha256": config.finetune.base_sha256,
                                     "rank": config.finetune.lora_rank, "model": spec.name})
        runs.write_json(run_dir / runs.METRICS_FILE, summary)
        runs.write_json(run_dir / runs.HISTORY_FILE, state.history)
        reports.plot_curves(state.history, run_dir / runs.CURVES_FILE, title=f"{spec.name} on {data.record.get('source')}")
        runs.write_text_atomic(run_dir / runs.CARD_FILE, reports.model_card(spec, task, config, data.record, summary, run_dir))
    return summary
