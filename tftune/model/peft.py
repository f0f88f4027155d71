"""Parameter-efficient fine-tuning at the layer level: which variables a stage's `peft` mode
trains, Keras's own LoRA adapters (`layer.enable_lora`), merging them into the kernels, and
the adapters stored on their own.

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
train even with `backbone.train_bn: false`, in training mode (batch statistics), since a
BatchNorm CNN has no other biases.

Default LoRA targets: KerasHub's attention query / value projections in a transformer;
otherwise the top-most Dense / Conv layer of each selected group (`default_targets`).

`peft_base: int8` (`quantize_base`): before the adapters go on, the groups' Dense /
EinsumDense kernels are quantized with Keras's own `layer.quantize("int8")`; the adapters,
biases and norms train in float. model.keras is then the float model (`saved_form`:
dequantized kernels plus merged adapters), and adapters.json lists the quantized layers so
`rebuild` quantizes the same ones.

Adapters are created with a seeded initializer (from the run's seed, the stage and the
layer's path), so re-creating them in a resumed run, before the checkpoint is restored,
gives the same variables as in the uninterrupted run.
"""

from __future__ import annotations

import json
import re
import types
import zlib
from pathlib import Path
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


def _parts(layer):
    """(base weight, A, B) of a LoRA-enabled layer."""
    if hasattr(layer, "lora_embeddings_a"):
        return layer._embeddings, layer.lora_embeddings_a, layer.lora_embeddings_b
    return layer._kernel, layer.lora_kernel_a, layer.lora_kernel_b


def adapter_variables(layer) -> list:
    return list(_parts(layer)[1:]) if getattr(layer, "lora_enabled", False) else []


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
        if getattr(layer, "lora_enabled", False):
            continue
        init = keras.initializers.HeUniform(seed=_seed(seed, stage_index, layer.path))
        layer.enable_lora(int(rank), lora_alpha=float(alpha), a_initializer=init)
        made += 1
    return made


def merge_in_place(layer) -> None:
    """`base += alpha/rank * A @ B`, then `B = 0`: the layer computes the same, the delta now
    lives in the kernel (idempotent: a merged layer's B is zero)."""
    from keras import ops

    base, a, b = _parts(layer)
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


def apply_mode(groups: Sequence, mode: str, targets: Sequence = ()) -> None:
    """Sets the variables of the (already unfrozen) `groups` for `mode`; `targets` are the
    LoRA layers that train. Call after `trainable.set_trainable`, which leaves every variable
    of a trainable layer trainable.

    In the PEFT modes a leaf layer left with nothing to train is frozen as a whole (so a
    BatchNormalization layer runs in inference mode, and the feature cache sees it frozen);
    normalization layers whose parameters the mode trains train even under
    `backbone.train_bn: false`. "Bias" follows BitFit: Dense / EinsumDense / Conv biases
    and normalization layers' shifts (`beta`)."""
    layers = _group_layers(groups)
    training = {id(l) for l in targets} if mode in LORA_MODES else set()
    for layer in layers:
        if getattr(layer, "lora_enabled", False) and id(layer) not in training:
            if mode == "none":
                merge_in_place(layer)
                _parts(layer)[0].trainable = True  # enable_lora froze it
            for v in adapter_variables(layer):
                v.trainable = False
    if mode == "none":
        return
    for layer in layers:
        leaf = not getattr(layer, "_layers", None)  # a container's sublayers come on their own
        if leaf and is_norm(layer) and mode in NORM_MODES + BIAS_MODES:
            layer.trainable = True  # also BatchNormalization under train_bn: false
        if not layer.trainable:
            continue
        kept = 0
        for v in layer._trainable_variables:
            v.trainable = _kept(layer, v, mode, id(layer) in training)
            kept += v.trainable
        if leaf and not kept:
            layer.trainable = False


# -- the plain model and the stored adapters ----------------------------------------------


