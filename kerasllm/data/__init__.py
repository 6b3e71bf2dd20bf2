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
        pad_id: the padding token's id (text tasks whose inputs are padded).
        sep_id: the [SEP] token's id: tokens after the first one are segment 1 (sentence pairs).
        objective: what the model is trained for (`train.objective`; "" is the model's default).
    """

    vocab_size: int = 0
    sequence_length: int = 0
    num_classes: int = 0
    image_size: int = 0
    channels: int = 0
    pad_id: int = 0
    sep_id: int = -1
    objective: str = ""
