"""`cnn-classifier`: a small modern CNN for image classification.

Raw pixels (0..255, any height and width) → ResizeImages → Rescaling → `depth` blocks of [Conv 3×3 → BatchNorm → ReLU] × convs_per_block
→ MaxPool, the filters doubling each block → global average pooling → Dropout →
Dense softmax. Preprocessing is part of the model, so predict and export take raw
images; augmentation (`augmentation()`) runs in the training input pipeline. Uses `keras.layers` only, so it runs on any Keras backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kerasllm.core import compat
from kerasllm.core.config import doc
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo

# Lazy imports: Keras (and zoo.layers, which imports it) is imported inside functions: `kerasllm --help` and `kerasllm
# list` load this module and must not load them.


@dataclass
class CNNClassifierConfig:
    """Hyperparameters of `cnn-classifier`."""

    image_size: int = field(default=0, metadata=doc("Height and width the model resizes images to; 0 means the data's size."))
    channels: int = field(default=0, metadata=doc("1 (grayscale) or 3 (RGB); 0 means the data's channels. Data is converted to it."))
    width: int = field(default=16, metadata=doc("Filters of the first block; each later block doubles them."))
    depth: int = field(default=3, metadata=doc("Convolution blocks, each ending in 2×2 max pooling."))
    convs_per_block: int = field(default=2, metadata=doc("Conv → BatchNorm → ReLU layers per block."))
    dropout: float = field(default=0.3, metadata=doc("Dropout before the classifier."))
    flip: bool = field(default=False, metadata=doc("Random horizontal flips (wrong for digits and text)."))
    translation: float = field(default=0.1, metadata=doc("Random shifts, as a fraction of height/width; 0 disables."))
    rotation: float = field(default=0.03, metadata=doc("Random rotations, as a fraction of a full turn; 0 disables."))
    zoom: float = field(default=0.1, metadata=doc("Random zoom, as a fraction; 0 disables."))

    def validate(self) -> None:
        if min(self.width, self.depth, self.convs_per_block) < 1:
            raise UserError("model_args.width, depth and convs_per_block must be at least 1")
        if self.channels not in (0, 1, 3):
            raise UserError("model_args.channels must be 0 (from the data), 1 or 3")
        if self.image_size < 0 or (self.image_size and self.image_size < 2 ** self.depth):
            raise UserError(f"model_args.image_size must be 0 or at least 2**depth = {2 ** self.depth}")
        if not 0 <= self.dropout < 1 or min(self.translation, self.rotation, self.zoom) < 0:
            raise UserError("model_args.dropout must be in [0, 1) and translation/rotation/zoom non-negative")


PRESETS = {
    "mnist": {"image_size": 28, "channels": 1, "flip": False},
    "cifar": {"image_size": 32, "channels": 3, "width": 32, "depth": 3, "flip": True, "rotation": 0.0},
}


def build(hparams: CNNClassifierConfig, info: DataInfo):
    """A Functional model mapping raw images (batch, H, W, channels) to class probabilities (batch, classes).

    Example:
        >>> model = build(CNNClassifierConfig(width=8), DataInfo(num_classes=10, image_size=28, channels=1))
        >>> model(np.zeros((2, 28, 28, 1), "float32")).shape
        (2, 10)
    """
    import keras
    from keras import layers

    from kerasllm.zoo.layers import ResizeImages  # zoo.layers imports Keras, which `kerasllm list` must not load

    if info.image_size < 2 ** hparams.depth:
        raise UserError(f"images of {info.image_size}×{info.image_size} are too small for depth {hparams.depth}; "
                        f"set model_args.image_size to at least {2 ** hparams.depth} or lower model_args.depth")
    images = keras.Input(shape=(None, None, info.channels), name="image")  # raw pixels 0..255, any size
    x = ResizeImages(info.image_size, info.image_size, name="resize")(images)  # (batch, size, size, channels)
    x = layers.Rescaling(1 / 255, name="rescale")(x)
    for block in range(hparams.depth):
        filters = hparams.width * 2 ** block
        for conv in range(hparams.convs_per_block):
            name = f"block{block + 1}_conv{conv + 1}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # settles within short runs
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(name=f"block{block + 1}_pool")(x)  # (batch, size / 2**(block+1), ..., filters)
    x = layers.GlobalAveragePooling2D(name="pool")(x)  # (batch, filters)
    x = layers.Dropout(hparams.dropout, name="dropout")(x)
    probabilities = layers.Dense(info.num_classes, activation="softmax", name="class")(x)  # (batch, classes)
    return keras.Model(images, probabilities, name="cnn_classifier")


def augmentation(hparams: CNNClassifierConfig):
    """Training-only random flips, shifts, rotations and zoom, or None.

    Applied in the input pipeline (not inside the model), so the saved and exported
    models hold no random ops: TFLite cannot convert Keras's random layers.
    """
    import keras
    from keras import layers

    steps = []
    if hparams.flip:
        steps.append(layers.RandomFlip("horizontal", name="random_flip"))
    if hparams.translation:
        steps.append(layers.RandomTranslation(hparams.translation, hparams.translation, fill_mode="constant", name="random_translation"))
    if hparams.rotation:
        steps.append(layers.RandomRotation(hparams.rotation, fill_mode="constant", name="random_rotation"))
    if hparams.zoom:
        steps.append(layers.RandomZoom(hparams.zoom, fill_mode="constant", name="random_zoom"))
    if not steps:
        return None

    def augment(images, training=True, seed=None):
        """`seed=(train seed, global step)` makes the batch's draws a function of them alone (TensorFlow backend): each
        random layer's generator starts from them, so a resumed run draws what a straight run drew."""
        # layer by layer: each random layer switches to TensorFlow ops inside tf.data on any Keras backend, a Sequential
        # around them does not (it failed on JAX)
        for number, step in enumerate(steps):
            if seed is not None and keras.backend.backend() == "tensorflow":
                compat.reseed(step, seed[0], seed[1] * len(steps) + number)
            images = step(images, training=training)
        return images

    augment.layers = steps
    return augment


