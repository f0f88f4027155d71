"""Image input normalisation as a Keras layer, so saved models take raw 0..255 pixels."""

from __future__ import annotations

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

MODES = ("tf", "torch", "caffe", "none", "affine")


@keras.saving.register_keras_serializable(package="tftune")
class ImagePreprocessing(keras.layers.Layer):
    """Maps RGB pixels in 0..255 to what a pretrained network expects.

    Modes follow `keras.applications`: `tf` scales to -1..1, `torch` scales to 0..1 and
    normalises with the ImageNet mean and std, `caffe` flips to BGR and subtracts the ImageNet
    mean, `none` passes pixels through (for networks that normalise inside). `affine` computes
    `x * scale + offset` (each a number or one per channel), as a KerasHub preset's image
    converter does.
    """

    def __init__(self, mode: str = "tf", scale=None, offset=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(
                f"Unknown preprocessing mode {mode!r}. Expected one of: {', '.join(MODES)}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode
        self.scale = _plain(scale)
        self.offset = _plain(offset)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(IMAGENET_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(IMAGENET_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN, self.compute_dtype)
        if self.mode == "affine":
            if self.scale is not None:
                x = x * ops.convert_to_tensor(self.scale, self.compute_dtype)
            if self.offset is not None:
                x = x + ops.convert_to_tensor(self.offset, self.compute_dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "scale": self.scale,
                "offset": self.offset}


def _plain(value):
    """A scale or offset as plain floats (a number or a per-channel list), for the config."""
    if value is None:
        return None
    import numpy as np

    array = np.asarray(value, dtype="float64").reshape(-1)
    return float(array[0]) if array.size == 1 else [float(v) for v in array]
