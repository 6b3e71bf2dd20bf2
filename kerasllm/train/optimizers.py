"""Optimizers and learning-rate schedules, built from `TrainConfig`."""

from __future__ import annotations

import keras

from kerasllm.core import compat
from kerasllm.core.config import TrainConfig


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
