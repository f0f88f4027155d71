"""Resume: a run stopped anywhere continues exactly where it was.

- In this process (eager, fast): SIGTERM at several points of a two-stage run (head with the
  feature cache and dropout, then top:1 with a cosine schedule), then `--resume`: the final
  weights, metrics and history equal an uninterrupted run's.
- The CLI's rules: an unfinished run with a checkpoint is not replaced without --resume or
  --overwrite, a changed recipe is not resumed, a finished run is not resumed.
- Checkpoint files: a damaged or partial checkpoint is never used.
- Subprocesses: a real SIGTERM makes `tftune train` checkpoint, print how to resume and exit
  75; and the kill test: `kill -9` at random moments (mid-epoch, at epoch ends and stage
  boundaries, inside checkpoint writes, at random times, twice in a row), resume each, and
  compare with an uninterrupted run. TFTUNE_KILL_TRIALS=N runs N trials (default 10),
  TFTUNE_KILL_JOBS=J runs J at a time (default 2). Run with -n0 -s to see the table.
- The kill test also runs on two text variants (`KILL_CASES`, tiny BERT), with 2 kills each
  (`VARIANT_CATEGORIES`; TFTUNE_KILL_TRIALS_VARIANTS=N runs N): `multilabel` (thresholds
  tuned at the end) and `regression` with a LoRA stage (head -> `peft: lora` on the
  attention query / value; a standardised target; the run directory keeps
  `adapters.weights.npz` + `adapters.json`). Each must end exactly as its uninterrupted run:
  the same history, metrics, bit-for-bit weights, task.json and adapters. Their SIGTERM
  resume tests run in-process (cheaper): test_tasks.py (regression, multi-label) and
  test_peft.py (head -> lora -> full).
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import (
    assert_same_run,
    assert_one_line_error,
    resume_recipe as recipe,
    history_rows,
    invoke,
    max_weight_difference,
    metric_difference,
    model_weights,
    multilabel_csv,
    recording_steps,
    regression_csv,
    sigterm_at,
    sigterm_then_resume,
    trace_lines,
    make_image_folder,
    make_sentence,
    save_tiny_cnn,
    task_resume_recipe,
    train_eagerly,
    write_text_csv,
)
from tftune.model import peft
from tftune.rundir import checkpoint as ckpt
from tftune.runtime import faults
from tftune.config import config_from_dict, load_recipe

TFTUNE = str(Path(sys.executable).with_name("tftune"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
for key in ("TF_CONFIG", "TPU_NAME", faults.TRACE_ENV, faults.PAUSE_ENV):
    ENV.pop(key, None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """36 coloured images (30 train: 4 batches of 8, the last short) and a tiny CNN file."""
    root = tmp_path_factory.mktemp("resume")
    return root, make_image_folder(root / "images"), save_tiny_cnn(root / "cnn.keras")


# ------------------------------------------------------------------------------------------
# in this process: SIGTERM at a step, then resume


@pytest.fixture(scope="module")
def reference(data):
    """The uninterrupted run (eager), with the config used."""
    root, folder, cnn = data
    return train_eagerly(recipe(folder, cnn, root / "ref"))


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize(
    "event, n, where",
    [
        # The head trains on the cache, 32 steps a call (`steps_per_execution: auto`): a
        # SIGTERM during step 2 stops where that call ends, after the epoch's 4th batch.
        ("step", 2, "stage 1/2 'head', epoch 1, step 4"),
        ("epoch_end", 1, "stage 1/2 'head', epoch 2, start"),
        ("stage_end", 1, "stage 2/2 'top', epoch 1, start"),
        ("step", 11, "stage 2/2 'top', epoch 1, step 3"),
        ("step", 15, "stage 2/2 'top', epoch 2, step 3"),
    ],
    ids=["head-call-end", "epoch-end", "stage-boundary", "mid-stage-2", "last-epoch"],
)
def test_sigterm_then_resume_equals_the_uninterrupted_run(tmp_path, data, reference,
                                                          monkeypatch, event, n, where):
    from tftune.runtime.preemption import Preempted
    from tftune.training.runner import train

    root, folder, cnn = data
    cfg = config_from_dict(recipe(folder, cnn, tmp_path))
    sigterm_at(monkeypatch, event, n)
    with pytest.raises(Preempted) as info:
        train(cfg, echo=lambda _: None)
    assert str(info.value) == (
        f"SIGTERM received: stopped at {where} with a checkpoint in {tmp_path / 'r' / 'checkpoint'}."
    )
    run = tmp_path / "r"
    assert not (run / "metrics.json").exists() and (run / "checkpoint" / "latest").is_file()
    monkeypatch.undo()

    lines = []
    resumed = train(cfg, resume=True, echo=lines.append)
    assert any(l.startswith("Resuming from checkpoint/ckpt-") and l.endswith(where) for l in lines), lines
    # Stages finished before the checkpoint are not run again.
    banners = [l for l in lines if l.startswith("== Stage")]
    assert len(banners) == (1 if "stage 2/2" in where else 2)
    assert_same_run(resumed, reference)
    assert [s["epochs_run"] for s in resumed.metrics["stages"]] == [2, 2]
    assert [s["best_value"] for s in resumed.metrics["stages"]] == pytest.approx(
        [s["best_value"] for s in reference.metrics["stages"]], abs=1e-6)
    assert not (run / "checkpoint").exists()  # a finished run keeps its results, not checkpoints
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("augment", [["flip"], ["randaugment", "resized_crop", {"mixup": 0.4}]],
                         ids=["flip", "randaugment-crop-mixup"])
def test_random_augmentation_resumes_too(tmp_path, data, monkeypatch, augment):
    """With `data.augment` (no feature cache) the augmented images (and mixed labels) of an
    epoch are fixed by (seed, stage, epoch, batch): stopped mid-epoch and resumed, the run
    ends as the uninterrupted one does."""
    from tftune.runtime.preemption import Preempted
    from tftune.training.runner import train

    root, folder, cnn = data

    def cfg(out):
        r = recipe(folder, cnn, out)
        r["data"]["augment"] = augment
        return config_from_dict(r)

    lines = []
    reference = train(cfg(tmp_path / "ref"), echo=lines.append)
    assert sum("feature cache: off (random augmentation" in l for l in lines) == 2
    sigterm_at(monkeypatch, "step", 7)
    with pytest.raises(Preempted, match="stage 1/2 'head', epoch 2, step 3"):
        train(cfg(tmp_path / "cut"), echo=lambda _: None)
    monkeypatch.undo()
    resumed = train(cfg(tmp_path / "cut"), resume=True, echo=lambda _: None)
    assert max_weight_difference(resumed.model.get_weights(), reference.model.get_weights()) < 1e-6
    assert history_rows(resumed.run_dir) == history_rows(reference.run_dir)


@pytest.mark.usefixtures("eager")
def test_resumed_stage_gets_its_trainability_from_the_stage(tmp_path, data, reference,
                                                           monkeypatch):
    """(Lightning#21901: a resumed run re-froze the backbone.) Stopped inside stage 2
    (top:1), the resumed run trains exactly stage 2's variables from the checkpoint on, and
    a checkpoint whose stage trained other variables is refused."""
    from tftune.runtime.preemption import Preempted
    from tftune.training.runner import train

    root, folder, cnn = data
    cfg = config_from_dict(recipe(folder, cnn, tmp_path))
    sigterm_at(monkeypatch, "step", 10)
    with pytest.raises(Preempted):
        train(cfg, echo=lambda _: None)
    monkeypatch.undo()
    loaded = ckpt.latest(tmp_path / "r")
    assert (loaded.state.stage, loaded.state.epoch, loaded.state.step) == (1, 0, 2)
    assert set(loaded.state.trainable) == {
        "block2_conv/kernel", "head_classifier/kernel", "head_classifier/bias"}

    from tftune.training import callbacks as callbacks_mod

    seen = []  # what the model being fitted trains, when each (resumed) stage begins

    def spy(self, logs=None):
        seen.append({v.path for v in self.model.trainable_variables})

    monkeypatch.setattr(callbacks_mod.StopOnNaN, "on_train_begin", spy, raising=False)
    resumed = train(cfg, resume=True, echo=lambda _: None)
    assert seen == [set(loaded.state.trainable)]
    assert max_weight_difference(resumed.model.get_weights(), reference.model.get_weights()) < 1e-6

    # A checkpoint whose stage trained other variables is not loaded into this stage.
    monkeypatch.undo()
    sigterm_at(monkeypatch, "step", 10)
    with pytest.raises(Preempted):
        train(cfg, overwrite=True, echo=lambda _: None)
    monkeypatch.undo()
    state_file = ckpt.latest(tmp_path / "r").path / ckpt.STATE
    payload = json.loads(state_file.read_text())
    payload["state"]["trainable"] = payload["state"]["trainable"][1:]
    state_file.write_text(json.dumps(payload))  # the manifest does not cover state.json itself
    from tftune.errors import TftuneError

    with pytest.raises(TftuneError, match="Cannot resume stage 2: it trains 3 variables, the "
                                          "checkpoint's stage trained 2"):
        train(cfg, resume=True, echo=lambda _: None)


@pytest.mark.usefixtures("eager")
def test_text_run_resumes_mid_stage_with_bucketed_batches(tmp_path, tiny_bert_preset, monkeypatch):
    """Text: length-bucketed, trimmed batches and a cached top:1 stage (ragged features);
    stopped mid-epoch in stage 2 and resumed, the result equals the uninterrupted run's."""
    from tftune.training.runner import train

    rng = random.Random(1)
    rows = [(make_sentence(rng, lab, rng.randint(2, 20)), lab) for lab in ("pos", "neg")
            for _ in range(20)]
    rng.shuffle(rows)
    path = write_text_csv(tmp_path / "t.csv", rows)

    def cfg(out):
        return config_from_dict({
            "recipe": "text_classification", "name": "t", "output_dir": str(out),
            "data": {"source": "csv", "path": str(path), "val_fraction": 0.2,
                     "test_fraction": 0.2},
            "backbone": {"spec": f"keras_hub:{tiny_bert_preset}", "sequence_length": 32},
            "stages": [
                {"name": "head", "train": "head", "epochs": 1, "learning_rate": 1e-2},
                {"name": "top", "train": "top:1", "epochs": 2, "learning_rate": 1e-2,
                 "schedule": "linear"},
            ],
            "train": {"batch_size": 8, "verbose": "quiet"},
        })

    reference, steps = recording_steps(
        monkeypatch, lambda: train(cfg(tmp_path / "ref"), echo=lambda _: None))
    first_stage = steps.index("epoch 1 step 1", 1)  # stage 2 starts again at epoch 1 step 1
    assert first_stage >= 3, steps  # 24 texts in batches of 8, bucketed by length
    resumed = sigterm_then_resume(monkeypatch, train, cfg, tmp_path / "cut", first_stage + 2,
                                  "stage 2/2 'top', epoch 1, step 2 ")
    assert_same_run(resumed, reference)


# ------------------------------------------------------------------------------------------
# the CLI's rules


@pytest.mark.usefixtures("eager")
def test_cli_resume_rules(tmp_path, data, monkeypatch):
    root, folder, cnn = data
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(folder, cnn, tmp_path / "runs")))
    run = tmp_path / "runs" / "r"

    assert_one_line_error(invoke("train", str(path), "--resume"), "Nothing to resume", "without --resume")

    sigterm_at(monkeypatch, "step", 6)  # the head's calls are whole epochs of 4 steps
    result = invoke("train", str(path), "--set", "train.verbose=epoch")
    monkeypatch.undo()
    assert result.exit_code == 75, result.output
    last = result.output.strip().splitlines()[-1]
    assert last == (
        f"SIGTERM received: stopped at stage 1/2 'head', epoch 2, step 4 with a checkpoint in "
        f"{run / 'checkpoint'}. Resume with: tftune train {path} --set train.verbose=epoch --resume"
    ), last
    assert "Traceback" not in result.output
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    assert_one_line_error(invoke("train", str(path)), "unfinished run with a checkpoint (stage 1/2 'head', "
                          "epoch 2, step 4)", "--resume", "--overwrite")
    assert_one_line_error(invoke("train", str(path), "--resume", "--set", "stages.1.epochs=3"),
                          "differ from the run's config.yaml in 1 setting(s) (stages.1.epochs: run 2, now 3)")
    assert_one_line_error(invoke("train", str(path), "--resume", "--overwrite"), "not both")
    assert_one_line_error(invoke("train", str(path), "--set", "train.checkpoint_steps=-1"),
                          "train.checkpoint_steps", ">= 0", "Received: -1")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    # Where and how it computes may change: verbosity, the strategy, steps per call.
    result = invoke("train", str(path), "--resume", "--distribute", "default",
                    "--set", "train.steps_per_execution=1")
    assert result.exit_code == 0, result.output
    assert "Resuming from checkpoint/ckpt-" in result.output
    rows = history_rows(run)
    assert [(dict(r)["stage"], dict(r)["epoch"]) for r in rows] == [
        ("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    assert_one_line_error(invoke("train", str(path), "--resume"), "holds a finished run", "nothing to resume")


# ------------------------------------------------------------------------------------------
# checkpoint files


def small_variables(values=(1.0, 2.0)):
    import keras

    return [keras.Variable(np.full((2, 3), v, np.float32), name=f"w{i}")
            for i, v in enumerate(values)]


def test_damaged_or_partial_checkpoints_are_never_used(tmp_path):
    run = tmp_path / "run"
    a = small_variables((1.0, 2.0))
    first = ckpt.write(run, ckpt.RunState(stage=0, epoch=1), {"model": a},
                       {"best": [np.arange(3.0)]})
    for v in a:
        v.assign(v + 10.0)
    second = ckpt.write(run, ckpt.RunState(stage=0, epoch=2), {"model": a})
    assert ckpt.latest(run).path == second

    b = small_variables((0.0, 0.0))
    ckpt.latest(run).restore({"model": b})
    assert float(b[0].numpy()[0, 0]) == 11.0

    # One flipped byte in the newest checkpoint's variables: the previous one is used.
    data_file = next(second.glob("variables.data-*"))
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    loaded = ckpt.latest(run)
    assert loaded.path == first and loaded.state.epoch == 1
    assert "does not match its sha256" in loaded.skipped[0]
    loaded.restore({"model": b})
    assert float(b[0].numpy()[0, 0]) == 1.0
    np.testing.assert_array_equal(loaded.arrays("best")[0], np.arange(3.0))

    # A truncated state.json, a missing file: never used.
    (first / ckpt.STATE).write_text((first / ckpt.STATE).read_text()[:40])
    assert ckpt.latest(run) is None
    assert "unreadable state.json" in ckpt.verify(first)[1]

    # A checkpoint being written when the process died (a .tmp- folder), then a new write:
    # the partial folder is never read, and the next write removes it.
    partial = run / "checkpoint" / ".tmp-ckpt-000009-x"
    partial.mkdir()
    (partial / "variables.index").write_bytes(b"half")
    third = ckpt.write(run, ckpt.RunState(stage=1), {"model": a})
    assert ckpt.latest(run).path == third and not partial.exists()
    # `latest` names the newest; without it the newest complete folder is found.
    (run / "checkpoint" / "latest").unlink()
    assert ckpt.latest(run).path == third
    # Only the two newest are kept.
    assert [p.name for p in ckpt.folders(run)] == [third.name, second.name]

    # Variables that are not the checkpoint's are refused with the difference named.
    from tftune.errors import TftuneError

    import keras

    with pytest.raises(TftuneError, match="does not fit this run's model"):
        ckpt.latest(run).restore({"model": [keras.Variable(np.zeros((3, 3)), name="w0"),
                                            keras.Variable(np.zeros((2, 3)), name="w1")]})


def test_resume_refuses_when_every_checkpoint_is_damaged(tmp_path, data):
    from tftune.errors import TftuneError
    from tftune.rundir.plan import plan_run_dir

    root, folder, cnn = data
    cfg = config_from_dict(recipe(folder, cnn, tmp_path))
    run = tmp_path / "r"
    run.mkdir()
    from tftune.config import dump_config

    (run / "config.yaml").write_text(dump_config(cfg))
    written = ckpt.write(run, ckpt.RunState(), {"model": small_variables()})
    (written / ckpt.STATE).unlink()
    with pytest.raises(TftuneError, match=r"checkpoints are all unusable \(ckpt-000001: no state.json\)"):
        plan_run_dir(cfg, run, resume=True, overwrite=False)
    # Stopped before its first checkpoint (no ckpt- folder at all): starts from the beginning.
    import shutil

    shutil.rmtree(run / "checkpoint")
    from tftune.rundir.plan import RESTART

    assert plan_run_dir(cfg, run, resume=True, overwrite=False) == RESTART


# ------------------------------------------------------------------------------------------
# subprocesses: a real SIGTERM, and kill -9


def start(args: list, cwd: Path, trace: Path, pause: str = "", log_name: str = "log"):
    env = {**ENV, faults.TRACE_ENV: str(trace)}
    if pause:
        env[faults.PAUSE_ENV] = pause
    out = open(cwd / f"{log_name}.out", "w")
    err = open(cwd / f"{log_name}.err", "w")
    proc = subprocess.Popen([TFTUNE, *args], cwd=cwd, env=env, stdout=out, stderr=err, text=True)
    proc.logs = (cwd / f"{log_name}.out", cwd / f"{log_name}.err")
    out.close()
    err.close()
    return proc


def wait_stopped(proc, timeout=300) -> bool:
    """True when `proc` stopped itself (SIGSTOP at its pause point), False when it exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
            return info.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED)
        time.sleep(0.02)
    proc.kill()
    raise TimeoutError(f"process {proc.pid} neither stopped nor exited")


def output(proc) -> str:
    return proc.logs[0].read_text() + proc.logs[1].read_text()


# The kill -9 tests' recipes: the image run (10 kills), and text variants with fewer kills:
# multi-label, and regression with a LoRA stage.
KILL_CASES = ("image", "multilabel", "regression-lora")
# A variant's kills, one trial each (TFTUNE_KILL_TRIALS_VARIANTS=N: N trials, the later ones
# of a random kind): inside the second stage (the LoRA stage: its adapters restored), at the
# stage boundary (adapters created by the resumed run), at the end (thresholds tuned again).
VARIANT_CATEGORIES = {"multilabel": ("second stage", "end of run"),
                      "regression-lora": ("second stage", "stage boundary")}


def case_recipe(case: str, data, request, base: Path) -> dict:
    """The recipe of a kill case, its runs in `base/runs` (checkpoints every 3 steps; every 2
    for the text runs, whose epochs are 3 steps)."""
    root, folder, cnn = data
    if case == "image":
        return recipe(folder, cnn, base / "runs", checkpoint_steps=3)
    task = case.split("-")[0]
    write = multilabel_csv if task == "multilabel" else regression_csv
    csv_path = root / f"{task}.csv"
    if not csv_path.exists():
        write(csv_path, n=40)
    return task_resume_recipe(csv_path, request.getfixturevalue("tiny_bert_preset"),
                              base / "runs", task, lora=case.endswith("-lora"),
                              checkpoint_steps=2)


@pytest.fixture(scope="module")
def cli_references(data, request):
    """`cli_references(case)`: an uninterrupted `tftune train` run of the case's recipe (made
    on first use), its trace of points, metrics, history, weights and the run's task and
    adapter files."""
    made = {}

    def get(case: str) -> dict:
        if case in made:
            return made[case]
        base = data[0] / f"cli-{case}"
        base.mkdir()
        path = base / "r.yaml"
        path.write_text(yaml.safe_dump(case_recipe(case, data, request, base)))
        trace = base / "reference.trace"
        proc = start(["train", str(path)], base, trace, log_name="reference")
        assert proc.wait(timeout=600) == 0, output(proc)
        run = base / "runs" / "r"
        made[case] = {
            "case": case, "recipe": path, "trace": trace_lines(trace), "run": run,
            "metrics": json.loads((run / "metrics.json").read_text()),
            "history": history_rows(run), "weights": model_weights(run / "model.keras"),
            "files": result_files(run),
        }
        assert case.endswith("-lora") == (peft.ADAPTERS_FILE in made[case]["files"]), sorted(made[case]["files"])
        return made[case]

    return get


@pytest.fixture(scope="module")
def cli_reference(cli_references):
    return cli_references("image")


def result_files(run: Path) -> dict:
    """The run's task state and stored adapters as values (for exact comparison)."""
    files = {}
    if (run / "task.json").is_file():
        files["task.json"] = json.loads((run / "task.json").read_text())
    if (run / peft.ADAPTERS_FILE).is_file():
        with np.load(run / peft.ADAPTERS_FILE, allow_pickle=False) as z:
            files[peft.ADAPTERS_FILE] = {k: z[k] for k in z.files}
        info = json.loads((run / peft.ADAPTERS_INFO).read_text())
        files[peft.ADAPTERS_INFO] = {k: info[k] for k in ("lora_layers", "variables", "parameters")}
    return files


def same_files(a: dict, b: dict) -> bool:
    """`result_files` equal, arrays bit for bit."""
    if a.keys() != b.keys():
        return False
    adapters_a, adapters_b = a.get(peft.ADAPTERS_FILE, {}), b.get(peft.ADAPTERS_FILE, {})
    return ({k: v for k, v in a.items() if k != peft.ADAPTERS_FILE}
            == {k: v for k, v in b.items() if k != peft.ADAPTERS_FILE}
            and adapters_a.keys() == adapters_b.keys()
            and all(np.array_equal(adapters_a[k], adapters_b[k]) for k in adapters_a))


def trace_steps(trace: list[str]) -> list[tuple]:
    """(n, stage, epoch, step, mid-epoch) of every `step#n` point in a trace: its stage (1-based), its
    epoch and step in the stage, and whether another step of the same epoch follows it."""
    out, stage = [], 0
    names = [l.split()[0] for l in trace]
    for i, line in enumerate(trace):
        name, _, *detail = line.split()
        if name.startswith("stage_begin#"):
            stage += 1
        elif name.startswith("step#"):
            after = next((m for m in names[i + 1:] if m.startswith(("step#", "epoch_end#"))), "")
            out.append((int(name.split("#")[1]), stage, int(detail[1]), int(detail[3]),
                        after.startswith("step#")))
    return out


# The signal's way into a run is the same for every task and stage mode: the variants' SIGTERM
# resume tests run in this process (test_tasks.py, test_peft.py), cheaper than subprocesses.
@pytest.mark.parametrize("case", ["image"])
def test_sigterm_checkpoints_and_prints_how_to_resume(tmp_path, cli_references, case):
    """A real SIGTERM to `tftune train` (sent while it is paused right after a step: the
    second stage's first step with a next one in its epoch; the head stage before it runs
    whole epochs in one call, see `test_sigterm_then_resume_equals_the_uninterrupted_run`): it
    checkpoints at the next step boundary (the end of that step, or of the next one when
    Python runs the handler only after the check), prints one line saying how to resume and
    exits 75; the printed command finishes the run with the uninterrupted run's result."""
    import re

    reference = cli_references(case)
    recipe_path = reference["recipe"]
    steps = trace_steps(reference["trace"])
    n = next(k for k, stage, _, _, mid in steps if stage == 2 and mid and steps[k][4])
    _, stage, epoch, step, _ = steps[n - 1]
    name = yaml.safe_load(recipe_path.read_text())["stages"][stage - 1]["name"]
    trace = tmp_path / "trace"
    proc = start(["train", str(recipe_path), "--output", str(tmp_path / "runs")], tmp_path, trace,
                 pause=f"step#{n}")
    assert wait_stopped(proc), output(proc)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=300) == 75, output(proc)
    err = proc.logs[1].read_text().strip().splitlines()
    run = tmp_path / "runs" / "r"
    assert re.fullmatch(re.escape(
        f"SIGTERM received: stopped at stage {stage}/2 '{name}', epoch {epoch}, step ")
        + f"([{step}{step + 1}])" + re.escape(
        f" with a checkpoint in {run / 'checkpoint'}. Resume with: tftune train {recipe_path} "
        f"--output {tmp_path / 'runs'} --resume"), err[-1]), err
    assert "Traceback" not in output(proc)
    assert ckpt.latest(run).state.step == int(err[-1].split("step ")[1][0])
    assert not integrity_problems(run, recipe_path)

    command = shlex.split(err[-1].split("Resume with: ", 1)[1])
    resumed = start(command[1:], tmp_path, tmp_path / "trace2", log_name="resumed")
    assert resumed.wait(timeout=300) == 0, output(resumed)
    assert "Resuming from checkpoint/ckpt-" in output(resumed)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metric_difference(metrics, reference["metrics"]) < 1e-6
    assert history_rows(run) == reference["history"]
    assert max_weight_difference(model_weights(run / "model.keras"), reference["weights"]) == 0.0
    assert same_files(result_files(run), reference["files"])
    assert not integrity_problems(run, recipe_path)


