"""The new head: pooled backbone features -> dropout -> (hidden Dense) -> Dense classifier."""

from __future__ import annotations

import keras
from keras import ops

from tftune.model.backbones import Backbone
from tftune.model.backbones.preprocessing import ImagePreprocessing
from tftune.config import HeadConfig
from tftune.errors import ConfigError

HEAD_PREFIX = "head_"


@keras.saving.register_keras_serializable(package="tftune")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of token vectors over the real (unpadded) tokens: `sum(x * mask) / sum(mask)`."""

    def call(self, sequence, padding_mask):
        mask = ops.cast(padding_mask, sequence.dtype)[..., None]
        total = ops.sum(sequence * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), ops.cast(1.0, sequence.dtype))
        return total / count

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])


@keras.saving.register_keras_serializable(package="tftune")
class FirstToken(keras.layers.Layer):
    """The first token's vector (BERT's [CLS] position)."""

    def call(self, sequence):
        return sequence[:, 0, :]

    def compute_output_shape(self, sequence_shape):
        return (sequence_shape[0], sequence_shape[-1])


def _pool_text(outputs, inputs, pooling: str):
    sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    if pooling in ("mean", "avg"):
        return MaskedMeanPooling(name=f"{HEAD_PREFIX}pool")(sequence, inputs["padding_mask"])
    if pooling == "cls":
        return FirstToken(name=f"{HEAD_PREFIX}pool")(sequence)
    raise ConfigError(
        f"Unknown pooling {pooling!r} for a text backbone. Expected one of: 'mean', 'cls'. "
        f"Received: head.pooling={pooling!r}"
    )


def _pool_image(features, pooling: str):
    if len(features.shape) == 2:
        return features
    if len(features.shape) == 3:  # tokens (vision transformers)
        return keras.layers.GlobalAveragePooling1D(name=f"{HEAD_PREFIX}pool")(features)
    if pooling in ("avg", "mean"):
        return keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(features)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=f"{HEAD_PREFIX}pool")(features)
    raise ConfigError(
        f"Unknown pooling {pooling!r} for an image backbone. Expected one of: 'avg', 'max'. "
        f"Received: head.pooling={pooling!r}"
    )


def build_classifier(
    backbone: Backbone, task, cfg: HeadConfig, image_size=(224, 224)
) -> keras.Model:
    """The full model: raw-ish inputs -> backbone -> pooling -> dropout -> Dense, whose units
    and activation the `task` gives (`tftune.tasks.Task`: e.g. a softmax over the classes).
    An int `task` is a number of classes (single-label classification).

    Image models take float pixels in 0..255 (normalisation is inside); text models take
    KerasHub's token dict (the preprocessor runs in the input pipeline).
    """
    pooling = backbone.default_pooling if cfg.pooling == "auto" else cfg.pooling
    if backbone.modality == "text":
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in backbone.model.input
        } if isinstance(backbone.model.input, dict) else None
        if inputs is None:
            raise ConfigError("The text backbone must take a dict of token inputs (KerasHub).")
        outputs = backbone.model(inputs)
        x = _pool_text(outputs, inputs, pooling)
    else:
        inputs = keras.Input(shape=(*image_size, 3), dtype="float32", name="image")
        x = ImagePreprocessing(backbone.image_preprocessing, scale=backbone.image_scale,
                               offset=backbone.image_offset, name="preprocessing")(inputs)
        x = backbone.model(x)
        x = _pool_image(x, pooling)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name=f"{HEAD_PREFIX}dropout")(x)
    if cfg.hidden_units > 0:
        x = keras.layers.Dense(cfg.hidden_units, activation="gelu", name=f"{HEAD_PREFIX}hidden")(x)
        if cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"{HEAD_PREFIX}dropout_2")(x)
    if isinstance(task, int):
        from tftune.tasks import Classification

        task = Classification([str(i) for i in range(task)])
    outputs = keras.layers.Dense(
        task.output_units, activation=task.activation, dtype="float32",
        name=f"{HEAD_PREFIX}classifier",
    )(x)
    return keras.Model(inputs, outputs, name="tftune_classifier")


def head_layers(model: keras.Model) -> list:
    """The head's layers (everything named `head_*`): they train in every stage."""
    return [l for l in model.layers if l.name.startswith(HEAD_PREFIX)]
