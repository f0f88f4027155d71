"""Plain helpers shared by the test modules: tiny data, tiny models, recipes, the CLI.

Imported as `from helpers import ...` (pytest puts `tests/` on sys.path, as for conftest.py).
Fixtures live in conftest.py and are never imported; what a test calls by name lives here.
Nothing here imports TensorFlow / Keras at module level: conftest.py quiets their logging first.

- Texts: `VOCAB` (the tiny BERT's word vocabulary), `make_sentence`, `write_text_csv`,
  `write_sentiment_csv` (30 `pos` + 30 `neg` sentences, shuffled); for the other tasks
  `scored_sentence` / `regression_csv` (a numeric `score`) and `tagged_sentence` /
  `multilabel_csv` (`tags` as `a|b`).
- Images: `IMAGE_CLASSES`, `write_png`, `make_image_folder` (noisy 32x32 PNGs, told apart by colour).
- Models: `build_tiny_cnn`, `save_tiny_cnn` (seeded `.keras` file), `save_bert_preset`
  (a KerasHub preset folder of a tiny BERT and its tokenizer).
- Recipes: `image_recipe`, `text_recipe` (dicts), `write_recipe` (to YAML).
- Resume: `resume_recipe` (image), `task_resume_recipe` (text, regression or multi-label,
  optionally with a LoRA stage), `history_rows`, `max_weight_difference`, `metric_difference`,
  `recording_steps`, `sigterm_at`.
- Runs: `train_eagerly` (a recipe dict through `tftune.training.runner.train`), `copy_run`.
- CLI: `invoke` (`tftune ...` through Click's CliRunner), `assert_one_line_error`.
- Assets: `assets_available(name)` / `requires_asset(name)` for `@pytest.mark.assets` tests.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

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


def write_sentiment_csv(path: Path, per_class: int = 30, seed: int = 0) -> Path:
    """A `text,label` CSV of `per_class` `pos` and `per_class` `neg` sentences, shuffled."""
    rng = random.Random(seed)
    rows = [(make_sentence(rng, label), label) for label in ("pos", "neg") for _ in range(per_class)]
    rng.shuffle(rows)
    return write_text_csv(path, rows)


def scored_sentence(rng: random.Random) -> tuple[str, float]:
    """A sentence and its score: (#positive - #negative words), in 'stars' 0..10-ish."""
    n = rng.randint(3, 7)
    words, score = [], 5.0
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            words.append(rng.choice(POSITIVE_WORDS))
            score += 1.0
        elif r < 0.6:
            words.append(rng.choice(NEGATIVE_WORDS))
            score -= 1.0
        else:
            words.append(rng.choice(NEUTRAL_WORDS))
    return " ".join(words), score


def regression_csv(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A `text,score` CSV of `n` scored sentences (a regression target)."""
    rng = random.Random(seed)
    return write_text_csv(path, [scored_sentence(rng) for _ in range(n)], ("text", "score"))


def tagged_sentence(rng: random.Random) -> tuple[str, str]:
    """A sentence and its tags: pos (a positive word), neg (a negative word), film."""
    n = rng.randint(3, 6)
    words = [rng.choice(POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS) for _ in range(n)]
    tags = [t for t, hit in (("pos", any(w in POSITIVE_WORDS for w in words)),
                             ("neg", any(w in NEGATIVE_WORDS for w in words)),
                             ("film", any(w in ("film", "movie") for w in words))) if hit]
    return " ".join(words), "|".join(tags)


def polar_phrase(rng: random.Random, positive: bool, min_words: int = 1) -> str:
    """`min_words`..3 positive (or negative) words with one neutral word somewhere among them."""
    words = [rng.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS)
             for _ in range(rng.randint(min_words, 3))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(NEUTRAL_WORDS))
    return " ".join(words)


def sentiment_pairs(n: int, seed: int, label_of: int = 0, min_words: int = 1) -> list[tuple[str, str, str]]:
    """(first, second, pos|neg) with each text's sentiment drawn independently and the label
    the sentiment of text `label_of` (0 or 1). Concatenated into one text, half the examples
    hold both kinds of words: only the segment a word is in (the pair's packing) tells the
    label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        polar = rng.random() < 0.5, rng.random() < 0.5
        rows.append((polar_phrase(rng, polar[0], min_words), polar_phrase(rng, polar[1], min_words),
                     "pos" if polar[label_of] else "neg"))
    return rows


def multilabel_csv(path: Path, n: int = 40, seed: int = 2) -> Path:
    """A `text,tags` CSV of `n` tagged sentences (multi-label, `a|b`)."""
    rng = random.Random(seed)
    return write_text_csv(path, [tagged_sentence(rng) for _ in range(n)], ("text", "tags"))


# ------------------------------------------------------------------------------------------
# Tiny images

IMAGE_CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_png(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> None:
    """A `size` x `size` PNG of `colour` with +-40 of noise per channel."""
    from PIL import Image

    noise = rng.integers(-40, 41, (size, size, 3))
    pixels = np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def make_image_folder(root: Path, per_class: int = 12, classes=IMAGE_CLASSES, seed: int = 0) -> Path:
    """`root/<class>/<class>_NN.png`: `per_class` noisy 32x32 images per class."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_png(root / name / f"{name}_{i:02d}.png", colour, rng)
    return root


# ------------------------------------------------------------------------------------------
# Tiny models


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


def save_tiny_cnn(path: Path, image_size: int = 32) -> Path:
    """The tiny CNN, built with seed 0 (the same weights every time), saved as a `.keras`
    file for `keras:<file>` backbone specs."""
    import keras

    keras.utils.set_random_seed(0)
    build_tiny_cnn(image_size).save(str(path))
    return path


def save_bert_preset(folder: Path, *, num_layers: int = 2,
                     sequence_length: int = TINY_BERT_MAX_SEQUENCE_LENGTH, seed: int = 0,
                     **backbone_options) -> Path:
    """A KerasHub preset folder (loadable as `keras_hub:<folder>`) holding a BERT of hidden
    size 8 over `VOCAB` and its tokenizer; `backbone_options` go to `BertBackbone` (`dropout`)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=sequence_length,
        **backbone_options,
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=list(VOCAB))
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=sequence_length)
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))
    return folder


