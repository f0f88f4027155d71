"""A model's adapters as a whole: the plain float model with the adapters merged
(`merge_lora`, `saved_form`), the adapters file beside model.keras with its base reference
(`save_adapters`, `load_adapters`, `rebuild`), and restoring best weights taken before a
stage added adapters or quantized the base (`adapted_layers`, `set_weights`). The layer-level
pieces (modes, targets, enabling LoRA, int8) are in `tftune.model.peft`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from tftune.errors import TftuneError
from tftune.model.peft import (ADAPTERS_FILE, ADAPTERS_INFO, TUNED, adapter_variables, all_layers,
                               enable, float_kernel, is_adapter, is_int8, is_norm, lora_parts,
                               quantize_base)

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
        if not isinstance(p, Path):  # a run directory on a URL (gs://): one whole upload
            import io

            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            p.write_bytes(buffer.getvalue())
            return
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
    import io

    with np.load(io.BytesIO((run / ADAPTERS_FILE).read_bytes()), allow_pickle=False) as data:
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
        b = lora_parts(layer)[2]
        b.assign(ops.zeros(b.shape, b.dtype))
