"""Trainability: which layer groups a stage trains, freezing the rest (with the BatchNorm
policy), and the layers no gradient reaches. Trainability changes only between stages."""

from __future__ import annotations

from typing import Sequence

from tftune.errors import ConfigError, did_you_mean
from tftune.model.backbones import LayerGroup

BN_CLASSES = ("BatchNormalization", "SyncBatchNormalization")


def selected_groups(train, groups: Sequence[LayerGroup], where: str = "train") -> list[int]:
    """Indices of the groups a stage trains: `head` -> [], `top:N`, `all`, or names."""
    names = [g.name for g in groups]
    if isinstance(train, str):
        if train == "head":
            return []
        if train == "all":
            return list(range(len(groups)))
        if train.startswith("top:"):
            n = train[4:]
            if not n.isdigit() or int(n) < 1:
                raise ConfigError(
                    f"Invalid value for '{where}': {train!r}. Expected top:N with N >= 1."
                )
            if int(n) > len(groups):
                raise ConfigError(
                    f"Invalid value for '{where}': {train!r}, but the backbone has only "
                    f"{len(groups)} layer groups ({', '.join(names)}). Use all or top:{len(groups)}."
                )
            return list(range(len(groups) - int(n), len(groups)))
        train = (train,)
    out = []
    for name in train:
        if name not in names:
            hint = did_you_mean(name, names)
            raise ConfigError(
                f"Invalid value for '{where}': unknown layer group {name!r}.{hint} Expected "
                f"'head', 'top:N', 'all' or group names: {', '.join(names)}."
            )
        out.append(names.index(name))
    return sorted(set(out))


def _all_layers(layer):
    """A layer and its sublayers, depth first."""
    yield layer
    for sub in getattr(layer, "_layers", []) or []:
        yield from _all_layers(sub)


def set_trainable(
    backbone_model,
    groups: Sequence[LayerGroup],
    train_indices: Sequence[int],
    head: Sequence,
    train_bn: bool = False,
    always_frozen: Sequence = (),
) -> None:
    """Freezes the backbone except the selected groups; the head always trains.

    Frozen BatchNormalization layers run in inference mode (Keras 3 semantics of
    `trainable=False`); with `train_bn=False` every BatchNormalization layer stays frozen,
    even inside trained groups, as the Keras fine-tuning guide advises.
    """
    backbone_model.trainable = True
    for layer in backbone_model.layers:
        layer.trainable = False
    for i in train_indices:
        for layer in groups[i].layers:
            layer.trainable = True
    if not train_bn:
        for layer in _all_layers(backbone_model):
            if type(layer).__name__ in BN_CLASSES:
                layer.trainable = False
    for layer in always_frozen:
        layer.trainable = False
    for layer in head:
        layer.trainable = True


def unused_layers(model, backbone_model, sample_inputs) -> list:
    """Backbone layers whose weights get no gradient from the classifier's output.

    (E.g. BERT's pooler when the head mean-pools tokens.) They stay frozen so optimizers do
    not carry state for them and Keras does not warn about missing gradients.
    """
    import tensorflow as tf

    backbone_model.trainable = True
    layers = [l for l in backbone_model.layers if l.trainable_weights]
    variables = [v for l in layers for v in l.trainable_weights]

    def no_gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(sample_inputs, training=False))
        grads = tape.gradient(loss, [v.value if hasattr(v, "value") else v for v in variables])
        return tf.constant([g is None for g in grads] or [False])

    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        # Distributed variables take gradients in a replica (one is enough to look).
        strategy = tf.distribute.get_strategy()
        none = strategy.experimental_local_results(strategy.run(no_gradient))[0]
    else:
        none = no_gradient()
    none = [bool(b) for b in none.numpy()]
    unused = []
    k = 0
    for layer in layers:
        n = len(layer.trainable_weights)
        if all(none[k : k + n]):
            unused.append(layer)
        k += n
    return unused


def prune_groups(groups: Sequence[LayerGroup], unused: Sequence) -> list[LayerGroup]:
    """Groups without the unused layers; groups left empty are dropped (so `top:1` on BERT
    means the last transformer block, not the pooler that a mean-pooling head never uses)."""
    drop = {id(l) for l in unused}
    out = []
    for g in groups:
        kept = [l for l in g.layers if id(l) not in drop]
        if kept:
            out.append(LayerGroup(g.name, kept))
    return out


def count_trainable(model) -> int:
    import numpy as np

    return int(sum(np.prod(v.shape) for v in model.trainable_weights))
