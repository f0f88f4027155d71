"""End to end: `tftune train RECIPE.yaml` on tiny data and tiny backbones, the run directory
it writes, re-runs, and the CLI's one-line errors. Also `tftune recipes` and `tftune.training.runner.train`
from Python."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import (
    assert_one_line_error,
    image_recipe,
    invoke,
    make_image_folder,
    make_sentence,
    save_tiny_cnn,
    text_recipe,
    write_recipe,
    write_sentiment_csv,
    write_text_csv,
)
from tftune.config import load_recipe

REPO = Path(__file__).resolve().parent.parent


def read_history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_run_directory(run: Path, recipe_path: Path, overrides: list[str], class_names: list[str],
                         epochs: list[int]) -> dict:
    """The files every run writes, each checked for content; returns metrics.json."""
    config = load_recipe(run / "config.yaml")
    assert config == load_recipe(recipe_path, overrides)

    versions = json.loads((run / "versions.json").read_text())
    for key in ("python", "tensorflow", "keras", "numpy", "tftune"):
        assert versions.get(key), key

    assert json.loads((run / "classes.json").read_text()) == class_names

    rows = read_history(run)
    assert len(rows) == sum(epochs)
    for column in ("stage", "stage_name", "epoch", "learning_rate", "loss", "accuracy",
                   "val_loss", "val_accuracy"):
        assert column in rows[0], column
    expected = [(str(i), config.stages[i].name, str(e + 1)) for i, n in enumerate(epochs) for e in range(n)]
    assert [(r["stage"], r["stage_name"], r["epoch"]) for r in rows] == expected
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)

    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
        assert np.isfinite(metrics[split]["loss"])
    assert [s["name"] for s in metrics["stages"]] == [s.name for s in config.stages]
    assert [s["epochs_run"] for s in metrics["stages"]] == epochs
    assert (run / "model.keras").is_file()
    return metrics


def evaluate_reloaded(run: Path, val_ds) -> dict:
    import keras

    import tftune.model.heads  # noqa: F401  (registers tftune's layers)

    model = keras.saving.load_model(str(run / "model.keras"))
    return model, model.evaluate(val_ds, verbose=0, return_dict=True)


# ------------------------------------------------------------------------------------------
# image recipe


@pytest.fixture(scope="module")
def cli_image_training(tmp_path_factory):
    """One `tftune train` of the image recipe, shared by the tests that only read its run
    directory: (tmp folder, recipe path, the overrides given, the Click result)."""
    tmp = tmp_path_factory.mktemp("cli_image_training")
    folder = make_image_folder(tmp / "images")
    cnn_file = save_tiny_cnn(tmp / "cnn.keras")
    recipe = write_recipe(tmp / "image.yaml", image_recipe(tmp, folder, cnn_file))
    overrides = ["--set", "train.verbose=epoch", "--set", "stages.1.learning_rate=2e-3"]
    result = invoke("train", str(recipe), *overrides)
    return tmp, recipe, [o for o in overrides if o != "--set"], result


def test_image_recipe_end_to_end(cli_image_training):
    import tensorflow as tf

    from tftune.data import load_data

    tmp, recipe, overrides, result = cli_image_training
    assert result.exit_code == 0, result.output
    out = result.output
    assert "== Stage 1/2: head" in out and "== Stage 2/2: top" in out
    assert sum("[head] epoch" in l for l in out.splitlines()) == 2
    assert sum("[top] epoch" in l for l in out.splitlines()) == 1
    assert "Traceback" not in out

    run = tmp / "runs" / "img"
    metrics = assert_run_directory(run, recipe, overrides, ["blue", "green", "red"], [2, 1])
    config = load_recipe(run / "config.yaml")
    assert config.stages[1].learning_rate == pytest.approx(2e-3)

    # The saved model reloads and scores the validation split exactly as the run reported.
    splits = load_data(config.data, config.train.seed)
    val = splits.val.batch(8)
    model, scores = evaluate_reloaded(run, val)
    assert scores["accuracy"] == pytest.approx(metrics["val"]["accuracy"])
    assert scores["loss"] == pytest.approx(metrics["val"]["loss"], rel=1e-4)
    # It takes raw 0..255 pixels: normalisation is inside the model.
    x = next(iter(val))[0]
    probs = model.predict(x, verbose=0)
    assert probs.shape == (len(x), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert tf.reduce_max(x) > 1.0


def test_rerun_without_overwrite_leaves_the_run_untouched(cli_image_training):
    tmp, recipe, overrides, first = cli_image_training
    assert first.exit_code == 0, first.output
    run = tmp / "runs" / "img"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = invoke("train", str(recipe))
    assert_one_line_error(result, "already exists", "a finished run", "--overwrite")
    assert len(result.output.strip().splitlines()) <= 2  # the recipe line and the error
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


def test_overwrite_replaces_the_run(tmp_path, image_folder, tiny_cnn_file):
    recipe = image_recipe(tmp_path, image_folder, tiny_cnn_file)
    recipe["stages"] = [{"name": "only", "train": "head", "epochs": 1}]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    run = tmp_path / "runs" / "img"
    run.mkdir(parents=True)
    (run / "stale.txt").write_text("from an older run")
    assert_one_line_error(invoke("train", str(path)), "already exists", "an unfinished run")
    assert (run / "stale.txt").exists()
    result = invoke("train", str(path), "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (run / "stale.txt").exists()
    assert len(read_history(run)) == 1
    # --output puts the run elsewhere.
    other = tmp_path / "elsewhere"
    result = invoke("train", str(path), "--output", str(other))
    assert result.exit_code == 0, result.output
    assert (other / "img" / "model.keras").is_file()


def test_no_test_leaves_the_test_split_for_one_later_evaluation(tmp_path, image_folder, tiny_cnn_file):
    """`--no-test` (train.evaluate_test: false): the run is scored on validation only, says how
    to score the test split, and `tftune evaluate --split test` does it later."""
    import json

    from tftune.runtime.preemption import resume_command

    recipe = image_recipe(tmp_path, image_folder, tiny_cnn_file)
    recipe["stages"] = [{"name": "only", "train": "head", "epochs": 1}]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = invoke("train", str(path), "--no-test")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "img"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val" in metrics and "test" not in metrics
    assert metrics["sizes"]["test"] > 0  # the split is still held out, only not scored
    assert load_recipe(run / "config.yaml").train.evaluate_test is False
    assert f"score it once with: tftune evaluate {run} --split test" in result.output
    assert "test accuracy" not in result.output
    report = invoke("evaluate", str(run), "--split", "test")
    assert report.exit_code == 0, report.output
    assert (run / "eval" / "test").is_dir()
    # a preempted run's resume command keeps the flag
    assert resume_command("r.yaml", (), {"--no-test": True, "--time-limit": None}) == \
        "tftune train r.yaml --no-test --resume"


# ------------------------------------------------------------------------------------------
# text recipe


@pytest.fixture(scope="module")
def cli_text_training(tmp_path_factory, tiny_bert_preset):
    """One `tftune train` of the text recipe on the tiny BERT preset, shared by the tests that
    only read its run directory: (tmp folder, recipe path, the Click result)."""
    tmp = tmp_path_factory.mktemp("cli_text_training")
    csv_path = write_sentiment_csv(tmp / "texts.csv")
    recipe = write_recipe(tmp / "text.yaml", text_recipe(tmp, csv_path, tiny_bert_preset))
    result = invoke("train", str(recipe), "--set", "train.verbose=epoch")
    return tmp, recipe, result


def test_text_recipe_end_to_end(cli_text_training, tiny_bert_preset):
    import keras_hub
    import tensorflow as tf

    from tftune.data import load_data

    tmp, recipe, result = cli_text_training
    assert result.exit_code == 0, result.output
    assert "pooled_dense" in result.output  # reported as frozen throughout
    run = tmp / "runs" / "txt"
    metrics = assert_run_directory(run, recipe, ["train.verbose=epoch"], ["neg", "pos"], [1, 1])

    # The saved model reloads and scores the validation split as the run reported.
    config = load_recipe(run / "config.yaml")
    pre = keras_hub.models.TextClassifierPreprocessor.from_preset(
        str(tiny_bert_preset), sequence_length=config.backbone.sequence_length
    )
    splits = load_data(config.data, config.train.seed)
    val = splits.val.batch(8).map(lambda x, y: (pre(x), y))
    model, scores = evaluate_reloaded(run, val)
    assert scores["accuracy"] == pytest.approx(metrics["val"]["accuracy"])
    assert scores["loss"] == pytest.approx(metrics["val"]["loss"], rel=1e-4)
    probs = model.predict(pre(tf.constant(["good fun film", "awful dull plot"])), verbose=0)
    assert probs.shape == (2, 2)


def test_text_run_preprocessor_folder_loads_on_its_own(cli_text_training, tiny_bert_preset):
    """runs/<name>/preprocessor/ is what turns raw text into the saved model's inputs: it must
    load with KerasHub's `from_preset` and tokenise exactly as the training preprocessor."""
    import keras_hub

    tmp, _, result = cli_text_training
    assert result.exit_code == 0, result.output
    saved = keras_hub.models.TextClassifierPreprocessor.from_preset(str(tmp / "runs" / "txt" / "preprocessor"))
    original = keras_hub.models.TextClassifierPreprocessor.from_preset(str(tiny_bert_preset), sequence_length=16)
    texts = ["good fun film", "the plot was very dull and boring"]
    a, b = saved(texts), original(texts)
    for key in ("token_ids", "padding_mask", "segment_ids"):
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


