"""Shared fixtures: tiny models and tiny data, all made on the spot, nothing from the network.

- `tiny_bert_preset`: a real KerasHub preset folder (2-layer BERT, hidden size 8, a word vocab)
  written with `save_to_preset`, loadable as `keras_hub:<folder>`.
- `image_folder`: 3 classes x 12 PNGs of 32x32, told apart by colour.
- `text_csv`: 60 rows of `text,label`, two classes, words from the tiny vocabulary.
- `make_tiny_cnn`: a small functional CNN with BatchNormalization and three resolutions
  (`stem`, `stage_1`, `stage_2` layer groups), for `backbone_model=` / `keras:` specs.
- `eager`: runs Keras train/eval functions eagerly (graph tracing dominates tiny-model tests).
- `assets_available(name)` / `requires_asset(name)`: for `@pytest.mark.assets` tests.
"""

from __future__ import annotations

import os

# Before anything imports TensorFlow / KerasHub.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["KAGGLEHUB_VERBOSITY"] = "error"

import csv
import logging
import random
from pathlib import Path

import numpy as np
import pytest

logging.getLogger("tensorflow").setLevel(logging.ERROR)
logging.getLogger("absl").setLevel(logging.ERROR)

# ------------------------------------------------------------------------------------------
# Tiny vocabulary and texts

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE_WORDS = ["good", "great", "fine", "love", "best", "fun", "lovely", "superb"]
NEGATIVE_WORDS = ["bad", "awful", "poor", "hate", "worst", "dull", "boring", "weak"]
NEUTRAL_WORDS = ["the", "a", "movie", "film", "plot", "acting", "was", "is", "very", "really"]
VOCAB = SPECIAL_TOKENS + POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS
TINY_BERT_MAX_SEQUENCE_LENGTH = 32


def make_sentence(rng: random.Random, label: str, n_words: int | None = None) -> str:
    """A sentence of vocabulary words whose sentiment words match `label` (pos / neg)."""
    n = n_words if n_words is not None else rng.randint(3, 7)
    polar = POSITIVE_WORDS if label == "pos" else NEGATIVE_WORDS
    words = [rng.choice(polar) if rng.random() < 0.5 else rng.choice(NEUTRAL_WORDS) for _ in range(n)]
    words[rng.randrange(n)] = rng.choice(polar)
    return " ".join(words)


