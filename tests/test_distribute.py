"""tf.distribute on this CPU-only machine, with TensorFlow's real engine:

- MirroredStrategy over 2 logical CPU devices gives the metrics and weights of one device
  (odd training-set size: the last batch does not split evenly);
- MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1 (TF_CONFIG) completes a
  staged run with the feature cache, and only the chief writes the run directory;
- there each worker decodes and feature-caches only its shard of every split (the decode
  trace counts it), its metrics are exact sums over the whole splits, and the run ends
  within a stated tolerance of one device's;
- preemption there: SIGTERM to one worker stops both at the same step with a checkpoint in
  the shared run directory, and both resumed end as the uninterrupted 2-worker run;
- the TPU path up to the resolver: a clear one-line error without a TPU;
- which strategy each setting picks, and TF_CONFIG errors.

Logical devices and multi-worker collectives are fixed when TensorFlow initialises, so those
runs are subprocesses. Run with -n0 -s to see their output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import make_image_folder, save_tiny_cnn
from tftune.runtime.distribute import ClusterSpec, read_tf_config, resolve
from tftune.errors import ConfigError

TFTUNE = str(Path(sys.executable).with_name("tftune"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
ENV.pop("TF_CONFIG", None)
ENV.pop("TPU_NAME", None)


# ------------------------------------------------------------------------------------------
# choosing the strategy


@pytest.mark.parametrize(
    "setting, tpu, gpus, env, expected",
    [
        ("auto", None, 0, {}, "default"),
        ("auto", None, 1, {}, "default"),
        ("auto", None, 2, {}, "mirrored"),
        ("auto", "local", 2, {}, "tpu"),
        ("auto", None, 0, {"TPU_NAME": "my-tpu"}, "tpu"),
        ("auto", None, 0, {"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})},
         "multi_worker"),
        ("auto", None, 0, {"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})}, "default"),
        ("mirrored", None, 0, {}, "mirrored"),
        ("default", None, 4, {"TPU_NAME": "x"}, "default"),
    ],
)
def test_resolve(setting, tpu, gpus, env, expected):
    assert resolve(setting, tpu, gpus, env) == expected


def test_unknown_setting_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'mirrored'.*Received: distribute='mirored'"):
        resolve("mirored")


def test_tf_config_chief_and_errors():
    spec = read_tf_config({"TF_CONFIG": json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
         "task": {"type": "worker", "index": 0}})})
    assert spec == ClusterSpec({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "worker", 0)
    assert spec.num_workers == 3 and not spec.is_chief
    assert read_tf_config({"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}})}).is_chief
    assert read_tf_config({}) is None
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_tf_config({"TF_CONFIG": "{cluster"})
    with pytest.raises(ConfigError, match="not one of its cluster's tasks"):
        read_tf_config({"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}})})


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    from tftune.runtime.distribute import make_distribution

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG.*not set"):
        make_distribution("multi_worker")


def test_tpu_without_a_name_is_a_clear_error(monkeypatch):
    from tftune.runtime.distribute import make_distribution

    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ConfigError, match="found no TPU.*--tpu NAME.*TPU_NAME.*--distribute default"):
        make_distribution("tpu")


# ------------------------------------------------------------------------------------------
# real runs in subprocesses


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """39 coloured 32-px images (3 classes; 33 for training: the last batch of 8 has 1) and a
    tiny CNN backbone file."""
    root = tmp_path_factory.mktemp("dist")
    return root, make_image_folder(root / "images", per_class=13), save_tiny_cnn(root / "cnn.keras")


def recipe(folder: Path, cnn: Path, output_dir: str, **train) -> dict:
    """Head (2 epochs, cached) then top:1 (1 epoch, cached), SGD: with SGD two ways of summing
    the same gradients differ by float rounding only (Adam's first steps, lr x sign(g),
    would amplify rounding on near-zero gradients)."""
    return {
        "recipe": "image_classification", "name": "dist", "output_dir": output_dir,
        "data": {"source": "folder", "path": str(folder), "image_size": [32, 32]},
        "backbone": {"spec": f"keras:{cnn}"},
        "head": {"dropout": 0.0},
        "stages": [
            {"name": "head", "train": "head", "epochs": 2, "learning_rate": 0.05,
             "optimizer": "sgd", "early_stopping": {"monitor": "val_loss", "patience": 5}},
            {"name": "top", "train": "top:1", "epochs": 1, "learning_rate": 0.01,
             "optimizer": "sgd"},
        ],
        "train": {"batch_size": 8, "verbose": "epoch", **train},
    }


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tftune.config import load_recipe
    from tftune.training.runner import train
    out = {}
    for setting in ("default", "mirrored"):
        lines = []
        cfg = load_recipe(sys.argv[1], [f"name={setting}", f"train.distribute={setting}"])
        result = train(cfg, echo=lambda l: (lines.append(l), print(l)))
        out[setting] = {"metrics": result.metrics, "log": lines,
                        "weights": [w.tolist() for w in result.model.get_weights()]}
    print("RESULT " + json.dumps(out))
""")