# ------------------------------------------------------------------------------------------
# one-line errors


def test_missing_recipe_file(tmp_path):
    assert_one_line_error(invoke("train", str(tmp_path / "nope.yaml")), "nope.yaml", "tftune recipes")


def test_bad_override_syntax(tmp_path, image_folder, tiny_cnn_file):
    path = write_recipe(tmp_path / "r.yaml", image_recipe(tmp_path, image_folder, tiny_cnn_file))
    assert_one_line_error(invoke("train", str(path), "--set", "stages.0.epochs"), "KEY=VALUE")


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"stages": [{"name": "s", "epoch": 1}]}, ["stages.0.epoch", "Did you mean 'stages.0.epochs'"]),
        ({"data": {"source": "folder", "path": "/nonexistent/images"}}, ["/nonexistent/images"]),
        ({"backbone": {"spec": "keras_hubb:bert_tiny_en_uncased"}}, ["Did you mean 'keras_hub:"]),
        ({"backbone": {"spec": "keras_hub:bert_tiny_en_uncased"}}, ["allow_download"]),
        ({"recipe": "image_clasification"}, ["Did you mean 'image_classification'"]),
        ({"stages": [{"train": "top:9"}]}, ["stages.0.train", "top:3"]),
        ({"data": {"source": "folder", "image_size": [32, 32], "augment": ["rotate"]}},
         ["'rotate'", "flip"]),
    ],
    ids=["typo", "missing-data", "bad-spec", "needs-network", "bad-recipe", "too-many-groups",
         "bad-augment"],
)
def test_user_errors_are_one_line_exit_2(tmp_path, image_folder, tiny_cnn_file, change, fragments):
    recipe = image_recipe(tmp_path, image_folder, tiny_cnn_file)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert_one_line_error(invoke("train", str(path)), *fragments)


