"""Parameter-efficient fine-tuning at the layer level: which variables a stage's `peft` mode
trains, Keras's own LoRA adapters (`layer.enable_lora`), merging them into the kernels, and
the adapters stored on their own (`tftune.model.adapters`).

Modes (`stages.N.peft`), within the layer groups the stage selects (the head always trains
fully; everything outside the groups stays frozen):

- `none`: every weight of the groups trains. Adapters of earlier LoRA stages inside the
  groups are first merged into their kernels (`kernel += alpha/rank * A @ B`, then `B = 0`),
  so the kernel trains alone and the model computes exactly what it computed before.
- `lora`: only the adapters of the targeted layers train (created the first time a stage
  targets a layer; kept, frozen, by later stages).
- `lora_bias`: the adapters and every bias (as in BitFit: Dense / EinsumDense / Conv
  biases and normalization layers' shifts, `beta`).
- `lora_norm`: the adapters and the normalization layers' scale and shift (`gamma`, `beta`).
- `bitfit`: every bias, no adapters.
- `norm`: the normalization layers only.

A layer left with nothing to train is frozen as a whole (a BatchNormalization layer then
runs in inference mode, and the feature cache sees it frozen); normalization layers whose
parameters the mode trains (`bitfit`, `lora_bias`: the shift; `norm`, `lora_norm`: both)
train even with `backbone.train_bn: false`, since a BatchNorm CNN has no other biases; a
BatchNormalization layer then keeps normalizing with its moving statistics (batch
statistics with `train_bn: true`).

Default LoRA targets: KerasHub's attention query / value projections in a transformer;
otherwise the top-most Dense / Conv layer of each selected group (`default_targets`).

`peft_base: int8` (`quantize_base`): before the adapters go on, the groups' Dense /
EinsumDense kernels are quantized with Keras's own `layer.quantize("int8")`; the adapters,
biases and norms train in float. model.keras is then the float model
(`adapters.saved_form`: dequantized kernels plus merged adapters), and adapters.json lists
the quantized layers so `adapters.rebuild` quantizes the same ones.

Adapters are created with a seeded initializer (from the run's seed, the stage and the
layer's path), so re-creating them in a resumed run, before the checkpoint is restored,
gives the same variables as in the uninterrupted run.
"""

from __future__ import annotations

import functools
import re
import types
import zlib
from typing import Iterable, Optional, Sequence

from tftune.errors import ConfigError, TftuneError

MODES = ("none", "lora", "lora_bias", "lora_norm", "bitfit", "norm")
LORA_MODES = ("lora", "lora_bias", "lora_norm")
BIAS_MODES = ("lora_bias", "bitfit")
NORM_MODES = ("lora_norm", "norm")
# KerasHub's `Backbone.default_lora_layer_names()`: the attention query and value projections.
TRANSFORMER_TARGETS = ("query", "value", "query_dense", "value_dense")
ADAPTERS_FILE = "adapters.weights.npz"
ADAPTERS_INFO = "adapters.json"


def all_layers(layer) -> Iterable:
    """A layer and its sublayers, depth first."""
    yield layer
    for sub in getattr(layer, "_layers", []) or []:
        yield from all_layers(sub)


def _group_layers(groups: Sequence) -> list:
    out, seen = [], set()
    for g in groups:
        for top in g.layers:
            for layer in all_layers(top):
                if id(layer) not in seen:
                    seen.add(id(layer))
                    out.append(layer)
    return out


def can_adapt(layer) -> bool:
    """Whether Keras can put LoRA adapters on `layer` (Dense, EinsumDense, Conv, Embedding)."""
    import keras
    from keras.src.layers.convolutional.base_conv import BaseConv

    return isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense, BaseConv,
                              keras.layers.Embedding))


def is_norm(layer) -> bool:
    """Normalization layers (Layer / Batch / Group / RMS normalization, KerasHub's too)."""
    return "Norm" in type(layer).__name__


def lora_parts(layer):
    """(base weight, A, B) of a LoRA-enabled layer."""
    if hasattr(layer, "lora_embeddings_a"):
        return layer._embeddings, layer.lora_embeddings_a, layer.lora_embeddings_b
    return layer._kernel, layer.lora_kernel_a, layer.lora_kernel_b


