"""Task recipes: each module has `default_config()` and `run(config, **kwargs)`."""

from __future__ import annotations

import importlib
from types import ModuleType

from tftune.errors import ConfigError, did_you_mean

RECIPES = ("text_classification", "image_classification")


def get_recipe(name: str) -> ModuleType:
    """The recipe module called `name`."""
    if name not in RECIPES:
        hint = did_you_mean(name, RECIPES)
        raise ConfigError(
            f"Unknown recipe {name!r}.{hint} Expected one of: {', '.join(RECIPES)}."
        )
    return importlib.import_module(f"tftune.recipes.{name}")