CHECKPOINT_POINTS = ("checkpoint:begin", "checkpoint:variables_written", "checkpoint:arrays_written",
                     "checkpoint:state_written", "checkpoint:renamed", "checkpoint:latest_updated")


def kill_plans(trials: int, reference_trace: list[str], seed: int = 0,
               categories: tuple = ()) -> list[list[tuple]]:
    """Per trial, the kills in order: ("pause", "point#n") stops the process exactly at a
    point and kills it there; ("time", seconds) kills it that long after its first step.
    Trial t is of `categories[t]` (the default list below), later ones of a random one."""
    rng = random.Random(seed)
    count = lambda name: sum(1 for l in reference_trace if l.split("#")[0] == name)  # noqa: E731
    epochs, ckpts = count("epoch_end"), count("checkpoint:begin")
    times = [float(l.split()[1]) for l in reference_trace]
    first_step = next(float(l.split()[1]) for l in reference_trace if l.startswith("step#1 "))
    duration = times[-1] - first_step
    steps = trace_steps(reference_trace)
    mid_epoch = [k for k, _, _, _, mid in steps if mid]
    second_stage = [k for k, stage, _, _, mid in steps if mid and stage == 2]

    def one(category):
        if category == "mid-epoch":
            return ("pause", f"step#{rng.choice(mid_epoch)}")
        if category == "second stage":
            return ("pause", f"step#{rng.choice(second_stage)}")
        if category == "epoch end":
            return ("pause", f"epoch_end#{rng.randint(1, epochs)}")
        if category == "stage boundary":
            return ("pause", rng.choice(["stage_end#1", "stage_begin#2"]))
        if category == "checkpoint write":
            return ("pause", f"{rng.choice(CHECKPOINT_POINTS)}#{rng.randint(2, ckpts)}")
        if category == "first checkpoint":
            return ("pause", f"{rng.choice(CHECKPOINT_POINTS[:4])}#1")
        if category == "end of run":
            return ("pause", rng.choice(["final:evaluated#1", "final:model_saved#1"]))
        return ("time", round(rng.uniform(0.0, 0.9 * duration), 2))

    categories = list(categories) or [
        "mid-epoch", "checkpoint write", "stage boundary", "random time", "epoch end",
        "first checkpoint", "checkpoint write", "end of run", "random time", "twice"]
    plans = []
    for t in range(trials):
        category = categories[t] if t < len(categories) else rng.choice(categories)
        if category == "twice":
            plans.append([one("checkpoint write"), ("pause", f"step#{rng.randint(1, 3)}")])
        else:
            plans.append([one(category)])
    return plans


