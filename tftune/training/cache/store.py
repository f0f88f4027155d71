"""The stored features: the prefix's outputs per split (`FeatureCache`), in memory up to a
budget and spilled to `tf.data` shards beyond it, served in the uncached pipeline's batches."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import keras
import numpy as np

from tftune.training.cache.plan import CachePlan

FILL_BLOCK = 32  # the cache fill sorts blocks of FILL_BLOCK batches of texts by length


class FeatureCache:
    """The prefix's outputs for one split, per example, in the split's order.

    Token-axis features are stored trimmed to each example's length (from `lengths`), so the
    batches served are padded only to their longest text, as the uncached pipeline does.
    Examples are kept in memory until `memory_bytes` is reached; further ones go to `tf.data`
    shards under `spill_dir` (removed by `close`)."""

    def __init__(self, memory_bytes: int, spill_dir: Optional[Path] = None):
        self.memory_bytes = int(memory_bytes)
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self._chunks: list[tuple[list, np.ndarray, np.ndarray]] = []  # (features, labels, lengths)
        self._bytes = 0
        self._shards: list[str] = []
        self._tmp: Optional[Path] = None
        self.count = 0
        self.seconds = 0.0
        self.bytes_total = 0

    @property
    def spilled(self) -> bool:
        return bool(self._shards)

    def shuffle_limit(self, wanted: int) -> int:
        """A shuffle buffer no bigger than what fits the memory budget once spilled."""
        if not self.spilled or not self.bytes_total:
            return wanted
        return max(1, min(wanted, int(self.count * self.memory_bytes / self.bytes_total)))

    def fill(self, plan: CachePlan, batches, length_fn: Optional[Callable] = None,
             sub_batch: int = 0, progress: Optional[Callable[[int], None]] = None,
             widths: Optional[Sequence[int]] = None) -> "FeatureCache":
        """Runs `plan.prefix` over `batches` of (x, y), once, in graph mode; `progress(n)` is
        called with the number of examples stored so far after every batch.

        With `length_fn` and `sub_batch`, each batch is a block of consecutive examples that
        runs as sub-batches of `sub_batch` texts of similar length, each trimmed to its
        longest text; the outputs are put back in the block's order. The features are the
        ones the block's own batches would give (padding is masked), with far less padding.
        `widths` (static shapes): each sub-batch is padded to the smallest of these token
        counts that holds its longest text, and to `sub_batch` rows (copies of its first,
        whose outputs are dropped), so the prefix runs on a bounded set of shapes."""
        import tensorflow as tf

        start = time.perf_counter()
        prefix = tf.function(lambda x: plan.prefix(x, training=False), reduce_retracing=True)
        for x, y in batches:
            y = np.asarray(y)
            lengths = (
                np.asarray(length_fn(x)) if length_fn is not None
                else np.full(len(y), -1, dtype=np.int32)
            )
            if sub_batch and length_fn is not None:
                feats = _by_length(prefix, x, lengths, sub_batch, plan.sequence_axes, widths)
            else:
                feats = [keras.ops.convert_to_numpy(f) for f in prefix(x)]
            self._add(feats, y, lengths, plan.sequence_axes)
            if progress is not None:
                progress(self.count)
        self._flush_to_disk(final=True)
        self.seconds = time.perf_counter() - start
        return self

    def _add(self, feats, y, lengths, axes):
        chunk_bytes = sum(f.nbytes for f in feats) + y.nbytes
        self._chunks.append((feats, y, lengths))
        self._bytes += chunk_bytes
        self.bytes_total += chunk_bytes
        self.count += len(y)
        self._axes = axes
        if self._bytes > self.memory_bytes:
            self._flush_to_disk()

    def _examples(self, chunks):
        """Per-example tensors of the buffered chunks (token axes trimmed to length)."""
        for feats, y, lengths in chunks:
            for i in range(len(y)):
                row = []
                for f, axis in zip(feats, self._axes):
                    r = f[i]
                    if axis is not None and lengths[i] >= 0:
                        r = r[: lengths[i]]
                    row.append(r)
                yield tuple(row), y[i], lengths[i]

    def _flush_to_disk(self, final: bool = False):
        import tensorflow as tf

        if not self._chunks or (final and not self._shards):
            return  # everything fits in memory
        if self._tmp is None:
            base = self.spill_dir or Path(tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix="tftune-features-", dir=base))
        ds = self._memory_dataset(self._chunks)
        path = str(self._tmp / f"shard_{len(self._shards):05d}")
        ds.save(path)
        self._shards.append(path)
        self._chunks, self._bytes = [], 0

    def _memory_dataset(self, chunks):
        import tensorflow as tf

        rows = list(self._examples(chunks))
        n_feats = len(rows[0][0]) if rows else 0
        columns = []
        for j in range(n_feats):
            values = [r[0][j] for r in rows]
            if self._axes[j] is not None:
                columns.append(_ragged(values))
            else:
                columns.append(np.stack(values))
        labels = np.asarray([r[1] for r in rows])
        lengths = np.asarray([r[2] for r in rows], dtype=np.int32)
        ds = tf.data.Dataset.from_tensor_slices((tuple(columns), labels, lengths))
        # Rows of a ragged column come out as ragged-rank-0 values; a map makes them tensors.
        return ds.map(lambda x, y, n: (tuple(tf.identity(t) for t in x), y, n))

    def dataset(self):
        """Unbatched (features tuple, label, length) in the split's order."""
        import tensorflow as tf

        if not self._shards:
            return self._memory_dataset(self._chunks)
        ds = tf.data.Dataset.load(self._shards[0])
        for path in self._shards[1:]:
            ds = ds.concatenate(tf.data.Dataset.load(path))
        return ds

    def close(self):
        self._chunks = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._shards = []


