"""Run directories and data on any `tf.io.gfile` filesystem (`tftune.rundir.storage`).

- A full two-stage run whose run directory is on `ram://` (TensorFlow's in-memory
  filesystem, standing in for `gs://`), then evaluate and export from it in this process.
- The rename-free `marker` publishing of checkpoints on `ram://`: a crash between the files
  and the marker leaves the previous checkpoint the one `latest` returns; a folder without
  its marker, or whose files do not match it, is never used.
- kill -9 during checkpoint publishing with the marker protocol forced on local disk
  (`TFTUNE_PUBLISH=marker`; `ram://` dies with the killed process): each resume ends exactly
  as the uninterrupted run. Two trials by default; TFTUNE_STORAGE_KILL_TRIALS=N runs N
  (TFTUNE_KILL_JOBS=J at a time, default 2). Run with -s to see the table.
- Data sources (image folder, CSV) read from `ram://`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import make_image_folder, resume_recipe, save_tiny_cnn, write_text_csv
from tftune.rundir import checkpoint as ckpt
from tftune.rundir import storage


def ram(name: str) -> str:
    """A fresh `ram://` folder for one test."""
    return f"ram://tftune-test-{name}-{uuid.uuid4().hex[:8]}"


def upload(local: Path, url: str) -> str:
    storage.upload_tree(local, storage.path(url))
    return url


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    return root, make_image_folder(root / "images", per_class=8), save_tiny_cnn(root / "cnn.keras")


# ------------------------------------------------------------------------------------------
# paths


def test_paths_local_stay_pathlib_and_urls_go_through_gfile(tmp_path, monkeypatch):
    assert storage.path(str(tmp_path)) == tmp_path and storage.path(f"file://{tmp_path}") == tmp_path
    p = storage.path("ram://bucket//runs/r/")
    assert isinstance(p, storage.GPath) and str(p) == "ram://bucket/runs/r"
    assert str(p / "checkpoint" / "latest") == "ram://bucket/runs/r/checkpoint/latest"
    assert (p.name, str(p.parent), (p / "a.tar.gz").suffixes) == ("r", "ram://bucket/runs", [".tar", ".gz"])
    assert storage.publish_mode(str(tmp_path)) == "rename"
    assert storage.publish_mode("gs://b/r") == "marker"
    monkeypatch.setenv(storage.PUBLISH_ENV, "marker")
    assert storage.publish_mode(str(tmp_path)) == "marker"
    monkeypatch.setenv(storage.PUBLISH_ENV, "copy")
    from tftune.errors import TftuneError

    with pytest.raises(TftuneError, match=r"Unknown TFTUNE_PUBLISH 'copy'. Expected one of: rename, marker"):
        storage.publish_mode(str(tmp_path))


def test_an_unknown_scheme_is_one_clear_error():
    from tftune.errors import TftuneError

    with pytest.raises(TftuneError, match=r"^Cannot use nosuchfs://b/r: "):
        storage.path("nosuchfs://b/r").exists()


# ------------------------------------------------------------------------------------------
# a whole run on ram://


def test_staged_run_evaluate_and_export_on_ram(data, eager):
    import tensorflow as tf

    import tftune
    from tftune.config import config_from_dict
    from tftune.evaluation.evaluate import evaluate
    from tftune.export import export

    root, folder, cnn = data
    out = ram("run")
    images = upload(folder, ram("images"))  # the data on ram:// too
    recipe = resume_recipe(images, cnn, out)
    recipe["train"]["tensorboard"] = True
    lines = []
    result = tftune.train(config_from_dict(recipe), echo=lines.append)
    run = f"{out}/r"
    assert str(result.run_dir) == run
    g = tf.io.gfile
    for name in ("config.yaml", "versions.json", "classes.json", "history.csv", "metrics.json",
                 "model.keras", "training_curves.png"):
        assert g.exists(f"{run}/{name}"), name
    assert not g.exists(f"{run}/checkpoint")  # finished: the checkpoints are removed
    assert g.glob(f"{run}/tensorboard/train/events.out.tfevents.*")
    assert len(tftune.rundir.read_rows(f"{run}/history.csv")) == 4

    report = evaluate(run)
    assert str(report.out_dir) == f"{run}/eval/test"
    assert g.exists(f"{run}/eval/test/metrics.json") and g.exists(f"{run}/eval/test/report.txt")
    manifest = json.loads(storage.path(f"{run}/eval/test/{storage.MANIFEST}").read_text())
    assert "metrics.json" in manifest["files"]
    assert report.metrics["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"], abs=1e-6)

    said = []
    exported = export(run, "savedmodel", samples=8, echo=said.append)
    dest = f"{run}/export/savedmodel"
    assert str(exported.out_dir) == dest
    assert any("built and verified (a SavedModel in a fresh process) in a local temporary "
               "folder" in l for l in said), said
    assert exported.max_abs_diff <= exported.tolerance
    assert g.exists(f"{dest}/saved_model.pb") or g.glob(f"{dest}/*/saved_model.pb")
    verification = [p for p in g.listdir(dest) if p.startswith("verification")]
    assert verification, g.listdir(dest)
    manifest = json.loads(storage.path(f"{dest}/{storage.MANIFEST}").read_text())
    for name, meta in manifest["files"].items():
        assert g.stat(f"{dest}/{name}").length == meta["size"], name

    # The reader behind tftune.load works on it as on a local run.
    from tftune.rundir.reader import open_run

    assert open_run(run).class_names == result.class_names
    g.rmtree(out)
    g.rmtree(images)


# ------------------------------------------------------------------------------------------
# the marker protocol on ram://


def small_variables(values=(1.0, 2.0)):
    import keras

    return [keras.Variable(np.full((2, 3), v, np.float32), name=f"w{i}") for i, v in enumerate(values)]


def test_crash_before_the_marker_leaves_the_previous_checkpoint(monkeypatch):
    from tftune.runtime import faults

    run = ram("ckpt")
    a = small_variables((1.0, 2.0))
    first = ckpt.write(run, ckpt.RunState(stage=0, epoch=1), {"model": a}, {"best": [np.arange(3.0)]})
    assert storage.is_url(first) and ckpt._NAME.match(first.name) and "-" in first.name[5:]
    assert ckpt.latest(run).path == first

    # An exception after the files, before the marker: the new folder is never committed.
    original = faults.point

    def crash(name, detail=""):
        original(name, detail)
        if name == "checkpoint:marker_begin":
            raise KeyboardInterrupt("killed")

    for v in a:
        v.assign(v + 10.0)
    monkeypatch.setattr(faults, "point", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.write(run, ckpt.RunState(stage=0, epoch=2), {"model": a})
    monkeypatch.undo()
    loaded = ckpt.latest(run)
    assert loaded.path == first and loaded.state.epoch == 1
    b = small_variables((0.0, 0.0))
    loaded.restore({"model": b})
    assert float(b[0].numpy()[0, 0]) == 1.0
    np.testing.assert_array_equal(loaded.arrays("best")[0], np.arange(3.0))

    # A crash can also leave the files with no cleanup at all (a kill): such a folder, and
    # one whose files were damaged after its marker, are skipped; `latest` naming a folder
    # without a marker does not make it used.
    root = storage.path(run) / ckpt.DIR
    unmarked = root / "ckpt-000007-0123abcd"
    (unmarked / "variables.index").write_bytes(b"half")
    (root / ckpt.LATEST).write_text(unmarked.name + "\n")
    loaded = ckpt.latest(run)
    assert loaded.path == first and loaded.skipped == ["ckpt-000007-0123abcd: no state.json"]

    second = ckpt.write(run, ckpt.RunState(stage=0, epoch=3), {"model": a})
    assert second.name.startswith("ckpt-000008-") and ckpt.latest(run).path == second
    assert not unmarked.exists()  # an uncommitted leftover older than the new one: removed
    data_file = next(p for p in second.iterdir() if p.name.startswith("variables.data"))
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    loaded = ckpt.latest(run)
    assert loaded.path == first and "does not match its sha256" in loaded.skipped[0]

    # Only the two newest committed checkpoints are kept; pruning never renames.
    third = ckpt.write(run, ckpt.RunState(stage=1), {"model": a})
    assert [p.name for p in ckpt.folders(run)] == [third.name, second.name]
    ckpt.remove(run)
    assert not root.exists()


# ------------------------------------------------------------------------------------------
# data on ram://


def test_csv_and_image_folder_read_from_ram(data, tmp_path):
    from tftune.config import DataConfig
    from tftune.data.images import load_image_folder
    from tftune.data.text import load_text_file

    root, folder, _ = data
    images = upload(folder, ram("images"))
    splits = load_image_folder(DataConfig(source="folder", path=images, image_size=(32, 32)), 0)
    assert splits.class_names == sorted(p.name for p in folder.iterdir())
    assert sum(splits.sizes.values()) == sum(1 for _ in folder.rglob("*.png"))
    x, _ = next(iter(splits.train))
    assert tuple(x.shape) == (32, 32, 3)

    rows = [(f"text number {i}", "pos" if i % 2 else "neg") for i in range(20)]
    local = write_text_csv(tmp_path / "t.csv", rows)
    url = ram("csv") + "/t.csv"
    storage.path(url).write_bytes(local.read_bytes())
    splits = load_text_file(DataConfig(source="csv", path=url), 0)
    assert splits.class_names == ["neg", "pos"] and sum(splits.sizes.values()) == 20
