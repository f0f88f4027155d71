"""TensorBoard event files (`train.tensorboard`), read back with TensorBoard's own reader, and
users' Keras callbacks: `train.callbacks` entries in a recipe and `callbacks=` from Python."""

from __future__ import annotations

import csv
import textwrap

import numpy as np
import pytest
import yaml

from helpers import assert_one_line_error, image_recipe, invoke, train_eagerly

pytestmark = pytest.mark.usefixtures("eager")


def recipe(tmp_path, image_folder, tiny_cnn_file, **train):
    """Head (2 epochs, cached) then top:1 with layer decay 0.5 (1 epoch)."""
    r = image_recipe(tmp_path, image_folder, tiny_cnn_file)
    r["stages"][1]["layer_decay"] = 0.5
    r["train"].update(train)
    return r


def scalars(path, tag):
    """{step: value} of a scalar written with tf.summary under `path` (one writer's folder)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def texts(path, tag):
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: tf.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)}


def test_tensorboard_scalars_match_the_history(tmp_path, image_folder, tiny_cnn_file):
    result = train_eagerly(recipe(tmp_path, image_folder, tiny_cnn_file, tensorboard=True))
    board = result.run_dir / "tensorboard"
    with open(result.run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3  # head: 2 epochs, top: 1; one step per epoch of the run
    steps = [1, 2, 3]
    for name in ("loss", "accuracy"):
        assert scalars(board / "train", f"epoch_{name}") == pytest.approx(
            dict(zip(steps, [float(r[name]) for r in rows])), rel=1e-6)
        assert scalars(board / "validation", f"epoch_{name}") == pytest.approx(
            dict(zip(steps, [float(r[f"val_{name}"]) for r in rows])), rel=1e-6)
    assert scalars(board / "train", "stage") == {1: 1.0, 2: 1.0, 3: 2.0}
    # Learning rates: the head's is the stage's; the top group (stage_2) steps at 0.5x.
    head_lr = scalars(board / "train", "learning_rate/head")
    assert head_lr == pytest.approx(dict(zip(steps, [float(r["learning_rate"]) for r in rows])))
    assert scalars(board / "train", "learning_rate/stage_2") == pytest.approx({3: 0.5 * head_lr[3]})
    # The stage boundaries: each stage's text at the epoch count before it.
    stages = texts(board / "train", "stage_start")
    assert sorted(stages) == [0, 2]
    assert stages[0].startswith("Stage 1/2: head") and stages[2].startswith("Stage 2/2: top")
    assert "stage_2" in stages[2]


def test_no_event_files_unless_asked(tmp_path, image_folder, tiny_cnn_file):
    result = train_eagerly(recipe(tmp_path, image_folder, tiny_cnn_file))
    assert not (result.run_dir / "tensorboard").exists()


CALLBACKS_MODULE = '''
import keras

SEEN = []


class Record(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        SEEN.append(("epoch", epoch, sorted(logs)))


def record():
    return Record()


class StopAfterOneEpoch(keras.callbacks.Callback):
    """Ends every stage after its first epoch, as a user's stopping rule would."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def not_a_callback():
    return 42
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_callbacks.py").write_text(textwrap.dedent(CALLBACKS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("my_callbacks", None)
    return importlib.import_module("my_callbacks")


def test_recipe_and_python_callbacks_see_every_epoch(tmp_path, image_folder, tiny_cnn_file,
                                                    user_module):
    import keras
    import tftune

    r = recipe(tmp_path, image_folder, tiny_cnn_file, callbacks=["my_callbacks:record"])
    r["stages"][0]["epochs"] = 3
    ends = []
    python_side = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: ends.append(e))
    stop = user_module.StopAfterOneEpoch()
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    result = tftune.train(str(path), callbacks=[python_side, stop], echo=lambda _: None)
    # The user's stop rule ends each stage after one epoch; both callbacks saw both epochs.
    assert [s["epochs_run"] for s in result.metrics["stages"]] == [1, 1]
    assert ends == [0, 0]
    assert [e[:2] for e in user_module.SEEN] == [("epoch", 0), ("epoch", 0)]
    assert "val_loss" in user_module.SEEN[0][2]


@pytest.mark.parametrize("entry, fragments", [
    ("no_such_module:make", ["train.callbacks.0", "cannot import 'no_such_module:make'"]),
    ("my_callbacks:missing", ["train.callbacks.0", "cannot import 'my_callbacks:missing'"]),
    ("my_callbacks", ["train.callbacks.0", "Expected 'package.module:factory'"]),
    ("my_callbacks:not_a_callback", ["train.callbacks.0", "returned int",
                                     "not a keras.callbacks.Callback"]),
])
def test_bad_callback_entries_are_one_clear_error(tmp_path, image_folder, tiny_cnn_file,
                                                  user_module, entry, fragments):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path, image_folder, tiny_cnn_file)))
    result = invoke("train", path, "--set", f"train.callbacks=[{entry}]")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "runs" / "img").exists()  # nothing was created before the check
