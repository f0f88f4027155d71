"""tf.distribute on this CPU-only machine, with TensorFlow's real engine:

- MirroredStrategy over 2 logical CPU devices gives the metrics and weights of one device
  (odd training-set size: the last batch does not split evenly);
- MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1 (TF_CONFIG) completes a
  staged run with the feature cache, and only the chief writes the run directory;
- the TPU path up to the resolver: a clear one-line error without a TPU;
- which strategy each setting picks, and TF_CONFIG errors.

Logical devices and multi-worker collectives are fixed when TensorFlow initialises, so those
runs are subprocesses. Run with -s to see their output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
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


def test_multi_worker_two_local_processes_only_the_chief_writes(tmp_path, image_data):
    """Two `tftune train --distribute multi_worker` processes, each in its own working
    directory with the recipe's relative `output_dir: runs`: the run directory appears only
    under the chief's, complete, with the metrics one device gets (SGD: float rounding)."""
    root, folder, cnn = image_data
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(folder, cnn, "runs")))
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = []
    for i in range(2):
        cwd = tmp_path / f"worker{i}"
        cwd.mkdir()
        (tmp_path / f"tmp{i}").mkdir()
        env = {**ENV, "TMPDIR": str(tmp_path / f"tmp{i}"), "TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            [TFTUNE, "train", str(path), "--distribute", "multi_worker"], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
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
        assert p.returncode == 0, out + err
        assert "Traceback" not in out + err and "Error" not in out + err
    (out0, _), (out1, _) = outs
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
        for key in ("loss", "accuracy"):
            assert metrics[split][key] == pytest.approx(one[split][key], abs=1e-4), (split, key)
    print(f"2 workers: val loss {metrics['val']['loss']:.6f}, one device: {one['val']['loss']:.6f}")


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
