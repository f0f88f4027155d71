"""Static-shape batches (`train.static_shapes`): a bounded set of batch shapes, so a TPU (or
any XLA device) compiles each step a few times, not once per new text length or short batch.

The dynamic pipeline (`tftune.data.pipeline`) trims each text batch to its longest text and
lets the last batch of a pass be short: on a TPU every new shape is a new compilation. In
static mode:

- texts are padded to the smallest of a fixed set of lengths that holds the batch's longest
  text (`lengths`: `train.static_min_length`, default 16, and its doublings below the
  preprocessor's sequence_length, then the sequence_length), and batched with texts of the
  same length bucket;
- training batches all have the full batch size: the remainder is dropped
  (`drop_remainder`), in texts per length bucket, so up to (batch - 1) examples per bucket
  an epoch; each epoch's order comes from its own seed, so the dropped examples differ from
  epoch to epoch and none is left out for good;
- evaluation batches (validation, test, the feature cache's validation) are filled up to the
  full batch size with copies of their first example at weight 0, as (x, y, weight): the
  loop's metrics are weighted sums, so every example counts exactly once and the padding not
  at all (the loss is sum(weight * loss) / sum(weight));
- `batches(source, training=False)` (in the split's order: the image cache fill, previews)
  keeps the real rows only, at the static lengths; the text cache fill runs its sub-batches
  at (batch, static length) (`cache.store.FeatureCache.fill(widths=...)`).

So a static run sees at most len(lengths) shapes in training and len(lengths) in evaluation
(one each for images). The loop then runs `steps_per_execution` > 1 steps per call
(`tftune.training.device.steps_per_execution`).

`train.static_shapes: auto` is on when the strategy is a TPU, off elsewhere; `on` selects it
anywhere (to test it on a CPU: its metrics match the dynamic run's within what the dropped
remainders change).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from tftune.errors import ConfigError

SETTINGS = ("auto", "on", "off")
SMALLEST_LENGTH = 16


def enabled(setting: str, strategy_kind: str) -> bool:
    """Whether `train.static_shapes` is on for a run on `strategy_kind` (default | mirrored |
    multi_worker | tpu): `auto` means on a TPU."""
    if setting not in SETTINGS:
        raise ConfigError(f"Unknown static_shapes setting {setting!r}. Expected one of: "
                          f"{', '.join(SETTINGS)}. Received: static_shapes={setting!r}")
    if setting == "auto":
        return strategy_kind == "tpu"
    return setting == "on"


def text_lengths(sequence_length: int, smallest: int = SMALLEST_LENGTH) -> tuple[int, ...]:
    """`smallest` and its doublings below `sequence_length`, then `sequence_length`."""
    lengths, n = [], smallest
    while n < sequence_length:
        lengths.append(n)
        n *= 2
    return tuple(lengths) + (int(sequence_length),)


@dataclasses.dataclass(frozen=True)
class StaticShapes:
    """The fixed shapes of one run's batches: `batch_size` rows, and for texts one of
    `lengths` tokens (empty for images)."""

    batch_size: int
    lengths: tuple[int, ...] = ()

    @property
    def bucket_boundaries(self) -> Optional[tuple[int, ...]]:
        """`bucket_by_sequence_length` boundaries putting texts of up to `lengths[i]` tokens
        in bucket i (a boundary's bucket starts at it)."""
        if not self.lengths:
            return None
        return tuple(n + 1 for n in self.lengths[:-1])

    def shapes(self) -> set[tuple[int, ...]]:
        """Every (rows, tokens) a text batch may have; {(rows,)} for images."""
        if not self.lengths:
            return {(self.batch_size,)}
        return {(self.batch_size, n) for n in self.lengths}

    def target_length(self, longest):
        """The smallest of `lengths` that holds `longest` tokens (a scalar tensor)."""
        import tensorflow as tf

        lengths = tf.constant(self.lengths, tf.int32)
        fits = lengths >= tf.cast(longest, tf.int32)
        return tf.gather(lengths, tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32))

    def fit_tokens(self, x: dict, lengths):
        """A batch of token dicts (every value padded to the sequence length, as a KerasHub
        preprocessor pads) cut to the bucket length of its longest text (`lengths`: tokens
        per text)."""
        target = self.target_length(_max0(lengths))
        return {k: v[:, :target] for k, v in x.items()}

    def fit_features(self, x: tuple, lengths):
        """Cached features (`padded_batch`ed to the batch's longest text): each tensor with a
        token axis (axis 1, unknown size) zero-padded to the bucket length."""
        import tensorflow as tf

        target = self.target_length(_max0(lengths))

        def fit(t):
            if len(t.shape) < 2 or t.shape[1] is not None:
                return t
            extra = target - tf.shape(t)[1]
            pads = [[0, 0], [0, extra]] + [[0, 0]] * (len(t.shape) - 2)
            out = tf.pad(t, pads)
            return tf.ensure_shape(out, [None, None] + list(t.shape[2:]))

        return tuple(fit(t) for t in x)

    def full(self, *batch):
        """A full batch with its row count in its static shape (what `bucket_by_sequence_
        length` leaves unknown), so a TPU sees a static batch dimension in the dataset's
        element spec; one static length is a static token axis as well."""
        import tensorflow as tf

        def known(t):
            shape = [self.batch_size] + list(t.shape[1:])
            if len(self.lengths) == 1 and len(shape) == 2 and shape[1] is None:
                shape[1] = self.lengths[0]
            return tf.ensure_shape(t, shape)

        return tf.nest.map_structure(known, batch)

    def fill(self, x, y, weight=None):
        """(x, y) -> (x, y, weight) with `batch_size` rows: the real ones at weight 1 (or
        `weight`), then copies of the first at weight 0."""
        return self.full(*fill_batch(self.batch_size, x, y, weight))


