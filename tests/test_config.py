"""Recipe files -> typed config: overrides, errors with suggestions, round trips."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from tftune.config import (
    BackboneConfig,
    EarlyStoppingConfig,
    GroupPattern,
    RecipeConfig,
    StageConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_recipe,
    parse_override,
)
from tftune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

RECIPE = """\
recipe: text_classification
name: unit
description: a unit-test recipe
data:
  source: csv
  path: texts.csv
  classes: [neg, pos]
  image_size: [64, 48]
backbone:
  spec: keras_hub:/tmp/preset
  sequence_length: 32
  groups:
    - {name: low, pattern: "embed"}
    - {name: high, pattern: "transformer"}
head:
  pooling: cls
  dropout: 0.25
stages:
  - name: warm
    train: head
    epochs: 2
    learning_rate: 1.0e-3
  - name: deep
    train: [block_0, block_1]
    epochs: 4
    learning_rate: 5e-5
    optimizer: sgd
    schedule: cosine
    warmup: 0.1
    early_stopping: {monitor: val_accuracy, patience: 3, min_delta: 0.01}
train:
  batch_size: 16
  seed: 7
  verbose: epoch
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_becomes_typed_frozen_dataclasses(tmp_path):
    cfg = load_recipe(write(tmp_path, RECIPE))
    assert isinstance(cfg, RecipeConfig)
    assert cfg.recipe == "text_classification"
    from tftune.config import config_from_dict

    text_defaults = config_from_dict({"recipe": "text_classification"}).data
    assert cfg.data == dataclasses.replace(
        text_defaults, source="csv", path="texts.csv", classes=("neg", "pos"), image_size=(64, 48)
    )
    assert cfg.backbone.groups == (GroupPattern("low", "embed"), GroupPattern("high", "transformer"))
    assert cfg.backbone.sequence_length == 32
    assert cfg.head.pooling == "cls" and cfg.head.dropout == 0.25
    assert len(cfg.stages) == 2
    deep = cfg.stages[1]
    assert deep.train == ("block_0", "block_1")
    assert deep.learning_rate == pytest.approx(5e-5) and isinstance(deep.learning_rate, float)
    assert deep.early_stopping == EarlyStoppingConfig("val_accuracy", 3, 0.01)
    assert cfg.stages[0].train == "head"
    assert cfg.train.batch_size == 16 and cfg.train.seed == 7
    with pytest.raises(Exception):
        cfg.train.batch_size = 3  # frozen


def test_recipe_defaults_fill_what_the_file_leaves_out(tmp_path):
    from tftune.config import config_from_dict

    cfg = load_recipe(write(tmp_path, "recipe: image_classification\ndata: {path: imgs}\n"))
    defaults = config_from_dict({"recipe": "image_classification"})
    assert cfg.stages == defaults.stages
    assert cfg.backbone == defaults.backbone
    assert cfg.data.path == "imgs" and cfg.data.source == defaults.data.source


def test_overrides_index_lists_nest_and_parse_yaml_values(tmp_path):
    path = write(tmp_path, RECIPE)
    cfg = load_recipe(
        path,
        [
            "stages.0.epochs=3",
            "stages.1.learning_rate=2e-4",  # YAML reads this as a string: coerced to float
            "stages.1.early_stopping.patience=9",
            "data.classes=[a, b, c]",
            "train.verbose=quiet",
            "backbone.allow_download=true",
            "head.dropout=0",
            "name=renamed",
        ],
    )
    assert cfg.stages[0].epochs == 3
    assert cfg.stages[1].learning_rate == pytest.approx(2e-4)
    assert cfg.stages[1].early_stopping.patience == 9
    assert cfg.stages[1].early_stopping.monitor == "val_accuracy"  # untouched siblings stay
    assert cfg.data.classes == ("a", "b", "c")
    assert cfg.train.verbose == "quiet"
    assert cfg.backbone.allow_download is True
    assert cfg.head.dropout == 0.0
    assert cfg.name == "renamed"
    # The file itself is unchanged, and so is the config loaded without overrides.
    assert load_recipe(path).stages[0].epochs == 2


def test_override_of_a_stage_the_file_takes_from_the_recipe_defaults(tmp_path):
    """`--set stages.0.epochs=3` must work on a recipe file that does not list its stages
    (they come from the recipe's defaults): the override changes that one field."""
    from tftune.config import config_from_dict

    path = write(tmp_path, "recipe: image_classification\ndata: {path: imgs}\n")
    cfg = load_recipe(path, ["stages.0.epochs=3"])
    defaults = config_from_dict({"recipe": "image_classification"})
    assert len(cfg.stages) == len(defaults.stages)
    assert cfg.stages[0].epochs == 3
    assert cfg.stages[0].learning_rate == defaults.stages[0].learning_rate
    assert cfg.stages[1:] == defaults.stages[1:]


def test_parse_override_values_are_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=1.5") == (["a"], 1.5)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=") == (["a"], "")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("stages.0.epochs")
    with pytest.raises(ConfigError, match="key is empty"):
        parse_override("=3")


