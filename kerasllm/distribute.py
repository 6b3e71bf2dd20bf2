"""Pick a tf.distribute strategy by name, and decide which process writes files.

Build and compile models inside `strategy.scope()`. On a single device the default
strategy is used: `OneDeviceStrategy` gives every dataset a per-device iterator
whose tf.data autotune thread made `fit` sit idle for 8-60 s after its last step
(its destructor waits for the thread's timed sleep); the default strategy has none.
"""

from __future__ import annotations

from kerasllm.errors import UserError

STRATEGIES = ("auto", "cpu", "gpu", "mirrored")


def get_strategy(name: str = "auto"):
    """`auto`: all local GPUs mirrored when there are several, else the default strategy on the
    one device TensorFlow picks (the GPU if there is one); `cpu`; `gpu`; `mirrored` (all local devices)."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "gpu" and not gpus:
        raise UserError("--strategy gpu but TensorFlow sees no GPU; use --strategy cpu or auto")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "cpu" and gpus:
        return tf.distribute.OneDeviceStrategy("/cpu:0")  # keep work off the GPU that TF would pick
    return tf.distribute.get_strategy()  # one device: the default strategy (no per-device iterator)


def is_chief(strategy=None) -> bool:
    """True for the one process that writes checkpoints, metrics and the model.

    A single process is always the chief. Under multi-worker strategies it is the
    `chief` task, or worker 0 when the cluster has no chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    task_type, task_id = getattr(resolver, "task_type", None), getattr(resolver, "task_id", 0)
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() if hasattr(resolver, "cluster_spec") else {})
    return task_type == "worker" and task_id == 0 and not has_chief
