"""Frozen-prefix feature cache: run a stage's frozen bottom once, train the rest on its outputs.

In a stage that trains the head and the top N layer groups, every epoch pushes each example
through the same frozen bottom of the network and gets the same activations (frozen layers run
in inference mode, as frozen BatchNorm does in Keras 3). `plan_cache` cuts the classifier's
Keras graph where the frozen part ends: the *prefix* maps the model inputs to the activations at
that boundary (the pooled features in a head-only stage; the input of the lowest trained block
in a `top:N` stage, plus anything else the rest needs such as the padding mask), and the
*suffix* is a `keras.Model` from those activations to the classifier's output that shares its
layers (and so its weights) with the classifier. `FeatureCache` computes the prefix once per
split, keeps the outputs in memory up to a byte budget and spills to `tf.data` shards on disk
beyond it, and serves them in the same order and batches as the uncached pipeline would.

Exact when the input pipeline has no random augmentation; the frozen part's own dropout (e.g.
inside or between frozen transformer blocks) is off, which is what `training=False` means for
it. The head's dropout stays where it was, in the trained part.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import keras
import numpy as np

FILL_BLOCK = 32  # the cache fill sorts blocks of FILL_BLOCK batches of texts by length
RANDOM_LAYER_PREFIXES = ("Dropout", "SpatialDropout", "GaussianNoise", "GaussianDropout",
                         "AlphaDropout", "Random")


def _is_random(op) -> bool:
    name = type(op).__name__
    return any(name.startswith(p) for p in RANDOM_LAYER_PREFIXES)


def _node_of(tensor):
    op, node_index, _ = tensor._keras_history
    return op._inbound_nodes[node_index]


def _ancestor_nodes(outputs) -> set[int]:
    """Ids of the graph nodes that `outputs` depend on."""
    seen: set[int] = set()
    stack = list(keras.tree.flatten(outputs))
    while stack:
        node = _node_of(stack.pop())
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node.input_tensors)
    return seen


def _topological_nodes(model) -> list:
    return [n for d in sorted(model._nodes_by_depth, reverse=True) for n in model._nodes_by_depth[d]]


def _frontier(model, outputs, is_live: Callable[[Any], bool], replaced=None):
    """(boundary tensors, live nodes) for the part of `model`'s graph that `outputs` need.

    A node is live when its operation trains (or is random), or when it consumes a live
    tensor; the boundary is every non-live tensor a live node consumes, plus any output that
    no live node computes. The `replaced` node counts as live without its inputs joining the
    boundary (the caller cuts inside it). Live nodes come in topological order."""
    needed = _ancestor_nodes(outputs)
    live: set[int] = set()
    live_nodes: list = []
    boundary: list = []
    seen: set[int] = set()
    for node in _topological_nodes(model):
        if node.is_input or id(node) not in needed:
            continue
        inputs = node.input_tensors
        if is_live(node.operation) or any(id(t) in live for t in inputs):
            live.update(id(t) for t in node.output_tensors)
            live_nodes.append(node)
            if node is replaced:
                continue
            for t in inputs:
                if id(t) not in live and id(t) not in seen:
                    seen.add(id(t))
                    boundary.append(t)
    for t in keras.tree.flatten(outputs):
        if id(t) not in live and id(t) not in seen:
            seen.add(id(t))
            boundary.append(t)
    return boundary, live_nodes


def _frozen_work(boundary) -> bool:
    """Whether computing `boundary` runs any layer with weights (else caching saves nothing)."""
    stack, seen = list(boundary), set()
    while stack:
        node = _node_of(stack.pop())
        if id(node) in seen:
            continue
        seen.add(id(node))
        if not node.is_input and node.operation.weights:
            return True
        stack.extend(node.input_tensors)
    return False


def _trains(op) -> bool:
    return bool(op.trainable_weights)


def _is_functional(model) -> bool:
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _run_nodes(nodes, values: dict, training=None) -> None:
    """Runs graph `nodes` in order on `values` ({id(KerasTensor): tensor}), in place: the
    same layer calls a functional model makes, without adding nodes to the layers' graph."""
    for node in nodes:
        args, kwargs = node.arguments.fill_in(values)
        op = node.operation
        if training is not None and "training" in getattr(op, "_call_context_args", {}):
            kwargs["training"] = training
        outputs = op(*args, **kwargs)
        for t, v in zip(node.outputs, keras.tree.flatten(outputs)):
            values[id(t)] = v


