"""Every numeric and enum key of the recipe schema, found by walking the schema itself, is
refused out of range through the CLI: exit code 2, one `Error:` line naming the key, no
traceback, and before any data is read. A numeric field without a declared `Range` fails
`test_every_numeric_key_declares_a_range`, so a new field cannot skip its check."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional, Union

import pytest
import yaml

from helpers import assert_one_line_error, invoke
from tftune.config import RecipeConfig, config_from_dict
from tftune.config.ranges import Range
from tftune.errors import BackboneError

# ------------------------------------------------------------------------------------------
# The walk

DICT_KEY = "g"  # the key used for a mapping's values (e.g. stages.0.lr_multipliers.g)


@dataclasses.dataclass(frozen=True)
class Key:
    """One leaf of the schema that has a numeric or an enum value."""

    path: str
    arms: tuple[tuple[type, tuple[Range, ...]], ...] = ()  # numeric: (int | float, its ranges)
    choices: tuple[str, ...] = ()  # enum: the allowed values
    nullable: bool = False

    @property
    def numeric(self) -> bool:
        return bool(self.arms)


def _numeric_arm(tp: Any) -> Optional[tuple[type, tuple[Range, ...]]]:
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        if base in (int, float):
            return base, tuple(e for e in extras if isinstance(e, Range))
        return None
    return (tp, ()) if tp in (int, float) else None


def walk(tp: Any, path: str) -> Iterator[Key]:
    """The numeric and enum keys under type `tp` at `path`: dataclass fields, list items
    (`.0`), the items of a fixed-length list (`.0`, `.1`), a mapping's values (`.g`)."""
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        for f in dataclasses.fields(tp):
            yield from walk(hints[f.name], f"{path}.{f.name}" if path else f.name)
        return
    arm = _numeric_arm(tp)
    if arm is not None:
        yield Key(path, arms=(arm,))
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        yield from walk(args[0], path)
    elif origin is Literal:
        yield Key(path, choices=tuple(str(a) for a in args))
    elif origin in (Union, types.UnionType):
        nullable = type(None) in args
        arms = [a for a in args if a is not type(None)]
        numeric = [_numeric_arm(a) for a in arms]
        if all(numeric):
            yield Key(path, arms=tuple(numeric), nullable=nullable)
        else:
            for a in arms:
                for key in walk(a, path):
                    yield dataclasses.replace(key, nullable=key.nullable or nullable)
    elif origin is tuple:
        items = [args[0]] if args and args[-1] is Ellipsis else list(args)
        for i, item in enumerate(items):
            yield from walk(item, f"{path}.{i}")
    elif origin is dict:
        yield from walk(args[1], f"{path}.{DICT_KEY}")
    elif tp not in (str, bool):
        raise AssertionError(f"The walk does not know the type of '{path}': {tp!r}")


# The parameters inside `data.augment` / `stages.N.augment` are each Keras layer's own: their
# rules are declared per parameter in `tftune.data.augment.KINDS` and checked when a recipe
# loads (tests/test_augment.py), not in the schema's types.
AUGMENT_PATHS = ("data.augment.", "stages.0.augment.")
KEYS = [k for k in walk(RecipeConfig, "") if not k.path.startswith(AUGMENT_PATHS)]
NUMERIC = [k for k in KEYS if k.numeric]
ENUMS = [k for k in KEYS if k.choices]