def save_resnet_preset(folder: Path, seed: int = 0) -> Path:
    """A KerasHub image preset folder (loadable as `keras_hub:<folder>`): a ResNet of three
    one-block stacks (64 filters, strides 1, 2, 2: the narrowest ResNetBackbone takes) and
    its image converter (scale 1/255 and a per-channel offset), written with
    `save_to_preset`."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64, 64], stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2], block_type="basic_block", use_pre_activation=False,
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(32, 32), scale=1 / 255.0, offset=[-0.5, -0.4, -0.3])
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


# ------------------------------------------------------------------------------------------
# Recipes


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def image_recipe(tmp: Path, folder: Path, cnn_file: Path, **extra) -> dict:
    """An image recipe `img` on the tiny CNN file (head 2 epochs, then top:1 1 epoch), runs in
    `tmp/runs`; `extra` replaces top-level keys."""
    recipe = {
        "recipe": "image_classification",
        "name": "img",
        "output_dir": str(tmp / "runs"),
        "data": {"source": "folder", "path": str(folder), "image_size": [32, 32]},
        "backbone": {"spec": f"keras:{cnn_file}"},
        "head": {"dropout": 0.0},
        "stages": [
            {"name": "head", "train": "head", "epochs": 2, "learning_rate": 0.05,
             "early_stopping": {"monitor": "val_loss", "patience": 5}},
            {"name": "top", "train": "top:1", "epochs": 1, "learning_rate": 1e-3},
        ],
        "train": {"batch_size": 8, "verbose": "quiet"},
    }
    recipe.update(extra)
    return recipe


def text_recipe(tmp: Path, csv_path: Path, preset: Path, **extra) -> dict:
    """A text recipe `txt` on a KerasHub preset folder (head 1 epoch, then all 1 epoch), runs
    in `tmp/runs`; `extra` replaces top-level keys."""
    recipe = {
        "recipe": "text_classification",
        "name": "txt",
        "output_dir": str(tmp / "runs"),
        "data": {"source": "csv", "path": str(csv_path), "val_fraction": 0.2, "test_fraction": 0.2},
        "backbone": {"spec": f"keras_hub:{preset}", "sequence_length": 16},
        "stages": [
            {"name": "head", "train": "head", "epochs": 1, "learning_rate": 1e-2},
            {"name": "all", "train": "all", "epochs": 1, "learning_rate": 1e-3,
             "warmup": 0.2, "schedule": "linear"},
        ],
        "train": {"batch_size": 8},
    }
    recipe.update(extra)
    return recipe


# ------------------------------------------------------------------------------------------
# Runs


def train_eagerly(recipe: dict):
    """`tftune.training.runner.train` on a recipe dict, quietly, with Keras steps run eagerly
    (graph tracing dominates tiny models); returns its result."""
    import tensorflow as tf

    from tftune.config import config_from_dict
    from tftune.training.runner import train

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        return train(config_from_dict(recipe), echo=lambda _: None)
    finally:
        tf.config.run_functions_eagerly(before)


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a finished run directory at `dest` (returned)."""
    shutil.copytree(run, dest)
    return dest