def _strip_lora(obj):
    """A model config without LoRA settings and with int8 layers made float32."""
    if isinstance(obj, dict):
        name = str(obj.get("class_name", ""))
        if name.endswith("QuantizedDTypePolicy"):  # a layer's config
            return obj["config"].get("source_name") or "float32"
        if name == "DTypePolicyMap":  # a KerasHub backbone's per-layer (int8) policies
            return _strip_lora(obj["config"].get("default_policy")) or "float32"
        return {k: _strip_lora(v) for k, v in obj.items() if k not in ("lora_rank", "lora_alpha")}
    if isinstance(obj, list):
        return [_strip_lora(v) for v in obj]
    return obj


def has_lora(model) -> bool:
    return any(getattr(l, "lora_enabled", False) for l in all_layers(model))


def has_int8(model) -> bool:
    return any(is_int8(l) for l in all_layers(model))


def merge_lora(model):
    """A plain float copy of `model`: each adapted layer's kernel holds
    `kernel + alpha/rank * A @ B` (as Keras saves it), each int8 layer's kernel is its
    dequantized kernel (`int8 / scale`, what training computed with) plus its adapters, and
    no adapter or int8 variables or ops are left (for model.keras, export and inference).
    `model` itself when it has neither."""
    import keras

    if not has_lora(model) and not has_int8(model):
        return model
    config = _strip_lora(keras.saving.serialize_keras_object(model))
    plain = keras.saving.deserialize_keras_object(config)
    src, dst = list(all_layers(model)), list(all_layers(plain))
    if [type(l) for l in src] != [type(l) for l in dst]:
        raise TftuneError("Cannot merge the LoRA adapters: the rebuilt model's layers differ.")
    for a, b in zip(src, dst):
        store: dict = {}
        a.save_own_variables(store)  # Dense / EinsumDense / Conv / Embedding merge LoRA here
        if is_int8(a):  # Keras would re-quantize the merged kernel: keep it float instead
            store = {"0": float_kernel(a), **({"1": a.bias} if a.bias is not None else {})}
        if store:
            b.load_own_variables(store)
    return plain


def _base_reference(spec: str, weights: Optional[str]) -> dict:
    """The backbone spec, its weights setting and the sha256 of the base weights file when
    there is one (a local preset's weights, a weights file, an `asset:`, a `.keras` file)."""
    from tftune.rundir.checkpoint import _sha256

    ref: dict = {"spec": spec, "weights": weights}
    kind, _, target = spec.partition(":")
    candidates = []
    asset = target[len("asset:"):] if target.startswith("asset:") else None
    if kind == "keras_applications" and weights and weights.startswith("asset:"):
        asset = weights[len("asset:"):]
    if asset:  # a bundled asset: its files' sha256 as the manifest pins them
        from tftune.assets.manifest import load_manifest

        ref["asset"] = asset
        ref["files"] = {f.path: f.sha256 for f in load_manifest().get(asset).files}
        return ref
    if kind in ("keras_hub", "hf") and Path(target).expanduser().is_dir():
        folder = Path(target).expanduser()
        candidates = sorted(folder.glob("*.weights.h5")) + sorted(folder.glob("*.safetensors"))
    elif kind == "keras" and Path(target).expanduser().is_file():
        candidates = [Path(target).expanduser()]
    elif kind == "keras_applications" and weights and Path(weights).expanduser().is_file():
        candidates = [Path(weights).expanduser()]
    if candidates:
        ref["files"] = {p.name: _sha256(p) for p in candidates}
    return ref


def stored_variables(model, backbone_model) -> list:
    """What differs from the base when only head / PEFT stages trained: every variable
    outside the backbone (the head), and in the backbone the adapters and the biases and
    normalization variables (with BatchNorm statistics) of the layers a stage tuned
    (`mark_tuned`). An int8 base's kernels and scales are not stored: re-quantizing the
    base gives them again."""
    inside = {id(v) for v in backbone_model.variables}
    # (not the dropout's random state: a rebuilt head numbers its seed generator differently)
    out = [v for v in model.variables if id(v) not in inside and v.name != "seed_generator_state"]
    for layer in all_layers(backbone_model):
        tuned = getattr(layer, TUNED, False)
        if is_norm(layer):
            if tuned:
                out.extend(layer._trainable_variables + layer._non_trainable_variables)
        else:
            out.extend(v for v in layer._trainable_variables + layer._non_trainable_variables
                       if is_adapter(v) or (tuned and v.name == "bias"))
    return out


