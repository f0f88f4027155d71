"""The learning-rate range test: the sweep, its suggestion, its files, and that it leaves
every weight as it was."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from helpers import assert_one_line_error, image_recipe, invoke, text_recipe, write_recipe
from tftune.training.lr_find import smooth, suggest, sweep
from tftune.training.optim import GroupLRSGD


def test_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = list(np.logspace(-6, 0, 61))
    # A loss flat at 2, falling fastest around 1e-3, lowest near 1e-2, then blowing up.
    lo = np.log10(lrs)
    losses = 2 - 1.5 / (1 + np.exp(-(lo + 3) * 4)) + np.where(lo > -2, (lo + 2) ** 2 * 5, 0)
    steep, min10 = suggest(lrs, list(losses))
    assert 10**-3.2 <= steep <= 10**-2.8
    assert min10 == pytest.approx(lrs[int(np.argmin(losses))] / 10)
    assert suggest(lrs[:3], [1, 1, 1]) == (None, None)
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.usefixtures("eager")
def test_sweep_restores_every_weight_and_records_rising_learning_rates():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8)(x)))
    before = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64).astype("int32"))
    ).batch(16)
    result = sweep(model, data, GroupLRSGD(learning_rate=1e-5), steps=30, min_lr=1e-5,
                   max_lr=10.0, echo=lambda _: None)
    assert all(b > a for a, b in zip(result.learning_rates, result.learning_rates[1:]))
    assert result.learning_rates[0] == pytest.approx(1e-5)
    assert len(result.losses) == len(result.smoothed) >= 5
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_cli_lr_find_writes_curve_and_suggests(tmp_path, image_folder, tiny_cnn_file):
    recipe = write_recipe(tmp_path / "r.yaml", image_recipe(tmp_path, image_folder, tiny_cnn_file))
    result = invoke("lr-find", str(recipe), "--stage", "2", "--steps", "25", "--min-lr", "1e-5")
    assert result.exit_code == 0, result.output
    assert "LR range test, stage 2 (top): 25 steps" in result.output
    assert "feature cache: sweeping on the stored input of the trained blocks" in result.output
    assert "Suggested learning rate:" in result.output or "No clear suggestion" in result.output
    out = tmp_path / "runs" / "img-lr-find"
    png, table = out / "stage2-top.png", out / "stage2-top.csv"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(table)))
    assert list(rows[0]) == ["learning_rate", "loss", "smoothed_loss"] and 5 <= len(rows) <= 25
    assert not (tmp_path / "runs" / "img").exists()  # no run directory


def test_cli_lr_find_text_head_stage(tmp_path, text_csv, tiny_bert_preset):
    recipe = write_recipe(tmp_path / "t.yaml", text_recipe(tmp_path, text_csv, tiny_bert_preset))
    result = invoke("lr-find", str(recipe), "--steps", "12")
    assert result.exit_code == 0, result.output
    assert "output of head_pool" in result.output
    assert (tmp_path / "runs" / "txt-lr-find" / "stage1-head.png").is_file()


def test_cli_lr_find_bad_stage(tmp_path, image_folder, tiny_cnn_file):
    recipe = write_recipe(tmp_path / "r.yaml", image_recipe(tmp_path, image_folder, tiny_cnn_file))
    assert_one_line_error(invoke("lr-find", str(recipe), "--stage", "3"),
                          "Invalid --stage 3", "2 stage(s) (head, top)")


def test_cli_lr_find_shows_progress_lines_in_a_log(tmp_path, image_folder, tiny_cnn_file, monkeypatch):
    """Not a terminal (CliRunner) and train.verbose epoch: a plain line per interval (here
    every step) with the step, learning rate and smoothed loss; no control characters."""
    import re

    monkeypatch.setenv("TFTUNE_PROGRESS_SECONDS", "0")
    recipe = write_recipe(tmp_path / "r.yaml", image_recipe(
        tmp_path, image_folder, tiny_cnn_file, train={"batch_size": 8, "verbose": "epoch"}))
    result = invoke("lr-find", str(recipe), "--steps", "6", "--min-lr", "1e-5", "--max-lr", "1e-3")
    assert result.exit_code == 0, result.output
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.output), repr(result.output)
    steps = [l for l in result.output.splitlines() if l.startswith("   lr-find:")]
    assert [l.split(" steps")[0] for l in steps] == [f"   lr-find: {n} / 6" for n in range(1, 7)]
    assert re.search(r"lr 1\.00e-05, smoothed loss [\d.]+", steps[0]), steps[0]
