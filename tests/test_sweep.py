"""`tftune sweep`: an Optuna study over recipe keys, each trial an ordinary run directory,
pruned on the per-epoch validation metric, and resumable after a kill -9."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    assert_one_line_error,
    invoke,
    make_image_folder,
    resume_recipe,
    save_tiny_cnn,
    write_recipe,
)
from tftune.errors import ConfigError
from tftune.sweep.space import parse_param, parse_params, yaml_value

LR = "stages.1.learning_rate=loguniform(1e-4, 1e-2)"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    folder, cnn = make_image_folder(root / "images"), save_tiny_cnn(root / "cnn.keras")
    return write_recipe(root / "r.yaml", resume_recipe(folder, cnn, root / "runs",
                                                       steps_per_execution=1))


def rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- the search space ------------------------------------------------------------------------


def test_the_search_space_syntax():
    assert parse_param("a", "loguniform(1e-5, 3e-4)").values == (1e-5, 3e-4)
    assert parse_param("a", "uniform(0.6,1)").values == (0.6, 1.0)
    assert parse_param("a", "int(1, 4)").values == (1, 4)
    assert parse_param("a", "choice(none, ema, greedy)").values == ("none", "ema", "greedy")
    assert parse_param("a", "choice([64, 64], [96, 96])").values == ([64, 64], [96, 96])
    assert [yaml_value(v) for v in (1e-5, "ema", [96, 96], True)] == ["1.0e-05", "ema", "[96, 96]",
                                                                       "true"]
    for spec, message in [("logunifrm(1, 2)", "Did you mean 'loguniform'"),
                          ("loguniform(0, 1)", "LOW < HIGH and LOW > 0"),
                          ("uniform(2, 1)", "LOW < HIGH"), ("int(1.5, 3)", "integer bounds"),
                          ("choice(a)", "two or more distinct"), ("uniform(a, b)", "two numbers"),
                          ("1e-4", "Expected uniform(LOW, HIGH)")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_param("stages.1.learning_rate", spec)
    with pytest.raises(ConfigError, match="needs a search space"):
        parse_params(())


def test_a_choice_of_lists_goes_through_its_yaml_text():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    size = parse_param("data.image_size", "choice([64, 64], [96, 96])")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {tuple(size.suggest(study.ask())) for _ in range(8)}
    assert drawn == {(64, 64), (96, 96)}


def test_a_bad_key_or_value_fails_before_any_trial(tmp_path, recipe):
    out = tmp_path / "out"
    assert_one_line_error(
        invoke("sweep", recipe, "--param", "stages.1.learnin_rate=loguniform(1e-4, 1e-2)",
               "--output", out),
        "Unknown config key 'stages.1.learnin_rate'", "Did you mean 'stages.1.learning_rate'")
    assert_one_line_error(
        invoke("sweep", recipe, "--param", "stages.1.layer_decay=uniform(0.5, 1.5)",
               "--output", out),
        "Invalid value for 'stages.1.layer_decay'")
    assert_one_line_error(invoke("sweep", recipe, "--param", LR, "--metric", "accuracy",
                                 "--output", out), "a sweep ranks trials on a validation metric")
    assert not (out / "r-sweep" / "trials").exists()


# -- sweeps ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("eager")
def test_a_sweep_writes_trials_results_a_plot_and_the_best_recipe(tmp_path, recipe):
    from tftune.config import load_recipe

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        f"recipe: {recipe}\nname: s\ntrials: 3\noutput_dir: {tmp_path / 'out'}\n"
        f"params:\n  stages.1.learning_rate: loguniform(1e-4, 1e-2)\n"
        f"  head.dropout: choice(0.0, 0.3)\n  train.seed: choice(3, 4)\n")
    result = invoke("sweep", sweep_file)
    assert result.exit_code == 0, result.output
    sweep_dir = tmp_path / "out" / "s"
    split_seed = load_recipe(recipe).train.seed  # every trial keeps the base recipe's split
    table = rows(sweep_dir)
    assert [r["state"] for r in table] == ["complete"] * 3
    assert len({r["stages.1.learning_rate"] for r in table}) == 3
    for r in table:  # each trial is an ordinary, finished run directory with its own values
        run = Path(r["run_dir"])
        assert (run / "metrics.json").is_file() and (run / "model.keras").is_file()
        metrics = json.loads((run / "metrics.json").read_text())
        assert "val" in metrics and "test" not in metrics  # trials never score the test split
        cfg = load_recipe(run / "config.yaml")
        assert cfg.stages[1].learning_rate == pytest.approx(float(r["stages.1.learning_rate"]))
        # a swept train.seed leaves the split alone: every trial validates on the same examples
        assert cfg.train.seed == int(r["train.seed"]) and cfg.data.split_seed == split_seed
        assert int(r["epochs_reported"]) == 4  # 2 head + 2 top epochs
    assert (sweep_dir / "results.png").read_bytes()[:4] == b"\x89PNG"
    best = max(table, key=lambda r: float(r["val_accuracy"]))
    best_cfg = load_recipe(sweep_dir / "best.yaml")
    assert best_cfg.name == "r-best"
    assert best_cfg.stages[1].learning_rate == pytest.approx(float(best["stages.1.learning_rate"]))
    assert best_cfg.data.split_seed == split_seed  # trained again on the sweep's split
    assert "Sweep s: best trial" in result.output
    assert f"score it on test once: tftune evaluate {best['run_dir']} --split test" in result.output
    assert best_cfg.train.evaluate_test is True  # the best recipe, trained again, scores it
    # the directory is never replaced without --overwrite
    assert_one_line_error(invoke("sweep", sweep_file), "already exists", "--resume")


@pytest.mark.usefixtures("eager")
def test_a_trial_below_the_median_is_pruned_and_its_run_stays_resumable(tmp_path, recipe):
    """Two trials with a good head learning rate, then one with a useless one (enqueued in
    the study the sweep joins): its validation loss after the second epoch is above the
    median of the others there, and the median pruner stops it."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(storage=storage, study_name="p", direction="minimize")
    for lr in (0.05, 0.05, 1e-9):
        study.enqueue_trial({"stages.0.learning_rate": lr})
    result = invoke("sweep", recipe, "--param", "stages.0.learning_rate=choice(0.05, 1.0e-09)",
                    "--metric", "val_loss", "--trials", 3, "--name", "p", "--storage", storage,
                    "--output", tmp_path / "out", "--resume")
    assert result.exit_code == 0, result.output
    table = rows(tmp_path / "out" / "p")
    assert [r["state"] for r in table] == ["complete", "complete", "pruned"], result.output
    assert "trial 2 pruned: val_loss=" in result.output
    assert "after epoch 2 of stage 1 is worse than the median" in result.output
    pruned = Path(table[2]["run_dir"])
    assert (pruned / "checkpoint").is_dir() and not (pruned / "metrics.json").exists()


