"""TensorFlow Datasets sources (`tfds:NAME`). Needs the network the first time a set is fetched.

Splits come from the builder's info (`info.splits`); a failure to load a split
that exists (no network, a broken download) is an error, never taken for
"this dataset has no validation split".
"""

from __future__ import annotations

from kerasllm.core import network
from kerasllm.core.errors import UserError
from kerasllm.data.splits import text_split

# Lazy imports: TensorFlow and tensorflow-datasets are imported inside functions: `kerasllm --help` and `kerasllm
# list` load this module and must not load them.

HELD_OUT_SPLITS = ("validation", "test")


def builder(name: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name)
    except Exception as error:  # DatasetNotFoundError and friends
        raise UserError(f"unknown TFDS dataset {name!r} ({str(error).splitlines()[0]}); see `tfds.list_builders()`") from error


def prepared_info(name: str):
    """The builder's info with its splits; a dataset not yet downloaded is downloaded and prepared first
    (its split names are known only then). Errors are one-line `UserError`s naming the cause."""
    dataset = builder(name)
    if not dataset.info.splits:
        network.require(network.TFDS_HOST, f"download tfds:{name}",
                        "download it once on a machine with a network (tfds.load) and copy ~/tensorflow_datasets here, "
                        "or pass --data with a local copy")
        try:
            dataset.download_and_prepare()
        except Exception as error:
            raise UserError(f"could not download tfds:{name}: {str(error).splitlines()[0][:200]}; "
                            "check the network, or download it once and pass --data with a local copy") from error
    if not dataset.info.splits:
        raise UserError(f"tfds:{name} lists no splits even after preparing it; pick another dataset")
    return dataset.info


def split_names(info) -> list[str]:
    return list(info.splits.keys())


def held_out_split(info) -> str | None:
    """The dataset's validation split, else its test split, else None."""
    names = split_names(info)
    return next((name for name in HELD_OUT_SPLITS if name in names), None)


def load_split(name: str, split: str):
    """One split as a tf.data.Dataset of feature dicts, downloading it if needed."""
    import tensorflow_datasets as tfds

    try:
        return tfds.load(name, split=split, shuffle_files=False)
    except Exception as error:
        raise UserError(
            f"could not load tfds:{name} split {split!r}: {str(error).splitlines()[0][:200]}; "
            "check the network, or download it once and pass --data with a local copy"
        ) from error


def feature_of(info, name: str, kind: str) -> str:
    """The key of the first feature of `kind` (`text`, `image` or `label`)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tests = {
        "text": lambda f: getattr(f, "dtype", None) == tf.string or getattr(f, "tf_dtype", None) == tf.string,
        "image": lambda f: isinstance(f, tfds.features.Image),
        "label": lambda f: isinstance(f, tfds.features.ClassLabel),
    }
    for key, feature in info.features.items():
        if tests[kind](feature):
            return key
    raise UserError(f"tfds:{name} has no {kind} feature (it has {', '.join(info.features.keys())}); pick another dataset")


def load_text_splits(name: str, validation_fraction: float):
    """Text of the `train` split and of `validation` (or `test`), else the end of `train`."""
    info = prepared_info(name)
    key = feature_of(info, name, "text")
    if "train" not in split_names(info):
        raise UserError(f"tfds:{name} has no train split (it has {', '.join(split_names(info))}); pick another dataset")

    def read(split: str) -> str:
        return "\n".join(example[key].decode("utf-8") for example in load_split(name, split).as_numpy_iterator())

    held_out = held_out_split(info)
    split = text_split(f"tfds:{name}", read("train"), read(held_out) if held_out else None, validation_fraction,
                       held_out_name=held_out or "")
    if not split.train.strip() or not split.validation.strip():
        raise UserError(f"tfds:{name} gave empty text; pick a text dataset such as tfds:tiny_shakespeare")
    return split