def adapter_variables(layer) -> list:
    return list(lora_parts(layer)[1:]) if getattr(layer, "lora_enabled", False) else []


def is_adapter(variable) -> bool:
    return variable.name.startswith(("lora_kernel_", "lora_embeddings_"))


# -- targets -------------------------------------------------------------------------------


def default_targets(groups: Sequence) -> tuple[str, ...]:
    """Transformers (a layer named like KerasHub's attention query / value projections):
    those. Anything else (CNNs, users' models): the top-most Dense / EinsumDense / Conv layer
    of each group (the one whose output leaves the group; not embeddings), one adapter per
    group. Adapting every convolution of MobileNetV2's top two groups at rank 8 made an
    adapters file of 9.6 % of model.keras; one per group makes 1.3 % (the head included)."""
    import keras

    layers = _group_layers(groups)
    if any(l.name in TRANSFORMER_TARGETS for l in layers if can_adapt(l)):
        return TRANSFORMER_TARGETS
    picked = []
    for g in groups:
        convs = [l for l in _group_layers([g])
                 if can_adapt(l) and not isinstance(l, keras.layers.Embedding)]
        if convs:
            picked.append(convs[-1].path)
    return tuple("^" + re.escape(p) + "$" for p in picked)


def target_layers(groups: Sequence, targets: Optional[Sequence[str]], where: str) -> list:
    """The adaptable layers of `groups` the `targets` regexes pick (full match on the name
    or search in the path); `None` = `default_targets`. ConfigError for a bad regex or when
    nothing matches."""
    layers = _group_layers(groups)
    patterns = tuple(targets) if targets is not None else default_targets(groups)
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ConfigError(
                f"Invalid value for '{where}.lora.targets': {p!r} is not a regular expression "
                f"({e}). Expected regexes matching layer names or paths."
            ) from None
    picked = [l for l in layers if can_adapt(l) and any(
        c.fullmatch(l.name) or c.search(l.path) for c in compiled)]
    if not picked:
        names = sorted({l.name for l in layers if can_adapt(l)})
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise ConfigError(
            f"Invalid value for '{where}.lora.targets': {list(patterns)} match no Dense / "
            f"EinsumDense / Conv / Embedding layer in the groups the stage trains. Expected "
            f"regexes matching some of: {shown or '(none: the groups have no such layer)'}."
        )
    return picked


# -- adapters ------------------------------------------------------------------------------


def _seed(seed: int, stage_index: int, path: str) -> int:
    return zlib.crc32(f"{seed}/{stage_index}/{path}".encode()) & 0x7FFFFFFF


def enable(layers: Sequence, rank: int, alpha: float, seed: int, stage_index: int) -> int:
    """Puts adapters on the layers that have none yet (A seeded from the layer's path, B
    zero: the model's outputs do not change); returns how many were created. A layer that
    already has adapters keeps them (a resumed run, or a later stage targeting it again)."""
    import keras

    made = 0
    for layer in layers:
        if not getattr(layer, "lora_enabled", False):
            init = keras.initializers.HeUniform(seed=_seed(seed, stage_index, layer.path))
            layer.enable_lora(int(rank), lora_alpha=float(alpha), a_initializer=init)
            made += 1
        factor(layer)
    return made


# -- the factored forward pass ----------------------------------------------------------------


def _factored_equations(equation: str) -> Optional[tuple[str, str]]:
    """For an EinsumDense `x, kernel -> y` whose kernel's last axis is an output axis only:
    (`x, A -> y'`, `y', B -> y`), y' being y with that axis replaced by the rank's."""
    inputs, out = equation.replace(" ", "").split("->")
    x_spec, k_spec = inputs.split(",")
    last = k_spec[-1]
    rank = next(c for c in "rstuvwxyzqponm" if c not in equation)
    if last in x_spec or out.count(last) != 1 or "." in equation:
        return None
    mid = out.replace(last, rank)
    return f"{x_spec},{k_spec[:-1]}{rank}->{mid}", f"{mid},{rank}{last}->{out}"


