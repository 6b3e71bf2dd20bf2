"""Training loops: Keras `fit`, or a `strategy.run` step where `fit` cannot run; and the callbacks they share.

Both loops take the same arguments and drive the same Keras callbacks (checkpointing,
progress, TensorBoard), so the trainer does not care which one runs.
"""

from __future__ import annotations

import statistics
import time

import keras

# Lazy imports: TensorFlow is imported inside the custom loop, which only runs on the TensorFlow backend (JAX runs
# `fit`).


class TimeBudget(keras.callbacks.Callback):
    """Stops training before `max_seconds` of training time (all sessions) have passed: after a call into the graph,
    training stops when the deadline has passed or when one more call, as long as the last steady one, would pass it.
    A call can hold many steps (`steps_per_execution`, or a whole epoch): the budget binds within one call's time
    either way. The first call of a session holds the step's compilation, so it predicts nothing.

    Args:
        max_seconds: the budget (`train.max_seconds`).
        seconds_before: training seconds earlier sessions of the run used.
        clock: a function that returns seconds (default `time.perf_counter`; tests pass a fake one).
    """

    def __init__(self, max_seconds: float, seconds_before: float, clock=time.perf_counter):
        super().__init__()
        self.clock = clock
        self.deadline = clock() + max_seconds - seconds_before
        self.expired = False
        self.call_started, self.calls = None, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.call_started = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        self.calls += 1
        steady = now - self.call_started if self.call_started is not None and self.calls > 1 else 0.0
        if now >= self.deadline or now + steady > self.deadline:
            self.expired = self.model.stop_training = True


class StepClock(keras.callbacks.Callback):
    """Step timing: the median seconds per step between batch callbacks (with `steps_per_execution`
    a callback covers several steps), the time of the last step (the gap from there to the loop
    returning showed tf.data's idle wait), the first call's seconds (which hold the train step's
    compilation) and each validation's seconds, added to `timings` (`kerasllm.train.timings.Timings`) as
    `validation`."""

    def __init__(self, timings=None):
        super().__init__()
        self.last_step, self.previous, self.per_step = None, None, []
        self.timings = timings
        self.first_call = None  # (seconds, steps) of this session's first call into the train step
        self.validations: list[float] = []
        self.epoch_started = self.validation_started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.previous = None  # the first interval of an epoch holds its start-up
        self.epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.first_call is None and self.epoch_started is not None:
            self.first_call = (now - self.epoch_started, batch + 1)
        elif self.previous is None and self.epoch_started is not None:  # a later epoch's first call: a steady one too
            self.per_step.append((now - self.epoch_started) / (batch + 1))  # (one call per epoch has no other interval)
        if self.previous is not None and batch > self.previous[1]:
            self.per_step.append((now - self.previous[0]) / (batch - self.previous[1]))
        self.previous, self.last_step = (now, batch), now

    def on_test_begin(self, logs=None):
        self.validation_started = time.perf_counter()

    def on_test_end(self, logs=None):
        seconds = time.perf_counter() - self.validation_started
        self.validations.append(seconds)
        if self.timings is not None:
            self.timings.add("validation", seconds)

    def median_step_seconds(self) -> float | None:
        """The median step's seconds; with a single call in the session, its seconds per step (compilation included)."""
        if self.per_step:
            return statistics.median(self.per_step)
        return self.first_call[0] / self.first_call[1] if self.first_call else None

    def compilation_estimates(self) -> dict[str, float]:
        """Seconds the first call into the train step, and the first validation, took beyond a steady one: their
        compilation (tracing, XLA), estimated from this session's median step and later validations."""
        found = {}
        median = self.median_step_seconds()
        if self.first_call and median:
            found["train step compilation"] = self.first_call[0] - self.first_call[1] * median
        if len(self.validations) > 1:
            found["validation compilation"] = self.validations[0] - statistics.median(self.validations[1:])
        return found


class TimedTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, its epoch-end writing counted in `timings` as `tensorboard`."""

    def __init__(self, *args, timings=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.timings = timings

    def _timed(self, method, *args):
        started = time.perf_counter()
        try:
            return method(*args)
        finally:
            if self.timings is not None:
                self.timings.add("tensorboard", time.perf_counter() - started)

    def on_train_begin(self, logs=None):
        self._timed(super().on_train_begin, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._timed(super().on_epoch_end, epoch, logs)

    def on_train_end(self, logs=None):
        self._timed(super().on_train_end, logs)


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
            callback_list.on_test_begin()
            logs.update({f"val_{key}": value for key, value in self.evaluate(validation).items()})
            callback_list.on_test_end()
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