def test_mirrored_on_two_logical_cpus_matches_one_device(tmp_path, image_data):
    root, folder, cnn = image_data
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(folder, cnn, str(tmp_path / "runs"))))
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=600, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    one, two = result["default"], result["mirrored"]
    assert not any("Distribution:" in l for l in one["log"])
    assert any("MirroredStrategy, 2 replica(s) (/device:CPU:0, /device:CPU:1); global batch 8 = "
               "4 per replica" in l for l in two["log"]), two["log"]
    assert sum("feature cache: frozen part run once" in l for l in two["log"]) == 2
    print("\n--- mirrored run ---\n" + "\n".join(two["log"]))
    print(f"\n{'':>8} {'val loss':>12} {'val acc':>8} {'test loss':>12} {'test acc':>8}")
    for name, r in result.items():
        m = r["metrics"]
        print(f"{name:>8} {m['val']['loss']:12.8f} {m['val']['accuracy']:8.4f} "
              f"{m['test']['loss']:12.8f} {m['test']['accuracy']:8.4f}")
    for split in ("val", "test"):
        for key in ("loss", "accuracy"):
            assert two["metrics"][split][key] == pytest.approx(one["metrics"][split][key],
                                                               abs=1e-5), (split, key)
    for stage_one, stage_two in zip(one["metrics"]["stages"], two["metrics"]["stages"]):
        assert stage_two["best_value"] == pytest.approx(stage_one["best_value"], abs=1e-5)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(one["weights"], two["weights"]))
    print(f"max |weight difference| mirrored vs default: {diff:.2e}")
    assert diff < 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(tmp_path: Path, recipe_path: Path, extra=(), tag: str = "",
                  env=lambda i: {}) -> list[subprocess.Popen]:
    """`tftune train --distribute multi_worker` in 2 local worker processes (TF_CONFIG on
    127.0.0.1), each in its own working directory `tmp_path/worker<i><tag>` with its own
    TMPDIR and `env(i)`, and `extra` arguments."""
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = []
    for i in range(2):
        cwd = tmp_path / f"worker{i}{tag}"
        cwd.mkdir()
        (tmp_path / f"tmp{i}{tag}").mkdir()
        worker_env = {**ENV, "TMPDIR": str(tmp_path / f"tmp{i}{tag}"), **env(i),
                      "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                               "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            [TFTUNE, "train", str(recipe_path), "--distribute", "multi_worker", *extra], cwd=cwd,
            env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish_workers(procs: list[subprocess.Popen], expected_exit: int = 0) -> list[str]:
    """Each worker's output (stdout, then stderr) once both exited with `expected_exit`, with
    no traceback."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        print(f"\n--- worker {i} (exit {p.returncode}) ---\n{out}{err}")
        assert p.returncode == expected_exit, out + err
        assert "Traceback" not in out + err and "Error" not in out + err
    return [out + err for out, err in outs]


def run_workers(tmp_path: Path, recipe_path: Path, env=lambda i: {}) -> list[str]:
    """Both workers run to the end (exit 0); returns their output."""
    return finish_workers(start_workers(tmp_path, recipe_path, env=env))


# Each worker trains on its own shard, shuffled by the epoch's seed: a global batch is the
# union of one batch from each worker, not the batch one device would take from the whole
# split, so 2 workers follow another (equally valid) SGD path than one device. Tolerance for
# the final metrics of these short runs (3 epochs of SGD on a tiny CNN):
LOSS_TOLERANCE = 0.02


def test_multi_worker_two_local_processes_only_the_chief_writes(tmp_path, image_data):
    """Two `tftune train --distribute multi_worker` processes, each in its own working
    directory with the recipe's relative `output_dir: runs`: the run directory appears only
    under the chief's, complete, with metrics close to one device's (`LOSS_TOLERANCE`)."""
    root, folder, cnn = image_data
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(folder, cnn, "runs")))
    out0, out1 = run_workers(tmp_path, path)
    assert "MultiWorkerMirroredStrategy, 2 replica(s); this is worker 0 of 2 workers (writes the " \
           "run directory)" in out0
    assert "this is worker 1 of 2 workers; global batch 8 = 4 per replica" in out1
    assert "The chief worker wrote the run directory" in out1
    run = tmp_path / "worker0" / "runs" / "dist"
    assert sorted(p.name for p in run.iterdir()) == [
        "classes.json", "config.yaml", "history.csv", "metrics.json", "model.keras",
        "task.json", "training_curves.png", "versions.json"]
    assert not (tmp_path / "worker1" / "runs").exists()
    assert list(tmp_path.glob("worker1/*")) == []
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["epochs_run"] for s in metrics["stages"]] == [2, 1]
    # Worker 1 wrote to a temporary folder (its TMPDIR), removed at the end.
    assert not list((tmp_path / "tmp1").glob("tftune-*"))

    # The same recipe on one device in this process.
    from tftune.config import load_recipe
    from tftune.training.runner import train

    cfg = load_recipe(path, [f"output_dir={tmp_path / 'one'}", "train.distribute=default",
                             "train.verbose=quiet"])
    one = train(cfg, echo=lambda _: None).metrics
    for split in ("val", "test"):
        assert metrics[split]["loss"] == pytest.approx(one[split]["loss"], abs=LOSS_TOLERANCE)
        # at most one example of the split classified otherwise
        assert abs(metrics[split]["accuracy"] - one[split]["accuracy"]) <= (
            1.0 / metrics["sizes"][split] + 1e-6), split
    print(f"2 workers: val loss {metrics['val']['loss']:.6f}, one device: {one['val']['loss']:.6f}")


def test_multi_worker_each_worker_decodes_and_caches_only_its_shard(tmp_path, image_data):
    """2 local workers with the decode trace on (`TFTUNE_DECODE_TRACE`): worker i decodes
    exactly the examples at positions i, i + 2, ... of each split, once each (the two shards
    are disjoint and cover the split), and fills the feature cache with those only. Training
    (21 examples, 2 per replica: 6 steps on worker 0's 11, 5 on worker 1's 10) and validation
    (5 and 4) run on uneven shards: the shorter one is padded with weight-0 batches, and the
    metrics are exact sums over the whole splits: the chief's final model scored on one
    device gives the val and test metrics the 2 workers reported."""
    root, folder, cnn = image_data
    path = tmp_path / "r.yaml"
    cfg_dict = recipe(folder, cnn, "runs", batch_size=4)
    cfg_dict["data"].update(val_fraction=0.2, test_fraction=0.2)
    path.write_text(yaml.safe_dump(cfg_dict))
    traces = [tmp_path / f"decoded{i}.txt" for i in range(2)]
    outs = run_workers(tmp_path, path, env=lambda i: {"TFTUNE_DECODE_TRACE": str(traces[i])})

    from tftune.config import load_recipe
    from tftune.data import load_data
    from tftune.rundir.reader import open_run

    cfg = load_recipe(path)
    splits = load_data(cfg.data, cfg.train.seed)
    decoded = [[line.split(" ", 1)[1] for line in t.read_text().splitlines()] for t in traces]
    print("\nexamples decoded per worker (whole split -> worker 0 + worker 1):")
    for name in ("train", "val", "test"):
        ids = splits.ids[name]
        counts = [sum(p in set(ids) for p in d) for d in decoded]
        print(f"  {name}: {len(ids)} -> {counts[0]} + {counts[1]}")
    for i, (d, out) in enumerate(zip(decoded, outs)):
        mine = {name: splits.ids[name][i::2] for name in ("train", "val", "test")}
        assert sorted(d) == sorted(p for ids in mine.values() for p in ids), f"worker {i}"
        assert len(set(d)) == len(d)  # each once: the decoded shard is cached
        n = {name: len(ids) for name, ids in mine.items()}
        assert (f"worker {i} of 2 reads and decodes only its shard (train {n['train']} of 21, "
                f"val {n['val']} of 9, test {n['test']} of 9); 2 per replica") in out
        # both stages' caches: this worker's shard of train and val only
        assert out.count(f"frozen part run once over {n['train']} train + {n['val']} val "
                         f"examples") == 2, out
    assert not set(decoded[0]) & set(decoded[1])
    assert sorted(decoded[0] + decoded[1]) == sorted(
        p for name in ("train", "val", "test") for p in splits.ids[name])

    # Exact metrics: the chief's model on one device over the whole val and test splits.
    run = open_run(tmp_path / "worker0" / "runs" / "dist")
    metrics = json.loads((run.path / "metrics.json").read_text())
    model, task = run.load_model(), run.task
    loss_fn = task.loss(reduction=None)
    for name in ("val", "test"):
        x, y = zip(*run.split(name).dataset.as_numpy_iterator())
        x = np.clip(np.round(np.stack(x)), 0, 255).astype("float32")  # as the pipeline's uint8
        pred = model.predict(x, verbose=0)
        loss = float(np.mean(np.asarray(loss_fn(np.asarray(y), pred))))
        accuracy = float(np.mean(np.argmax(pred, -1) == np.asarray(y)))
        print(f"  {name}: 2 workers loss {metrics[name]['loss']:.7f} accuracy "
              f"{metrics[name]['accuracy']:.4f}; chief's model on one device loss {loss:.7f} "
              f"accuracy {accuracy:.4f}")
        assert metrics[name]["loss"] == pytest.approx(loss, abs=1e-5), name
        assert metrics[name]["accuracy"] == pytest.approx(accuracy, abs=1e-6), name


def test_tpu_path_fails_clearly_without_a_tpu(tmp_path, image_data):
    """`--distribute tpu --tpu local` goes through TPUClusterResolver and
    initialize_tpu_system; on this machine that ends in one error line, exit code 2."""
    root, folder, cnn = image_data
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(folder, cnn, str(tmp_path / "runs"))))
    proc = subprocess.run([TFTUNE, "train", str(path), "--distribute", "tpu", "--tpu", "local"],
                          capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    print(proc.stdout + proc.stderr)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "could not initialise TPU 'local' (TPUs not found in the cluster)" in errors[0]
    assert "--tpu NAME" in errors[0] and "--distribute default" in errors[0]
    assert not (tmp_path / "runs").exists()


def test_multi_worker_sigterm_to_one_worker_then_both_resume_as_if_uninterrupted(tmp_path, image_data):
    """Preemption of one host of a multi-worker job: SIGTERM reaches worker 1 only, in the
    second stage. The workers agree to stop at the same step, the chief writes the checkpoint
    to the shared run directory, and both exit 75 saying how to resume. Both restarted with
    `--resume` finish with the history, metrics and weights of an uninterrupted 2-worker run
    of the same recipe."""
    from helpers import (history_rows, max_weight_difference, metric_difference, model_weights,
                         trace_lines)
    from tftune.runtime import faults
    from tftune.runtime.preemption import EXIT_CODE

    root, folder, cnn = image_data
    shared = tmp_path / "shared"  # the run directory on storage both workers see (e.g. GCS)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(folder, cnn, str(shared), checkpoint_steps=2)))
    finish_workers(start_workers(tmp_path, path, ["--output", str(shared / "ref")], tag="-ref"))

    traces = [tmp_path / f"trace{i}.txt" for i in range(2)]
    procs = start_workers(tmp_path, path, ["--output", str(shared / "cut")], tag="-cut",
                          env=lambda i: {faults.TRACE_ENV: str(traces[i])})
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        lines = trace_lines(traces[1])
        begun = [j for j, line in enumerate(lines) if line.startswith("stage_begin#2 ")]
        if begun and any(line.startswith("step#") for line in lines[begun[0]:]):
            break
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    outs = finish_workers(procs, expected_exit=EXIT_CODE)
    for out in outs:  # each worker says how to resume (its scheduler restarts it)
        assert "Resume with: tftune train" in out and "--distribute multi_worker" in out, out
    stopped = [[line for line in trace_lines(t) if line.startswith("step#")][-1]
               for t in traces]
    print(f"last step of each worker: {stopped}")
    assert stopped[0].split(" ", 2)[2] == stopped[1].split(" ", 2)[2]  # the same epoch and step
    assert "stage_end#2" not in traces[0].read_text()  # stopped inside the second stage

    outs = finish_workers(start_workers(tmp_path, path, ["--output", str(shared / "cut"), "--resume"],
                                        tag="-resume"))
    assert "Resuming from checkpoint/" in outs[0], outs[0]
    ref, cut = shared / "ref" / "dist", shared / "cut" / "dist"
    # The epoch's running metric sums are SUM-aggregated ON_READ variables: a checkpoint holds
    # their total over the replicas, and restoring gives each replica total / replicas
    # (TensorFlow's values_util.get_on_read_restore_ops), so the resumed epoch adds the same
    # numbers in another order: its training metrics may differ in float32 rounding. On one
    # device they are bit for bit the same (tests/test_resume.py).
    rows = [[dict(r) for r in history_rows(run)] for run in (ref, cut)]
    assert [r.keys() for r in rows[1]] == [r.keys() for r in rows[0]]
    for a, b in zip(*rows):
        for key, value in a.items():
            if key in ("stage", "stage_name", "epoch", "learning_rate"):
                assert b[key] == value, key
            else:
                assert float(b[key]) == pytest.approx(float(value), rel=1e-6, abs=1e-7), (key, a, b)
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (ref, cut))
    assert metric_difference(a, b) < 1e-6, (a, b)
    diff = max_weight_difference(model_weights(cut / "model.keras"), model_weights(ref / "model.keras"))
    print(f"max |weight difference| resumed vs uninterrupted, 2 workers: {diff:.2e}")
    assert diff < 1e-6