class CachedSuffix(keras.Model):
    """The trained part of a classifier, from the cached boundary activations to its output.

    It runs the classifier's own layers (shared, so training it trains the classifier), in two
    steps: the live nodes inside the backbone, then the live nodes after it."""

    def __init__(self, boundary, inner_nodes, inner_targets, outer_inputs, outer_nodes,
                 outputs, **kwargs):
        super().__init__(**kwargs)
        self._boundary_ids = [id(t) for t in boundary]
        self._inner_nodes = list(inner_nodes)
        self._inner_target_ids = [id(t) for t in inner_targets]
        self._outer_input_ids = [id(t) for t in outer_inputs]
        # The outer part reads the inner part's targets, then the last boundary tensors.
        self._n_extra = len(outer_inputs) - len(inner_targets)
        self._outer_nodes = list(outer_nodes)
        self._output_id = id(outputs)
        ops = []
        for node in self._inner_nodes + self._outer_nodes:
            if all(node.operation is not o for o in ops):
                ops.append(node.operation)
        self.graph_layers = ops  # tracked: their weights are this model's weights
        self.built = True

    def call(self, inputs, training=None):
        values = dict(zip(self._boundary_ids, _as_list(inputs)))
        _run_nodes(self._inner_nodes, values, training)
        extra = self._boundary_ids[len(self._boundary_ids) - self._n_extra:]
        outer = dict(zip(
            self._outer_input_ids, [values[i] for i in self._inner_target_ids + extra]
        ))
        _run_nodes(self._outer_nodes, outer, training)
        return outer[self._output_id]


@dataclasses.dataclass
class CachePlan:
    """Where the stage's frozen part ends. `prefix(inputs)` -> list of boundary activations;
    `suffix` is a trainable `keras.Model` from that list to the classifier's output."""

    prefix: Callable
    suffix: keras.Model
    boundary: str
    sequence_axes: list[Optional[int]]  # per boundary tensor: the token axis, if any


def plan_cache(model, backbone_model) -> tuple[Optional[CachePlan], str]:
    """Cuts `model` (a tftune classifier) at the end of its frozen part, with trainability
    already set for the stage. Returns (plan, "") or (None, why not); the reason is empty
    when there is simply no frozen part in front of the trained layers.

    Nothing is added to the classifier's graph: the prefix is a functional model from the
    classifier's inputs, the suffix runs the graph's own nodes (`CachedSuffix`)."""
    if not _is_functional(model):
        return None, "the classifier is not a functional Keras model"
    if not model.trainable_weights or len(model.outputs) != 1:
        return None, ""
    bb_frozen = not backbone_model.trainable_weights
    if not bb_frozen and not _is_functional(backbone_model):
        return None, "the trained backbone is not a functional Keras model"

    def live_top(op):
        if op is backbone_model:
            return not bb_frozen
        return _trains(op) or _is_random(op)

    needed = _ancestor_nodes(model.outputs)
    bb_nodes = [n for n in backbone_model._inbound_nodes if id(n) in needed]
    if len(bb_nodes) != 1:
        return None, "the backbone is called more than once"
    bb_node = bb_nodes[0]
    output = model.outputs[0]

    if bb_frozen:
        boundary, outer_nodes = _frontier(model, model.outputs, live_top)
        if not _frozen_work(boundary):
            return None, ""
        inner_nodes, inner_targets, outer_inputs = [], [], boundary
        described = f"output of {', '.join(_node_of(t).operation.name for t in boundary)}"
        prefix_model = keras.Model(model.inputs, boundary)

        def prefix_fn(x, training=False):
            return _as_list(prefix_model(x, training=training))
    else:
        # What the layers after the backbone read besides its outputs (e.g. the padding mask
        # the pooling reads) is cached as is; the backbone's inputs give way to the boundary
        # inside it.
        extra, outer_nodes = _frontier(model, model.outputs, live_top, replaced=bb_node)
        outer_nodes = [n for n in outer_nodes if n is not bb_node]
        consumed = {id(t) for n in outer_nodes for t in n.input_tensors}
        top_outs = bb_node.output_tensors
        inner_outs = keras.tree.flatten(backbone_model.outputs)
        used = [i for i, t in enumerate(top_outs) if id(t) in consumed]
        inner_targets = [inner_outs[i] for i in used]
        # Inside the backbone only training layers start the live part: frozen dropout
        # (between frozen blocks, like BERT's embeddings dropout, or inside them) runs in
        # inference mode.
        inner_boundary, inner_nodes = _frontier(backbone_model, inner_targets, _trains)
        if not _frozen_work(inner_boundary):
            return None, ""  # the lowest layer group trains: nothing frozen to cache
        pre = keras.Model(model.inputs, list(bb_node.input_tensors))
        inner_prefix = keras.Model(backbone_model.inputs, inner_boundary)
        extra_model = keras.Model(model.inputs, extra) if extra else None
        bb_input_struct = backbone_model.inputs

        def prefix_fn(x, training=False):
            h = _as_list(pre(x, training=training))
            if isinstance(bb_input_struct, dict):
                h = dict(zip(bb_input_struct.keys(), h))
            elif len(h) == 1:
                h = h[0]
            out = _as_list(inner_prefix(h, training=training))
            if extra_model is not None:
                out += _as_list(extra_model(x, training=training))
            return out

        boundary = list(inner_boundary) + list(extra)
        outer_inputs = [top_outs[i] for i in used] + list(extra)
        names = sorted({_node_of(t).operation.name for t in inner_boundary})
        described = f"input of the trained blocks ({', '.join(names)} outputs)"

    suffix = CachedSuffix(
        boundary, inner_nodes, inner_targets, outer_inputs, outer_nodes, output,
        name="tftune_cached_suffix",
    )
    return CachePlan(prefix_fn, suffix, described, _sequence_axes(boundary)), ""