def write_text_csv(path: Path, rows: list[tuple[str, str]], columns=("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def tiny_bert_preset(tmp_path_factory) -> Path:
    """A KerasHub preset folder holding a 2-layer BERT (hidden 8) and its tokenizer."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert") / "preset"
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=TINY_BERT_MAX_SEQUENCE_LENGTH,
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=list(VOCAB))
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=TINY_BERT_MAX_SEQUENCE_LENGTH
    )
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))
    return folder


def _png(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> None:
    from PIL import Image

    noise = rng.integers(-40, 41, (size, size, 3))
    pixels = np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


IMAGE_CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_image_folder(root: Path, per_class: int = 12, classes=IMAGE_CLASSES, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _png(root / name / f"{name}_{i:02d}.png", colour, rng)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """`images/{red,green,blue}/*.png`: 12 noisy 32x32 images per class."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def text_csv(tmp_path) -> Path:
    """`texts.csv` with `text,label` columns: 30 `pos` and 30 `neg` sentences."""
    rng = random.Random(0)
    rows = [(make_sentence(rng, label), label) for label in ("pos", "neg") for _ in range(30)]
    rng.shuffle(rows)
    return write_text_csv(tmp_path / "texts.csv", rows)


def build_tiny_cnn(image_size: int = 32, name: str = "tiny_cnn"):
    """A functional CNN: rescaling, a stem at full resolution, two strided blocks, with
    BatchNormalization in each; `layer_groups` sees `stem`, `stage_1`, `stage_2`."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="input_pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for k, filters in ((1, 6), (2, 8)):
        x = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", use_bias=False, name=f"block{k}_conv"
        )(x)
        x = keras.layers.BatchNormalization(name=f"block{k}_bn")(x)
        x = keras.layers.ReLU(name=f"block{k}_relu")(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture
def make_tiny_cnn():
    """A factory for `build_tiny_cnn` (seeded, so two calls give the same weights)."""
    import keras

    def make(image_size: int = 32):
        keras.utils.set_random_seed(0)
        return build_tiny_cnn(image_size)

    return make


@pytest.fixture
def tiny_cnn_file(tmp_path, make_tiny_cnn) -> Path:
    """The tiny CNN saved as a `.keras` file, for `keras:<file>` backbone specs."""
    path = tmp_path / "tiny_cnn.keras"
    make_tiny_cnn(32).save(str(path))
    return path


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


def assets_available(name: str) -> bool:
    """Whether the offline asset `name` is fetched and intact."""
    from tftune.assets import asset_path
    from tftune.errors import AssetError

    try:
        asset_path(name)
    except AssetError:
        return False
    return True


def requires_asset(name: str) -> None:
    """Skips the calling test with a reason when asset `name` is not fetched."""
    if not assets_available(name):
        pytest.skip(f"asset {name!r} not fetched: run `tftune assets fetch {name}`")


def pytest_configure(config):
    # The `eager` fixture makes Keras steps eager; tf.data functions stay traced, which TF
    # announces with a warning per dataset map.
    config.addinivalue_line(
        "filterwarnings", "ignore:Even though the `tf.config.experimental_run_functions_eagerly`:UserWarning"
    )


# ------------------------------------------------------------------------------------------
# Finished tiny runs, trained once per session, for evaluate / predict / export tests.
# Tests that write into a run directory work on a copy (`copy_run`).


def _train_quietly(config: dict):
    import tensorflow as tf

    from tftune.config import config_from_dict
    from tftune.training.runner import train

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        return train(config_from_dict(config), echo=lambda _: None)
    finally:
        tf.config.run_functions_eagerly(before)


@pytest.fixture(scope="session")
def tiny_image_run(tmp_path_factory) -> Path:
    """A finished image run: the tiny CNN on 3 colour classes (16 PNGs each, 32 px), with a
    12-image test split. Read-only: copy it (`copy_run`) before writing into it."""
    import keras

    tmp = tmp_path_factory.mktemp("tiny_image_run")
    folder = make_image_folder(tmp / "images", per_class=16)
    keras.utils.set_random_seed(0)
    cnn = tmp / "cnn.keras"
    build_tiny_cnn(32).save(str(cnn))
    result = _train_quietly({
        "recipe": "image_classification",
        "name": "img",
        "output_dir": str(tmp / "runs"),
        "data": {"source": "folder", "path": str(folder), "image_size": [32, 32],
                 "val_fraction": 0.125, "test_fraction": 0.25},
        "backbone": {"spec": f"keras:{cnn}"},
        "head": {"dropout": 0.0},
        "stages": [{"name": "head", "train": "head", "epochs": 16, "learning_rate": 1.0,
                    "early_stopping": {"monitor": "val_loss", "patience": 16}},
                   {"name": "top", "train": "top:1", "epochs": 1, "learning_rate": 1e-3}],
        "train": {"batch_size": 8, "verbose": "quiet"},
    })
    return result.run_dir


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory, tiny_bert_preset) -> Path:
    """A finished text run: the tiny BERT preset on 60 pos / neg sentences, 12 in the test
    split. Read-only: copy it (`copy_run`) before writing into it."""
    tmp = tmp_path_factory.mktemp("tiny_text_run")
    rng = random.Random(0)
    rows = [(make_sentence(rng, label), label) for label in ("pos", "neg") for _ in range(30)]
    rng.shuffle(rows)
    csv_path = write_text_csv(tmp / "texts.csv", rows)
    result = _train_quietly({
        "recipe": "text_classification",
        "name": "txt",
        "output_dir": str(tmp / "runs"),
        "data": {"source": "csv", "path": str(csv_path), "val_fraction": 0.2, "test_fraction": 0.2},
        "backbone": {"spec": f"keras_hub:{tiny_bert_preset}", "sequence_length": 16},
        "stages": [{"name": "head", "train": "head", "epochs": 6, "learning_rate": 3e-2,
                    "early_stopping": {"monitor": "val_loss", "patience": 6}},
                   {"name": "all", "train": "all", "epochs": 1, "learning_rate": 1e-3}],
        "train": {"batch_size": 8, "verbose": "quiet"},
    })
    return result.run_dir


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a finished run directory at `dest` (returned)."""
    import shutil

    shutil.copytree(run, dest)
    return dest