# The agreed rule of each numeric key, as its error message states it: written out here, not
# read from the schema, so a loosened range fails too. A new numeric key must be added.
RULES = {
    "data.val_fraction": "a number in [0, 1)",
    "data.test_fraction": "a number in [0, 1)",
    "data.max_train_examples": "an integer >= 1 or null",
    "data.max_test_examples": "an integer >= 1 or null",
    "data.split_seed": "an integer in [0, 4294967295] or null",
    "data.image_size.0": "an integer >= 1",
    "data.image_size.1": "an integer >= 1",
    "backbone.sequence_length": "an integer >= 2 or null",
    "backbone.generic_groups": "an integer >= 1",
    "head.dropout": "a number in [0, 1)",
    "head.hidden_units": "an integer >= 0",
    "stages.0.epochs": "an integer >= 1",
    "stages.0.learning_rate": "a number > 0",
    "stages.0.weight_decay": "a number >= 0",
    "stages.0.warmup": "a number in [0, 1) or an integer >= 1",
    "stages.0.layer_decay": "a number in (0, 1] or null",
    "stages.0.lr_multipliers.g": "a number > 0",
    "stages.0.early_stopping.patience": "an integer >= 0",
    "stages.0.early_stopping.min_delta": "a number >= 0",
    "stages.0.steps_per_epoch": "an integer >= 1 or null",
    "stages.0.lora.rank": "an integer >= 1",
    "stages.0.lora.alpha": "a number > 0",
    "train.batch_size": "an integer >= 1",
    "train.seed": "an integer in [0, 4294967295]",
    "train.cache_memory_mb": "an integer >= 0",
    "train.ema_momentum": "a number in [0, 1)",
    "train.average_epochs": "an integer >= 2",
    "train.time_limit": "a duration > 0: seconds, or e.g. 90s, 10m, 1h30m",
    "train.checkpoint_steps": "an integer >= 0",
    "train.steps_per_execution": "one of: 'auto' or an integer >= 1",
    "train.static_min_length": "an integer >= 1",
    "train.huber_delta": "a number > 0",
    "train.label_smoothing": "a number in [0, 1)",
    "train.class_weight.g": "a number > 0",
}


# ------------------------------------------------------------------------------------------
# Values inside and outside a key's ranges, worked out here from the bounds


def _accepts(arm: tuple[type, tuple[Range, ...]], value: float) -> bool:
    base, ranges = arm
    if not math.isfinite(value) or (base is int and value != int(value)):
        return False
    for r in ranges:
        if r.low is not None and not (value > r.low if r.low_open else value >= r.low):
            return False
        if r.high is not None and not (value < r.high if r.high_open else value <= r.high):
            return False
    return True


def outside(key: Key) -> list[float]:
    """Values just past each bound, plus nan and inf for a number, that no arm accepts."""
    candidates: list[float] = []
    for base, ranges in key.arms:
        step = 1 if base is int else 0.01
        for r in ranges:
            if r.low is not None:
                candidates.append(r.low if r.low_open else r.low - step)
            if r.high is not None:
                candidates.append(r.high if r.high_open else r.high + step)
        if base is float:
            candidates += [math.nan, math.inf]
    bad = [v for v in candidates if not any(_accepts(arm, v) for arm in key.arms)]
    return list(dict.fromkeys(bad))


def inside(key: Key) -> list[float]:
    """The closed bounds, and a value just inside each open lower bound."""
    values = []
    for base, ranges in key.arms:
        for r in ranges:
            if r.low is not None:
                values.append(r.low + 0.01 if r.low_open else r.low)
            if r.high is not None and not r.high_open:
                values.append(r.high)
    return [v for v in values if any(_accepts(arm, v) for arm in key.arms)]


