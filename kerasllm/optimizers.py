"""Optimizers and learning-rate schedules, built from `TrainConfig`."""

from __future__ import annotations

import keras

from kerasllm import compat
from kerasllm.config import TrainConfig


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
    elif train.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=train.momentum, **clip)
    else:  # config.OPTIMIZERS names the choices; validate() refuses others
        raise ValueError(f"no optimizer {train.optimizer!r}")
    compat.clip_across_replicas(optimizer)
    return optimizer


def current_learning_rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def optimizer_step(optimizer) -> int:
    return int(keras.ops.convert_to_numpy(optimizer.iterations))