def _sweep_command(recipe: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "tftune.cli", "sweep", str(recipe), "--param", LR,
            "--trials", "3", "--set", "stages.1.epochs=6", "--output", str(out), *extra]


def test_a_sweep_killed_mid_trial_resumes(tmp_path, recipe):
    """kill -9 of the sweep process while trial 1 trains: `--resume` takes the orphaned trial
    over (its run resumes from its checkpoint, with its stored parameters), then runs the
    rest; no parameter values are drawn twice."""
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(_sweep_command(recipe, out), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    checkpoint = out / "r-sweep" / "trials" / "r-sweep-t001" / "checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.is_dir() and any(p.name.startswith("ckpt-") for p in checkpoint.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = rows(out / "r-sweep")
    assert [r["state"] for r in before] == ["complete"]
    resumed = subprocess.run(_sweep_command(recipe, out, "--resume"), capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Trial 1 was left running by" in resumed.stdout
    assert "Resuming from checkpoint/ckpt-" in resumed.stdout
    table = rows(out / "r-sweep")
    assert [r["state"] for r in table] == ["complete"] * 3
    assert len({r["stages.1.learning_rate"] for r in table}) == 3
    assert all((Path(r["run_dir"]) / "metrics.json").is_file() for r in table)


def test_the_bundled_sweep_file_is_valid():
    from tftune.config.recipes import find_recipe, find_sweep
    from tftune.sweep import load_sweep_file
    from tftune.sweep.space import check_params

    path = find_sweep("text_sentiment_minilm_sweep")
    settings = load_sweep_file(path)
    assert settings.trials == 6 and settings.trial_time_limit == 480
    check_params(find_recipe(settings.recipe), settings.overrides, settings.params)
