"""Custom layers of the zoo, registered for `.keras` save → load (import this before loading)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="kerasllm")
class ResizeImages(keras.layers.Layer):
    """Resize images (batch, H, W, C) → (batch, height, width, C), bilinear.

    Used instead of `keras.layers.Resizing`: in Keras 3.15 a model that has
    `Resizing` before BatchNormalization exports (`model.export`) a graph whose
    outputs differ from `model.predict` (BatchNorm no longer in inference mode).

    Args:
        height: output height.
        width: output width.

    Example:
        >>> ResizeImages(28, 28)(np.zeros((1, 8, 8, 1))).shape
        (1, 28, 28, 1)
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = height, width

    def call(self, images):
        return keras.ops.image.resize(images, (self.height, self.width), interpolation="bilinear")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}
