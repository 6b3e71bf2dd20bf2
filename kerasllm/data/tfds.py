"""TensorFlow Datasets sources (`tfds:NAME`). Needs the network the first time a set is fetched."""

from __future__ import annotations

from kerasllm.errors import UserError


def builder(name: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name)
    except Exception as error:  # DatasetNotFoundError and friends
        raise UserError(f"unknown TFDS dataset {name!r} ({str(error).splitlines()[0]}); see `tfds.list_builders()`") from error


def load_split(name: str, split: str):
    """One split as a tf.data.Dataset of feature dicts, downloading it if needed."""
    import tensorflow_datasets as tfds

    try:
        return tfds.load(name, split=split, shuffle_files=False)
    except UserError:
        raise
    except Exception as error:
        raise UserError(
            f"could not load tfds:{name} split {split!r}: {str(error).splitlines()[0][:200]}; "
            "check the network, or download it once and pass --data with a local copy"
        ) from error


def text_feature(info, name: str) -> str:
    import tensorflow as tf

    for key, feature in info.features.items():
        if getattr(feature, "tf_dtype", None) == tf.string:
            return key
    raise UserError(f"tfds:{name} has no text feature; pick a text dataset such as tfds:tiny_shakespeare")


def load_text_splits(name: str, validation_fraction: float):
    """Text of the `train` split and of `validation` (or `test`), else the end of `train`."""
    from kerasllm.data.text import TextSplit, sha256, split_by_fraction

    info = builder(name).info
    key = text_feature(info, name)

    def read(split: str) -> str:
        return "\n".join(example[key].decode("utf-8") for example in load_split(name, split).as_numpy_iterator())

    train = read("train")
    validation = held_out = None
    for held_out in ("validation", "test"):
        try:
            validation = read(held_out)
            break
        except UserError:  # the dataset has no such split
            continue
    if validation is not None:
        how = f"tfds split {held_out!r}"
    else:
        train, validation = split_by_fraction(train, validation_fraction)
        how = f"last {validation_fraction:.0%} of the train split"
    if not train.strip() or not validation.strip():
        raise UserError(f"tfds:{name} gave empty text; pick a text dataset such as tfds:tiny_shakespeare")
    record = {
        "source": f"tfds:{name}",
        "sha256": sha256(train + validation),
        "characters": len(train) + len(validation),
        "split": how,
        "validation_fraction": validation_fraction,
        "train_characters": len(train),
        "validation_characters": len(validation),
    }
    return TextSplit(train, validation, record)