def _factored_call(self, inputs, training=None):
    from keras import ops

    dt = self.compute_dtype
    full, first, second = self._tftune_products
    x = full(inputs, ops.cast(self._kernel, dt))
    low = second(first(inputs, ops.cast(self.lora_kernel_a, dt)), ops.cast(self.lora_kernel_b, dt))
    x = ops.add(x, ops.multiply(low, self.lora_alpha / self.lora_rank))
    if self.bias is not None:
        x = ops.add(x, self.bias)
    return self.activation(x) if self.activation is not None else x


def factor(layer) -> bool:
    """Makes a float LoRA Dense / EinsumDense layer compute `x W + s (x A) B` instead of
    Keras's `x (W + s A B)`: the same function (to rounding), but the backward pass no
    longer forms the full kernel's gradient only to project it onto A and B, so an adapted
    layer costs a frozen layer's backward plus rank-sized products. Other layers (int8,
    convolutions, embeddings, subclasses) keep Keras's own path. Returns whether it did."""
    import keras

    if not getattr(layer, "lora_enabled", False) or is_int8(layer):
        return False
    from keras import ops

    if type(layer) is keras.layers.Dense:
        products = (ops.matmul, ops.matmul, ops.matmul)
    elif type(layer) is keras.layers.EinsumDense and _factored_equations(layer.equation):
        first, second = _factored_equations(layer.equation)
        products = (functools.partial(ops.einsum, layer.equation),
                    functools.partial(ops.einsum, first), functools.partial(ops.einsum, second))
    else:
        return False
    object.__setattr__(layer, "_tftune_products", products)
    object.__setattr__(layer, "call", types.MethodType(_factored_call, layer))
    return True


def merge_in_place(layer) -> None:
    """`base += alpha/rank * A @ B`, then `B = 0`: the layer computes the same, the delta now
    lives in the kernel (idempotent: a merged layer's B is zero)."""
    from keras import ops

    base, a, b = lora_parts(layer)
    delta = (layer.lora_alpha / layer.lora_rank) * ops.matmul(a, b)
    base.assign(ops.cast(ops.add(ops.cast(base, "float32"), delta), base.dtype))
    b.assign(ops.zeros(b.shape, b.dtype))


# -- what the stages tune (for the adapters file) -------------------------------------------

TUNED = "_tftune_peft_tuned"  # set on a layer whose bias / normalization variables a stage tunes


def mark_tuned(groups: Sequence, mode: str) -> None:
    """Marks the layers of `groups` whose biases (`bitfit`, `lora_bias`) or normalization
    variables (those and `norm`, `lora_norm`) the stage tunes, so the adapters file stores
    only what changed from the base. Called with the adapters (a resumed run marks the
    stages before its checkpoint too)."""
    if mode not in BIAS_MODES + NORM_MODES:
        return
    for layer in _group_layers(groups):
        if getattr(layer, "_layers", None):
            continue
        if is_norm(layer) or (mode in BIAS_MODES and getattr(layer, "bias", None) is not None):
            object.__setattr__(layer, TUNED, True)


# -- the int8 base (`peft_base: int8`) -------------------------------------------------------


def is_int8(layer) -> bool:
    return getattr(layer.dtype_policy, "quantization_mode", None) == "int8"


def quantizable(layer) -> bool:
    """Layers Keras 3.15's `quantize("int8")` takes and that dequantize exactly here: Dense
    and EinsumDense (not subclasses). Convolutions have no int8 mode in Keras; embeddings
    stay float."""
    import keras

    return type(layer) in (keras.layers.Dense, keras.layers.EinsumDense)


def quantize_base(layers) -> int:
    """Quantizes the Dense / EinsumDense kernels with Keras's own
    `layer.quantize("int8")` (per output channel, abs-max; inputs quantized per call), before
    any adapter is put on them; layers already int8 are left. Takes a model or a list of layers (with their sublayers); returns how many it
    quantized.
    Deterministic (a function of the float kernel), so a resumed run re-quantizes the base
    the same way before its checkpoint is restored."""
    made = 0
    for layer in _group_layers([types.SimpleNamespace(layers=list(
            layers if isinstance(layers, (list, tuple)) else [layers]))]):
        if quantizable(layer) and layer.built and not is_int8(layer):
            if getattr(layer, "lora_enabled", False):
                raise TftuneError(
                    f"Cannot quantize {layer.path}: it already has LoRA adapters. Put "
                    f"peft_base: int8 on the first LoRA stage."
                )
            layer.quantize("int8")
            made += 1
    return made


