"""tftune.evaluation.plots: training curves (from history.csv, written by train, re-created by
`tftune plot`), the confusion matrix and image grid PNGs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import copy_run, invoke
from tftune.evaluation import plots
from tftune.errors import TftuneError

HISTORY = [
    # stage, name, epoch, loss, accuracy, val_loss, val_accuracy
    (0, "head", 1, 0.9, 0.60, 0.80, 0.65),
    (0, "head", 2, 0.7, 0.70, 0.75, 0.70),
    (1, "all", 1, 0.5, 0.80, 0.60, 0.78),
    (1, "all", 2, 0.4, 0.85, 0.65, 0.76),
]


def write_history(path: Path, rows=HISTORY) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stage", "stage_name", "epoch", "seconds", "learning_rate", "accuracy", "loss",
                         "val_accuracy", "val_loss"])
        for stage, name, epoch, loss, acc, vloss, vacc in rows:
            writer.writerow([stage, name, epoch, 1.0, 1e-3, acc, loss, vacc, vloss])
    return path


def assert_png(path: Path, min_width: int = 300) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[1] >= min_width
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, "the image is (almost) blank"
    return pixels


def test_training_curves_two_panels_and_no_temporary_files(tmp_path):
    out = plots.training_curves(write_history(tmp_path / "history.csv"), tmp_path / "curves.png",
                                monitors=["val_accuracy", "val_accuracy"])
    assert out == tmp_path / "curves.png"
    pixels = assert_png(out)
    assert pixels.shape[1] > pixels.shape[0]  # loss and accuracy side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "history.csv"]


def test_training_curves_from_a_one_epoch_history(tmp_path):
    history = write_history(tmp_path / "history.csv", HISTORY[:1])
    assert_png(plots.training_curves(history, tmp_path / "curves.png"))


@pytest.mark.parametrize("content", ["", "stage,epoch\n"], ids=["empty", "no-epochs"])
def test_training_curves_from_a_bad_history_is_a_clear_error(tmp_path, content):
    (tmp_path / "history.csv").write_text(content)
    with pytest.raises(TftuneError, match="history.csv"):
        plots.training_curves(tmp_path / "history.csv", tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_confusion_matrix_and_image_grid(tmp_path):
    cm = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 6]])
    assert_png(plots.confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3)).astype(np.float32) for _ in range(5)]
    assert_png(plots.image_grid(images, [f"image {i}" for i in range(5)], tmp_path / "grid.png"))


def test_train_writes_the_curves_and_tftune_plot_recreates_them(tiny_image_run, tmp_path):
    assert_png(tiny_image_run / plots.TRAINING_CURVES_FILE)
    run = copy_run(tiny_image_run, tmp_path / "run")
    (run / plots.TRAINING_CURVES_FILE).unlink()
    result = invoke("plot", run)
    assert result.exit_code == 0, result.output
    assert str(run / plots.TRAINING_CURVES_FILE) in result.output
    assert_png(run / plots.TRAINING_CURVES_FILE)


def test_tftune_plot_without_history_is_one_line_exit_2(tmp_path):
    result = invoke("plot", tmp_path)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and "history.csv" in result.output
    assert len(result.output.strip().splitlines()) == 1