def _sequence_axes(tensors) -> list[Optional[int]]:
    """Axis 1 is a token axis for (batch, None, ...) tensors (text), else None."""
    return [1 if len(t.shape) >= 2 and t.shape[1] is None else None for t in tensors]


# ----------------------------------------------------------------------------------------
# the stored features


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
             sub_batch: int = 0) -> "FeatureCache":
        """Runs `plan.prefix` over `batches` of (x, y), once, in graph mode.

        With `length_fn` and `sub_batch`, each batch is a block of consecutive examples that
        runs as sub-batches of `sub_batch` texts of similar length, each trimmed to its
        longest text; the outputs are put back in the block's order. The features are the
        ones the block's own batches would give (padding is masked), with far less padding."""
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
                feats = _by_length(prefix, x, lengths, sub_batch, plan.sequence_axes)
            else:
                feats = [keras.ops.convert_to_numpy(f) for f in prefix(x)]
            self._add(feats, y, lengths, plan.sequence_axes)
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


def _by_length(prefix, x, lengths: np.ndarray, sub_batch: int, axes) -> list[np.ndarray]:
    """`prefix` over the block `x` (a dict of [n, tokens] arrays) in sub-batches of similar
    length, each trimmed to its longest text; outputs in the block's order, token axes
    zero-padded to the block's longest text."""
    x = {k: np.asarray(v) for k, v in x.items()}
    n = len(lengths)
    order = np.argsort(lengths, kind="stable")
    out: list[Optional[np.ndarray]] = []
    for first in range(0, n, sub_batch):
        rows = order[first: first + sub_batch]
        longest = max(int(lengths[rows].max()), 1)
        part = {k: v[rows, :longest] if v.ndim >= 2 else v[rows] for k, v in x.items()}
        feats = [keras.ops.convert_to_numpy(f) for f in prefix(part)]
        if not out:
            width = max(int(lengths.max()), 1)
            out = [np.zeros((n, width, *f.shape[2:]) if axis is not None else (n, *f.shape[1:]),
                            dtype=f.dtype) for f, axis in zip(feats, axes)]
        for dest, f, axis in zip(out, feats, axes):
            if axis is not None:
                dest[rows, : f.shape[1]] = f
            else:
                dest[rows] = f
    return out


def _ragged(values: Sequence[np.ndarray]):
    import tensorflow as tf

    lengths = np.asarray([len(v) for v in values], dtype=np.int64)
    flat = np.concatenate(values, axis=0) if values else np.zeros((0,))
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


def batched(ds, batch_size: int, *, shuffle_buffer: int = 0, seed: int = 0,
            bucket_boundaries: Optional[Sequence[int]] = None, pad: bool = False):
    """Cached examples -> (features, label) batches, shuffled and bucketed like the uncached
    pipeline (same buffer, seed and length buckets, so the same batches when exact)."""
    import tensorflow as tf

    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if bucket_boundaries is not None:
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
                    spill_dir: Optional[Path] = None):
    """Fills one `FeatureCache` per split and serves them like `pipe` serves the inputs:
    (train batches, val batches, [caches]); `close()` the caches after the stage."""
    caches: list[FeatureCache] = []
    served = []
    pad = any(a is not None for a in plan.sequence_axes)
    try:
        for split, training in ((train_split, True), (val_split, False)):
            fc = FeatureCache(memory_bytes, spill_dir)
            caches.append(fc)
            if pipe.length_fn is not None:  # texts: blocks run in sub-batches of similar length
                fc.fill(plan, pipe.blocks(pipe.source(split), FILL_BLOCK * pipe.batch_size),
                        pipe.length_fn, sub_batch=pipe.batch_size)
            else:
                fc.fill(plan, pipe.prepare(split, training=False))
            # Validation batches only sum losses and hits: bucketed by length, unshuffled.
            served.append(batched(
                fc.dataset(), pipe.batch_size,
                shuffle_buffer=fc.shuffle_limit(pipe.shuffle_buffer(fc.count)) if training else 0,
                seed=pipe.seed,
                bucket_boundaries=pipe.bucket_boundaries,
                pad=pad,
            ))
    except BaseException:
        for c in caches:
            c.close()
        raise
    return served[0], served[1], caches