# ------------------------------------------------------------------------------------------
# The CLI


def invoke(*args, input=None):
    """`tftune ARGS...` in this process (arguments may be paths); the Click result."""
    from click.testing import CliRunner

    from tftune.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_one_line_error(result, *fragments: str, alone: bool = False) -> str:
    """A user error as the CLI reports it: exit code 2, exactly one `Error: ` line, holding
    every fragment, and no traceback. With `alone`, that line is all the command printed.
    Returns the `Error: ` line."""
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("Error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output, result.output
    if alone:
        assert lines == errors, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# ------------------------------------------------------------------------------------------
# Offline assets


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


# ------------------------------------------------------------------------------------------
# Comparing runs, and SIGTERM in this process (resume tests)


def history_rows(run: Path) -> list[tuple]:
    """history.csv without the seconds column (wall time differs between runs)."""
    with open(run / "history.csv", newline="") as f:
        return [tuple((k, v) for k, v in row.items() if k != "seconds") for row in csv.DictReader(f)]


def max_weight_difference(a: list, b: list) -> float:
    assert len(a) == len(b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def trace_lines(trace: Path) -> list[str]:
    """The points a run's `TFTUNE_TRACE` file holds so far (none before it exists)."""
    return trace.read_text().splitlines() if trace.exists() else []


def model_weights(path: Path) -> list:
    """The weights of a saved `.keras` model (tftune's own layers and optimizer registered)."""
    import keras

    import tftune.model.heads  # noqa: F401
    import tftune.training.optim  # noqa: F401

    return keras.saving.load_model(str(path), compile=False).get_weights()


def metric_difference(a: dict, b: dict) -> float:
    """The largest difference between two runs' validation and test metrics: every number
    the task reports (loss and accuracy; rmse, r2...; micro_f1, map...); both must report
    the same ones."""
    diffs = []
    for s in ("val", "test"):
        assert a[s].keys() == b[s].keys(), (s, sorted(a[s]), sorted(b[s]))
        diffs += [abs(a[s][k] - b[s][k]) for k, v in b[s].items() if isinstance(v, (int, float))]
    return max(diffs)


def sigterm_then_resume(monkeypatch, train, cfg, out, step: int, where: str):
    """SIGTERM at training step `step` of the run `train(cfg(out))`: it stops with a
    checkpoint at `where` (e.g. "stage 2/2 'top', epoch 1, step 4 "); then the resumed run."""
    from tftune.runtime.preemption import Preempted

    sigterm_at(monkeypatch, "step", step)
    with pytest.raises(Preempted, match=where):
        train(cfg(out), echo=lambda _: None)
    monkeypatch.undo()
    return train(cfg(out), resume=True, echo=lambda _: None)


def assert_same_run(resumed, reference, label: str = "resume") -> None:
    """A resumed (or otherwise re-made) run equals the uninterrupted one: the same variables,
    every weight within 1e-6, every val / test metric within 1e-6, the same history rows."""
    assert [v.path for v in resumed.model.weights] == [v.path for v in reference.model.weights]
    diff = max_weight_difference(resumed.model.get_weights(), reference.model.get_weights())
    print(f"{label}: max weight diff after resume {diff}")
    assert diff < 1e-6
    assert metric_difference(resumed.metrics, reference.metrics) < 1e-6
    assert history_rows(resumed.run_dir) == history_rows(reference.run_dir)


def recording_steps(monkeypatch, run):
    """(run(), the detail of every training step it reached, e.g. "epoch 1 step 2")."""
    from tftune.runtime import faults

    steps = []
    original = faults.point
    monkeypatch.setattr(faults, "point", lambda name, detail="": (
        steps.append(detail) if name == "step" else None, original(name, detail)))
    try:
        return run(), steps
    finally:
        monkeypatch.undo()


def sigterm_at(monkeypatch, event: str, n: int) -> None:
    """Sends this process SIGTERM when faults point `event` is reached for the n-th time."""
    from tftune.runtime import faults

    seen = {"n": 0}
    original = faults.point

    def point(name, detail=""):
        original(name, detail)
        if name == event:
            seen["n"] += 1
            if seen["n"] == n:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(faults, "point", point)


def resume_recipe(folder: Path, cnn: Path, output_dir: Path, name: str = "r", **train) -> dict:
    """Head (2 epochs, feature cache, dropout 0.3: the dropout RNG must resume too), then
    top:1 (2 epochs, warmup + cosine: the schedule must resume at its step), AdamW."""
    return {
        "recipe": "image_classification", "name": name, "output_dir": str(output_dir),
        "data": {"source": "folder", "path": str(folder), "image_size": [32, 32]},
        "backbone": {"spec": f"keras:{cnn}"},
        "head": {"dropout": 0.3},
        "stages": [
            {"name": "head", "train": "head", "epochs": 2, "learning_rate": 0.05,
             "early_stopping": {"monitor": "val_loss", "patience": 5}},
            {"name": "top", "train": "top:1", "epochs": 2, "learning_rate": 2e-3,
             "warmup": 2, "schedule": "cosine",
             "early_stopping": {"monitor": "val_accuracy", "patience": 5}},
        ],
        "train": {"batch_size": 8, "verbose": "quiet", **train},
    }


def task_resume_recipe(csv_path: Path, preset: Path, output_dir: Path, task: str,
                       name: str = "r", *, lora: bool = False, **train) -> dict:
    """A text run of `task` (`regression` on `score`, `multilabel` on `tags`) on a tiny BERT
    preset: head (2 epochs, dropout 0.3), then top:1 (2 epochs, linear schedule), each
    early-stopped on the task's own monitor. With `lora`, the second stage is `lora` (top:1
    with `peft: lora`, rank 2: seeded adapters on the block's attention query / value,
    created again before a resumed run restores them)."""
    recipe = {
        "recipe": "text_classification", "task": task, "name": name,
        "output_dir": str(output_dir),
        "data": {"source": "csv", "path": str(csv_path), "val_fraction": 0.2,
                 "test_fraction": 0.2,
                 "label_column": "score" if task == "regression" else "tags"},
        "backbone": {"spec": f"keras_hub:{preset}", "sequence_length": 16},
        "head": {"dropout": 0.3},
        "stages": [
            {"name": "head", "train": "head", "epochs": 2, "learning_rate": 1e-2,
             "early_stopping": {"monitor": "auto", "patience": 5}},
            {"name": "top", "train": "top:1", "epochs": 2, "learning_rate": 1e-2,
             "schedule": "linear", "early_stopping": {"monitor": "auto", "patience": 5}},
        ],
        "train": {"batch_size": 8, "verbose": "quiet", **train},
    }
    if lora:
        recipe["stages"][1].update(name="lora", peft="lora", lora={"rank": 2, "alpha": 4.0},
                                   learning_rate=3e-2)
    return recipe
