"""The asset cache: where asset folders live, how they are verified, and how a fetched folder
is moved into place.

Each asset is one folder in the cache:

    $TFTUNE_ASSETS_DIR/<name>/               if TFTUNE_ASSETS_DIR is set
    $XDG_CACHE_HOME/tftune/assets/<name>/    else, if XDG_CACHE_HOME is set
    ~/.cache/tftune/assets/<name>/           otherwise

`asset_path()` checks every file's size and sha256 before handing out the folder (hashes of
unchanged files are remembered per process), and `resolve()` turns `asset:<name>` or
`asset:<name>/<file>` config values into local paths. A fetch works in a scratch folder
beside the destination (`scratch_folder`) and renames the finished folder into place
(`install`), so an asset folder is either complete and verified or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from tftune.assets.converters import CONVERTERS
from tftune.assets.manifest import MANIFEST_LABEL, Asset, Manifest, Source, load_manifest
from tftune.errors import AssetError

ASSET_PREFIX = "asset:"
"""Config values starting with this prefix name an asset (see `resolve`)."""

State = Literal["ok", "missing", "corrupt"]

CHUNK = 1 << 20
"""Bytes read or written at a time when hashing or copying asset files."""
_STALE_AFTER_S = 24 * 3600


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


def cache_dir() -> Path:
    """The folder holding one sub-folder per asset (read from the environment on each call)."""
    override = os.environ.get("TFTUNE_ASSETS_DIR")
    if override:
        return Path(override).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "tftune" / "assets").absolute()


def by_hand(asset: Asset) -> str:
    """The sentence telling the user how to place an asset without `fetch`."""
    return (
        f"To place it by hand, extract the files listed for '{asset.name}' in {MANIFEST_LABEL} "
        f"from {asset.archive} ({asset.origin}) into {cache_dir() / asset.name}/ "
        f"(TFTUNE_ASSETS_DIR sets the cache folder); `tftune assets list` then verifies them."
    )


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------

# sha256 of files already hashed in this process, keyed by (path, inode, mtime_ns, size), so a
# file that has not changed since it was last hashed is not read again.
_HASHED: dict[tuple[str, int, int, int], str] = {}


def _hash_key(path: Path, st: os.stat_result) -> tuple[str, int, int, int]:
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)


def sha256_of(path: Path, progress: Callable[[int], object] | None = None) -> str:
    """The sha256 of the file at `path`, read in chunks; `progress(bytes read so far)` is
    called after each chunk."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)
    return digest.hexdigest()


def _cached_sha256(path: Path, st: os.stat_result) -> str:
    key = _hash_key(path, st)
    digest = _HASHED.get(key)
    if digest is None:
        digest = sha256_of(path)
        _HASHED[key] = digest
    return digest


def remember_hashes(asset: Asset, folder: Path) -> None:
    """Record the manifest's hashes for `folder`'s files as already checked.

    For a folder whose files were hashed as they were written: renaming keeps their inode and
    mtime, so `asset_path()` in this process need not read them again.
    """
    for f in asset.files:
        target = folder / f.path
        _HASHED[_hash_key(target, target.stat())] = f.sha256


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
    if asset.convert is not None:
        for output in CONVERTERS[asset.convert].outputs:
            if not (folder / output).exists():
                return f"{output} (made by converter {asset.convert} at fetch time) is missing"
    return None


def verify(asset: Asset, folder: Path) -> tuple[State, str | None]:
    """The state of `folder` as a copy of `asset`, and what is wrong when it is corrupt."""
    if not folder.is_dir():
        return "missing", None
    problem = _problem(asset, folder)
    return ("ok", None) if problem is None else ("corrupt", problem)


# --------------------------------------------------------------------------------------------
# Lookups
# --------------------------------------------------------------------------------------------


def asset_path(name: str, *, manifest: Manifest | None = None) -> Path:
    """The local folder of asset `name`, after checking every file's size and sha256.

    Hashes are remembered per process for unchanged files, so repeated calls are cheap.
    Raises AssetError if the name is unknown, the asset is not fetched, or a file is wrong.
    """
    asset = (manifest or load_manifest()).get(name)
    folder = cache_dir() / asset.name
    state, problem = verify(asset, folder)
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
        statuses.append(
            AssetStatus(
                name=asset.name,
                description=asset.description,
                source=asset.source,
                package=asset.package,
                version=asset.version,
                size=asset.size,
                path=folder,
                state=verify(asset, folder)[0],
            )
        )
    return statuses


# --------------------------------------------------------------------------------------------
# Installing
# --------------------------------------------------------------------------------------------


def _remove_stale_scratch(asset: Asset, root: Path) -> None:
    """Remove scratch folders that an interrupted fetch of `asset` left over a day ago."""
    for scratch in root.glob(f".{asset.name}.tmp-*"):
        try:
            if time.time() - scratch.stat().st_mtime > _STALE_AFTER_S:
                shutil.rmtree(scratch, ignore_errors=True)
        except OSError:
            pass


@contextlib.contextmanager
def scratch_folder(asset: Asset, dest: Path) -> Iterator[Path]:
    """A new, empty folder beside `dest` (same filesystem, so `install` can rename), removed
    on exit with whatever is left in it. Scratch folders of `asset` over a day old, left by
    interrupted fetches, are removed first."""
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
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def install(staged: Path, dest: Path, scratch: Path) -> None:
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
