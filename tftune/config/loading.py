"""Recipe files -> a validated `RecipeConfig`: the base recipe's defaults, the file, then overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from tftune.config.coerce import _coerce, from_dict, to_dict
from tftune.config.defaults import base_recipe
from tftune.config.overrides import apply_overrides
from tftune.config.schema import RecipeConfig
from tftune.errors import ConfigError, did_you_mean


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
    recipe = _coerce(recipe, str, "recipe")
    merged = apply_overrides(_merge(base_recipe(recipe), data), list(overrides))
    config = from_dict(RecipeConfig, merged)
    _check_task(config.task)
    config = resolve_monitors(config)
    from tftune.tasks import TASKS

    TASKS[config.task](cfg=config).check_settings()  # e.g. a loss the task has not
    return config


def resolve_monitors(config: RecipeConfig) -> RecipeConfig:
    """`early_stopping.monitor: auto` becomes the task's default monitor (so config.yaml, the
    history and the resume check all name a real metric)."""
    import dataclasses

    from tftune.tasks import TASKS

    default = TASKS[config.task].default_monitor
    stages = tuple(
        dataclasses.replace(s, early_stopping=dataclasses.replace(s.early_stopping, monitor=default))
        if s.early_stopping.monitor == "auto" else s
        for s in config.stages
    )
    return dataclasses.replace(config, stages=stages)


def _check_task(name: str) -> None:
    from tftune.tasks import TASKS

    if name not in TASKS:
        raise ConfigError(
            f"Invalid value for 'task'. Expected one of: {', '.join(repr(t) for t in TASKS)}. "
            f"Received: {name!r}.{did_you_mean(name, TASKS)}"
        )


def load_recipe(path: str | Path, overrides: list[str] = ()) -> RecipeConfig:
    """Reads a recipe YAML file (a local path or a `tf.io.gfile` URL such as a run directory's
    `gs://.../config.yaml`), applies `KEY=VALUE` overrides and validates the result."""
    from tftune.rundir import storage

    path = storage.path(path) if storage.is_url(path) else Path(path)
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
