"""Pick a tf.distribute strategy by name. Build and compile models inside `strategy.scope()`."""

from __future__ import annotations

from kerasllm.errors import UserError

STRATEGIES = ("auto", "cpu", "gpu", "mirrored")


def get_strategy(name: str = "auto"):
    """`auto`: all local GPUs mirrored (one GPU: that GPU), else the CPU; `cpu`; `gpu`; `mirrored`."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "gpu" and not gpus:
        raise UserError("--strategy gpu but TensorFlow sees no GPU; use --strategy cpu or auto")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "gpu" or (name == "auto" and gpus):
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.OneDeviceStrategy("/cpu:0")
