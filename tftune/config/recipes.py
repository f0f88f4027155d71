"""Recipe files by name: the bundled ones (package data, `tftune.recipes`), `./recipes/`,
and folders named in `$TFTUNE_RECIPES`.

`tftune train NAME` takes a path, or a name looked up in (first match wins): each folder of
`$TFTUNE_RECIPES` (os.pathsep-separated), `./recipes/`, then the recipes bundled with tftune,
which are read with `importlib.resources` so they work from an installed wheel too.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from pathlib import Path
from typing import Iterator, Optional

from tftune.errors import TftuneError, did_you_mean

RECIPE_DIRS_ENV = "TFTUNE_RECIPES"
BUNDLED_PACKAGE = "tftune.recipes"
SUFFIX = ".yaml"


@dataclasses.dataclass(frozen=True)
class RecipeFile:
    """A recipe file found by name: its name, path and one-line description."""

    name: str
    path: Path
    description: str
    origin: str  # the folder it was found in, or "bundled"


def _bundled_dir() -> Path | None:
    try:
        root = importlib.resources.files(BUNDLED_PACKAGE)
    except ModuleNotFoundError:
        return None
    path = Path(str(root))  # a plain folder: setuptools installs package data as files
    return path if path.is_dir() else None


def search_dirs() -> list[tuple[Path, str]]:
    """(folder, origin) pairs searched for recipe names, in order, without repeats."""
    dirs = [(Path(p), p) for p in os.environ.get(RECIPE_DIRS_ENV, "").split(os.pathsep) if p]
    dirs.append((Path.cwd() / "recipes", "./recipes"))
    bundled = _bundled_dir()
    if bundled is not None:
        dirs.append((bundled, "bundled"))
    seen, out = set(), []
    for d, origin in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append((d, origin))
    return out


def _description(path: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ""
    desc = data.get("description", "") if isinstance(data, dict) else ""
    lines = str(desc).strip().splitlines()
    return lines[0] if lines else ""


def list_recipes() -> list[RecipeFile]:
    """Every recipe file reachable by name; a name found in an earlier folder hides later ones."""
    found: dict[str, RecipeFile] = {}
    for d, origin in search_dirs():
        for path in sorted(d.glob(f"*{SUFFIX}")):
            if path.stem not in found:
                found[path.stem] = RecipeFile(path.stem, path, _description(path), origin)
    return list(found.values())


def find_recipe(recipe: str) -> Path:
    """The recipe file `recipe` names: an existing file, else a name (with or without .yaml)
    in the search folders. Raises TftuneError naming the closest known recipe."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    name = recipe[: -len(SUFFIX)] if recipe.endswith(SUFFIX) else recipe
    known = list_recipes()
    for r in known:
        if r.name == name:
            return r.path
    names = [r.name for r in known]
    raise TftuneError(
        f"Recipe {recipe!r} not found as a file or as a recipe name.{did_you_mean(name, names)} "
        f"Known recipes: {', '.join(names) or 'none'}. Run `tftune recipes` to list them."
    )


def iter_bundled() -> Iterator[Path]:
    """The bundled recipe files (for tests and docs)."""
    d = _bundled_dir()
    return iter(sorted(d.glob(f"*{SUFFIX}")) if d else [])


def find_sweep(name: str) -> Optional[Path]:
    """A sweep file by name: `<name>.yaml` in the `sweeps/` folder of a recipe folder."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    for d, _ in search_dirs():
        path = d / "sweeps" / f"{stem}{SUFFIX}"
        if path.is_file():
            return path
    return None
