"""Fetching assets: download the pinned archive, check it, extract and check the listed files
in a scratch folder, and rename the finished folder into the cache.

A failed fetch leaves any previous copy of the asset as it was, and nothing else behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tftune.assets.archives import extract
from tftune.assets.converters import run_converter
from tftune.assets.download import Downloader, download_archive
from tftune.assets.manifest import Asset, Manifest, load_manifest
from tftune.assets.store import (
    by_hand, cache_dir, install, remember_hashes, scratch_folder, sha256_of, verify,
)
from tftune.errors import AssetError
from tftune.runtime.progress import Progress, ticking

Log = Callable[[str], object]


def human_size(size: int) -> str:
    """`size` bytes in decimal units, e.g. `91.6 MB`."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def _bytes(name: str, what: str, total: int, log: Log) -> Progress:
    """Progress of `what` (verifying, extracting) over `total` bytes of asset `name`."""
    return Progress(f"{name}: {what}", total, "", echo=log, fmt=human_size)


def _fetch_one(asset: Asset, dest: Path, downloader: Downloader, log: Log) -> None:
    """Download, check, extract and install one asset; on any failure `dest` is untouched."""
    started = time.monotonic()
    with scratch_folder(asset, dest) as scratch:
        try:
            download_dir = scratch / "download"
            download_dir.mkdir()
            # The registry client reports nothing while it downloads: show the time passing.
            with ticking(Progress(f"{asset.name}: downloading", unit=None, echo=log)):
                archive = downloader(asset, download_dir)
            size, seconds = human_size(archive.stat().st_size), time.monotonic() - started
            log(
                f"{asset.name}: verifying {archive.name} ({size}, downloaded in {seconds:.1f} s) "
                f"and extracting {len(asset.files)} files ..."
            )
            with _bytes(asset.name, "verifying", archive.stat().st_size, log) as shown:
                digest = sha256_of(archive, shown)
            if digest != asset.sha256:
                raise AssetError(
                    f"The downloaded {archive.name} ({asset.origin}) has sha256 {digest}, but the manifest "
                    f"pins {asset.sha256}: the registry served a different file, so nothing was installed. "
                    f"Re-run `tftune assets fetch {asset.name}` later. {by_hand(asset)}"
                )
            staged = scratch / asset.name
            staged.mkdir()
            with _bytes(asset.name, "extracting", asset.size, log) as shown:
                extract(asset, archive, staged, shown)
            if asset.convert is not None:
                log(f"{asset.name}: converting the checked files ({asset.convert}) ...")
                run_converter(asset.convert, staged)
            install(staged, dest, scratch)
            remember_hashes(asset, dest)  # hashed as they were written
        except OSError as exc:
            raise AssetError(
                f"Fetching asset '{asset.name}' failed: {exc}. Check the free space and permissions of "
                f"{dest.parent} (TFTUNE_ASSETS_DIR sets the cache folder), then re-run "
                f"`tftune assets fetch {asset.name}`."
            ) from exc


def fetch(
    names: Sequence[str] | None = None,
    force: bool = False,
    log: Log = print,
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
    `log` gets one line per step of each asset (downloading, verifying, done).
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
        if not force and verify(asset, dest)[0] == "ok":
            log(f"{asset.name}: already fetched and verified in {dest}")
            fetched[asset.name] = dest
            continue
        log(f"{asset.name}: downloading {asset.origin} ...")
        started = time.monotonic()
        try:
            _fetch_one(asset, dest, get_archive, log)
        except AssetError as exc:
            log(f"{asset.name}: failed")
            failures.append((asset.name, exc))
            continue
        log(
            f"{asset.name}: ok, {len(asset.files)} files, {human_size(asset.size)} in {dest} "
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
