"""The model a run trains: built inside the strategy's scope with the run's precision, compiled with the task's loss
and metrics and the run's optimizer (named in `TrainConfig`: AdamW, Adam or SGD, with warmup + cosine decay and
gradient clipping); the seeds set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from kerasllm.core import compat
from kerasllm.core.config import RunConfig, TrainConfig

# Keras is imported at the top: only the trainer imports this module, once Keras has loaded.


def seed_everything(config: RunConfig) -> None:
    keras.utils.set_random_seed(config.train.seed)
    if config.runtime.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def compile_model(model, spec, task, config: RunConfig, schedule_steps: int, train: TrainConfig | None = None) -> int:
    """Compile with the task's loss and metrics and the run's optimizer; returns the warmup steps its schedule takes."""
    metrics = {"weighted_metrics" if task.weighted_metrics else "metrics": task.metrics(spec)}
    model.compile(
        optimizer=make_optimizer(train or config.train, schedule_steps),
        loss=task.loss(spec, config),
        **metrics,
        jit_compile=config.runtime.jit_compile,
        steps_per_execution=config.runtime.steps_per_execution,
    )
    return warmup_steps((train or config.train).warmup_steps, schedule_steps)


@dataclass
class Recompile:
    """`recompile(schedule_steps, train)`: the trained model (`model`, set once a hook has chosen it) compiled again
    with a fresh optimizer: a hook's new phase (`kerasllm.train.hooks.BuildContext.recompile`)."""

    spec: Any
    task: Any
    config: RunConfig
    model: Any = None

    def __call__(self, schedule_steps: int, train: TrainConfig) -> int:
        return compile_model(self.model, self.spec, self.task, self.config, schedule_steps, train)


def build_optimizer(model, strategy) -> None:
    """A new run's optimizer variables, built now, as a resumed run's restore builds them: the same objects before
    the loop."""
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)


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


# --- the optimizer -------------------------------------------------------------------------------

def warmup_steps(asked: int, total_steps: int) -> int:
    """The warmup a run of `total_steps` gets: as asked, unless that is more than a quarter of the run (a short run, or
    many replicas sharing the data: an 8-core TPU ran 76 steps against 100 of warmup), then a tenth of it."""
    if total_steps > 0 and asked > total_steps // 4:
        return min(asked, max(total_steps // 10, 1))
    return asked


def make_optimizer(train: TrainConfig, total_steps: int):
    """The optimizer named in the config, with warmup (`warmup_steps`) + cosine decay and gradient clipping."""
    learning_rate = train.learning_rate
    if train.schedule == "cosine":
        warmup = min(warmup_steps(train.warmup_steps, total_steps), max(total_steps - 1, 0))
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
    elif train.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=train.momentum, **clip)
    else:  # validation.OPTIMIZERS names the choices; validate() refuses others
        raise ValueError(f"no optimizer {train.optimizer!r}")
    compat.clip_across_replicas(optimizer)
    return optimizer


def current_learning_rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def optimizer_step(optimizer) -> int:
    return int(keras.ops.convert_to_numpy(optimizer.iterations))