@pytest.mark.parametrize(
    "bad_stage, fragment",
    [
        ({"train": "stage_9"}, "stages.1.train"),
        ({"train": "top:1", "early_stopping": {"monitor": "val_acc"}}, "val_accuracy"),
    ],
    ids=["unknown-group", "unknown-monitor"],
)
def test_errors_in_later_stages_are_reported_before_training(tmp_path, image_folder, tiny_cnn_file,
                                                             bad_stage, fragment):
    """A mistake in stage 2 must not cost the user stage 1's training time first."""
    recipe = image_recipe(tmp_path, image_folder, tiny_cnn_file)
    recipe["stages"] = [{"name": "head", "train": "head", "epochs": 1}, {"name": "next", **bad_stage}]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = invoke("train", str(path), "--set", "train.verbose=epoch")
    assert_one_line_error(result, fragment)
    assert "[head] epoch" not in result.output
    assert not (tmp_path / "runs" / "img" / "history.csv").exists()


def test_text_backbone_on_image_data(tmp_path, image_folder, tiny_bert_preset):
    recipe = image_recipe(tmp_path, image_folder, Path("unused"))
    recipe["backbone"] = {"spec": f"keras_hub:{tiny_bert_preset}"}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert_one_line_error(invoke("train", str(path)), "text", "image")


