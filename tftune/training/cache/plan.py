"""Where a stage's frozen part ends: cut the classifier's Keras graph into a *prefix* (model
inputs -> the activations at the boundary) and a *suffix* (`CachedSuffix`, a `keras.Model`
from those activations to the output that shares the classifier's layers and weights)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import keras

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
