"""Recipe configuration: YAML recipe files -> typed, frozen dataclasses.

A recipe file is a YAML mapping whose keys mirror the dataclasses below. Unknown keys are
errors that suggest the nearest valid key; `--set stages.0.epochs=3` style overrides are
applied to the raw mapping before validation, so they obey the same rules.

Only this module and the run directory deal in dicts; everything downstream gets dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from tftune.errors import ConfigError, did_you_mean


@dataclasses.dataclass(frozen=True)
class GroupPattern:
    """A user-defined layer group: every backbone layer whose name matches `pattern`."""

    name: str
    pattern: str


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are split.

    `source`:
      - `folder`: images in `path/<class>/*`, or `path/{train,val,test}/<class>/*`.
      - `csv` / `jsonl`: texts with a label column (`text_column`, `label_column`).
      - `fashion_mnist`: the Fashion-MNIST arrays (offline asset, else `keras.datasets`).
      - `python`: datasets passed to `tftune.train(..., datasets=...)` from Python.
    Paths may name an offline asset as `asset:<name>[/<file>]`.
    """

    source: Literal["folder", "csv", "jsonl", "fashion_mnist", "python"] = "folder"
    path: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    classes: Optional[tuple[str, ...]] = None
    skip_unlisted_labels: bool = False
    deduplicate: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_train_examples: Optional[int] = None
    max_test_examples: Optional[int] = None
    image_size: tuple[int, int] = (224, 224)
    augment: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Which pretrained network, and how its layers are grouped.

    `spec` is one string: `keras_hub:<preset or local preset dir>`, `hf:<local Hugging Face
    checkpoint dir>`, `keras_applications:<Name>`, or `keras:<file.keras>`.
    `weights` applies to `keras_applications` specs: `imagenet`, a local weights file, an
    `asset:` name, or `none` for random initialisation. `sequence_length` (text) defaults to
    the backbone's maximum, at most 128 tokens.
    """

    spec: str = "keras_applications:MobileNetV2"
    weights: Optional[str] = "imagenet"
    sequence_length: Optional[int] = None
    allow_download: bool = False
    train_bn: bool = False
    groups: tuple[GroupPattern, ...] = ()
    generic_groups: int = 4


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The new classification head: pooling -> dropout -> Dense."""

    pooling: Literal["auto", "mean", "cls", "avg", "max"] = "auto"
    dropout: float = 0.1
    hidden_units: int = 0


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
    """Early stopping within one stage; the best epoch's weights are always restored."""

    monitor: str = "val_loss"
    patience: int = 2
    min_delta: float = 0.0


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One training stage.

    `train` names what trains: `head`, `top:N` (the head and the top N layer groups),
    `all`, or a list of group names (the head always trains).

    `layer_decay` (e.g. 0.8, as in ELECTRA/BEiT; 1/2.6 = 0.385 is ULMFiT's) gives the trained
    group k places below the head `learning_rate * layer_decay**k`; `lr_multipliers`
    ({group name: multiplier}) sets groups' multipliers explicitly and wins over the decay.
    `warmup` < 1 is a fraction of the stage's steps, >= 1 a number of steps.
    """

    name: str = "stage"
    train: Union[str, tuple[str, ...]] = "head"
    epochs: int = 1
    learning_rate: float = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = 0.01
    warmup: float = 0.0
    schedule: Literal["constant", "cosine", "linear", "slanted_triangular", "one_cycle"] = "constant"
    layer_decay: Optional[float] = None
    lr_multipliers: Optional[dict[str, float]] = None
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    steps_per_epoch: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings shared by all stages.

    `feature_cache: auto` runs a stage's frozen bottom (its lowest frozen layer groups, or the
    whole backbone in a head-only stage) once over the data and trains the rest on the stored
    outputs, when that is exact: no random augmentation in the input pipeline. The outputs are
    kept in memory up to `cache_memory_mb` and spill to disk beyond it.

    `distribute` picks the `tf.distribute` strategy (see `tftune.distribute`): `auto` (a TPU
    when `tpu` or TPU_NAME names one, several workers when TF_CONFIG describes a cluster,
    MirroredStrategy on more than one GPU, else the default strategy), `default`, `mirrored`,
    `multi_worker` (cluster from TF_CONFIG) or `tpu`. `batch_size` is the global batch.
    A checkpoint is written at every epoch end, and every `checkpoint_steps` training steps
    when > 0 (see `tftune.checkpoint`).
    """

    batch_size: int = 32
    seed: int = 42
    jit_compile: Literal["auto", "on", "off"] = "auto"
    mixed_precision: Literal["auto", "off", "bfloat16", "float16"] = "off"
    verbose: Literal["auto", "bar", "epoch", "quiet"] = "auto"
    feature_cache: Literal["auto", "off"] = "auto"
    cache_memory_mb: int = 2048
    distribute: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    tpu: Optional[str] = None
    checkpoint_steps: int = 0


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """A whole recipe: which task recipe runs, on what data, with which backbone and stages."""

    recipe: Literal["text_classification", "image_classification"] = "image_classification"
    name: str = "run"
    description: str = ""
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    head: HeadConfig = HeadConfig()
    stages: tuple[StageConfig, ...] = (StageConfig(),)
    train: TrainConfig = TrainConfig()


# ----------------------------------------------------------------------------------------
# dict <-> dataclass


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Converts a YAML value to the annotated type, or raises ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(
            f"Invalid value for '{where}'. Expected {_type_name(tp)}. Received: {value!r}"
        )
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if isinstance(value, str) and value.lower() in [str(a).lower() for a in args]:
            return value.lower()
        hint = did_you_mean(str(value), args)
        raise ConfigError(
            f"Invalid value for '{where}'. Expected one of: "
            f"{', '.join(repr(a) for a in args)}. Received: {value!r}.{hint}"
        )
    if origin is tuple:
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis and isinstance(value, str):
                value = [value]
            else:
                raise ConfigError(
                    f"Invalid value for '{where}'. Expected a list. Received: {value!r}"
                )
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"Invalid value for '{where}'. Expected a list of {len(args)} items. "
                f"Received: {value!r}"
            )
        return tuple(_coerce(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(
                f"Invalid value for '{where}'. Expected a mapping. Received: {value!r}"
            )
        key_tp, value_tp = args
        return {
            _coerce(k, key_tp, where): _coerce(v, value_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"Invalid value for '{where}'. Expected true or false. Received: {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"Invalid value for '{where}'. Expected an integer. Received: {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "5e-5" (no dot) as a string.
            except ValueError:
                pass
        raise ConfigError(f"Invalid value for '{where}'. Expected a number. Received: {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"Invalid value for '{where}'. Expected a string. Received: {value!r}")
    raise TypeError(f"Unsupported config type {tp!r} at {where}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Builds dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Invalid value for '{where or 'recipe'}'. Expected a mapping of keys. "
            f"Received: {data!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            prefix = f"{where}." if where else ""
            hint = did_you_mean(key, fields, f"'{prefix}{{}}'", cutoff=0.5) or (
                f" Valid keys here: {', '.join(fields)}."
            )
            raise ConfigError(f"Unknown config key '{path}'.{hint}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(config: Any) -> Any:
    """The plain-YAML form of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


# ----------------------------------------------------------------------------------------
# overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Splits `stages.0.epochs=3` into (['stages', '0', 'epochs'], 3); values are YAML."""
    if "=" not in text:
        raise ConfigError(
            f"Invalid override {text!r}. Expected KEY=VALUE, e.g. stages.0.epochs=3."
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"Invalid override {text!r}: the key is empty.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Returns a copy of `data` with each `KEY=VALUE` override set (lists indexed by number)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"Invalid override {text!r}: '{'.'.join(parts[: i + 1])}' is not an "
                        f"index of a list of {len(node)} items."
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(
                    f"Invalid override {text!r}: '{'.'.join(parts[:i])}' is not a mapping."
                )
    return data


# ----------------------------------------------------------------------------------------
# recipe files


def _recipe_defaults(recipe: str) -> dict:
    from tftune.recipes import get_recipe

    return to_dict(get_recipe(recipe).default_config())


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: dict, overrides: list[str] = ()) -> RecipeConfig:
    """Validates a recipe mapping on top of its recipe's defaults, then applies overrides."""
    data = data or {}
    # Validate the user's own keys first so typos are reported against what they wrote.
    from_dict(RecipeConfig, data)
    recipe = apply_overrides(data, list(overrides)).get("recipe", RecipeConfig.recipe)
    recipe = _coerce(recipe, typing.get_type_hints(RecipeConfig)["recipe"], "recipe")
    merged = apply_overrides(_merge(_recipe_defaults(recipe), data), list(overrides))
    return from_dict(RecipeConfig, merged)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> RecipeConfig:
    """Reads a recipe YAML file, applies `KEY=VALUE` overrides and validates the result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Recipe file not found: {path}. Run `tftune recipes` to list the bundled recipes."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"Recipe file {path} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe file {path} must hold a mapping of keys at the top level.")
    return config_from_dict(data, overrides)


def dump_config(config: RecipeConfig) -> str:
    """The resolved config as YAML, loadable again with `load_recipe`."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