def test_nan_loss_is_a_clear_error(tmp_path, image_folder, tiny_cnn_file):
    recipe = image_recipe(tmp_path, image_folder, tiny_cnn_file)
    recipe["stages"] = [{"name": "boom", "train": "all", "epochs": 1, "learning_rate": 1e30,
                         "optimizer": "sgd"}]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert_one_line_error(invoke("train", str(path)), "loss became nan", "'boom'",
                          "stages.0.learning_rate")


def test_debug_flag_shows_the_exception(tmp_path):
    from tftune.errors import TftuneError

    result = invoke("--debug", "train", str(tmp_path / "nope.yaml"))
    assert result.exit_code != 0
    assert isinstance(result.exception, TftuneError)


# ------------------------------------------------------------------------------------------
# tftune recipes


def test_recipes_lists_the_recipe_files(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("TFTUNE_RECIPES", raising=False)
    result = invoke("recipes")
    assert result.exit_code == 0, result.output
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        description = yaml.safe_load(path.read_text())["description"].strip().splitlines()[0]
        line = next(l for l in result.output.splitlines() if l.startswith(path.stem))
        assert description in line


def test_recipes_from_the_environment_and_by_name(tmp_path, monkeypatch, image_folder, tiny_cnn_file):
    mine = tmp_path / "my_recipes"
    mine.mkdir()
    recipe = image_recipe(tmp_path, image_folder, tiny_cnn_file, description="My own recipe.")
    recipe["stages"] = [{"name": "only", "train": "head", "epochs": 1}]
    write_recipe(mine / "mine.yaml", recipe)
    monkeypatch.setenv("TFTUNE_RECIPES", str(mine))
    result = invoke("recipes")
    assert result.exit_code == 0 and "mine" in result.output and "My own recipe." in result.output
    # `tftune train NAME` finds it by name.
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "mine")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "img" / "model.keras").is_file()


# ------------------------------------------------------------------------------------------
# From Python: tftune.training.runner.train with a user's model and datasets


def colour_datasets(n_train=24, n_val=9, size=16, val_shift=0):
    import tensorflow as tf

    def make(n, seed, shift):
        rng = np.random.default_rng(seed)
        y = np.arange(n) % 3
        x = rng.uniform(0, 90, (n, size, size, 3)).astype(np.float32)
        x[np.arange(n), :, :, y] += 140.0
        return tf.data.Dataset.from_tensor_slices((x, ((y + shift) % 3).astype(np.int32)))

    return make(n_train, 0, 0), make(n_val, 1, val_shift)


def python_config(tmp_path, stages):
    from tftune.config import config_from_dict

    return config_from_dict({
        "recipe": "image_classification",
        "name": "py",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "python", "image_size": [16, 16]},
        "head": {"dropout": 0.0},
        "stages": stages,
        "train": {"batch_size": 8, "verbose": "quiet"},
    })


