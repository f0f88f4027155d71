"""Input pipelines: an unbatched (input, label) split -> batches a Keras model trains on.

Text is tokenised once (and cached), shuffled, batched with texts of similar length together
and trimmed to each batch's longest text. Images are cached as uint8 while they fit a memory
budget, shuffled, batched, cast to float and optionally augmented (`tftune.data.augment`). The same object tells the
feature cache how to serve stored features in the same order and batches.

`source(split)` is the cached part (tokens / uint8 pixels), made once per split; `batches(source,
training, epoch_seed)` is one pass over it. With an `epoch_seed` the order (and any augmentation)
is a pure function of that seed, so epoch k of a stage is the same whether or not the run was
interrupted and resumed before it (`epoch_seed(seed, stage, epoch)`); without one, the order
reshuffles on every iteration from `seed`, as `Dataset.shuffle` does."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Optional

from tftune.errors import ConfigError

if TYPE_CHECKING:
    from tftune.data.static_shapes import StaticShapes

IMAGE_CACHE_BYTES = 3 * 2**30  # in-memory cache budget for decoded training images
TEXT_SHUFFLE = 50_000
IMAGE_SHUFFLE = 20_000
LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The shuffle seed of one epoch of one stage: independent of how many passes over the
    data were made before it (in this process or in an interrupted one)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, stage, epoch]).generate_state(1)[0] % (2**31 - 1))


@dataclasses.dataclass
class Pipeline:
    """How one run feeds its model. `prepare(ds, training)` batches an unbatched split
    (`batches(source(ds), training)`); `length_fn(x)` gives each example's token count in a
    batch (text) or is None."""

    modality: str
    batch_size: int
    seed: int
    source_fn: Callable
    batches_fn: Callable
    length_fn: Optional[Callable] = None
    bucket_boundaries: Optional[tuple[int, ...]] = None
    augment: tuple = ()
    # Whether training batches mix examples (mixup / cutmix): their labels are class
    # probabilities [batch, classes] instead of class indices.
    mixes: bool = False
    eval_fn: Optional[Callable] = None
    # epoch seed -> how many times each training example appears in that epoch (balanced
    # sampling, see `balanced_counts`); None: every example once.
    resample: Optional[Callable] = None
    # augment -> the same pipeline with those augmentations (image pipelines)
    variant: Optional[Callable] = dataclasses.field(default=None, repr=False, compare=False)
    # id(split) -> (split, its source): a split is tokenised / decoded once however many
    # consumers (training, validation, the feature cache's fill) ask for it.
    _sources: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    # `train.static_shapes`: the fixed batch shapes (see `tftune.data.static_shapes`), or
    # None for batches shaped by their data (trimmed texts, a short last batch).
    static: Optional["StaticShapes"] = None

    def source(self, ds):
        """The split's examples converted once and cached (reuse it for every epoch); the
        same dataset object for every call with the same split."""
        held = self._sources.get(id(ds))
        if held is None or held[0] is not ds:
            held = self._sources[id(ds)] = (ds, self.source_fn(ds))
        return held[1]

    def batches(self, source, training: bool, epoch_seed: Optional[int] = None):
        """One pass over `source` in batches; shuffled (and augmented, and resampled) when
        `training`, in an order fixed by `epoch_seed` when given."""
        if training:
            source = self.resampled(source, epoch_seed)
        return self.batches_fn(source, training, epoch_seed)

    def resampled(self, ds, epoch_seed: Optional[int] = None):
        """The training examples of one epoch: `ds` (unbatched, in the split's order: the
        tokenised source or the feature cache's stored outputs) with each example repeated
        as often as `resample(epoch_seed)` says; `ds` itself without resampling."""
        if self.resample is None:
            return ds
        import tensorflow as tf

        counts = self.resample(self.seed if epoch_seed is None else epoch_seed)
        table = tf.constant(counts, tf.int64)
        out = ds.enumerate().flat_map(
            lambda i, example: tf.data.Dataset.from_tensors(example).repeat(table[i]))
        return out.apply(tf.data.experimental.assert_cardinality(int(counts.sum())))

    def with_augment(self, augment: tuple) -> "Pipeline":
        """This pipeline with other augmentations (a stage's own `augment`), sharing its
        decoded sources and sampling."""
        if self.variant is None:
            raise ConfigError(f"A {self.modality} pipeline takes no augmentation.")
        other = self.variant(augment)
        other._sources, other.resample, other.static = self._sources, self.resample, self.static
        return other

    def prepare(self, ds, training: bool):
        return self.batches(self.source(ds), training)

    def blocks(self, source, size: int):
        """`source` in the split's order, in blocks of `size` examples as they are stored
        (texts padded to the sequence length): for the feature cache's fill."""
        import tensorflow as tf

        return source.batch(size).prefetch(tf.data.AUTOTUNE)

    def eval_batches(self, source):
        """One unshuffled pass over `source` for consumers that only sum over examples (loss
        and accuracy): texts of similar length come batched together, so the batches carry
        little padding; the order is fixed but is not the split's. Images: `batches(source,
        False)`."""
        if self.eval_fn is None:
            return self.batches(source, False)
        return self.eval_fn(source)

    def shuffled(self, ds, n: int, epoch_seed: Optional[int]):
        """`ds.shuffle` with this pipeline's buffer, seeded by `epoch_seed` (else `self.seed`).

        A new dataset's first pass has an order fixed by its seed; later passes over the same
        dataset object reshuffle. So a dataset made for one epoch (`batches(..., epoch_seed)`)
        gives that epoch's order however many other datasets were iterated before, and the
        feature cache (`cache.batched`, the same shuffle) serves the same order."""
        seed = self.seed if epoch_seed is None else epoch_seed
        return ds.shuffle(self.shuffle_buffer(n), seed=seed, reshuffle_each_iteration=True)

    def shuffle_buffer(self, n: int) -> int:
        return min(max(n, 1), TEXT_SHUFFLE if self.modality == "text" else IMAGE_SHUFFLE)

    @property
    def random(self) -> bool:
        """Whether training batches are randomly augmented (so features change each epoch)."""
        return bool(self.augment)


def tokenize_texts(preprocessor, x):
    """The KerasHub preprocessor's token dict for texts `x`: strings, or a tuple of two for
    text pairs (packed `[CLS] a [SEP] b [SEP]` with segment ids 0 and 1). Passed as `x=`: a
    positional tuple would be read as (x, y)."""
    return preprocessor(x=tuple(x) if isinstance(x, (tuple, list)) else x)


def without_autotune(ds):
    """`ds` with tf.data's autotuning off (the option holds for every dataset made from
    it). Length-bucketed batches need this: with it on, deleting an epoch's iterator (when
    the next epoch starts) waited ~50 s for tf.data's threads on Rotten Tomatoes (8,926
    texts, a MiniLM epoch of 150 s on 2 cores), about a third of an epoch lost at every epoch
    boundary; the input is a cached, tokenised split, so fixed parallelism serves it as fast.
    Evaluation passes are bucketed the same way (their stall was not timed separately).
    Cached features (`tftune.training.cache.store.batched`) keep autotuning: off, a cached
    head's step on RT's bucketed features took 1.2-1.3 ms instead of 0.5 ms (interleaved
    A/B, 2026-12-05), and no stall was seen there (a cached `top:2` stage on RT, 3 epochs of
    36 s: 0.6 s from each epoch's end to the next epoch's first step)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def balanced_counts(labels, num_classes: int) -> Callable[[int], "np.ndarray"]:
    """epoch seed -> per-example counts for balanced sampling: as many draws as there are
    examples, with replacement, each class equally likely (an example of class c with
    probability 1 / (classes present * count_c)); a pure function of the seed."""
    import numpy as np

    labels = np.asarray(labels, np.int64)
    per_class = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = int(np.sum(per_class > 0))
    p = 1.0 / (present * per_class[labels])

    def counts(epoch_seed: int) -> np.ndarray:
        rng = np.random.default_rng(int(epoch_seed))
        draws = rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())
        return np.bincount(draws, minlength=len(labels))

    return counts


def text_pipeline(preprocessor, n_train: int, batch_size: int, seed: int,
                  static: bool = False, static_min_length: int = 16) -> Pipeline:
    """Tokenises once (cached), then batches texts of similar length together and trims each
    batch to its longest text: short texts stop paying for the full sequence length.

    `static`: fixed batch shapes instead (`tftune.data.static_shapes`): texts padded to the
    smallest of `static_min_length` and its doublings, up to the sequence length, that holds
    the batch's longest text; full training batches; evaluation batches filled with weight-0
    rows."""
    import tensorflow as tf

    seq_len = int(preprocessor.sequence_length)
    if static:
        return _static_text_pipeline(preprocessor, n_train, batch_size, seed, static_min_length)
    boundaries = tuple(b for b in LENGTH_BUCKETS if b < seq_len)

    def tokenize(x, y):
        return tokenize_texts(preprocessor, x), y

    def lengths(x):
        return tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=-1)

    def trim(x, y):
        longest = tf.reduce_max(lengths(x))
        return {k: v[:, :longest] for k, v in x.items()}, y

    def source(ds):
        return ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).cache()

    def bucketed(ds):
        return without_autotune(ds.bucket_by_sequence_length(
            lambda x, y: lengths(x), list(boundaries), [batch_size] * (len(boundaries) + 1)
        ))

    def trimmed(batched):
        return batched.map(trim, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def batches(ds, training, epoch_seed):
        if training:
            return trimmed(bucketed(pipe.shuffled(ds, n_train, epoch_seed)))
        return trimmed(ds.batch(batch_size))

    def eval_batches(ds):
        return trimmed(bucketed(ds))

    pipe = Pipeline("text", batch_size, seed, source, batches, lengths, boundaries,
                    eval_fn=eval_batches)
    return pipe


def image_pipeline(n_train: int, batch_size: int, seed: int, augment=(), image_size=(224, 224),
                   num_classes: Optional[int] = None, static: bool = False) -> Pipeline:
    """Decoded images are cached as uint8 when they fit the memory budget, shuffled, batched,
    then cast to float and augmented per batch (`data.augment`, see `tftune.data.augment`;
    `num_classes` for mixup / cutmix, whose batches carry class probabilities as labels)."""
    import tensorflow as tf

    from tftune.data.augmenter import Augmenter

    augmenter = Augmenter(augment, num_classes) if augment else None

    def to_uint8(x, y):
        return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), y

    def to_float(x, y):
        return tf.cast(x, tf.float32), y

    def source(ds):
        n = int(ds.cardinality()) if int(ds.cardinality()) > 0 else 0
        ds = ds.map(to_uint8, num_parallel_calls=tf.data.AUTOTUNE)
        if n and n * image_size[0] * image_size[1] * 3 <= IMAGE_CACHE_BYTES:
            ds = ds.cache()
        return ds

    def augmented(k, xy, base, trace_seed):
        # Batch k of an epoch: its seed is [epoch seed, k], so its augmentation is the same
        # on every run of that epoch (resumed or not) whatever order the batches are made in.
        x, y = xy
        return augmenter(x, y, tf.stack([base, k]), trace_seed)

    def batch_seed(epoch_seed):
        """(the batches' base seed tensor, the trace's seed): the epoch's, or without an
        epoch a fresh draw per batch (as Keras' layers make)."""
        if epoch_seed is None:
            return tf.random.uniform([], 0, 2**62, tf.int64), seed
        return tf.constant(epoch_seed, tf.int64), epoch_seed

    def batches(ds, training, epoch_seed):
        n = int(ds.cardinality()) if int(ds.cardinality()) > 0 else 0
        if training:
            ds = pipe.shuffled(ds, n, epoch_seed)
        full = bool(training and static)  # static shapes: the remainder is dropped
        ds = ds.batch(batch_size, drop_remainder=full).map(
            to_float, num_parallel_calls=tf.data.AUTOTUNE)
        if training and augmenter is not None:
            ds = ds.enumerate().map(
                lambda k, xy: augmented(k, xy, *batch_seed(epoch_seed)),
                num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def filled(ds):  # static shapes: full evaluation batches, weight 0 on the filling
        return batches(ds, False, None).map(pipe.static.fill,
                                            num_parallel_calls=tf.data.AUTOTUNE)

    pipe = Pipeline("image", batch_size, seed, source, batches, augment=tuple(augment),
                    mixes=bool(augmenter and augmenter.mixes), eval_fn=filled if static else None)
    if static:
        from tftune.data.static_shapes import StaticShapes

        pipe.static = StaticShapes(batch_size)
    pipe.variant = lambda other: image_pipeline(n_train, batch_size, seed, other, image_size,
                                                num_classes, static)
    return pipe


def _static_text_pipeline(preprocessor, n_train: int, batch_size: int, seed: int,
                          static_min_length: int = 16) -> Pipeline:
    """`text_pipeline` with static shapes: texts bucketed by the static lengths and padded
    to their bucket's length; full training batches (each bucket's remainder dropped, other
    examples each epoch); evaluation batches filled to the batch size at weight 0."""
    import tensorflow as tf

    from tftune.data.static_shapes import StaticShapes, text_lengths

    shapes = StaticShapes(batch_size, text_lengths(int(preprocessor.sequence_length),
                                                   static_min_length))
    boundaries = shapes.bucket_boundaries

    def tokenize(x, y):
        return tokenize_texts(preprocessor, x), y

    def lengths(x):
        return tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=-1)

    def fit(x, y):
        return shapes.fit_tokens(x, lengths(x)), y

    def source(ds):
        return ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).cache()

    def bucketed(ds, drop_remainder):
        return without_autotune(ds.bucket_by_sequence_length(
            lambda x, y: lengths(x), list(boundaries), [batch_size] * (len(boundaries) + 1),
            drop_remainder=drop_remainder))

    def fitted(batched):
        return batched.map(fit, num_parallel_calls=tf.data.AUTOTUNE)

    def batches(ds, training, epoch_seed):
        if training:
            ds = bucketed(pipe.shuffled(ds, n_train, epoch_seed), drop_remainder=True)
            return fitted(ds).map(shapes.full).prefetch(tf.data.AUTOTUNE)
        return fitted(ds.batch(batch_size)).prefetch(tf.data.AUTOTUNE)

    def eval_batches(ds):
        out = fitted(bucketed(ds, drop_remainder=False))
        return out.map(shapes.fill, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    pipe = Pipeline("text", batch_size, seed, source, batches, lengths, boundaries,
                    eval_fn=eval_batches, static=shapes)
    return pipe
