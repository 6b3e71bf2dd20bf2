"""tf.data pipelines with static shapes, seeded per-epoch shuffling and resumable order.

Each epoch's order is a stateless shuffle keyed by (seed, epoch), so epoch 3 is
the same whether training ran straight through or was resumed at epoch 2.
Autotuning is off and prefetch is fixed: with autotune on, `fit` was seen idling
for seconds after its last step while the iterator's destructor waited.
"""

from __future__ import annotations

import numpy as np

from kerasllm.core.errors import UserError
from kerasllm.core.words import count
from kerasllm.distribute import shard_policy

# Lazy imports: TensorFlow is imported inside functions: `kerasllm --help` and `kerasllm list` load this module and
# must not load them.


def language_model_windows(ids: np.ndarray, sequence_length: int) -> np.ndarray:
    """Non-overlapping windows of `sequence_length + 1` ids: (windows, sequence_length + 1)."""
    count = (len(ids) - 1) // sequence_length
    starts = np.arange(count)[:, None] * sequence_length
    return ids[starts + np.arange(sequence_length + 1)[None, :]]


def _options():
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    # every pipeline here indexes in-memory arrays: across workers each reads all of it and keeps its share of each
    # global batch (FILE would look for files to split and fall back with a warning)
    options.experimental_distribute.auto_shard_policy = shard_policy(file_backed=False)
    return options


def shuffled_batches(num_examples: int, batch_size: int, steps_per_epoch: int, seed: int,
                     first_epoch: int, epochs: int, skip_steps: int = 0):
    """Batches of example indices for epochs [first_epoch, epochs), `steps_per_epoch` each."""
    import tensorflow as tf

    def one_epoch(epoch):
        seed_pair = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64), seed=seed_pair)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True).take(steps_per_epoch)

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch).skip(skip_steps)


def index_batches(num_examples: int, batch_size: int, *, shuffle_seed: int | None = None, steps_per_epoch: int = 0,
                  first_epoch: int = 0, epochs: int = 1, skip_steps: int = 0):
    """Batches of example indices.

    With `shuffle_seed`, `steps_per_epoch` shuffled batches per epoch for epochs
    [first_epoch, epochs) (minus `skip_steps` at the start); without it, one pass in
    order over every example (for validation: the last batch may be smaller, so the
    metrics do not depend on the batch size).
    """
    import tensorflow as tf

    if shuffle_seed is None:
        return tf.data.Dataset.range(num_examples).batch(batch_size)
    return shuffled_batches(num_examples, batch_size, steps_per_epoch, shuffle_seed, first_epoch, epochs, skip_steps)


def language_model_dataset(windows: np.ndarray, batch_size: int, **batching):
    """(inputs, next-token targets) batches of shape (batch, sequence_length); `batching` as in `index_batches`."""
    import tensorflow as tf

    table = tf.constant(windows, dtype=tf.int32)

    def gather(index):
        batch = tf.gather(table, index)  # (batch, sequence_length + 1)
        return batch[:, :-1], batch[:, 1:]

    return index_batches(len(windows), batch_size, **batching).map(gather).prefetch(2).with_options(_options())


def random_window_dataset(ids: np.ndarray, sequence_length: int, batch_size: int, *, shuffle_seed: int, steps_per_epoch: int,
                          first_epoch: int = 0, epochs: int = 1, skip_steps: int = 0):
    """(inputs, targets) batches of windows that start at random offsets, as nanoGPT samples them.

    Batch `step`'s offsets come from a stateless RNG keyed by (seed, step), so a resumed run
    sees the same batches as a straight one.
    """
    import tensorflow as tf

    table = tf.constant(ids, dtype=tf.int32)
    last_start = len(ids) - sequence_length - 1
    span = tf.range(sequence_length + 1, dtype=tf.int64)[None, :]

    def batch(step):
        starts = tf.random.stateless_uniform([batch_size], seed=tf.stack([tf.constant(shuffle_seed, tf.int64), step]),
                                             minval=0, maxval=last_start + 1, dtype=tf.int64)
        windows = tf.gather(table, starts[:, None] + span)  # (batch, sequence_length + 1)
        return windows[:, :-1], windows[:, 1:]

    first = first_epoch * steps_per_epoch + skip_steps
    return tf.data.Dataset.range(first, epochs * steps_per_epoch).map(batch).prefetch(2).with_options(_options())


def image_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, augment=None, **batching):
    """(float32 raw images (batch, H, W, C), int32 labels) batches; `augment(images, training=True)`
    transforms each batch if given; `batching` as in `index_batches`."""
    import tensorflow as tf

    image_table, label_table = tf.constant(images), tf.constant(labels, dtype=tf.int32)

    def gather(step, index):
        batch = tf.cast(tf.gather(image_table, index), tf.float32)  # (batch, H, W, C)
        if augment:  # the draws of batch `step` come from (seed, step): a resumed run augments as a straight one
            batch = augment(batch, training=True, seed=(batching.get("shuffle_seed") or 0, step))
        return batch, tf.gather(label_table, index)

    first = batching.get("first_epoch", 0) * batching.get("steps_per_epoch", 0) + batching.get("skip_steps", 0)
    batches = index_batches(len(images), batch_size, **batching).enumerate(start=first)  # (global step, indices)
    return batches.map(gather).prefetch(2).with_options(_options())


def array_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, weights: np.ndarray | None = None, **batching):
    """(x, y) or (x, y, sample weight) batches gathered from in-memory arrays; `batching` as in `index_batches`."""
    import tensorflow as tf

    tables = [tf.constant(x), tf.constant(y)] + ([tf.constant(weights, tf.float32)] if weights is not None else [])

    def gather(index):
        return tuple(tf.gather(table, index) for table in tables)

    return index_batches(len(x), batch_size, **batching).map(gather).prefetch(2).with_options(_options())


def steps_in(num_examples: int, batch_size: int, requested: int, what: str, multiple: int = 1) -> int:
    """Training steps per epoch: `requested`, or a full pass (0). With `multiple` steps per call into the graph
    (`runtime.steps_per_execution`) a full pass is rounded down to a multiple of it, so that every epoch is whole calls
    (Keras would otherwise run past the epoch and out of data); a `requested` count that is no multiple was refused
    by the config already."""
    available = num_examples // batch_size
    if available == 0:
        raise UserError(
            f"the {what} data has {num_examples} examples, fewer than one batch of {batch_size}; "
            "use more data or lower --batch-size (or data.sequence_length)"
        )
    if requested > available:
        raise UserError(f"train.steps_per_epoch={requested} exceeds the {count(available, 'batch', 'batches')} in the {what} data; lower it")
    if requested:
        return requested
    if available < multiple:
        raise UserError(f"the {what} data has {count(available, 'batch', 'batches')}, fewer than runtime.steps_per_execution={multiple}; "
                        "lower runtime.steps_per_execution or --batch-size")
    return available - available % multiple
