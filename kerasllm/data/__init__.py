"""Data sources and tf.data pipelines, one module per source kind."""

from dataclasses import dataclass


@dataclass(frozen=True)
class DataInfo:
    """What the data decides about a model's shape; passed to every builder.

    Args:
        vocab_size: token vocabulary size, [UNK] included (text tasks).
        sequence_length: tokens per training window (text tasks).
        num_classes: number of labels (classification tasks).
        image_size: height and width the model resizes images to (image tasks).
        channels: 1 (grayscale) or 3 (RGB) (image tasks).
    """

    vocab_size: int = 0
    sequence_length: int = 0
    num_classes: int = 0
    image_size: int = 0
    channels: int = 0
