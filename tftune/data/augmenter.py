"""Applies a recipe's image augmentations (`tftune.data.augment` names and checks them) to
training batches: Keras 3's preprocessing layers, plus a random resized crop Keras lacks, with
every random draw derived from the batch's seed tensor, so the result is a pure function of
(seed, stage, epoch, batch)."""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any, Optional, Sequence

import keras
import tensorflow as tf

from tftune.data.augment import KINDS, VALUE_RANGE, parse
from tftune.errors import ConfigError


class Augmenter:
    """Applies a recipe's augmentations to a batch: `(images, labels, seed) -> (images,
    labels)`, `images` float [B, H, W, 3] in 0..255, `labels` int class indices (class
    probabilities [B, classes] out when a mixing augmentation is listed), `seed` an int64 [2]
    tensor; the result is a pure function of the seed."""

    def __init__(self, entries: Sequence[Any], num_classes: Optional[int] = None):
        self.specs = parse(entries)
        self.num_classes = num_classes
        self.per_image, self.mixers = [], []
        for name, params in self.specs:
            kind = KINDS[name]
            if kind.layer is None:
                step = _ResizedCrop(**params)
            else:
                extra = {"value_range": (0, 255)} if kind.layer in VALUE_RANGE else {}
                try:
                    step = getattr(keras.layers, kind.layer)(**extra, **params)
                except (TypeError, ValueError) as e:
                    raise ConfigError(f"Invalid parameters for augmentation {name!r}: "
                                      f"{str(e).splitlines()[0]} Received: {params!r}") from None
            (self.mixers if kind.mixes else self.per_image).append(step)
        if self.mixers and not num_classes:
            raise ConfigError("mixup / cutmix mix class labels: they need a classification task "
                              "(task: classification). Remove them from data.augment.")

    @property
    def mixes(self) -> bool:
        return bool(self.mixers)

    def __call__(self, images, labels, seed, trace_seed: int = 0):
        """`trace_seed` (an int) seeds the draws some Keras layers make in Python while the
        pipeline is traced (AugMix picks its chains' operations so), once per epoch's pipeline."""
        seed = tf.cast(seed, tf.int64)
        shape = images.shape  # kept static through every step (cutmix needs it)
        for i, step in enumerate(self.per_image):
            with _python_random(trace_seed, i):
                images = _seeded(step, images, tf.random.experimental.stateless_fold_in(seed, i))
            images = tf.ensure_shape(tf.cast(images, tf.float32), shape)
        if not self.mixers:
            return images, labels
        soft = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), self.num_classes,
                          dtype=tf.float32)
        mix_seed = tf.random.experimental.stateless_fold_in(seed, len(self.per_image))

        def mix(layer):
            def run():
                out = _seeded(layer, {"images": images, "labels": soft},
                              tf.random.experimental.stateless_fold_in(mix_seed, 1))
                return tf.cast(out["images"], tf.float32), tf.cast(out["labels"], tf.float32)
            return run

        if len(self.mixers) == 1:
            return mix(self.mixers[0])()
        pick = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(mix_seed, 0))
        return tf.cond(pick < 0.5, mix(self.mixers[0]), mix(self.mixers[1]))


@contextlib.contextmanager
def _python_random(seed: int, index: int):
    """Python's `random` seeded by (seed, index) inside, restored after."""
    state = random.getstate()
    random.seed(f"{seed}/{index}")
    try:
        yield
    finally:
        random.setstate(state)


def _seeded(layer, data, seed):
    """`layer(data, training=True)` with every random draw of the layer (and its sub-layers)
    derived from the tensor `seed`, instead of from their stateful seed generators."""
    if isinstance(layer, _ResizedCrop):
        return layer(data, seed)
    layers = [l for l in layer._flatten_layers(include_self=True, recursive=True)
              if isinstance(getattr(l, "generator", None), keras.random.SeedGenerator)]
    saved = [(l, l.generator) for l in layers]
    try:
        for i, l in enumerate(layers):
            object.__setattr__(l, "generator", _BatchSeed(seed, i))
        return layer(data, training=True)
    finally:
        for l, generator in saved:
            object.__setattr__(l, "generator", generator)


class _BatchSeed(keras.random.SeedGenerator):
    """A stand-in for a layer's `SeedGenerator` while the data pipeline traces it: each draw
    gets a seed derived from the batch's seed tensor, the layer's index and the draw's index
    (Keras' stateless random ops take it as they take a generator's)."""

    def __init__(self, seed, index):  # no state variable: nothing is stateful
        self._base = tf.random.experimental.stateless_fold_in(seed, index)
        self._draws = 0

    def next(self, ordered=True):
        self._draws += 1
        return tf.random.experimental.stateless_fold_in(self._base, self._draws)


class _ResizedCrop:
    """Inception-style random resized crop (Keras has no layer for it): per image, a box of
    `scale` (a fraction of the area) and aspect `ratio` (width / height), both drawn uniformly
    (the ratio on a log scale), clipped to the image, resized back to the image's size."""

    def __init__(self, scale=(0.35, 1.0), ratio=(0.75, 4 / 3)):
        scale, ratio = _pair(scale, "scale"), _pair(ratio, "ratio")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"Invalid 'scale' of augmentation 'resized_crop'. Expected "
                              f"0 < low <= high <= 1. Received: {list(scale)}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"Invalid 'ratio' of augmentation 'resized_crop'. Expected "
                              f"0 < low <= high. Received: {list(ratio)}")
        self.scale, self.ratio = scale, ratio

    def __call__(self, images, seed):
        n = tf.shape(images)[0]
        size = tf.shape(images)[1:3]
        seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(4)]
        area = tf.random.stateless_uniform([n], seeds[0], *self.scale)
        log_ratio = tf.random.stateless_uniform([n], seeds[1], math.log(self.ratio[0]),
                                                math.log(self.ratio[1]))
        ratio = tf.exp(log_ratio)
        h = tf.minimum(tf.sqrt(area / ratio), 1.0)
        w = tf.minimum(tf.sqrt(area * ratio), 1.0)
        top = tf.random.stateless_uniform([n], seeds[2]) * (1.0 - h)
        left = tf.random.stateless_uniform([n], seeds[3]) * (1.0 - w)
        boxes = tf.stack([top, left, top + h, left + w], axis=1)
        return tf.image.crop_and_resize(images, boxes, tf.range(n), size)


def _pair(value, name) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return (float(value), 1.0) if name == "scale" else (1 / float(value), float(value))
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"Invalid '{name}' of augmentation 'resized_crop'. Expected a number "
                          f"or [low, high]. Received: {value!r}") from None
    return low, high