def yaml_text(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return repr(int(value)) if value == int(value) else repr(value)


# ------------------------------------------------------------------------------------------
# The CLI


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """An image recipe whose data folder does not exist: anything past config load fails there."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "recipe": "image_classification",
        "name": "ranges",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "folder", "path": str(tmp_path / "no-such-folder")},
    }))
    return path


def train(recipe: Path, *overrides: str):
    return invoke("train", recipe, *[a for o in overrides for a in ("--set", o)])


def one_error(result) -> str:
    """The single `Error:` line of a run that exited with code 2, without a traceback."""
    return assert_one_line_error(result)


# ------------------------------------------------------------------------------------------
# The walk finds what it should


def test_the_walk_finds_the_keys_of_every_section_and_list_items():
    paths = {k.path for k in KEYS}
    for expected in ("stages.0.learning_rate", "stages.0.early_stopping.patience",
                     "stages.0.lr_multipliers.g", "stages.0.warmup", "data.image_size.0",
                     "data.image_size.1", "data.val_fraction", "backbone.sequence_length",
                     "head.dropout", "train.batch_size", "train.checkpoint_steps",
                     "stages.0.optimizer", "data.source", "train.verbose", "head.pooling"):
        assert expected in paths
    assert len(NUMERIC) >= 23 and len(ENUMS) >= 8


def test_every_numeric_key_declares_a_range():
    missing = [k.path for k in NUMERIC if not all(ranges for _, ranges in k.arms)]
    assert not missing, f"numeric config keys without a declared Range: {missing}"


@dataclasses.dataclass(frozen=True)
class _Inner:
    ok: Annotated[int, Range(">= 1")] = 1
    forgotten: float = 0.5


@dataclasses.dataclass(frozen=True)
class _Outer:
    items: tuple[_Inner, ...] = ()
    maybe: Optional[int] = None


def test_the_walk_catches_a_numeric_field_without_a_range():
    keys = {k.path: k for k in walk(_Outer, "")}
    assert set(keys) == {"items.0.ok", "items.0.forgotten", "maybe"}
    assert [p for p, k in keys.items() if not all(r for _, r in k.arms)] == [
        "items.0.forgotten", "maybe"]


def test_range_bounds():
    r = Range("(0, 1]")
    assert (r.low, r.high, r.low_open, r.high_open) == (0, 1, True, False)
    assert 1 in r and 0.5 in r and 0 not in r and math.nan not in r
    r = Range(">= 1")
    assert (r.low, r.high, r.low_open) == (1, None, False)
    assert 1 in r and 10**9 in r and 0 not in r and math.inf not in r
    assert Range("[0, 1)").describe("a number") == "a number in [0, 1)"
    assert Range("> 0").describe("a number") == "a number > 0"
    with pytest.raises(ValueError, match="Unknown range"):
        Range("positive")


# ------------------------------------------------------------------------------------------
# Every key, out of range, through the CLI


@pytest.mark.parametrize("key", NUMERIC, ids=[k.path for k in NUMERIC])
def test_numeric_key_out_of_range_is_one_error_naming_it(key, recipe):
    assert key.path in RULES, f"new numeric key '{key.path}': add its rule to RULES"
    values = outside(key)
    assert values, f"'{key.path}' declares ranges that no value falls outside of"
    for value in values:
        error = one_error(train(recipe, f"{key.path}={yaml_text(value)}"))
        assert error.startswith(
            f"Error: Invalid value for '{key.path}'. Expected {RULES[key.path]}. Received: "
        ), error


@pytest.mark.parametrize("key", NUMERIC, ids=[k.path for k in NUMERIC])
def test_numeric_key_in_range_loads(key):
    values = inside(key)
    assert values, f"'{key.path}' accepts none of its own bounds"
    for value in values:
        cfg = config_from_dict({"recipe": "image_classification"}, [f"{key.path}={value!r}"])
        node: Any = cfg
        for part in key.path.split("."):
            node = node[int(part)] if isinstance(node, tuple) else (
                node[part] if isinstance(node, dict) else getattr(node, part))
        assert node == pytest.approx(value)


@pytest.mark.parametrize("key", ENUMS, ids=[k.path for k in ENUMS])
def test_enum_key_rejects_an_unknown_value(key, recipe):
    error = one_error(train(recipe, f"{key.path}=no_such_value"))
    assert error.startswith(f"Error: Invalid value for '{key.path}'. Expected one of: "), error
    for choice in key.choices:
        assert repr(choice) in error
    assert "Received: 'no_such_value'" in error


@pytest.mark.parametrize("key", ENUMS, ids=[k.path for k in ENUMS])
def test_enum_key_accepts_each_of_its_values(key):
    # Some values belong to one task (train.loss: mse / huber are regression's).
    task_of = {("train.loss", "mse"): "regression", ("train.loss", "huber"): "regression"}
    # Some need a companion key: a TFDS dataset's name; compression is TFRecord files'.
    companion = {("data.source", "tfds"): ["data.name=mnist"], ("data.compression", "gzip"): ["data.source=tfrecord"],
                 ("data.compression", "zlib"): ["data.source=tfrecord"]}
    for choice in key.choices:
        task = task_of.get((key.path, choice), "classification")
        cfg = config_from_dict({"recipe": "image_classification", "task": task},
                               [f"{key.path}={choice}", *companion.get((key.path, choice), [])])
        section, field = key.path.rsplit(".", 1)
        node: Any = cfg
        for part in section.split("."):
            node = node[int(part)] if isinstance(node, tuple) else getattr(node, part)
        assert getattr(node, field) == choice


@pytest.mark.parametrize("key", ["recipe", "task"])
def test_keys_named_from_a_registry_reject_an_unknown_name(key, recipe):
    """`recipe` (the base recipes) and `task` (the tasks) are strings checked against their
    registries, not Literals: the walk does not see them, so they are listed here."""
    error = one_error(train(recipe, f"{key}=no_such_value"))
    assert f"Invalid value for '{key}'" in error and "Expected one of: " in error, error


# ------------------------------------------------------------------------------------------
# What a new user ran into, with the exact messages


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.0.learning_rate=-1e-3",
         "Invalid value for 'stages.0.learning_rate'. Expected a number > 0. Received: -0.001"),
        ("stages.1.epochs=0",
         "Invalid value for 'stages.1.epochs'. Expected an integer >= 1. Received: 0"),
        ("train.batch_size=0",
         "Invalid value for 'train.batch_size'. Expected an integer >= 1. Received: 0"),
        ("data.val_fraction=1.5",
         "Invalid value for 'data.val_fraction'. Expected a number in [0, 1). Received: 1.5"),
        ("data.image_size=[-32, 32]",
         "Invalid value for 'data.image_size.0'. Expected an integer >= 1. Received: -32"),
        ("data.max_train_examples=0",
         "Invalid value for 'data.max_train_examples'. Expected an integer >= 1 or null. "
         "Received: 0"),
        ("stages.0.warmup=2.5",
         "Invalid value for 'stages.0.warmup'. Expected a number in [0, 1) or an integer >= 1. "
         "Received: 2.5"),
        ("train.checkpoint_steps=-1",
         "Invalid value for 'train.checkpoint_steps'. Expected an integer >= 0. Received: -1"),
    ],
)
def test_reported_cases(recipe, override, message):
    assert one_error(train(recipe, override)) == f"Error: {message}"


def test_range_errors_come_before_the_data_error(recipe):
    """The same recipe fails on its missing data folder once the value is in range: the
    range check ran first, at config load."""
    error = one_error(train(recipe, "train.batch_size=0"))
    assert "train.batch_size" in error
    error = one_error(train(recipe, "train.batch_size=4"))
    assert "no-such-folder" in error and "batch_size" not in error, error


# ------------------------------------------------------------------------------------------
# Rules between fields


@pytest.mark.parametrize("val, test", [(0.5, 0.5), (0.9, 0.2), (0.3, 0.7)])
def test_validation_and_test_fractions_leave_a_training_split(recipe, val, test):
    error = one_error(train(recipe, f"data.val_fraction={val}", f"data.test_fraction={test}"))
    assert error == (
        f"Error: Invalid values for 'data.val_fraction' and 'data.test_fraction'. Expected a "
        f"sum < 1 (the rest of the examples is the training split). Received: {val} + {test}"
    )
    just_under = round(1 - val - 0.01, 2)
    assert config_from_dict({"data": {"val_fraction": val, "test_fraction": just_under}})


@pytest.mark.parametrize("source", ["csv", "jsonl", "fashion_mnist"])
def test_sources_that_split_off_validation_need_a_validation_fraction(recipe, source):
    error = one_error(train(recipe, f"data.source={source}", "data.val_fraction=0"))
    assert "'data.val_fraction'" in error and f"data.source '{source}'" in error, error


@pytest.mark.parametrize("source", ["folder", "python"])
def test_sources_that_bring_a_validation_split_may_set_no_fraction(source):
    """A folder may hold `val/`, and Python datasets are split already."""
    cfg = config_from_dict({"data": {"source": source, "val_fraction": 0}})
    assert cfg.data.val_fraction == 0


# ------------------------------------------------------------------------------------------
# What the shipped recipes hold stays valid


def test_bundled_and_base_recipes_still_load():
    from tftune.config.defaults import BASE_RECIPES
    from tftune.config.recipes import iter_bundled
    from tftune.config import load_recipe

    for name in BASE_RECIPES:
        assert config_from_dict({"recipe": name}).recipe == name
    bundled = list(iter_bundled()) or sorted(Path(__file__).parents[1].glob("recipes/*.yaml"))
    assert bundled
    for path in bundled:
        load_recipe(path)


# ------------------------------------------------------------------------------------------
# A keras.applications backbone's own minimum image size


@pytest.mark.parametrize("name, size, minimum", [("MobileNetV2", 16, 32), ("InceptionV3", 64, 75)])
def test_keras_applications_minimum_image_size_names_the_key(name, size, minimum):
    from tftune.config import BackboneConfig
    from tftune.model.backbones import load_backbone

    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneConfig(spec=f"keras_applications:{name}", weights="none"), (size, 32))
    assert str(e.value) == (
        f"Invalid value for 'data.image_size'. Expected both sides >= {minimum} for "
        f"keras.applications.{name}. Received: [{size}, 32]"
    )