def integrity_problems(run: Path, recipe_path: Path) -> list[str]:
    """Every file in the run directory is whole: config.yaml loads as the recipe, JSON files
    parse, history.csv has full rows without repeats, model.keras is a sound zip, the LoRA
    adapters (adapters.weights.npz) read whole and as many as adapters.json says, and every
    checkpoint folder (and the one `latest` names) matches its manifest. Names starting with
    a dot are temporary files of interrupted writes: never read, removed by the resume."""
    problems = []
    if not run.exists():
        return problems
    for p in run.iterdir():
        try:
            if p.name.startswith("."):
                continue
            if p.name == "config.yaml":
                assert load_recipe(p) == load_recipe(recipe_path), "config differs"
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.name == "history.csv":
                with open(p, newline="") as f:
                    rows = list(csv.reader(f))
                assert rows and all(len(r) == len(rows[0]) for r in rows), "ragged rows"
                keys = [(r[0], r[2]) for r in rows[1:]]
                assert len(keys) == len(set(keys)), "repeated epochs"
                assert all(math.isfinite(float(v)) for r in rows[1:] for v in r[3:] if v)
            elif p.suffix == ".png":  # training_curves.png: a whole PNG, up to its IEND chunk
                data = p.read_bytes()
                assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND", "cut PNG"
            elif p.name == "model.keras":
                with zipfile.ZipFile(p) as z:
                    assert z.testzip() is None, "bad zip member"
            elif p.name == peft.ADAPTERS_FILE:  # each array read whole: a cut zip fails its CRC
                with np.load(p, allow_pickle=False) as z:
                    arrays = [z[k] for k in z.files]
                assert arrays and all(np.isfinite(a).all() for a in arrays), "empty or not finite"
                if (run / peft.ADAPTERS_INFO).exists():  # written after the arrays, as a pair
                    info = json.loads((run / peft.ADAPTERS_INFO).read_text())
                    assert info["variables"] == len(arrays), "adapters.json counts other arrays"
            elif p.name == "checkpoint":
                for folder in ckpt.folders(run):
                    assert ckpt.verify(folder)[0] is not None, f"{folder.name}: {ckpt.verify(folder)[1]}"
                if (p / "latest").exists():
                    named = (p / "latest").read_text().strip()
                    assert ckpt.verify(p / named)[0] is not None, f"latest -> {named}"
            elif p.is_file():
                raise AssertionError("unexpected file")
        except Exception as e:  # noqa: BLE001 - collected and reported per file
            problems.append(f"{p.name}: {type(e).__name__}: {e}")
    return problems