def float_kernel(layer):
    """The float kernel an int8 Dense / EinsumDense layer computes with (`int8 / scale`),
    with its LoRA update added; a float layer's merged kernel as Keras saves it."""
    from keras import ops

    if not is_int8(layer):
        store: dict = {}
        layer.save_own_variables(store)
        return store["0"]
    scale = layer.kernel_scale
    if hasattr(layer, "_adjust_scale_for_dequant"):  # EinsumDense: the scale's layout
        scale = layer._adjust_scale_for_dequant(scale)
    kernel = ops.divide(ops.cast(layer._kernel, "float32"), scale)
    if getattr(layer, "lora_enabled", False):
        kernel = ops.add(kernel, (layer.lora_alpha / layer.lora_rank)
                         * ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b))
    return ops.convert_to_numpy(kernel)


# -- trainability ---------------------------------------------------------------------------


def _kept(layer, v, mode: str, adapting: bool) -> bool:
    """Whether variable `v` of `layer` trains in PEFT `mode`."""
    if is_adapter(v):
        return adapting
    if is_norm(layer):
        return mode in NORM_MODES or (mode in BIAS_MODES and v.name == "beta")
    return v.name == "bias" and mode in BIAS_MODES


def _moving_statistics_call(self, inputs, training=None, mask=None):
    return type(self).call(self, inputs, training=False, mask=mask)


def use_moving_statistics(layer, on: bool) -> None:
    """A BatchNormalization layer that trains its scale / shift but normalizes with its
    moving statistics, never batch statistics, and leaves them unchanged (`on`), or Keras's
    own behaviour back (not `on`)."""
    import keras

    if not isinstance(layer, keras.layers.BatchNormalization):
        return
    if on:
        object.__setattr__(layer, "call", types.MethodType(_moving_statistics_call, layer))
    else:
        layer.__dict__.pop("call", None)


def apply_mode(groups: Sequence, mode: str, targets: Sequence = (), train_bn: bool = False) -> None:
    """Sets the variables of the (already unfrozen) `groups` for `mode`; `targets` are the
    LoRA layers that train. Call after `trainable.set_trainable`, which leaves every variable
    of a trainable layer trainable.

    In the PEFT modes a leaf layer left with nothing to train is frozen as a whole (so a
    BatchNormalization layer runs in inference mode, and the feature cache sees it frozen).
    Normalization layers whose parameters the mode trains train even under
    `backbone.train_bn: false`; a BatchNormalization layer then normalizes with its moving
    statistics, as a frozen one does, and only its scale / shift learn (with batch
    statistics, the statistics a short PEFT stage sees differ from those inference uses:
    MobileNetV2's `bitfit` / `norm` / `lora_bias` stages stayed near chance on
    Fashion-MNIST in `bench/peft.py`). With `train_bn: true` they use batch statistics.
    "Bias" follows BitFit: Dense / EinsumDense / Conv biases and normalization layers'
    shifts (`beta`)."""
    layers = _group_layers(groups)
    for layer in layers:
        use_moving_statistics(layer, False)
    training = {id(l) for l in targets} if mode in LORA_MODES else set()
    for layer in layers:
        if getattr(layer, "lora_enabled", False) and id(layer) not in training:
            if mode == "none":
                merge_in_place(layer)
                lora_parts(layer)[0].trainable = True  # enable_lora froze it
            for v in adapter_variables(layer):
                v.trainable = False
    if mode == "none":
        return
    for layer in layers:
        leaf = not getattr(layer, "_layers", None)  # a container's sublayers come on their own
        if leaf and is_norm(layer) and mode in NORM_MODES + BIAS_MODES:
            layer.trainable = True  # also BatchNormalization under train_bn: false
            use_moving_statistics(layer, not train_bn)
        if not layer.trainable:
            continue
        kept = 0
        for v in layer._trainable_variables:
            v.trainable = _kept(layer, v, mode, id(layer) in training)
            kept += v.trainable
        if leaf and not kept:
            layer.trainable = False