def _by_length(prefix, x, lengths: np.ndarray, sub_batch: int, axes,
               widths: Optional[Sequence[int]] = None) -> list[np.ndarray]:
    """`prefix` over the block `x` (a dict of [n, tokens] arrays) in sub-batches of similar
    length, each trimmed to its longest text (or cut to the smallest of `widths` that holds
    it, with its rows filled up to `sub_batch`); outputs in the block's order, token axes
    zero-padded to the block's longest text."""
    x = {k: np.asarray(v) for k, v in x.items()}
    n = len(lengths)
    order = np.argsort(lengths, kind="stable")
    out: list[Optional[np.ndarray]] = []
    for first in range(0, n, sub_batch):
        rows = order[first: first + sub_batch]
        longest = max(int(lengths[rows].max()), 1)
        taken = rows
        if widths:  # static shapes: a bounded set of (rows, tokens)
            longest = min([w for w in widths if w >= longest] or [max(widths)])
            taken = np.concatenate([rows, np.repeat(rows[:1], sub_batch - len(rows))])
        part = {k: v[taken, :longest] if v.ndim >= 2 else v[taken] for k, v in x.items()}
        feats = [keras.ops.convert_to_numpy(f)[: len(rows)] for f in prefix(part)]
        if not out:
            width = max(int(lengths.max()), 1)
            out = [np.zeros((n, width, *f.shape[2:]) if axis is not None else (n, *f.shape[1:]),
                            dtype=f.dtype) for f, axis in zip(feats, axes)]
        for dest, f, axis in zip(out, feats, axes):
            if axis is not None:  # (a static width may pass the block's longest text)
                w = min(f.shape[1], dest.shape[1])
                dest[rows, :w] = f[:, :w]
            else:
                dest[rows] = f
    return out


def _ragged(values: Sequence[np.ndarray]):
    import tensorflow as tf

    lengths = np.asarray([len(v) for v in values], dtype=np.int64)
    flat = np.concatenate(values, axis=0) if values else np.zeros((0,))
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


def batched(ds, batch_size: int, *, shuffle_buffer: int = 0, seed: int = 0,
            bucket_boundaries: Optional[Sequence[int]] = None, pad: bool = False,
            static=None, training: bool = True):
    """Cached examples -> (features, label) batches, shuffled and bucketed like the uncached
    pipeline (same buffer, seed and length buckets, so the same batches when exact).
    `static` (the pipeline's `StaticShapes`): static-shape batches instead, full when
    `training`, else filled at weight 0 (see `tftune.data.static_shapes`)."""
    import tensorflow as tf

    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if static is not None:
        from tftune.data.static_shapes import cached_batches

        return cached_batches(ds, static, training, pad)
    if bucket_boundaries is not None:  # autotuning stays on (see pipeline.without_autotune)
        ds = ds.bucket_by_sequence_length(
            lambda x, y, n: n, list(bucket_boundaries),
            [batch_size] * (len(bucket_boundaries) + 1),
        )
    elif pad:
        ds = ds.padded_batch(batch_size)
    else:
        ds = ds.batch(batch_size)
    return ds.map(lambda x, y, n: (x, y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def cached_datasets(plan: CachePlan, pipe, train_split, val_split, memory_bytes: int,
                    spill_dir: Optional[Path] = None,
                    progress: Optional[Callable[[str], Callable[[int], None]]] = None):
    """Fills one `FeatureCache` per split and serves them like `pipe` serves the inputs:
    (train batches, val batches, [caches]); `close()` the caches after the stage.
    `progress("train" | "val")` gives the split's fill progress callback (see `fill`)."""
    caches: list[FeatureCache] = []
    served = []
    pad = any(a is not None for a in plan.sequence_axes)
    try:
        for split, training in ((train_split, True), (val_split, False)):
            fc = FeatureCache(memory_bytes, spill_dir)
            caches.append(fc)
            report = progress("train" if training else "val") if progress else None
            if pipe.length_fn is not None:  # texts: blocks run in sub-batches of similar length
                fc.fill(plan, pipe.blocks(pipe.source(split), FILL_BLOCK * pipe.batch_size),
                        pipe.length_fn, sub_batch=pipe.batch_size, progress=report,
                        widths=pipe.static.lengths if pipe.static is not None else None)
            else:
                fc.fill(plan, pipe.prepare(split, training=False), progress=report)
            # Validation batches only sum losses and hits: bucketed by length, unshuffled.
            served.append(batched(
                fc.dataset(), pipe.batch_size,
                shuffle_buffer=fc.shuffle_limit(pipe.shuffle_buffer(fc.count)) if training else 0,
                seed=pipe.seed,
                bucket_boundaries=pipe.bucket_boundaries,
                pad=pad, static=pipe.static, training=training,
            ))
    except BaseException:
        for c in caches:
            c.close()
        raise
    return served[0], served[1], caches
