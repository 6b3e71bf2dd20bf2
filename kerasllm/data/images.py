"""Image sources for classification: TFDS, class folders, MNIST IDX files, .npz, a built-in set.

Every loader returns raw pixels as uint8 arrays (N, H, W, C) in 0..255 plus integer
labels; normalisation and resizing happen inside the model, so predict and export
take raw images too.

Policies (documented in the README):
* **Sizes**: images are resized (bilinear, aspect ratio not kept) to one size: the
  model's `image_size`, or else the most common size in the data.
* **Channels**: grayscale images are repeated to RGB for a 3-channel model, RGB is
  converted to luminance for a 1-channel model; palette/alpha images become RGB(A→dropped).
* **Class folders**: each sub-folder is a class (sorted by name); files that are not
  PNG/JPEG/BMP/GIF by extension are skipped and counted; an image that fails to decode,
  an empty class folder or a single class is an error.
* **Labels** in .npz must be integers in 0..K-1 (K = len(class_names) if given).

Sources:
* `builtin:digits` — scikit-learn's bundled 8×8 handwritten digits (1,797 images of
  10 classes, UCI optical recognition data), values 0..16 rescaled to 0..255.
* `tfds:mnist`, `tfds:fashion_mnist`, `tfds:cifar10`, … — train and test splits.
* a folder with `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
  `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]` (the test set is validation).
* a `.npz` with `x`, `y` (or `x_train`, `y_train`, `x_test`, `y_test`), optional `class_names`.
"""

from __future__ import annotations

import collections
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm.core.errors import UserError
from kerasllm.core.files import absent
from kerasllm.data import tfds as tfds_source
from kerasllm.data.text import GZIP_MAGIC, gunzip

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class ImageSplit:
    """Raw uint8 images (N, H, W, C), int32 labels, class names and a record of the loading."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    class_names: list[str]
    record: dict


# --- single images -----------------------------------------------------------------------

def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W, c) uint8 → (N, H, W, channels): gray→RGB repeats, RGB→gray is luminance."""
    have = images.shape[-1]
    if have == channels:
        return images
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 1 and have in (3, 4):
        gray = images[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]
    if channels == 3 and have == 4:
        return images[..., :3]
    raise UserError(f"cannot convert {have}-channel images to {channels} channels; use 1 (grayscale) or 3 (RGB)")


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) uint8 → (N, size, size, C) uint8, bilinear."""
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image

    mode = "L" if images.shape[-1] == 1 else "RGB"
    out = [np.asarray(Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode).resize((size, size), Image.BILINEAR))
           for image in images]
    out = np.stack(out)
    return out[..., None] if mode == "L" else out


def read_image(path: Path) -> np.ndarray:
    """One image file → (H, W, 1 or 3) uint8; a bad file is a `UserError` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                array = _to_uint8(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(f"image {path} is too large to decode safely ({str(error).splitlines()[0][:120]}); "
                        "resize it or remove it") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"cannot decode image {path} ({str(error).splitlines()[0][:120]}); remove or replace the file") from error
    return array[..., None] if array.ndim == 2 else array


