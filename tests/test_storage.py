"""Run directories and data on any `tf.io.gfile` filesystem (`tftune.rundir.storage`).

- A full two-stage run whose run directory is on `ram://` (TensorFlow's in-memory
  filesystem, standing in for `gs://`), then evaluate and export from it in this process.
- The rename-free `marker` publishing of checkpoints on `ram://`: a crash between the files
  and the marker leaves the previous checkpoint the one `latest` returns; a folder without
  its marker, or whose files do not match it, is never used.
- kill -9 during checkpoint publishing with the marker protocol forced on local disk
  (`TFTUNE_PUBLISH=marker`; `ram://` dies with the killed process): each resume ends exactly
  as the uninterrupted run. Two trials by default; TFTUNE_STORAGE_KILL_TRIALS=N runs N
  (TFTUNE_KILL_JOBS=J at a time, default 2). Run with -n0 -s to see the table.
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
    from helpers import assert_one_line_error, invoke

    from tftune.errors import TftuneError

    with pytest.raises(TftuneError, match=r"^Cannot use nosuchfs://b/r: "):
        storage.path("nosuchfs://b/r").exists()
    assert_one_line_error(invoke("evaluate", "nosuchfs://b/r"), "Cannot use nosuchfs://b/r")
    assert_one_line_error(invoke("export", "ram://nothing-here/r", "--format", "savedmodel"),
                          "Run directory ram://nothing-here/r not found")


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


def test_text_run_on_ram_keeps_its_preprocessor(tmp_path, tiny_bert_preset, eager):
    """A text run (CSV on ram://, run directory on ram://; head, then LoRA): the KerasHub
    preprocessor preset and the adapters file are uploaded into the run and read back by
    `tftune.load` (from model.keras, and from base + adapters): the trained model's outputs."""
    import tensorflow as tf

    import tftune
    from tftune.config import config_from_dict

    rows = [(f"{w} {w} words here", w) for w in ("good", "bad") for _ in range(10)]
    url = ram("text") + "/t.csv"
    storage.path(url).write_bytes(write_text_csv(tmp_path / "t.csv", rows).read_bytes())
    out = ram("textrun")
    result = tftune.train(config_from_dict({
        "recipe": "text_classification", "name": "t", "output_dir": out,
        "data": {"source": "csv", "path": url, "val_fraction": 0.2, "test_fraction": 0.2},
        "backbone": {"spec": f"keras_hub:{tiny_bert_preset}", "sequence_length": 16},
        "stages": [{"name": "head", "train": "head", "epochs": 1, "learning_rate": 1e-2},
                   {"name": "lora", "train": "top:1", "peft": "lora", "epochs": 1,
                    "learning_rate": 3e-2, "lora": {"rank": 2, "alpha": 4.0}}],
        "train": {"batch_size": 8, "verbose": "quiet"},
    }), echo=lambda _: None)
    assert tf.io.gfile.exists(f"{out}/t/preprocessor/tokenizer.json")
    assert tf.io.gfile.exists(f"{out}/t/adapters.weights.npz")  # a LoRA run keeps its adapters
    texts = ["good good words here", "bad bad words here"]
    predictor = tftune.load(f"{out}/t")
    expected = result.model.predict(predictor.preprocessor(tf.constant(texts)), verbose=0)
    np.testing.assert_allclose(predictor.predict(texts), expected, atol=1e-5)
    rebuilt = tftune.load(f"{out}/t", from_adapters=True)  # base + the adapters file on ram://
    np.testing.assert_allclose(rebuilt.predict(texts), expected, atol=1e-5)
    tf.io.gfile.rmtree(out)


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


def test_an_interrupted_first_checkpoint_is_no_checkpoint(monkeypatch):
    """(Found by the kill test: killed inside the run's first marker write, the resume said
    "checkpoints are all unusable".) A marker folder without its marker is a write a kill
    interrupted, like the rename protocol's `.tmp-` folders: the run has no checkpoint yet and
    starts again; a published folder damaged since still counts (and is refused)."""
    from tftune.runtime import faults

    run = ram("first")
    original = faults.point

    def crash(name, detail=""):
        original(name, detail)
        if name == "checkpoint:arrays_written":
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(faults, "point", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.write(run, ckpt.RunState(), {"model": small_variables()})
    monkeypatch.undo()
    root = storage.path(run) / ckpt.DIR
    (root / "ckpt-000001-89abcdef").mkdir()  # as a kill leaves it: no cleanup ran
    (root / "ckpt-000001-89abcdef" / "variables.index").write_bytes(b"x")
    assert [f.name for f in ckpt.folders(run)] == ["ckpt-000001-89abcdef"]
    assert ckpt.published(run) == [] and ckpt.latest(run) is None
    written = ckpt.write(run, ckpt.RunState(), {"model": small_variables()})
    assert ckpt.published(run) == [written] == ckpt.folders(run)  # the leftover is removed
    (written / "variables.index").write_bytes(b"damaged")
    assert ckpt.published(run) == [written] and ckpt.latest(run) is None


def test_a_local_run_may_change_its_publish_mode(tmp_path, monkeypatch):
    """Checkpoints written with TFTUNE_PUBLISH=marker, then without it (a resume with another
    environment): both kinds are read, pruned and removed; an unmarked leftover is dropped."""
    run = tmp_path / "r"
    a = small_variables()
    monkeypatch.setenv(storage.PUBLISH_ENV, "marker")
    first = ckpt.write(run, ckpt.RunState(epoch=1), {"model": a})
    second = ckpt.write(run, ckpt.RunState(epoch=2), {"model": a})
    (run / ckpt.DIR / "ckpt-000003-0123abcd").mkdir()  # a kill inside the third write
    assert "-" in first.name[5:] and ckpt.latest(run).path == second
    monkeypatch.delenv(storage.PUBLISH_ENV)
    third = ckpt.write(run, ckpt.RunState(epoch=3), {"model": a})
    assert third.name == "ckpt-000004" and ckpt.latest(run).path == third
    assert [f.name for f in ckpt.folders(run)] == [third.name, second.name]
    fourth = ckpt.write(run, ckpt.RunState(epoch=4), {"model": a})
    assert [f.name for f in ckpt.folders(run)] == [fourth.name, third.name]
    ckpt.remove(run)
    assert not (run / ckpt.DIR).exists()


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


# ------------------------------------------------------------------------------------------
# kill -9 during checkpoint publishing, marker protocol forced on local disk

# Every point of a `marker` checkpoint write and prune (checkpoint._write_marked /
# _prune_marked): files written, marker about to be written, marker written, the `latest`
# hint written, an old checkpoint unmarked before its files go, pruning done.
MARKER_POINTS = ("checkpoint:marker_begin", "checkpoint:unmarked", "checkpoint:variables_written",
                 "checkpoint:state_written", "checkpoint:arrays_written", "checkpoint:begin",
                 "checkpoint:latest_updated", "checkpoint:pruned")


def marker_kill_plans(trials: int, reference_trace: list[str], seed: int = 0) -> list[str]:
    """Per trial a `point#n` to pause at and kill: the points in MARKER_POINTS order, then at
    random; n at random among the times the uninterrupted run reached the point."""
    rng = random.Random(seed)
    plans = []
    for t in range(trials):
        name = MARKER_POINTS[t] if t < len(MARKER_POINTS) else rng.choice(MARKER_POINTS)
        reached = sum(1 for l in reference_trace if l.split("#")[0] == name)
        assert reached, (name, "never reached by the uninterrupted run")
        plans.append(f"{name}#{rng.randint(1, reached)}")
    return plans


def marker_integrity(run: Path) -> list[str]:
    """What a reader could trust is sound: every checkpoint folder that has its marker matches
    it, and `latest`, when it names a folder with a marker, names a sound one."""
    problems = []
    for folder in ckpt.folders(run):
        if (folder / ckpt.STATE).is_file() and ckpt.verify(folder)[0] is None:
            problems.append(f"{folder.name}: {ckpt.verify(folder)[1]}")
    latest = run / ckpt.DIR / ckpt.LATEST
    if latest.is_file():
        named = run / ckpt.DIR / latest.read_text().strip()
        if (named / ckpt.STATE).is_file() and ckpt.verify(named)[0] is None:
            problems.append(f"latest -> {named.name}: {ckpt.verify(named)[1]}")
    return problems


@pytest.fixture(scope="module")
def marker_reference(tmp_path_factory):
    """The uninterrupted `tftune train` run (marker protocol on local disk) of test_resume's
    image kill recipe: its trace, metrics, history and weights."""
    import test_resume as tr

    root = tmp_path_factory.mktemp("marker")
    folder, cnn = make_image_folder(root / "images"), save_tiny_cnn(root / "cnn.keras")
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(resume_recipe(folder, cnn, root / "ref-runs", checkpoint_steps=3)))
    saved = dict(tr.ENV)
    tr.ENV[storage.PUBLISH_ENV] = "marker"
    try:
        proc = tr.start(["train", str(path)], root, root / "reference.trace", log_name="reference")
        assert proc.wait(timeout=600) == 0, tr.output(proc)
        run = root / "ref-runs" / "r"
        yield {"recipe": path, "trace": tr.trace_lines(root / "reference.trace"),
               "metrics": json.loads((run / "metrics.json").read_text()),
               "history": tr.history_rows(run), "weights": tr.model_weights(run / "model.keras")}
    finally:
        tr.ENV.clear()
        tr.ENV.update(saved)


def marker_trial(index: int, pause: str, recipe_path: Path, base: Path, reference: dict) -> dict:
    import test_resume as tr

    work = base / f"trial{index:02d}"
    work.mkdir(parents=True)
    run = work / "runs" / "r"
    args = ["train", str(recipe_path), "--output", str(work / "runs")]
    proc = tr.start(args, work, work / "kill.trace", pause=pause, log_name="kill")
    stopped = tr.wait_stopped(proc)
    proc.kill()
    proc.wait(timeout=60)
    landed = (tr.describe_landing(tr.trace_lines(work / "kill.trace"), ("pause", pause))
              if stopped else f"{pause}: the process had exited ({proc.returncode}) first")
    problems = marker_integrity(run)
    unmarked = [f.name for f in ckpt.folders(run) if not (f / ckpt.STATE).is_file()]
    resumed = tr.start(args + ["--resume"], work, work / "resume.trace", log_name="resume")
    code = resumed.wait(timeout=600)
    row = {"trial": index, "kill": landed, "stopped": stopped, "exit": code, "run": run,
           "problems": problems, "unmarked": unmarked,
           "from": tr.resumed_from(tr.output(resumed), run)}
    if code == 0:
        row["metric_diff"] = tr.metric_difference(json.loads((run / "metrics.json").read_text()),
                                                  reference["metrics"])
        row["history_equal"] = tr.history_rows(run) == reference["history"]
        row["leftovers"] = sorted(p.name for p in run.iterdir() if p.name.startswith(".")
                                  or p.name == ckpt.DIR)
    else:
        row["log"] = tr.output(resumed)[-2000:]
    return row


def test_kill_9_during_marker_publishing_then_resume(tmp_path, marker_reference, monkeypatch):
    """kill -9 at the points of the rename-free checkpoint protocol (TFTUNE_PUBLISH=marker on
    local disk, the protocol every URL uses): the resumed run ends exactly as the
    uninterrupted one. 2 trials by default (the kill right before a marker, and between
    unmarking an old checkpoint and deleting its files); TFTUNE_STORAGE_KILL_TRIALS=N runs N."""
    import test_resume as tr

    trials = int(os.environ.get("TFTUNE_STORAGE_KILL_TRIALS", "2"))
    plans = marker_kill_plans(trials, marker_reference["trace"],
                              seed=int(os.environ.get("TFTUNE_KILL_SEED", "0")))
    monkeypatch.setitem(tr.ENV, storage.PUBLISH_ENV, "marker")
    jobs = int(os.environ.get("TFTUNE_KILL_JOBS", "2"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(lambda ip: marker_trial(ip[0] + 1, ip[1], marker_reference["recipe"],
                                                     tmp_path, marker_reference),
                             enumerate(plans)))
    for r in rows:
        if r["exit"] == 0:
            r["weight_diff"] = tr.max_weight_difference(
                tr.model_weights(r["run"] / "model.keras"), marker_reference["weights"])
    print(f"\nkill -9 during marker publishing (TFTUNE_PUBLISH=marker, local disk): {trials} trials")
    print(f"{'trial':>5} | {'where the kill landed':<72} | {'unmarked folders left':<24} | "
          f"{'resumed from':<56} | ok  | metric diff | weight diff")
    for r in rows:
        ok = (r["exit"] == 0 and r["stopped"] and r.get("history_equal") and not r["problems"]
              and not r.get("leftovers") and r.get("weight_diff", 1) < 1e-6)
        print(f"{r['trial']:>5} | {r['kill']:<72} | {', '.join(r['unmarked']) or '-':<24} | "
              f"{r['from']:<56} | {'yes' if ok else 'NO':<3} | "
              f"{r.get('metric_diff', float('nan')):11.2e} | {r.get('weight_diff', float('nan')):.2e}")
    for r in rows:
        assert r["stopped"], r
        assert r["exit"] == 0, (r["trial"], r["kill"], r.get("log"))
        assert not r["problems"], (r["trial"], r["kill"], r["problems"])
        assert r["history_equal"], (r["trial"], r["kill"])
        assert not r["leftovers"], (r["trial"], r["leftovers"])
        assert r["metric_diff"] < 1e-6 and r["weight_diff"] < 1e-6, r


def test_tfrecord_shards_read_from_ram():
    from test_tfrecord_source import _data, colour_records, write_shards

    from tftune.data import load_data

    pattern = write_shards(storage.path(ram("records")), "train", colour_records(5, 0), 2)
    assert pattern.startswith("ram://")
    splits = load_data(_data(path=pattern, val_fraction=0.2, test_fraction=0.2), 0)
    assert sum(splits.sizes.values()) == 15 and splits.modality == "image"
