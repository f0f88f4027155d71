"""What the wheel would carry: setup.py's package list covers every package under tftune/, and
the files that `setup.py` maps in as package data (the bundled recipes as `tftune.recipes`,
the asset manifest and the sample inputs as `tftune.assets.bundled`) are reachable through
`importlib.resources` from an installed tree.

Nothing heavy is built: `setup.py build_py` lays out the package tree exactly as the wheel
would hold it (modules and package data, no compilation) in a temporary folder, and a fresh
interpreter imports tftune from there only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tftune import assets

ROOT = Path(__file__).resolve().parents[1]

# Run in the built tree; prints what importlib.resources and tftune.assets see there.
PROBE = r"""
import hashlib, importlib.resources, json, sys
import tftune, tftune.assets
from tftune.errors import AssetError

def tree(package):
    out = {}
    def walk(node, prefix):
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
            elif child.name != "__init__.py" and not name.startswith("__pycache__"):
                out[name] = hashlib.sha256(child.read_bytes()).hexdigest()
    walk(importlib.resources.files(package), "")
    return out

try:
    tftune.assets.sample_path("reviews.tx")
    unknown = None
except AssetError as exc:
    unknown = str(exc)
print(json.dumps({
    "tftune": tftune.__file__,
    "recipes": tree("tftune.recipes"),
    "bundled": tree("tftune.assets.bundled"),
    "manifest_names": tftune.assets.load_manifest().names,
    "samples_dir": str(tftune.assets.samples_dir()),
    "sample_paths": {n: str(tftune.assets.sample_path(n)) for n in tftune.assets.list_samples()},
    "images_dir": str(tftune.assets.sample_path("images")),
    "unknown_sample": unknown,
}))
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path, pattern: str) -> dict[str, str]:
    """sha256 of the files below `folder` matching `pattern`, by POSIX path relative to it."""
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.glob(pattern)) if p.is_file()}


def _source_packages() -> set[str]:
    """Every package in the source tree: each folder of tftune/ holding an __init__.py."""
    return {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tftune").rglob("__init__.py")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package tree as the wheel would install it."""
    out = tmp_path_factory.mktemp("build_lib")
    cmd = [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def probe(built: Path) -> dict:
    """What a fresh interpreter importing tftune from the built tree sees."""
    env = {**os.environ, "PYTHONPATH": str(built), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=built, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_setup_lists_every_package() -> None:
    import setuptools  # noqa: F401  (first: distutils is then setuptools' own copy)
    from distutils.core import run_setup

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        dist = run_setup("setup.py", stop_after="init")
    finally:
        os.chdir(cwd)
    data_packages = {"tftune.recipes": "recipes", "tftune.assets.bundled": "assets"}
    assert dist.package_dir == data_packages
    assert set(dist.packages) == _source_packages() | set(data_packages)
    for folder in data_packages.values():
        assert (ROOT / folder / "__init__.py").is_file()


def test_built_tree_holds_every_module(built: Path) -> None:
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tftune").rglob("*.py")}
    installed = {p.relative_to(built).as_posix() for p in (built / "tftune").rglob("*.py")}
    assert source <= installed, sorted(source - installed)


def test_recipes_reachable_through_importlib_resources(probe: dict, built: Path) -> None:
    assert Path(probe["tftune"]).is_relative_to(built)  # not the checkout or an editable install
    recipes = {**_files(ROOT / "recipes", "*.yaml"), **_files(ROOT / "recipes", "sweeps/*.yaml")}
    assert len(recipes) >= 4 and "text_sentiment_minilm.yaml" in recipes
    assert "sweeps/text_sentiment_minilm_sweep.yaml" in recipes  # `tftune sweep NAME` finds it
    assert probe["recipes"] == recipes


def test_manifest_and_samples_reachable_through_importlib_resources(probe: dict) -> None:
    samples = _files(ROOT / "assets" / "samples", "**/*")
    assert {"reviews.txt", "reviews.csv", "images/ankle_boot.png"} <= set(samples)
    expected = {"manifest.yaml": _sha256(ROOT / "assets" / "manifest.yaml")}
    expected |= {f"samples/{name}": digest for name, digest in samples.items()}
    assert probe["bundled"] == expected  # everything ships, and nothing else (no README.md)
    assert probe["manifest_names"] == assets.load_manifest(ROOT / "assets" / "manifest.yaml").names


def test_sample_path_gives_installed_files(probe: dict, built: Path) -> None:
    folder = Path(probe["samples_dir"])
    assert folder == built / "tftune" / "assets" / "bundled" / "samples"
    names = _files(ROOT / "assets" / "samples", "**/*")
    assert probe["sample_paths"] == {name: str(folder / name) for name in names}
    assert probe["images_dir"] == str(folder / "images")
    assert probe["unknown_sample"].startswith("Unknown sample 'reviews.tx'. Known samples: images/LICENSE, ")
    assert probe["unknown_sample"].endswith("Did you mean 'reviews.txt'?")


def test_samples_stay_small_and_usable() -> None:
    from PIL import Image

    folder = ROOT / "assets" / "samples"
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 50_000
    images = sorted((folder / "images").glob("*.png"))
    assert len(images) == 6
    from tftune.data.images import FASHION_MNIST_CLASSES

    for image in images:
        assert image.stem in FASHION_MNIST_CLASSES
        with Image.open(image) as im:
            assert (im.size, im.mode) == ((28, 28), "L")
    lines = (folder / "reviews.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 5 and all(line.strip() for line in lines)
    import csv

    with open(folder / "reviews.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["label"] for r in rows} == {"fresh", "rotten"} and all(r["text"] for r in rows)
