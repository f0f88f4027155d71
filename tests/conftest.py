"""Shared fixtures: tiny models and tiny data, all made on the spot, nothing from the network.

Where shared test code lives (one convention for the whole suite):
- Fixtures, and pytest hooks, are here in conftest.py. Tests ask for them by argument name;
  no module imports conftest.
- Plain functions and constants that tests call (`invoke`, `assert_one_line_error`, the recipe
  writers, the data and model makers, ...) are in helpers.py: `from helpers import ...`.
- A test module never imports another test module. A helper two modules need moves to
  helpers.py; a fixture two modules need moves here.
- A fixture name means one thing across the suite: module-private variants get their own names.

Fixtures:
- `tiny_bert_preset`: a real KerasHub preset folder (2-layer BERT, hidden size 8, a word vocab)
  written with `save_to_preset`, loadable as `keras_hub:<folder>`.
- `image_folder`: 3 classes x 12 PNGs of 32x32, told apart by colour.
- `text_csv`: 60 rows of `text,label`, two classes, words from the tiny vocabulary.
- `make_tiny_cnn`: a small functional CNN with BatchNormalization and three resolutions
  (`stem`, `stage_1`, `stage_2` layer groups), for `backbone_model=` / `keras:` specs;
  `tiny_cnn_file`: the same CNN as a `.keras` file.
- `mobilenetv2_spec`: backbone settings for a randomly initialised MobileNetV2 at 32 px.
- `eager`: runs Keras train/eval functions eagerly (graph tracing dominates tiny-model tests).
- `tiny_image_run` / `tiny_text_run`: finished run directories, trained once per session
  (read-only: `helpers.copy_run` them before writing); `image_predictor` / `text_predictor`:
  `tftune.load` of them.
"""

from __future__ import annotations

import os

# Before anything imports TensorFlow / KerasHub.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["KAGGLEHUB_VERBOSITY"] = "error"

import logging
from pathlib import Path

import pytest

from helpers import (
    build_tiny_cnn,
    image_recipe,
    make_image_folder,
    save_bert_preset,
    save_tiny_cnn,
    text_recipe,
    train_eagerly,
    write_sentiment_csv,
)

logging.getLogger("tensorflow").setLevel(logging.ERROR)
logging.getLogger("absl").setLevel(logging.ERROR)


def pytest_configure(config):
    # The `eager` fixture makes Keras steps eager; tf.data functions stay traced, which TF
    # announces with a warning per dataset map.
    config.addinivalue_line(
        "filterwarnings", "ignore:Even though the `tf.config.experimental_run_functions_eagerly`:UserWarning"
    )


# ------------------------------------------------------------------------------------------
# Tiny data and models


@pytest.fixture(scope="session")
def tiny_bert_preset(tmp_path_factory) -> Path:
    """A KerasHub preset folder holding a 2-layer BERT (hidden 8) and its tokenizer."""
    return save_bert_preset(tmp_path_factory.mktemp("tiny_bert") / "preset")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """`images/{red,green,blue}/*.png`: 12 noisy 32x32 images per class."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def text_csv(tmp_path) -> Path:
    """`texts.csv` with `text,label` columns: 30 `pos` and 30 `neg` sentences."""
    return write_sentiment_csv(tmp_path / "texts.csv")


@pytest.fixture
def make_tiny_cnn():
    """A factory for `build_tiny_cnn` (seeded, so two calls give the same weights)."""
    import keras

    def make(image_size: int = 32):
        keras.utils.set_random_seed(0)
        return build_tiny_cnn(image_size)

    return make


@pytest.fixture
def tiny_cnn_file(tmp_path) -> Path:
    """The tiny CNN saved as a `.keras` file, for `keras:<file>` backbone specs."""
    return save_tiny_cnn(tmp_path / "tiny_cnn.keras")


@pytest.fixture
def mobilenetv2_spec() -> dict:
    """Backbone settings for a randomly initialised MobileNetV2 at 32 px (builds in < 2 s)."""
    return {"spec": "keras_applications:MobileNetV2", "weights": "none", "image_size": (32, 32)}


@pytest.fixture
def eager():
    """Runs `tf.function`s (Keras train / test steps) eagerly for the test, then restores."""
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(before)


# ------------------------------------------------------------------------------------------
# Finished tiny runs, trained once per session, for evaluate / predict / export tests.
# Tests that write into a run directory work on a copy (`helpers.copy_run`).


@pytest.fixture(scope="session")
def tiny_image_run(tmp_path_factory) -> Path:
    """A finished image run: the tiny CNN on 3 colour classes (16 PNGs each, 32 px), with a
    12-image test split. Read-only: copy it (`copy_run`) before writing into it."""
    tmp = tmp_path_factory.mktemp("tiny_image_run")
    folder = make_image_folder(tmp / "images", per_class=16)
    cnn = save_tiny_cnn(tmp / "cnn.keras")
    result = train_eagerly(image_recipe(
        tmp, folder, cnn,
        data={"source": "folder", "path": str(folder), "image_size": [32, 32],
              "val_fraction": 0.125, "test_fraction": 0.25},
        stages=[{"name": "head", "train": "head", "epochs": 16, "learning_rate": 1.0,
                 "early_stopping": {"monitor": "val_loss", "patience": 16}},
                {"name": "top", "train": "top:1", "epochs": 1, "learning_rate": 1e-3}],
    ))
    return result.run_dir


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory, tiny_bert_preset) -> Path:
    """A finished text run: the tiny BERT preset on 60 pos / neg sentences, 12 in the test
    split. Read-only: copy it (`copy_run`) before writing into it."""
    tmp = tmp_path_factory.mktemp("tiny_text_run")
    csv_path = write_sentiment_csv(tmp / "texts.csv")
    result = train_eagerly(text_recipe(
        tmp, csv_path, tiny_bert_preset,
        stages=[{"name": "head", "train": "head", "epochs": 6, "learning_rate": 3e-2,
                 "early_stopping": {"monitor": "val_loss", "patience": 6}},
                {"name": "all", "train": "all", "epochs": 1, "learning_rate": 1e-3}],
        train={"batch_size": 8, "verbose": "quiet"},
    ))
    return result.run_dir


@pytest.fixture(scope="session")
def image_predictor(tiny_image_run):
    """`tftune.load(tiny_image_run)`."""
    import tftune

    return tftune.load(tiny_image_run)


@pytest.fixture(scope="session")
def text_predictor(tiny_text_run):
    """`tftune.load(tiny_text_run)`."""
    import tftune

    return tftune.load(tiny_text_run)