@pytest.mark.usefixtures("eager")
def test_train_from_python_and_reload_gives_same_predictions(tmp_path, make_tiny_cnn):
    import keras

    import tftune.model.heads  # noqa: F401
    from tftune.data import DataSplits
    from tftune.training.runner import train

    train_ds, val_ds = colour_datasets()
    splits = DataSplits.from_datasets(train_ds, val_ds, class_names=["r", "g", "b"], modality="image")
    cfg = python_config(tmp_path, [{"name": "head", "train": "head", "epochs": 1, "learning_rate": 0.05},
                                   {"name": "all", "train": "all", "epochs": 1, "learning_rate": 1e-3}])
    lines = []
    result = train(cfg, datasets=splits, backbone_model=make_tiny_cnn(16), echo=lines.append)
    assert result.run_dir == tmp_path / "runs" / "py"
    assert result.class_names == ["r", "g", "b"]
    assert "test" not in result.metrics and "val" in result.metrics
    assert any("Stage 2/2" in l for l in lines)
    x = np.stack([x for x, _ in val_ds.as_numpy_iterator()])
    reloaded = keras.saving.load_model(str(result.run_dir / "model.keras"))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def _two_stage_run(tmp_path, make_tiny_cnn, names):
    """Stage 1 is better than stage 2 on validation: the validation labels are the training
    labels shifted, so every step of training makes the validation loss worse."""
    from tftune.data import DataSplits
    from tftune.training.runner import train

    train_ds, val_ds = colour_datasets(val_shift=1)
    splits = DataSplits.from_datasets(train_ds, val_ds, class_names=["r", "g", "b"], modality="image")
    stages = [{"train": "head", "epochs": 1, "learning_rate": 0.05,
               "early_stopping": {"monitor": "val_loss"}},
              {"train": "all", "epochs": 1, "learning_rate": 0.05,
               "early_stopping": {"monitor": "val_loss"}}]
    for s, name in zip(stages, names):
        if name:
            s["name"] = name
    result = train(python_config(tmp_path, stages), datasets=splits,
                   backbone_model=make_tiny_cnn(16), echo=lambda _: None)
    first, second = (s["best_value"] for s in result.metrics["stages"])
    assert second > first, "setup: the second stage should be worse on validation"
    return result.metrics["val"]["loss"], first, second


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("names", [("warm", "deep"), (None, None)], ids=["named", "default-names"])
def test_the_best_stage_weights_are_kept(tmp_path, make_tiny_cnn, names):
    """When the last stage does not beat an earlier one, the model ends with the earlier
    stage's weights, whatever the stages are called (default names are all 'stage')."""
    final, first, second = _two_stage_run(tmp_path, make_tiny_cnn, names)
    assert final == pytest.approx(first, rel=1e-4)


