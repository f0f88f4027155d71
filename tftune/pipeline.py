"""Input pipelines: an unbatched (input, label) split -> batches a Keras model trains on.

Text is tokenised once (and cached), shuffled, batched with texts of similar length together
and trimmed to each batch's longest text. Images are cached as uint8 while they fit a memory
budget, shuffled, batched, cast to float and optionally flipped. The same object tells the
feature cache how to serve stored features in the same order and batches."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from tftune.errors import ConfigError

AUGMENTATIONS = ("flip",)
IMAGE_CACHE_BYTES = 3 * 2**30  # in-memory cache budget for decoded training images
TEXT_SHUFFLE = 50_000
IMAGE_SHUFFLE = 20_000
LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384)


@dataclasses.dataclass
class Pipeline:
    """How one run feeds its model. `prepare(ds, training)` batches an unbatched split;
    `length_fn(x)` gives each example's token count in a batch (text) or is None."""

    modality: str
    batch_size: int
    seed: int
    prepare_fn: Callable
    length_fn: Optional[Callable] = None
    bucket_boundaries: Optional[tuple[int, ...]] = None
    augment: tuple[str, ...] = ()

    def prepare(self, ds, training: bool):
        return self.prepare_fn(ds, training)

    def shuffle_buffer(self, n: int) -> int:
        return min(max(n, 1), TEXT_SHUFFLE if self.modality == "text" else IMAGE_SHUFFLE)

    @property
    def random(self) -> bool:
        """Whether training batches are randomly augmented (so features change each epoch)."""
        return bool(self.augment)


def text_pipeline(preprocessor, n_train: int, batch_size: int, seed: int) -> Pipeline:
    """Tokenises once (cached), then batches texts of similar length together and trims each
    batch to its longest text: short texts stop paying for the full sequence length."""
    import tensorflow as tf

    seq_len = int(preprocessor.sequence_length)
    boundaries = tuple(b for b in LENGTH_BUCKETS if b < seq_len)

    def tokenize(x, y):
        return preprocessor(x), y

    def lengths(x):
        return tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=-1)

    def trim(x, y):
        longest = tf.reduce_max(lengths(x))
        return {k: v[:, :longest] for k, v in x.items()}, y

    def prepare(ds, training):
        ds = ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).cache()
        if training:
            ds = ds.shuffle(pipe.shuffle_buffer(n_train), seed=seed, reshuffle_each_iteration=True)
            ds = ds.bucket_by_sequence_length(
                lambda x, y: lengths(x), list(boundaries), [batch_size] * (len(boundaries) + 1)
            )
        else:
            ds = ds.batch(batch_size)
        return ds.map(trim, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    pipe = Pipeline("text", batch_size, seed, prepare, lengths, boundaries)
    return pipe


def image_pipeline(n_train: int, batch_size: int, seed: int, augment: tuple[str, ...],
                   image_size) -> Pipeline:
    """Decoded images are cached as uint8 when they fit the memory budget, shuffled, batched,
    then cast to float (and augmented) per batch."""
    import tensorflow as tf

    for a in augment:
        if a not in AUGMENTATIONS:
            raise ConfigError(
                f"Unknown augmentation {a!r}. Expected one of: {', '.join(AUGMENTATIONS)}. "
                f"Received: data.augment={list(augment)!r}"
            )

    def to_uint8(x, y):
        return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), y

    def to_float(x, y):
        return tf.cast(x, tf.float32), y

    def flip(x, y):
        return tf.image.random_flip_left_right(x), y

    def prepare(ds, training):
        n = int(ds.cardinality()) if int(ds.cardinality()) > 0 else 0
        ds = ds.map(to_uint8, num_parallel_calls=tf.data.AUTOTUNE)
        if n and n * image_size[0] * image_size[1] * 3 <= IMAGE_CACHE_BYTES:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(pipe.shuffle_buffer(n), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
        if training and "flip" in augment:
            ds = ds.map(flip, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    pipe = Pipeline("image", batch_size, seed, prepare, augment=tuple(augment))
    return pipe
