"""Tasks beyond single-label classification: regression and multi-label, through train,
evaluate and predict; their metrics, thresholds and standardisation checked by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import (invoke, make_image_folder, regression_csv, sentiment_pairs, tagged_sentence,
                     write_recipe, write_text_csv)
from helpers import assert_one_line_error as one_line_error
from tftune.errors import ConfigError, DataError


def tiny_text_recipe(tmp: Path, csv_path: Path, preset: Path, name: str, task: str, **data) -> dict:
    return {
        "recipe": "text_classification",
        "task": task,
        "name": name,
        "output_dir": str(tmp / "runs"),
        "data": {"source": "csv", "path": str(csv_path), "val_fraction": 0.2,
                 "test_fraction": 0.2, **data},
        "backbone": {"spec": f"keras_hub:{preset}", "sequence_length": 16},
        "head": {"dropout": 0.0},
        "stages": [
            {"name": "head", "train": "head", "epochs": 3, "learning_rate": 3e-2,
             "early_stopping": {"monitor": "auto", "patience": 5}},
            {"name": "all", "train": "all", "epochs": 1, "learning_rate": 1e-3},
        ],
        "train": {"batch_size": 8, "verbose": "quiet"},
    }


# ------------------------------------------------------------------------------------------
# Regression: units


def test_regression_metrics_by_hand():
    from tftune.evaluation.regression import average_ranks, regression_report

    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 5.0])
    r = regression_report(y, p)
    assert r["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert r["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert r["r2"] == pytest.approx(1 - 2.25 / 5.0)
    # Pearson by hand: deviations y (-1.5,-.5,.5,1.5), p (-1.125,-.625,-.625,2.375)
    num = 1.5 * 1.125 + 0.5 * 0.625 - 0.5 * 0.625 + 1.5 * 2.375
    den = np.sqrt(5.0 * (1.125**2 + 2 * 0.625**2 + 2.375**2))
    assert r["pearson"] == pytest.approx(num / den)
    assert average_ranks(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]
    # Spearman: ranks of p are (1, 2.5, 2.5, 4) against (1, 2, 3, 4)
    assert r["spearman"] == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert regression_report([3.0, 3.0], [1.0, 2.0])["r2"] is None


def test_standardisation_round_trip():
    from tftune.tasks import Regression

    y = np.array([10.0, 20.0, 30.0, 60.0], np.float32)
    task = Regression()
    task.fit(y)
    assert task.mean == pytest.approx(30.0) and task.std == pytest.approx(np.std(y))
    standardised = ((y - task.mean) / task.std)[:, None]
    np.testing.assert_allclose(task.predictions(standardised), y, rtol=1e-6)
    again = Regression(state=json.loads(json.dumps(task.state())))
    np.testing.assert_allclose(again.predictions(standardised), y, rtol=1e-6)
    # The loss compares the label in its units with the standardised output.
    loss = task.loss(reduction=None)
    np.testing.assert_allclose(np.asarray(loss(y, standardised)), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(loss(y, standardised + 1.0)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), ("", "''"), ("nan", "'nan'")])
def test_bad_regression_targets_name_the_row(tmp_path, value, shown):
    from tftune.config import DataConfig
    from tftune.data import load_data
    from tftune.tasks import Regression

    rows = [("good movie", "3"), ("bad movie", value), ("fine film", "1.5")]
    path = write_text_csv(tmp_path / "r.csv", rows, ("text", "score"))
    cfg = DataConfig(source="csv", path=str(path), label_column="score")
    with pytest.raises(DataError, match=f"data row 2: the regression target 'score' is {shown}"):
        load_data(cfg, 0, Regression())


# ------------------------------------------------------------------------------------------
# Regression: end to end


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory, tiny_bert_preset):
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        tmp = tmp_path_factory.mktemp("regression")
        csv_path = regression_csv(tmp / "scores.csv")
        recipe = write_recipe(tmp / "reg.yaml", tiny_text_recipe(
            tmp, csv_path, tiny_bert_preset, "reg", "regression", label_column="score"))
        result = invoke("train", str(recipe))
        assert result.exit_code == 0, result.output
    finally:
        tf.config.run_functions_eagerly(False)
    return tmp, tmp / "runs" / "reg", csv_path


def test_regression_trains_and_keeps_the_target_scale(regression_run):
    tmp, run, csv_path = regression_run
    task = json.loads((run / "task.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["stages"][0]["early_stopping"]["monitor"] == "val_rmse"  # auto
    assert task["task"] == "regression" and task["target"] == "score"
    from tftune.config import load_recipe
    from tftune.data import load_data
    from tftune.tasks import Regression

    cfg = load_recipe(run / "config.yaml")
    splits = load_data(cfg.data, cfg.train.seed, Regression(cfg=cfg))
    train = splits.labels["train"]
    assert task["mean"] == pytest.approx(float(train.mean()), rel=1e-6)
    assert task["std"] == pytest.approx(float(train.std()), rel=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["val"]) == {"loss", "rmse", "mae"}
    history = (run / "history.csv").read_text().splitlines()[0]
    assert "val_rmse" in history and "val_mae" in history
    # A model that learnt something beats predicting the mean (RMSE = the std).
    assert metrics["test"]["rmse"] < np.std(splits.labels["test"])


def test_regression_predict_returns_original_units(regression_run):
    import tftune

    tmp, run, _ = regression_run
    predictor = tftune.load(run)
    texts = ["good great love best", "bad awful worst hate"]
    values = predictor.predict(texts)
    assert values.shape == (2,) and values.dtype == np.float32
    task = json.loads((run / "task.json").read_text())
    raw = predictor.outputs(texts)
    np.testing.assert_allclose(values, raw[:, 0] * task["std"] + task["mean"], rtol=1e-5)
    assert values[0] > values[1]
    result = invoke("predict", str(run), *texts, "--literal")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "input,score"
    assert [float(l.rsplit(",", 1)[1]) for l in lines[1:]] == pytest.approx(values, abs=1e-5)


def test_regression_evaluate_reports_and_plots(regression_run):
    tmp, run, _ = regression_run
    result = invoke("evaluate", str(run))
    assert result.exit_code == 0, result.output
    assert "RMSE" in result.output and "Spearman" in result.output
    report = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert {"rmse", "mae", "r2", "pearson", "spearman"} <= set(report)
    png = run / "eval" / "test" / "predicted_vs_true.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Its RMSE is the one training measured on the same split (same model, float32).
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["rmse"] == pytest.approx(metrics["test"]["rmse"], rel=1e-4)
    # Evaluating on a labelled file with a non-numeric target: one clear error.
    bad = write_text_csv(tmp / "bad.csv", [("good movie", "x")], ("text", "score"))
    one_line_error(invoke("evaluate", str(run), "--data", str(bad)), "data row 1", "'x'")


# ------------------------------------------------------------------------------------------
# Multi-label: units


def test_multilabel_metrics_by_hand():
    from tftune.evaluation.multilabel import average_precision, multilabel_report

    # AP: scores .9(+) .8(-) .7(+) .1(-): precision at the hits 1 and 2/3 -> (1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # Ties are one step: .5(+) .5(-) -> recall 1 at precision 1/2
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert average_precision([0.3, 0.2], [0, 0]) is None
    y = np.array([[1, 0], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.1]])
    r = multilabel_report(y, p, [0.5, 0.5], ["a", "b"])
    # decisions: [1,0] [0,1] [1,0] -> a: tp 1 fp 1 fn 1; b: tp 1
    assert r["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert r["macro_f1"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["subset_accuracy"] == pytest.approx(1 / 3)
    assert r["hamming_loss"] == pytest.approx(2 / 6)
    # a: scores .9(+) .6(-) .4(+) -> (1 + 2/3) / 2; b: 1
    assert r["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert r["per_label"]["a"]["support"] == 2


def test_thresholds_maximise_validation_f1():
    from tftune.evaluation.multilabel import best_threshold, best_thresholds

    # Positives score .35 and .3, a negative .2 and .9: cutting below .3 gives F1 2*2/(2*2+1)
    assert best_threshold([0.35, 0.3, 0.2, 0.9], [1, 1, 0, 1]) == pytest.approx(0.25)
    # A label without positives keeps the default.
    assert best_threshold([0.1, 0.7], [0, 0]) == 0.5
    # Every example positive: the lowest score is the threshold (all predicted).
    assert best_threshold([0.2, 0.1], [1, 1]) == pytest.approx(0.1)
    y = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[0.3, 0.1], [0.1, 0.7], [0.2, 0.8]])
    assert best_thresholds(y, p) == pytest.approx([0.15, 0.4])


def test_multilabel_labels_from_a_list_column_or_from_01_columns(tmp_path):
    from tftune.config import DataConfig
    from tftune.data.labels import multilabel_targets

    rows = [{"l": "a|b"}, {"l": '["c"]'}, {"l": ""}]
    names, y, keep = multilabel_targets(rows, DataConfig(label_column="l"), "f.csv")
    assert names == ["a", "b", "c"] and keep.all()
    assert y.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    rows = [{"x": "1", "y": "0"}, {"x": "0", "y": "1"}]
    names, y, _ = multilabel_targets(rows, DataConfig(label_columns=("x", "y")), "f.csv")
    assert names == ["x", "y"] and y.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(DataError, match=r"data row 2: label column 'y' is '2'"):
        multilabel_targets([{"x": "1", "y": "0"}, {"x": "1", "y": "2"}],
                           DataConfig(label_columns=("x", "y")), "f.csv")
    with pytest.raises(DataError, match=r"data row 1 has label\(s\) \['zz'\]"):
        multilabel_targets([{"l": "a|zz"}], DataConfig(label_column="l"), "f.csv", known=["a", "b"])


# ------------------------------------------------------------------------------------------
# Multi-label: end to end


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, tiny_bert_preset):
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        tmp = tmp_path_factory.mktemp("multilabel")
        rng = random.Random(1)
        csv_path = write_text_csv(tmp / "tags.csv", [tagged_sentence(rng) for _ in range(160)],
                                  ("text", "tags"))
        recipe = tiny_text_recipe(tmp, csv_path, tiny_bert_preset, "tags", "multilabel",
                                  label_column="tags")
        recipe["stages"][0]["epochs"] = 4
        import tftune

        result = tftune.train(write_recipe(tmp / "tags.yaml", recipe), echo=lambda line: None)
    finally:
        tf.config.run_functions_eagerly(False)
    return tmp, result.run_dir, csv_path


def test_multilabel_trains_and_keeps_thresholds(multilabel_run):
    tmp, run, _ = multilabel_run
    task = json.loads((run / "task.json").read_text())
    assert task["task"] == "multilabel" and task["labels"] == ["film", "neg", "pos"]
    assert len(task["thresholds"]) == 3 and all(0 < t < 1 for t in task["thresholds"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["stages"][0]["early_stopping"]["monitor"] == "val_map"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"loss", "micro_f1", "macro_f1", "map"} <= set(metrics["test"])
    assert metrics["test"]["map"] > 0.6  # three labels at chance would be about their base rates


def test_multilabel_evaluate_and_predict_use_the_thresholds(multilabel_run):
    import tftune
    from tftune.evaluation.multilabel import multilabel_report

    tmp, run, _ = multilabel_run
    result = invoke("evaluate", str(run))
    assert result.exit_code == 0, result.output
    assert "micro F1" in result.output and "Hamming loss" in result.output
    report = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    thresholds = json.loads((run / "task.json").read_text())["thresholds"]
    assert [m["threshold"] for m in report["per_label"].values()] == pytest.approx(thresholds)
    assert (run / "eval" / "test" / "per_label.csv").is_file()
    predictor = tftune.load(run)
    texts = ["good movie", "bad awful", "great film but worst plot"]
    probs = predictor.predict(texts)
    assert probs.shape == (3, 3)
    expected = [[n for n, p, t in zip(["film", "neg", "pos"], row, thresholds) if p >= t] for row in probs]
    assert predictor.predict_labels(texts) == expected
    out = invoke("predict", str(run), *texts, "--literal", "--format", "jsonl")
    assert out.exit_code == 0, out.output
    lines = [json.loads(l) for l in out.output.splitlines()]
    assert [l["labels"] for l in lines] == expected
    assert set(lines[0]["probabilities"]) == {"film", "neg", "pos"}
    # Labelled data with a label the run does not know: one clear error.
    bad = write_text_csv(tmp / "bad.csv", [("good movie", "pos|scary")], ("text", "tags"))
    one_line_error(invoke("evaluate", str(run), "--data", str(bad)), "'scary'")


# ------------------------------------------------------------------------------------------
# Class weights, label smoothing, focal loss


def test_balanced_and_explicit_class_weights():
    from tftune.config import RecipeConfig, TrainConfig
    from tftune.tasks import Classification

    task = Classification(["a", "b", "c"], RecipeConfig(train=TrainConfig(class_weight="balanced")))
    assert task.needs_train_labels
    task.fit(np.array([0, 0, 0, 0, 1, 1, 2, 2]))
    assert task.class_weights == pytest.approx([8 / 12, 8 / 6, 8 / 6])
    assert np.asarray(task.example_weights(np.array([2, 0]))).tolist() == pytest.approx([8 / 6, 8 / 12])
    again = Classification(["a", "b", "c"], state=task.state())
    assert again.class_weights == task.class_weights
    task = Classification(["a", "b"], RecipeConfig(train=TrainConfig(class_weight={"b": 4.0})))
    task.fit(np.array([0, 1]))
    assert task.class_weights == [1.0, 4.0]
    with pytest.raises(ConfigError, match=r"\['z'\] are not classes"):
        Classification(["a", "b"], RecipeConfig(train=TrainConfig(class_weight={"z": 2.0}))).fit(np.array([0]))
    assert Classification(["a", "b"]).example_weights(np.array([0])) is None


def test_label_smoothing_and_focal_losses_by_hand():
    from tftune.config import RecipeConfig, TrainConfig
    from tftune.tasks import Classification

    p = np.array([[0.7, 0.2, 0.1]], np.float32)
    smooth = Classification(["a", "b", "c"], RecipeConfig(train=TrainConfig(label_smoothing=0.3)))
    target = np.array([0.1, 0.1, 0.1]) + np.array([0.7, 0, 0])  # (1 - .3) one-hot + .3 / 3
    assert float(np.asarray(smooth.loss(reduction=None)(np.array([0]), p))[0]) == pytest.approx(
        -np.sum(target * np.log(p[0])), rel=1e-5)
    focal = Classification(["a", "b", "c"], RecipeConfig(train=TrainConfig(loss="focal")))
    # Keras' focal loss: alpha (0.25) * (1 - p_t)^gamma (2) * -log p_t
    assert float(np.asarray(focal.loss(reduction=None)(np.array([1]), p))[0]) == pytest.approx(
        0.25 * 0.8 ** 2 * -np.log(0.2), rel=1e-5)
    with pytest.raises(ConfigError, match="'train.loss' with task 'classification'.*Received: 'mse'"):
        Classification(["a", "b"], RecipeConfig(train=TrainConfig(loss="mse"))).check_settings()


WEIGHTED_MIRRORED_SCRIPT = '''
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tftune.config import RecipeConfig, TrainConfig
from tftune.runtime.distribute import make_distribution
from tftune.tasks import Classification
from tftune.training.loop import Steps

rng = np.random.RandomState(0)
x = rng.randn(7, 4).astype("float32")  # 7 examples: the mirrored batch is padded to 8
y = np.array([0, 1, 2, 0, 1, 2, 0], "int32")
cfg = RecipeConfig(train=TrainConfig(class_weight={"a": 3.0, "c": 0.5}))
out = {}
for setting in ("default", "mirrored"):
    dist = make_distribution(setting)
    with dist.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        before = [w.tolist() for w in model.get_weights()]
        task = Classification(["a", "b", "c"], cfg)
        task.fit(y)
        steps = Steps(model, task, dist)
        steps.build()
        logs = steps.train_batch(steps.batches(tf.data.Dataset.from_tensor_slices((x, y)).batch(7)))
    out[setting] = {"replicas": dist.replicas, "loss": logs["loss"], "before": before,
                    "after": [w.tolist() for w in model.get_weights()]}
print("RESULT " + json.dumps(out))
'''


def test_class_weighted_loss_under_mirrored_strategy_equals_one_device(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", WEIGHTED_MIRRORED_SCRIPT], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    one, two = result["default"], result["mirrored"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    # The weighted mean over the global batch, by hand from the starting weights.
    kernel, bias = (np.asarray(w) for w in one["before"])
    rng = np.random.RandomState(0)
    x = rng.randn(7, 4)
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    w = np.array([3.0, 1.0, 0.5])[y]
    expected = np.sum(w * -np.log(p[np.arange(7), y])) / w.sum()
    assert one["loss"] == pytest.approx(expected, rel=1e-5)
    assert two["loss"] == pytest.approx(expected, rel=1e-5)
    for a, b in zip(one["after"], two["after"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    assert not np.allclose(np.asarray(one["after"][0]), kernel)  # the step did train


@pytest.mark.usefixtures("eager")
def test_class_weights_and_smoothing_train_through_the_feature_cache(tmp_path, make_tiny_cnn):
    import tftune
    folder = make_image_folder(tmp_path / "images", per_class=10,
                               classes={"red": (220, 30, 30), "blue": (30, 40, 220)})
    for f in sorted((folder / "blue").iterdir())[:6]:  # 10 red, 4 blue
        f.unlink()
    recipe = {
        "recipe": "image_classification", "name": "weighted", "output_dir": str(tmp_path / "runs"),
        "data": {"source": "folder", "path": str(folder), "image_size": [32, 32],
                 "val_fraction": 0.2, "test_fraction": 0.0},
        "head": {"dropout": 0.0},
        "stages": [{"name": "head", "train": "head", "epochs": 2, "learning_rate": 0.05}],
        "train": {"batch_size": 4, "verbose": "quiet", "class_weight": "balanced",
                  "label_smoothing": 0.1},
    }
    lines = []
    result = tftune.train(write_recipe(tmp_path / "w.yaml", recipe), backbone_model=make_tiny_cnn(32),
                          echo=lines.append)
    assert any("feature cache: frozen part run once" in l for l in lines), lines
    task = json.loads((result.run_dir / "task.json").read_text())
    n_blue, n_red = 3, 8  # the training split: 80 % of each class
    assert task["class_weights"] == pytest.approx([11 / (2 * n_blue), 11 / (2 * n_red)])
    assert np.isfinite(result.metrics["val"]["loss"])


# ------------------------------------------------------------------------------------------
# Balanced sampling


def test_balanced_counts_are_seeded_and_balanced():
    from tftune.data.pipeline import balanced_counts

    labels = np.array([0] * 90 + [1] * 10)
    counts = balanced_counts(labels, 2)
    a, b = counts(7), counts(7)
    assert a.tolist() == b.tolist() and a.sum() == 100
    assert counts(8).tolist() != a.tolist()
    share = np.mean([counts(s)[90:].sum() / 100 for s in range(50)])
    assert share == pytest.approx(0.5, abs=0.03)  # the rare class: half of every epoch


@pytest.mark.usefixtures("eager")
def test_balanced_sampling_is_the_same_with_and_without_the_feature_cache(tmp_path, make_tiny_cnn):
    import tftune
    folder = make_image_folder(tmp_path / "images", per_class=8)
    for f in sorted((folder / "blue").iterdir())[:5]:
        f.unlink()
    weights = {}
    for cache in ("auto", "off"):
        recipe = {
            "recipe": "image_classification", "name": f"bal-{cache}",
            "output_dir": str(tmp_path / "runs"),
            "data": {"source": "folder", "path": str(folder), "image_size": [32, 32],
                     "sampling": "balanced", "test_fraction": 0.0, "val_fraction": 0.25},
            "head": {"dropout": 0.0},
            "stages": [{"name": "head", "train": "head", "epochs": 2, "learning_rate": 0.05,
                        "optimizer": "sgd"}],
            "train": {"batch_size": 4, "verbose": "quiet", "feature_cache": cache},
        }
        lines = []
        result = tftune.train(write_recipe(tmp_path / f"{cache}.yaml", recipe),
                              backbone_model=make_tiny_cnn(32), echo=lines.append)
        assert any("feature cache: frozen part" in l for l in lines) == (cache == "auto")
        weights[cache] = result.model.get_weights()
    for a, b in zip(weights["auto"], weights["off"]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_balanced_sampling_is_for_classification(tmp_path, tiny_bert_preset):
    csv_path = regression_csv(tmp_path / "s.csv", n=20)
    recipe = tiny_text_recipe(tmp_path, csv_path, tiny_bert_preset, "r", "regression",
                              label_column="score", sampling="balanced")
    one_line_error(invoke("train", str(write_recipe(tmp_path / "r.yaml", recipe))),
                   "data.sampling: balanced", "'regression'")


# ------------------------------------------------------------------------------------------
# Resume: a regression and a multi-label run stopped mid-stage continue exactly (their kill -9
# trials are in test_resume.py)


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_sigterm_then_resume_equals_the_uninterrupted_run(tmp_path, tiny_bert_preset, monkeypatch, task):
    from helpers import history_rows, max_weight_difference, recording_steps, sigterm_at
    from tftune.config import config_from_dict
    from tftune.runtime.preemption import Preempted
    from tftune.training.runner import train

    rng = random.Random(2)
    if task == "regression":
        path = regression_csv(tmp_path / "d.csv", n=40)
        column = "score"
    else:
        path = write_text_csv(tmp_path / "d.csv", [tagged_sentence(rng) for _ in range(40)],
                              ("text", "tags"))
        column = "tags"

    def cfg(out):
        recipe = tiny_text_recipe(out, path, tiny_bert_preset, "t", task, label_column=column)
        recipe["stages"] = [
            {"name": "head", "train": "head", "epochs": 1, "learning_rate": 1e-2},
            {"name": "top", "train": "top:1", "epochs": 2, "learning_rate": 1e-2,
             "schedule": "linear", "early_stopping": {"monitor": "auto"}},
        ]
        return config_from_dict(recipe)

    reference, steps = recording_steps(
        monkeypatch, lambda: train(cfg(tmp_path / "ref"), echo=lambda _: None))
    cut = steps.index("epoch 1 step 1", 1) + 2  # stage 2, epoch 1, step 2
    sigterm_at(monkeypatch, "step", cut)
    with pytest.raises(Preempted, match="stage 2/2 'top', epoch 1, step 2 "):
        train(cfg(tmp_path / "cut"), echo=lambda _: None)
    monkeypatch.undo()
    resumed = train(cfg(tmp_path / "cut"), resume=True, echo=lambda _: None)
    for a, b in zip(resumed.model.get_weights(), reference.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for split in ("val", "test"):
        for key, value in reference.metrics[split].items():
            assert resumed.metrics[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    assert ((resumed.run_dir / "history.csv").read_text().splitlines()[1:]
            and len((resumed.run_dir / "history.csv").read_text().splitlines())
            == len((reference.run_dir / "history.csv").read_text().splitlines()))
    saved = [json.loads((r.run_dir / "task.json").read_text()) for r in (resumed, reference)]
    assert saved[0] == pytest.approx(saved[1]) if task == "regression" else (
        saved[0]["thresholds"] == pytest.approx(saved[1]["thresholds"], abs=1e-6))
    # Exact: the same epochs' numbers, bit-for-bit weights, the same task state and metrics.
    assert history_rows(resumed.run_dir) == history_rows(reference.run_dir)
    assert max_weight_difference(resumed.model.get_weights(), reference.model.get_weights()) == 0.0
    assert saved[0] == saved[1]
    assert {s: resumed.metrics[s] for s in ("val", "test")} == {
        s: reference.metrics[s] for s in ("val", "test")}


# ------------------------------------------------------------------------------------------
# Text pairs


def test_pairs_are_packed_with_segment_ids(tmp_path, tiny_bert_preset):
    from tftune.config import DataConfig
    from tftune.data import load_data
    from tftune.data.pipeline import text_pipeline
    import keras_hub

    path = write_text_csv(tmp_path / "p.csv", [("good film", "bad", "diff"), ("fine", "great", "same")] * 5,
                          ("premise", "hypothesis", "label"))
    splits = load_data(DataConfig(source="csv", path=str(path), text_columns=("premise", "hypothesis"),
                                  val_fraction=0.2, test_fraction=0.0), 0)
    assert len(splits.train.element_spec[0]) == 2
    pre = keras_hub.models.TextClassifierPreprocessor.from_preset(str(tiny_bert_preset), sequence_length=16)
    pipe = text_pipeline(pre, 8, 8, 0)
    x, _ = next(iter(pipe.source(splits.train).take(1)))
    segments = x["segment_ids"].numpy()[: int(np.sum(x["padding_mask"].numpy()))]
    assert 0 in segments and 1 in segments and segments[0] == 0 and segments[-1] == 1
    with pytest.raises(DataError, match="has no column 'second'"):
        load_data(DataConfig(source="csv", path=str(path), text_columns=("premise", "second")), 0)


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_bert_preset):
    import tensorflow as tf

    import tftune

    tf.config.run_functions_eagerly(True)
    try:
        tmp = tmp_path_factory.mktemp("pairs")
        path = write_text_csv(tmp / "pairs.csv", sentiment_pairs(240, 3, label_of=1, min_words=2),
                              ("first", "second", "label"))
        recipe = tiny_text_recipe(tmp, path, tiny_bert_preset, "pairs", "classification",
                                  text_columns=["first", "second"])
        recipe["stages"] = [
            {"name": "head", "train": "head", "epochs": 2, "learning_rate": 3e-2},
            {"name": "all", "train": "all", "epochs": 6, "learning_rate": 1e-2,
             "early_stopping": {"monitor": "auto", "patience": 6}},
        ]
        result = tftune.train(write_recipe(tmp / "pairs.yaml", recipe), echo=lambda line: None)
    finally:
        tf.config.run_functions_eagerly(False)
    return tmp, result


def test_a_pair_task_is_learnt_above_chance(pair_run):
    tmp, result = pair_run
    # Chance is 0.5; a model that saw the two texts as one bag of words could reach about
    # 0.75 (right when both texts agree, a coin toss when they do not). Seen: 0.98.
    assert result.metrics["test"]["accuracy"] >= 0.9, result.metrics


def test_pair_runs_predict_and_evaluate_from_pair_files(pair_run):
    import tftune

    tmp, result = pair_run
    run = result.run_dir
    predictor = tftune.load(run)
    pairs = [("good great", "love fine"), ("good great", "awful worst")]
    probs = predictor.predict(pairs)
    assert probs.shape == (2, 2)
    path = write_text_csv(tmp / "ask.csv", pairs, ("first", "second"))
    out = invoke("predict", str(run), str(path))
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "input,label,prob_neg,prob_pos"
    assert lines[1].startswith("good great [SEP] love fine,")
    assert [l.split(",")[1] for l in lines[1:]] == predictor.predict_labels(pairs)
    one_line_error(invoke("predict", str(run), "just one text"), "text pairs", "'first'")
    result_eval = invoke("evaluate", str(run))
    assert result_eval.exit_code == 0, result_eval.output
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"], abs=1e-6)
    with pytest.raises(DataError, match=r"Input 1 is 'one text'"):
        predictor.predict(["one text"])