def fill_batch(batch_size: int, x, y, weight=None):
    import tensorflow as tf

    n = tf.shape(y)[0]
    extra = tf.maximum(batch_size - n, 0)
    index = tf.concat([tf.range(n), tf.zeros([extra], tf.int32)], axis=0)
    real = tf.ones([n]) if weight is None else tf.cast(weight, tf.float32)
    weight = tf.concat([real, tf.zeros([extra])], axis=0)

    def take(t):
        out = tf.gather(t, index)
        return tf.ensure_shape(out, [batch_size] + list(t.shape[1:]))

    return (tf.nest.map_structure(take, x), take(y),
            tf.ensure_shape(weight, [batch_size]))


def _max0(lengths):
    import tensorflow as tf

    return tf.maximum(tf.reduce_max(lengths), 1)


def batch_shape(batch) -> tuple[int, ...]:
    """(rows, tokens) of a text batch (from its first token tensor), (rows,) of an image
    batch: what the loop's step is compiled for."""
    x = batch[0]
    if isinstance(x, dict):
        first = x[sorted(x)[0]]
        return tuple(int(d) for d in first.shape[:2])
    if isinstance(x, (tuple, list)):
        x = x[0]
    return (int(x.shape[0]),)


def cached_batches(ds, shapes: StaticShapes, training: bool, pad: bool):
    """Cached (features, label, length) examples -> static-shape batches, as the uncached
    static pipeline makes them: bucketed by the static lengths (texts), token axes padded to
    the bucket length; training batches full (remainder dropped), evaluation batches filled
    to the batch size at weight 0."""
    import tensorflow as tf

    size = shapes.batch_size
    if shapes.lengths:
        ds = ds.bucket_by_sequence_length(
            lambda x, y, n: n, list(shapes.bucket_boundaries),
            [size] * len(shapes.lengths), drop_remainder=training)
        ds = ds.map(lambda x, y, n: (shapes.fit_features(x, n), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = (ds.padded_batch(size, drop_remainder=training) if pad
              else ds.batch(size, drop_remainder=training))
        ds = ds.map(lambda x, y, n: (x, y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(shapes.full if training else shapes.fill, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