def save_adapters(model, backbone_model, run: Path, spec: str, weights: Optional[str]) -> Path:
    """Writes `adapters.weights.npz` ({variable path: array} of `stored_variables`) and
    `adapters.json` (the base reference, the adapted layers' rank and alpha) into `run`."""
    import numpy as np

    from tftune.rundir.io import atomic_write, write_text

    variables = stored_variables(model, backbone_model)
    arrays = {v.path: np.asarray(v.numpy()) for v in variables}
    layers = {l.path: {"rank": int(l.lora_rank), "alpha": float(l.lora_alpha)}
              for l in all_layers(backbone_model) if getattr(l, "lora_enabled", False)}
    path = run / ADAPTERS_FILE

    def write(p):
        with open(p, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    base = _base_reference(spec, weights)
    quantized = [l.path for l in all_layers(backbone_model) if is_int8(l)]
    if quantized:  # peft_base: int8: the adapters trained on the base quantized this way
        base["quantization"] = {"mode": "int8", "layers": quantized}
    info = {"base": base, "lora_layers": layers,
            "variables": len(arrays), "parameters": int(sum(a.size for a in arrays.values()))}
    write_text(run / ADAPTERS_INFO, json.dumps(info, indent=1) + "\n")
    return path


def load_adapters(model, backbone_model, run: Path, seed: int = 0) -> None:
    """Puts a run's stored adapters onto `model` built from the base backbone (with the
    run's head): quantizes the base to int8 first when the run's was (`peft_base: int8`),
    enables LoRA on the layers `adapters.json` names, then assigns every stored variable by
    path. Raises TftuneError when the model does not have them."""
    import numpy as np

    info = json.loads((run / ADAPTERS_INFO).read_text())
    quantization = info["base"].get("quantization")
    by_path = {l.path: l for l in all_layers(backbone_model)}
    for path in list(info["lora_layers"]) + list((quantization or {}).get("layers", [])):
        if path not in by_path:
            raise TftuneError(f"The base model has no layer {path!r} named in {run / ADAPTERS_INFO}.")
    if quantization:  # the same layers as in training, before the adapters go on them
        quantize_base([by_path[p] for p in quantization["layers"]])
    for path, meta in info["lora_layers"].items():
        enable([by_path[path]], meta["rank"], meta["alpha"], seed, 0)
    variables = {v.path: v for v in model.variables}
    with np.load(run / ADAPTERS_FILE, allow_pickle=False) as data:
        missing = [k for k in data.files if k not in variables]
        if missing:
            raise TftuneError(
                f"{run / ADAPTERS_FILE} holds variables this model does not have: "
                f"{', '.join(missing[:5])}. Build the model from the run's base and head."
            )
        for k in data.files:
            variables[k].assign(data[k])


def saved_form(model):
    """What model.keras holds: the model itself (Keras folds the adapters into the kernels
    when it saves), or, for an int8 base, its plain float copy (`merge_lora`: the
    dequantized kernels plus the adapters), since Keras would re-quantize the merged kernels
    and round most of the adapters' update away."""
    return merge_lora(model) if has_int8(model) else model


def rebuild(run, adapters: Optional[Path] = None):
    """The run's model rebuilt from its base and its adapters file, for a finished run
    (`tftune.rundir.reader.FinishedRun`) that has one: the backbone loaded from the spec in
    the run's config (its files checked against the sha256 in adapters.json), the run's
    head, `load_adapters`, then `merge_lora` (a plain float model, as model.keras loads).
    `adapters`: the folder holding adapters.weights.npz + adapters.json (default: the run
    directory; an `adapters` export). TftuneError when there is no adapters file (a stage
    trained whole backbone groups, or no stage was PEFT) or the base changed."""
    from tftune.model.backbones import load_backbone
    from tftune.model.heads import build_classifier

    folder = Path(adapters) if adapters is not None else run.path
    if not (folder / ADAPTERS_FILE).is_file() or not (folder / ADAPTERS_INFO).is_file():
        raise TftuneError(
            f"{folder} has no {ADAPTERS_FILE} and {ADAPTERS_INFO}: only runs whose stages are "
            f"head or PEFT stages (peft: lora, lora_bias, lora_norm, bitfit, norm) store "
            f"adapters. Load the run's model.keras instead."
        )
    stored = json.loads((folder / ADAPTERS_INFO).read_text())["base"]
    b = run.config.backbone
    if b.spec.startswith("keras_applications:") and b.weights in (None, "none"):
        raise TftuneError(
            f"Run {run.path} trained on a randomly initialised base (backbone.weights: none), "
            f"so its adapters cannot rebuild it. Load the run's model.keras instead."
        )
    now = _base_reference(b.spec, b.weights)
    if now.get("files") != stored.get("files") or now["spec"] != stored["spec"]:
        raise TftuneError(
            f"The base of {folder / ADAPTERS_INFO} changed since training: it names "
            f"{stored['spec']} with files {stored.get('files')}, the run's backbone is now "
            f"{now['spec']} with files {now.get('files')}. Restore that base, or load the "
            f"run's model.keras instead."
        )
    backbone = load_backbone(b, run.image_size)
    model = build_classifier(backbone, run.task, run.config.head, run.image_size)
    load_adapters(model, backbone.model, folder, run.config.train.seed)
    return merge_lora(model)


# -- best weights across stages that added adapters ------------------------------------------


INT8_MARK = "int8:"


def adapted_layers(model) -> list[str]:
    """Paths of the layers with adapters now, and `int8:<path>` of the int8 ones (to restore
    weights taken at this point)."""
    return ([l.path for l in all_layers(model) if getattr(l, "lora_enabled", False)]
            + [INT8_MARK + l.path for l in all_layers(model) if is_int8(l)])


def _requantize(layer, kernel) -> None:
    """Puts float `kernel` into int8 `layer` as Keras's `quantize("int8")` would have: on
    a float twin of the layer, quantized, whose int8 kernel and scale are copied over."""
    import keras

    config = _strip_lora(keras.saving.serialize_keras_object(layer))
    twin = keras.saving.deserialize_keras_object(config)
    if not twin.built:  # (deserializing builds it from the build config already)
        twin.build_from_config(layer.get_build_config())
    twin._kernel.assign(kernel)
    twin.quantize("int8")
    layer._kernel.assign(twin._kernel)
    layer.kernel_scale.assign(twin.kernel_scale)


def set_weights(model, weights: Sequence, adapted: Sequence[str]) -> None:
    """`model.set_weights(weights)` for weights taken when only the `adapted` layers had
    adapters (and the `int8:` ones were int8): adapters created since get B = 0 (they change
    nothing) and keep their A; a layer quantized since gets the float kernel it had then,
    quantized again (the best stage came before `peft_base: int8`)."""
    from keras import ops

    taken_int8 = {p[len(INT8_MARK):] for p in adapted if p.startswith(INT8_MARK)}
    adapted = {p for p in adapted if not p.startswith(INT8_MARK)}
    later = [l for l in all_layers(model) if getattr(l, "lora_enabled", False)
             and l.path not in adapted]
    skip = {id(v) for l in later for v in adapter_variables(l)}
    owner = {id(v): l for l in all_layers(model)
             for v in l._trainable_variables + l._non_trainable_variables}
    since = {id(l) for l in all_layers(model) if is_int8(l) and l.path not in taken_int8}
    targets, done = [], set()
    for v in model.weights:
        layer = owner.get(id(v))
        if id(v) in skip:
            continue
        if layer is not None and id(layer) in since:  # taken as float: [kernel, bias]
            if id(layer) not in done:
                done.add(id(layer))
                targets.append((layer, "kernel"))
                if layer.bias is not None:
                    targets.append((layer, "bias"))
            continue
        targets.append((None, v))
    if len(targets) != len(weights):
        raise TftuneError(f"Cannot restore the best stage's weights: {len(weights)} arrays for "
                          f"{len(targets)} variables.")
    for (layer, v), w in zip(targets, weights):
        if layer is None:
            v.assign(w)
        elif v == "kernel":
            _requantize(layer, w)
        else:
            layer.bias.assign(w)
    for layer in later:
        b = _parts(layer)[2]
        b.assign(ops.zeros(b.shape, b.dtype))
