"""Ordered layer groups: the units that stages freeze and unfreeze, bottom to top.

Rules, tried in order:
1. User patterns (`backbone.groups`): each group takes the layers whose name matches its regex
   (first match wins, in the order listed); layers with weights matched by no pattern form a
   group `other` placed first (lowest).
2. Transformers (KerasHub text and vision backbones): a run of two or more same-class layers
   with weights is the block stack; one group per block, `embeddings` for everything with
   weights before it and `final` for everything after it. A layer that holds the whole stack
   itself (KerasHub's `ViTEncoder`: its blocks, then a LayerNorm) is opened up first, so
   its blocks are groups of their own.
3. CNNs (feature maps): layers are gathered into blocks by name (`block_3_*`, `block2a_*`,
   `conv2_block1_*`, ...), and consecutive blocks with the same output resolution (that of a
   block's last feature map) form a stage: `stem` (the first resolution, with any input
   preprocessing layers), then `stage_1`, `stage_2`, ... up to the last.
4. Anything else: the layers with weights, in order, split into `backbone.generic_groups`
   chunks of roughly equal parameter count (`part_1` ... `part_N`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from tftune.config import GroupPattern
from tftune.errors import BackboneError


@dataclasses.dataclass
class LayerGroup:
    """A named, ordered set of backbone layers that train or freeze together."""

    name: str
    layers: list  # keras layers

    @property
    def num_params(self) -> int:
        return int(sum(_count(l) for l in self.layers))


def _count(layer) -> int:
    import numpy as np

    return int(sum(np.prod(v.shape) for v in layer.weights))


def _weighted(layers) -> list:
    return [l for l in layers if l.weights]


def _pattern_groups(layers, patterns: Sequence[GroupPattern]) -> list[LayerGroup]:
    compiled = []
    for p in patterns:
        try:
            compiled.append((p.name, re.compile(p.pattern)))
        except re.error as e:
            raise BackboneError(
                f"backbone.groups pattern {p.pattern!r} for group {p.name!r} is not a valid "
                f"regular expression: {e}"
            ) from None
    buckets: dict[str, list] = {name: [] for name, _ in compiled}
    other = []
    for layer in _weighted(layers):
        for name, rx in compiled:
            if rx.search(layer.name):
                buckets[name].append(layer)
                break
        else:
            other.append(layer)
    empty = [n for n, ls in buckets.items() if not ls]
    if empty:
        raise BackboneError(
            f"backbone.groups: group {empty[0]!r} matches no layer with weights. Run "
            f"`tftune inspect <backbone spec> --layers` to see the layer names."
        )
    groups = [LayerGroup("other", other)] if other else []
    return groups + [LayerGroup(n, ls) for n, ls in buckets.items()]


def _transformer_groups(layers) -> list[LayerGroup] | None:
    weighted = _weighted(layers)
    classes = [type(l).__name__ for l in weighted]
    best = (0, 0)
    i = 0
    while i < len(weighted):
        j = i
        while j + 1 < len(weighted) and classes[j + 1] == classes[i]:
            j += 1
        # A block stack: repeated layers that each hold attention-sized weight sets.
        if j > i and (j - i + 1) > best[1] - best[0] and len(weighted[i].weights) >= 8:
            best = (i, j + 1)
        i = j + 1
    start, end = best
    if end - start < 2:
        return None
    groups = []
    if start:
        groups.append(LayerGroup("embeddings", weighted[:start]))
    groups += [LayerGroup(f"block_{k}", [l]) for k, l in enumerate(weighted[start:end])]
    if end < len(weighted):
        groups.append(LayerGroup("final", weighted[end:]))
    return groups


_BLOCK_RX = re.compile(r"^(.*?block_?\d+[a-z]?)(?:_|$)")


def _spatial(layer) -> int | None:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4:
        return None
    return shape[1] if shape[1] is not None else -1


def _is_preprocessing(layer) -> bool:
    """Input preprocessing layers (Rescaling, Normalization) that some CNNs start with."""
    return ".preprocessing." in type(layer).__module__


def _cnn_groups(layers) -> list[LayerGroup] | None:
    units: list[tuple[str, list]] = []
    for layer in layers:
        m = _BLOCK_RX.match(layer.name)
        key = m.group(1) if m else f"__{layer.name}"
        if units and units[-1][0] == key:
            units[-1][1].append(layer)
        else:
            units.append((key, [layer]))
    stages: list[list] = []
    last_res = None
    for _, unit in units:
        # A unit's resolution is that of its output (its last feature map), not the smallest
        # inside it: squeeze-and-excitation branches are 1x1 in every block.
        res = [r for r in (_spatial(l) for l in unit) if r is not None]
        counts = bool(res) and any(l.weights and not _is_preprocessing(l) for l in unit)
        unit_res = res[-1] if counts else None
        if stages and unit_res is not None and last_res is not None and unit_res != last_res:
            stages.append(list(unit))
        elif stages:
            stages[-1].extend(unit)
        else:
            stages.append(list(unit))
        if unit_res is not None:
            last_res = unit_res
    stages = [s for s in stages if _weighted(s)]
    if len(stages) < 2:
        return None
    return [
        LayerGroup("stem" if k == 0 else f"stage_{k}", _weighted(s)) for k, s in enumerate(stages)
    ]


def _generic_groups(layers, n: int) -> list[LayerGroup]:
    weighted = _weighted(layers)
    if not weighted:
        raise BackboneError("The backbone has no layers with weights: there is nothing to fine-tune.")
    n = max(1, min(n, len(weighted)))
    total = sum(_count(l) for l in weighted)
    groups: list[list] = [[] for _ in range(n)]
    acc = 0
    for layer in weighted:
        k = min(n - 1, int(acc * n / max(total, 1)))
        groups[k].append(layer)
        acc += _count(layer)
    groups = [g for g in groups if g]
    return [LayerGroup(f"part_{k + 1}", g) for k, g in enumerate(groups)]


def _opened(layers) -> list:
    """`layers`, with each (non-model) layer that holds a block stack replaced by its direct
    sublayers in the order it created them: a stack is two or more sublayers of one class
    with attention-sized weight sets (>= 8 variables each), as `_transformer_groups` wants."""
    import keras

    out = []
    for layer in layers:
        subs = [] if isinstance(layer, keras.Model) else list(
            layer._flatten_layers(include_self=False, recursive=False))
        classes = [type(l).__name__ for l in subs if len(l.weights) >= 8]
        if any(classes.count(c) >= 2 for c in set(classes)):
            out.extend(subs)
        else:
            out.append(layer)
    return out


def layer_groups(
    model, patterns: Sequence[GroupPattern] = (), generic_groups: int = 4
) -> list[LayerGroup]:
    """The ordered (bottom to top) layer groups of a backbone model; see the module doc."""
    layers = _opened([l for l in model.layers if not l.name.startswith("input")])
    if patterns:
        return _pattern_groups(layers, patterns)
    return (
        _transformer_groups(layers)
        or _cnn_groups(layers)
        or _generic_groups(layers, generic_groups)
    )