def test_integrity_check_reads_the_adapters_whole(tmp_path):
    """The kill test's check of adapters.weights.npz: a whole file passes, one cut short or
    with a flipped byte in an array does not, nor one that adapters.json counts otherwise."""
    run = tmp_path / "r"
    run.mkdir()
    arrays = {f"layer/lora_kernel_{k}": np.arange(64.0).reshape(8, 8) for k in "ab"}
    with open(run / peft.ADAPTERS_FILE, "wb") as f:
        np.savez(f, **arrays)
    (run / peft.ADAPTERS_INFO).write_text(json.dumps({"variables": 2}))
    whole = (run / peft.ADAPTERS_FILE).read_bytes()
    assert integrity_problems(run, tmp_path / "unused.yaml") == []

    (run / peft.ADAPTERS_INFO).write_text(json.dumps({"variables": 3}))
    problems = integrity_problems(run, tmp_path / "unused.yaml")
    assert len(problems) == 1 and problems[0].startswith(
        f"{peft.ADAPTERS_FILE}: AssertionError: adapters.json counts other arrays"), problems
    (run / peft.ADAPTERS_INFO).unlink()
    for damaged in (whole[: len(whole) * 2 // 3], whole[:200] + bytes([whole[200] ^ 0xFF]) + whole[201:]):
        (run / peft.ADAPTERS_FILE).write_bytes(damaged)
        problems = integrity_problems(run, tmp_path / "unused.yaml")
        assert len(problems) == 1 and problems[0].startswith(peft.ADAPTERS_FILE), problems


def describe_landing(trace: list[str], planned: tuple) -> str:
    """Where the kill landed, from the killed process's trace: its last point, and the
    stage / epoch / step of its last training step."""
    if not trace:
        return "before the first point (loading)"
    stage, last_step = "", "before any step"
    for line in trace:
        name, _, *detail = line.split()
        if name.startswith("stage_begin#"):
            stage = " ".join(detail)
        elif name.startswith("step#"):
            last_step = f"{stage}, {' '.join(detail)}"
    how = "paused at" if planned[0] == "pause" else f"{planned[1]}s after step 1, at"
    return f"{how} {trace[-1].split()[0]}; last step: {last_step}"


def resumed_from(log: str, run: Path) -> str:
    """The checkpoint a resumed process said it continued from."""
    for line in log.splitlines():
        if line.startswith("Resuming from checkpoint/"):
            return line[len("Resuming from checkpoint/"):]
        if line.startswith(f"{run} has no checkpoint yet"):
            return "no checkpoint yet: from the start"
    return "?"


def run_trial(index: int, plan: list[tuple], recipe_path: Path, base: Path, reference: dict) -> dict:
    work = base / f"trial{index:02d}"
    work.mkdir(parents=True)
    out_dir = work / "runs"
    run = out_dir / "r"
    args = ["train", str(recipe_path), "--output", str(out_dir)]
    landed, problems, starts = [], [], []
    for k, (kind, target) in enumerate(plan):
        trace = work / f"kill{k}.trace"
        proc = start(args + (["--resume"] if k else []), work, trace,
                     pause=target if kind == "pause" else "", log_name=f"kill{k}")
        if kind == "pause":
            stopped = wait_stopped(proc)
        else:
            while not any(l.startswith("step#1 ") for l in trace_lines(trace)):
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
            time.sleep(target)
            stopped = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if k:
            starts.append(resumed_from(output(proc), run))
        if not stopped:
            landed.append(f"{target}: the process had exited ({proc.returncode}) first")
        else:
            landed.append(describe_landing(trace_lines(trace), (kind, target)))
        problems += integrity_problems(run, recipe_path)
    if (run / "metrics.json").is_file():
        # A kill timed at random can land after the run wrote metrics.json (its last file:
        # the run was finished): there is nothing to resume, and the finished run is compared.
        code, log = 0, ""
        starts.append("nothing: the run had finished before the kill")
    else:
        proc = start(args + ["--resume"], work, work / "resume.trace", log_name="resume")
        code = proc.wait(timeout=600)
        log = output(proc)
        starts.append(resumed_from(log, run))
    row = {"trial": index, "kills": landed, "starts": starts, "exit": code,
           "problems": problems, "run": run}
    if code == 0:
        metrics = json.loads((run / "metrics.json").read_text())
        row["metric_diff"] = metric_difference(metrics, reference["metrics"])
        row["history_equal"] = history_rows(run) == reference["history"]
        row["files_equal"] = same_files(result_files(run), reference["files"])
        row["leftovers"] = sorted(p.name for p in run.iterdir() if p.name.startswith("."))
        row["problems"] += integrity_problems(run, recipe_path)
    else:
        row["log"] = log[-2000:]
    return row


@pytest.mark.parametrize("case", KILL_CASES)
def test_kill_9_at_random_moments_then_resume(tmp_path, cli_references, case):
    cli_reference = cli_references(case)
    seed = int(os.environ.get("TFTUNE_KILL_SEED", "0"))
    if case == "image":
        trials = int(os.environ.get("TFTUNE_KILL_TRIALS", "10"))
        plans = kill_plans(trials, cli_reference["trace"], seed=seed)
    else:
        categories = VARIANT_CATEGORIES[case]
        trials = int(os.environ.get("TFTUNE_KILL_TRIALS_VARIANTS", len(categories)))
        plans = kill_plans(trials, cli_reference["trace"], seed=seed, categories=categories)
    jobs = int(os.environ.get("TFTUNE_KILL_JOBS", "2"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(
            lambda ip: run_trial(ip[0] + 1, ip[1], cli_reference["recipe"], tmp_path, cli_reference),
            enumerate(plans)))
    for r in rows:  # Keras builds models in one thread at a time: here, not in the pool
        if r["exit"] == 0:
            r["weight_diff"] = max_weight_difference(model_weights(r["run"] / "model.keras"),
                                                     cli_reference["weights"])

    print(f"\nkill -9 trials ({case}): {trials}; each row a kill, then the checkpoint the next "
          f"process resumed from; diffs: final run vs the uninterrupted one")
    print(f"{'trial':>5} | {'where the kill landed':<76} | {'resumed from':<46} | ok  | "
          f"metric diff | weight diff")
    for r in rows:
        ok = (r["exit"] == 0 and r.get("history_equal") and r.get("files_equal")
              and not r["problems"] and not r.get("leftovers"))
        for j, (kill, start_) in enumerate(zip(r["kills"], r["starts"])):
            last = j == len(r["kills"]) - 1
            tail = (f"{'yes' if ok else 'NO':<3} | {r.get('metric_diff', float('nan')):11.2e} | "
                    f"{r.get('weight_diff', float('nan')):.2e}") if last else f"{'':<3} |"
            print(f"{r['trial'] if j == 0 else '':>5} | {kill:<76} | {start_:<46} | {tail}")
    for r in rows:
        assert r["exit"] == 0, (r["trial"], r["kills"], r.get("log"))
        assert not r["problems"], (r["trial"], r["kills"], r["problems"])
        assert r["history_equal"], (r["trial"], r["kills"])
        assert r["files_equal"], (r["trial"], r["kills"], "task.json / adapters differ")
        assert not r["leftovers"], (r["trial"], r["leftovers"])
        assert r["metric_diff"] < 1e-6 and r["weight_diff"] < 1e-6, r
        if case != "image":  # exact: the same final weights, bit for bit
            assert r["weight_diff"] == 0.0, r