def count_params(hparams: CNNClassifierConfig, channels: int | None = None, num_classes: int = 10) -> int:
    """Parameter count without building the model (default: the default data, 1 channel and 10 classes)."""
    width_in, total = channels or hparams.channels or 1, 0
    for block in range(hparams.depth):
        filters = hparams.width * 2 ** block
        for _ in range(hparams.convs_per_block):
            total += 9 * width_in * filters + 4 * filters  # bias-free conv + BatchNorm (γ, β, mean, variance)
            width_in = filters
    return total + width_in * num_classes + num_classes


SPEC = ModelSpec(
    name="cnn-classifier",
    task="image-classification",
    hparams=CNNClassifierConfig,
    build=build,
    default_data="builtin:digits",
    description="Small CNN image classifier (conv blocks + BatchNorm, pooling, dropout)",
    count_params=count_params,
    augment=augmentation,
    # The MNIST recipe (bench/cnn_mnist.py). On 2 CPU cores widths that are multiples of 16 ran
    # fastest, and XLA trained this model 1.7x faster (846 vs 493 samples/s on 28x28).
    defaults={"train": {"epochs": 10, "batch_size": 128, "learning_rate": 3e-3, "warmup_steps": 100},
              "runtime": {"jit_compile": True}},
    presets=PRESETS,
    overfitting_fixes=(
        "augmentation: --set model_args.translation=0.1 --set model_args.rotation=0.05 --set model_args.zoom=0.1",
        "more dropout before the classifier: --set model_args.dropout=0.5",
        "stronger weight decay: --set train.weight_decay=0.05",
        "more images per class",
        "early stopping keeps the best epoch already (train.early_stopping_patience)",
    ),
    head_layers=("class",),
)
