"""Task recipes: each module has `default_config()` and `run(config, **kwargs)`."""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from tftune.errors import ConfigError

RECIPES = ("text_classification", "image_classification")


def get_recipe(name: str) -> ModuleType:
    """The recipe module called `name`."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown recipe {name!r}.{hint} Expected one of: {', '.join(RECIPES)}."
        )
    return importlib.import_module(f"tftune.recipes.{name}")