@pytest.mark.usefixtures("eager")
def test_text_schedule_decays_over_the_batches_actually_run(tmp_path, tiny_bert_preset):
    """Texts of mixed lengths are bucketed, which makes more batches than ceil(n / batch);
    a linear decay over 2 epochs must still be halfway after epoch 1 and 0 at the end."""
    from tftune.config import config_from_dict
    from tftune.training.runner import train

    rng = random.Random(5)
    rows = []
    for i in range(70):  # a third short (< 16 tokens), two thirds long (16..23 tokens)
        label = "pos" if i % 2 else "neg"
        rows.append((make_sentence(rng, label, 4 if (i // 2) % 3 == 0 else 18), label))
    path = write_text_csv(tmp_path / "mixed.csv", rows)
    cfg = config_from_dict({
        "recipe": "text_classification",
        "name": "sched",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "csv", "path": str(path), "val_fraction": 0.1, "test_fraction": 0.1},
        "backbone": {"spec": f"keras_hub:{tiny_bert_preset}", "sequence_length": 32},
        "stages": [{"name": "only", "train": "head", "epochs": 2, "learning_rate": 1.0,
                    "schedule": "linear", "optimizer": "sgd",
                    "early_stopping": {"monitor": "val_loss", "patience": 5}}],
        "train": {"batch_size": 16, "verbose": "quiet"},
    })
    result = train(cfg, echo=lambda _: None)
    lrs = [float(r["learning_rate"]) for r in read_history(result.run_dir)]
    assert lrs == pytest.approx([0.5, 0.0], abs=1e-6)


@pytest.mark.usefixtures("eager")
def test_mixed_precision_text_run_restores_the_global_policy(tmp_path, text_csv, tiny_bert_preset):
    import keras
    import keras_hub

    from tftune.config import config_from_dict
    from tftune.training.runner import train

    cfg = config_from_dict({
        **text_recipe(tmp_path, text_csv, tiny_bert_preset),
        "stages": [{"name": "head", "train": "head", "epochs": 1, "learning_rate": 1e-2}],
        "train": {"batch_size": 16, "verbose": "quiet", "mixed_precision": "bfloat16"},
    })
    result = train(cfg, echo=lambda _: None)
    assert keras.mixed_precision.dtype_policy().name == "float32"
    assert np.isfinite(result.metrics["val"]["loss"])
    pre = keras_hub.models.TextClassifierPreprocessor.from_preset(str(tiny_bert_preset), sequence_length=16)
    tokens = pre(["good fun film", "awful dull plot", "the movie"])
    reloaded = keras.saving.load_model(str(result.run_dir / "model.keras"))
    probs = reloaded.predict(tokens, verbose=0)
    assert probs.dtype == np.float32  # the classifier's output stays float32
    np.testing.assert_allclose(probs, result.model.predict(tokens, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("eager")
def test_top_1_on_a_mean_pooled_bert_trains_the_last_block(tmp_path, text_csv, tiny_bert_preset):
    """Stage by stage, through `train`: `top:1` changes the last transformer block and the
    head, and nothing below it; the pooler (unused by a mean-pooling head) never changes."""
    import keras_hub

    from tftune.config import config_from_dict
    from tftune.training.runner import train

    cfg = config_from_dict({
        **text_recipe(tmp_path, text_csv, tiny_bert_preset),
        "head": {"pooling": "mean"},
        "stages": [{"name": "top", "train": "top:1", "epochs": 1, "learning_rate": 1e-2}],
        "train": {"batch_size": 8, "verbose": "quiet"},
    })
    result = train(cfg, echo=lambda _: None)
    original = keras_hub.models.Backbone.from_preset(str(tiny_bert_preset))
    trained = next(l for l in result.model.layers if isinstance(l, keras_hub.models.Backbone))
    moved = set()
    for layer in original.layers:
        if layer.weights and any(
            not np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(layer.weights, trained.get_layer(layer.name).weights)
        ):
            moved.add(layer.name)
    assert moved == {"transformer_layer_1"}


def test_image_augmentation_on_text_data_is_one_error(tmp_path, text_csv, tiny_bert_preset):
    from helpers import text_recipe

    recipe = text_recipe(tmp_path, text_csv, tiny_bert_preset)
    recipe["data"]["augment"] = ["flip"]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert_one_line_error(invoke("train", str(path)), "'data.augment'", "['flip']",
                          "data is text", "Remove data.augment")


def test_skip_bad_files_names_the_left_out_images_in_the_log_and_the_run(tmp_path, image_folder,
                                                                        tiny_cnn_file):
    """A corrupt JPEG among good PNGs: without data.skip_bad_files the run stops naming it
    and the setting; with it the run trains on the rest and lists it in the log and in
    runs/<name>/skipped_files.txt."""
    bad = image_folder / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40)
    recipe = image_recipe(tmp_path, image_folder, tiny_cnn_file,
                          stages=[{"name": "head", "train": "head", "epochs": 1, "learning_rate": 0.05}])
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert_one_line_error(invoke("train", str(path)), str(bad), "--set data.skip_bad_files=true")
    result = invoke("train", str(path), "--set", "data.skip_bad_files=true", "--overwrite")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "img"
    assert f"left out 1 image file(s) that cannot be decoded (data.skip_bad_files): {bad}" in result.output
    assert (run / "skipped_files.txt").read_text() == f"{bad}\n"
    assert (run / "metrics.json").is_file()