def test_override_errors_name_the_problem():
    data = {"stages": [{"epochs": 1}]}
    with pytest.raises(ConfigError, match=r"'stages\.3' is not an index of a list of 1 items"):
        apply_overrides(data, ["stages.3.epochs=2"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(data, ["stages.first.epochs=2"])
    with pytest.raises(ConfigError, match=r"'stages\.0\.epochs' is not a mapping"):
        apply_overrides(data, ["stages.0.epochs.value=2"])
    assert data == {"stages": [{"epochs": 1}]}  # never modified in place


def test_unknown_key_suggests_the_nearest_one(tmp_path):
    path = write(tmp_path, RECIPE)
    with pytest.raises(ConfigError) as e:
        load_recipe(path, ["stages.0.epoch=3"])
    assert "stages.0.epoch" in str(e.value)
    assert "Did you mean 'stages.0.epochs'" in str(e.value)

    with pytest.raises(ConfigError, match=r"Did you mean 'train\.batch_size'"):
        config_from_dict({"train": {"batchsize": 8}})
    with pytest.raises(ConfigError, match=r"Did you mean 'backbone'"):
        config_from_dict({"backbon": {"spec": "keras:x.keras"}})
    # Nothing close: the valid keys are listed.
    with pytest.raises(ConfigError, match=r"Valid keys here: .*monitor.*patience"):
        config_from_dict({"stages": [{"early_stopping": {"zzz": 1}}]})


def test_typo_in_the_file_is_reported_against_the_file(tmp_path):
    path = write(tmp_path, "recipe: image_classification\nhead:\n  dropot: 0.5\n")
    with pytest.raises(ConfigError, match=r"Unknown config key 'head\.dropot'.*'head\.dropout'"):
        load_recipe(path)


def test_bad_literal_lists_the_allowed_values():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"stages": [{"optimizer": "adamm"}]})
    msg = str(e.value)
    assert "stages.0.optimizer" in msg
    for allowed in ("'adamw'", "'adam'", "'sgd'"):
        assert allowed in msg
    assert "adamm" in msg
    with pytest.raises(ConfigError, match=r"'folder', 'csv', 'jsonl'"):
        config_from_dict({"data": {"source": "parquet"}})
    with pytest.raises(ConfigError, match=r"'recipe'.*Did you mean 'text_classification'"):
        config_from_dict({"recipe": "text_clasification"})


def test_on_off_settings_survive_yaml_booleans(tmp_path):
    """YAML 1.1 reads bare on/off as booleans; `jit_compile: off` (in a file or through
    --set) must still mean 'off', not be rejected."""
    path = write(tmp_path, "train:\n  jit_compile: off\n  mixed_precision: off\n")
    cfg = load_recipe(path)
    assert cfg.train.jit_compile == "off" and cfg.train.mixed_precision == "off"
    assert load_recipe(path, ["train.jit_compile=on"]).train.jit_compile == "on"


def test_literal_values_are_case_insensitive():
    cfg = config_from_dict({"stages": [{"optimizer": "AdamW", "schedule": "Cosine"}]})
    assert cfg.stages[0].optimizer == "adamw" and cfg.stages[0].schedule == "cosine"


@pytest.mark.parametrize(
    "data, where",
    [
        ({"train": {"batch_size": "big"}}, "train.batch_size"),
        ({"train": {"batch_size": 2.5}}, "train.batch_size"),
        ({"stages": [{"learning_rate": "fast"}]}, "stages.0.learning_rate"),
        ({"backbone": {"allow_download": "yes please"}}, "backbone.allow_download"),
        ({"data": {"image_size": [32]}}, "data.image_size"),
        ({"stages": {"epochs": 3}}, "stages"),
        ({"head": 3}, "head"),
    ],
)
def test_wrong_types_name_the_key(data, where):
    with pytest.raises(ConfigError, match=rf"'{where}'"):
        config_from_dict(data)


def test_numbers_as_yaml_reads_them(tmp_path):
    cfg = load_recipe(
        write(tmp_path, "stages:\n  - {learning_rate: 3e-4, weight_decay: 1e-2, epochs: 2.0}\n")
    )
    assert cfg.stages[0].learning_rate == pytest.approx(3e-4)
    assert cfg.stages[0].weight_decay == pytest.approx(1e-2)
    assert cfg.stages[0].epochs == 2 and isinstance(cfg.stages[0].epochs, int)


def test_single_string_for_a_list_field():
    cfg = config_from_dict({"data": {"classes": "cat"}, "stages": [{"train": "top:2"}]})
    assert cfg.data.classes == ("cat",)
    assert cfg.stages[0].train == "top:2"


def test_dump_config_round_trips(tmp_path):
    cfg = load_recipe(write(tmp_path, RECIPE), ["stages.1.warmup=0.25", "data.augment=[flip]"])
    dumped = write(tmp_path, dump_config(cfg), "dumped.yaml")
    assert load_recipe(dumped) == cfg
    # And for a config built in Python with every default.
    cfg2 = RecipeConfig(stages=(StageConfig(name="a"), StageConfig(name="b", train="all")),
                        backbone=BackboneConfig(groups=(GroupPattern("g", "conv"),)))
    assert load_recipe(write(tmp_path, dump_config(cfg2), "d2.yaml")) == cfg2


@pytest.mark.parametrize(
    "text, match",
    [
        ("recipe: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_bad_recipe_files(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="Recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_empty_recipe_file_gives_the_defaults(tmp_path):
    assert load_recipe(write(tmp_path, "")) == config_from_dict({})


BUNDLED = sorted((REPO / "recipes").glob("*.yaml"))


def test_there_are_bundled_recipes():
    assert BUNDLED, "no recipes/*.yaml in the repository"


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_every_bundled_recipe_loads(path, tmp_path):
    cfg = load_recipe(path)
    assert cfg.description, f"{path.name} has no description (shown by `tftune recipes`)"
    assert cfg.stages
    assert load_recipe(write(tmp_path, dump_config(cfg))) == cfg