def _to_uint8(image) -> np.ndarray:
    """A PIL image → uint8 gray or RGB; 16-bit and 32-bit integer images are scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "LA") else "RGB")
    return np.asarray(image, dtype=np.uint8)


def stack_images(arrays: list[np.ndarray], size: int, channels: int) -> np.ndarray:
    """Images of any size/channels → one (N, size, size, channels) uint8 array."""
    return np.concatenate([resize(to_channels(a[None], channels), size) for a in arrays])


# --- sources -----------------------------------------------------------------------------

def _seeded_split(x, y, fraction: float, seed: int = 0):
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(round(len(x) * (1 - fraction)))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def builtin_images(name: str):
    if name != "digits":
        raise UserError(f"unknown built-in image set {name!r}; built-in image sets: builtin:digits")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    return x, digits.target.astype(np.int32), [str(i) for i in range(10)], None


def _open_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    return gunzip(path, data) if data[:2] == GZIP_MAGIC else data


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, gzipped or not) as a uint8 array."""
    data = _open_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes (bad magic number); pass the MNIST IDX files")
    dims = data[3]
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if len(data) - header != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: the header promises {shape} but the file has {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_folder(folder: Path):
    found = {key: _find_idx(folder, stem) for key, stem in IDX_NAMES.items()}
    missing = [IDX_NAMES[key] for key, path in found.items() if path is None]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)} (optionally .gz); pass a folder with the four MNIST IDX files")
    x_train, y_train = read_idx(found["train_images"]), read_idx(found["train_labels"])
    x_test, y_test = read_idx(found["test_images"]), read_idx(found["test_labels"])
    for images, labels, which in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if len(images) != len(labels):
            raise UserError(f"{folder}: {which} has {len(images)} images but {len(labels)} labels; the files do not belong together")
    classes = int(max(y_train.max(), y_test.max())) + 1
    return x_train[..., None], y_train.astype(np.int32), [str(i) for i in range(classes)], (x_test[..., None], y_test.astype(np.int32))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def class_folders(folder: Path, size: int, channels: int):
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p, folder))
    if len(classes) < 2:
        raise UserError(f"{folder} has {len(classes)} class folder(s); put each class's images in its own sub-folder (at least 2)")
    arrays, labels, skipped = [], [], []
    for label, class_dir in enumerate(classes):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not _hidden(p, folder))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += [str(p) for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise UserError(f"class folder {class_dir} has no images (PNG/JPEG/BMP/GIF); add some or remove the folder")
        for path in images:
            arrays.append(read_image(path))
            labels.append(label)
    size = size or most_common_size(arrays)
    channels = channels or max(a.shape[-1] for a in arrays)
    x = stack_images(arrays, size, channels)
    return x, np.asarray(labels, np.int32), [p.name for p in classes], None, skipped


def most_common_size(arrays: list[np.ndarray]) -> int:
    (height, width), _ = collections.Counter(a.shape[:2] for a in arrays).most_common(1)[0]
    return max(height, width)


def npz_file(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = dict(data)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path} as .npz ({str(error).splitlines()[0][:120]}); save it with numpy.savez") from error
    if not arrays:
        raise UserError(f"{path} is an empty .npz; save arrays x and y (or x_train, y_train) with numpy.savez")
    if {"x", "y"} <= arrays.keys():
        x, y, held_out = arrays["x"], arrays["y"], None
    elif {"x_train", "y_train"} <= arrays.keys():
        x, y = arrays["x_train"], arrays["y_train"]
        held_out = (arrays["x_test"], arrays["y_test"]) if {"x_test", "y_test"} <= arrays.keys() else None
    else:
        raise UserError(f"{path} needs arrays x and y (or x_train, y_train[, x_test, y_test]); it has {', '.join(sorted(arrays))}")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    pairs = [(x, y)] + ([held_out] if held_out else [])
    labels = np.concatenate([np.asarray(p[1]).reshape(-1) for p in pairs])
    if labels.size == 0:
        raise UserError(f"{path} holds no labels; save some images and labels with numpy.savez")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise UserError(f"{path}: labels must be integers 0..K-1; got {labels.dtype} from {labels.min()} to {labels.max()}")
    classes = len(names) if names else int(labels.max()) + 1
    if labels.max() >= classes:
        raise UserError(f"{path}: label {int(labels.max())} is out of range for {classes} class_names; fix the labels or the names")
    prepared = [(_as_images(np.asarray(px), path), np.asarray(py).reshape(-1).astype(np.int32)) for px, py in pairs]
    for px, py in prepared:
        if len(px) != len(py):
            raise UserError(f"{path}: {len(px)} images but {len(py)} labels; they must match")
    (x, y), held = prepared[0], (prepared[1] if len(prepared) > 1 else None)
    return x, y, names or [str(i) for i in range(classes)], held


def _as_images(x: np.ndarray, path: Path) -> np.ndarray:
    """(N, H, W) or (N, H, W, C); floats in 0..1 are scaled to 0..255."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise UserError(f"{path}: x must have shape (N, H, W) or (N, H, W, 1|3|4), got {x.shape}")
    if x.shape[0] == 0:
        raise UserError(f"{path} holds no images; save some with numpy.savez")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
            raise UserError(f"{path}: {bad} image(s) contain NaN or infinite values; fix or drop them")
        if x.max() <= 1.0:
            x = x * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8) if x.dtype != np.uint8 else x


def tfds_images(name: str):
    """The train split, and the validation (else test) split as held-out data; feature keys from the builder's info."""
    info = tfds_source.prepared_info(name)
    image_key, label_key = tfds_source.feature_of(info, name, "image"), tfds_source.feature_of(info, name, "label")
    if "train" not in tfds_source.split_names(info):
        raise UserError(f"tfds:{name} has no train split (it has {', '.join(tfds_source.split_names(info))}); pick another dataset")

    def read(split: str):
        pairs = [(ex[image_key], ex[label_key]) for ex in tfds_source.load_split(name, split).as_numpy_iterator()]
        if not pairs:
            raise UserError(f"tfds:{name} split {split!r} is empty; pick another dataset")
        return np.stack([p[0] for p in pairs]), np.asarray([p[1] for p in pairs], np.int32)

    x, y = read("train")
    held_out = tfds_source.held_out_split(info)
    held = read(held_out) if held_out else None
    names = list(info.features[label_key].names)
    return x, y, names, held


# --- entry point -------------------------------------------------------------------------

def load_images(source: str, validation_fraction: float = 0.1, image_size: int = 0, channels: int = 0) -> ImageSplit:
    """Load `source`, convert to `channels` and `image_size` (0: keep the data's), and split."""
    skipped: list[str] = []
    if source.startswith("builtin:"):
        x, y, names, held = builtin_images(source.removeprefix("builtin:"))
    elif source.startswith("tfds:"):
        x, y, names, held = tfds_images(source.removeprefix("tfds:"))
    else:
        path = Path(source).expanduser()
        if not path.is_file() and not path.is_dir():
            raise UserError(f"data path {path} {absent(path)}; pass a class folder, MNIST IDX folder, .npz, tfds:NAME or builtin:digits")
        if path.is_file():
            if path.suffix != ".npz":
                raise UserError(f"{path} is not an image data set; pass a class folder, an MNIST IDX folder or a .npz file")
            x, y, names, held = npz_file(path)
        elif any(_find_idx(path, stem) for stem in IDX_NAMES.values()):
            x, y, names, held = idx_folder(path)
        else:
            x, y, names, held, skipped = class_folders(path, image_size, channels)
    if len(x) == 0:
        raise UserError(f"{source} holds no images")
    channels = channels or x.shape[-1]
    image_size = image_size or max(x.shape[1:3])
    if held is None:
        x_train, y_train, x_val, y_val = _seeded_split(x, y, validation_fraction)
        how = f"seeded random {validation_fraction:.0%} of the examples is validation"
    else:
        (x_train, y_train), (x_val, y_val) = (x, y), held
        how = "the source's test split is validation"
    x_train, x_val = (resize(to_channels(a, channels), image_size) for a in (x_train, x_val))
    digest = hashlib.sha256()
    for array in (x_train, y_train, x_val, y_val):
        digest.update(np.ascontiguousarray(array).tobytes())
    record = {
        "source": source, "sha256": digest.hexdigest(), "split": how, "validation_is_test_split": held is not None,
        "validation_fraction": validation_fraction,
        "train_examples": int(len(x_train)), "validation_examples": int(len(x_val)), "classes": len(names),
        "image_size": int(image_size), "channels": int(channels), "skipped_files": skipped,
    }
    return ImageSplit(x_train, y_train, x_val, y_val, names, record)
