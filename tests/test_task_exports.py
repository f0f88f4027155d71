"""`tftune export` for every Task and for text pairs: a regression export returns values in
the target's units, a multi-label export applies the run's thresholds, a text-pair
SavedModel takes two strings (called from a fresh process); each verified against
`tftune.load(run)`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import (NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, assert_one_line_error, invoke,
                     sentiment_pairs, write_recipe, write_text_csv)


def verification(folder: Path) -> dict:
    return json.loads((folder / "verification.json").read_text())


def serve_in_fresh_python(saved_model: Path, inputs: dict[str, list[str]], cwd: Path) -> dict:
    """`serving_default` of the SavedModel on string `inputs`, called from a new interpreter
    that imports only TensorFlow and TensorFlow Text (no tftune, no PYTHONPATH)."""
    (cwd / "inputs.json").write_text(json.dumps(inputs))
    code = f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text
        serve = tf.saved_model.load({str(saved_model)!r}).signatures["serving_default"]
        out = serve(**{{k: tf.constant(v) for k, v in json.load(open("inputs.json")).items()}})
        assert "tftune" not in sys.modules
        print(json.dumps({{k: [x.decode() if isinstance(x, bytes) else x for x in v.numpy().tolist()]
                          for k, v in out.items()}}))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_text_run(tmp: Path, preset: Path, csv_path: Path, name: str, task: str, stages: list,
                   **data) -> Path:
    """A tiny-BERT run on `csv_path` (Keras steps eager: tracing dominates tiny models)."""
    import tensorflow as tf

    import tftune

    recipe = {
        "recipe": "text_classification", "task": task, "name": name, "output_dir": str(tmp / "runs"),
        "data": {"source": "csv", "path": str(csv_path), "val_fraction": 0.2, "test_fraction": 0.2, **data},
        "backbone": {"spec": f"keras_hub:{preset}", "sequence_length": 16},
        "head": {"dropout": 0.0}, "stages": stages, "train": {"batch_size": 8, "verbose": "quiet"},
    }
    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        return tftune.train(write_recipe(tmp / f"{name}.yaml", recipe), echo=lambda line: None).run_dir
    finally:
        tf.config.run_functions_eagerly(before)


HEAD_THEN_ALL = [
    {"name": "head", "train": "head", "epochs": 2, "learning_rate": 3e-2},
    {"name": "all", "train": "all", "epochs": 6, "learning_rate": 1e-2,
     "early_stopping": {"monitor": "auto", "patience": 6}},
]


# ------------------------------------------------------------------------------------------
# Text pairs: a task only the pair's packing can learn


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_bert_preset):
    tmp = tmp_path_factory.mktemp("pair_exports")
    path = write_text_csv(tmp / "pairs.csv", sentiment_pairs(240, 5), ("review", "reply", "label"))
    run = train_text_run(tmp, tiny_bert_preset, path, "pairs", "classification", HEAD_THEN_ALL,
                         text_columns=["review", "reply"])
    return tmp, run


def test_a_pair_task_is_learnt_on_held_out_pairs(pair_run):
    import tftune

    tmp, run = pair_run
    metrics = json.loads((run / "metrics.json").read_text())
    held_out = sentiment_pairs(100, 99)  # pairs the run never saw, drawn afresh
    predictor = tftune.load(run)
    labels = predictor.predict_labels([(a, b) for a, b, _ in held_out])
    accuracy = float(np.mean([p == y for p, (_, _, y) in zip(labels, held_out)]))
    print(f"pair task: test accuracy {metrics['test']['accuracy']:.3f}, fresh pairs {accuracy:.3f}")
    # Chance is 0.5; a bag of words of both texts is right about 0.75 of the time.
    assert metrics["test"]["accuracy"] >= 0.85 and accuracy >= 0.85, (metrics["test"], accuracy)


def test_pair_savedmodel_takes_two_strings_in_a_fresh_process(pair_run, tmp_path):
    import tftune

    tmp, run = pair_run
    result = invoke("export", run, "--format", "savedmodel")
    assert result.exit_code == 0, result.output
    out = run / "export" / "savedmodel"
    v = verification(out)
    assert v["max_abs_diff"] <= 1e-4 and v["top1_agreement"] >= 0.98 and v["samples"] == 48
    assert "text_a, text_b" in v["converter"]
    serving = (out / "SERVING.md").read_text()
    assert "`text_a` (the run's 'review' column)" in serving and "`[CLS] text_a [SEP] text_b [SEP]`" in serving

    pairs = [(a, b) for a, b, _ in sentiment_pairs(20, 7)]
    answer = serve_in_fresh_python(out / "saved_model", {"text_a": [a for a, _ in pairs],
                                                         "text_b": [b for _, b in pairs]}, tmp_path)
    predictor = tftune.load(run)
    expected = predictor.predict(pairs)
    diff = np.abs(np.array(answer["probabilities"]) - expected).max()
    print(f"pair SavedModel in a fresh process vs tftune.load(run).predict: max |p diff| {diff:.2e}")
    assert diff <= 1e-5
    assert answer["label"] == predictor.predict_labels(pairs)
    # The two inputs are two segments, not one bag of words: swapped, the answers change.
    swapped = serve_in_fresh_python(out / "saved_model", {"text_a": [b for _, b in pairs],
                                                          "text_b": [a for a, _ in pairs]}, tmp_path)
    np.testing.assert_allclose(swapped["probabilities"], predictor.predict([(b, a) for a, b in pairs]),
                               atol=1e-5)
    assert swapped["label"] != answer["label"]


def test_pair_predict_packs_pairs_as_training_does(pair_run):
    """`tftune predict` and `tftune.load(run).predict` give the model the preprocessor's pair
    packing (segment ids 0 / 1), as training did, not one text joined with ' [SEP] '."""
    import tensorflow as tf

    import tftune
    from tftune.data.pipeline import tokenize_texts

    tmp, run = pair_run
    predictor = tftune.load(run)
    pairs = [("good fine", "worst"), ("awful bad", "lovely")]
    packed = tokenize_texts(predictor.preprocessor, (tf.constant([a for a, _ in pairs]),
                                                      tf.constant([b for _, b in pairs])))
    np.testing.assert_allclose(predictor.predict(pairs), predictor.model(packed, training=False), atol=1e-5)
    joined = predictor.preprocessor(tf.constant([f"{a} [SEP] {b}" for a, b in pairs]))
    assert not np.array_equal(joined["segment_ids"], packed["segment_ids"])
    path = write_text_csv(tmp / "ask.csv", pairs, ("review", "reply"))
    result = invoke("predict", run, path, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in result.output.splitlines()]
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in rows], predictor.predict(pairs),
                               atol=1e-5)


def test_pair_keras_and_litert_exports(pair_run):
    import keras
    import tensorflow as tf

    import tftune
    import tftune.model.heads  # noqa: F401  (registers tftune's layers)
    from tftune.data.pipeline import tokenize_texts

    tmp, run = pair_run
    for fmt in ("keras", "litert"):
        result = invoke("export", run, "--format", fmt)
        assert result.exit_code == 0, result.output
        assert verification(run / "export" / fmt)["max_abs_diff"] <= 1e-4
    note = (run / "export" / "litert" / "TOKENIZE.md").read_text()
    assert "a pair ('review', 'reply') is packed into one row" in note
    model = keras.saving.load_model(str(run / "export" / "keras" / "model.keras"), compile=False)
    predictor = tftune.load(run)
    pairs = [("good fine", "worst"), ("awful bad", "lovely")]
    tokens = tokenize_texts(predictor.preprocessor, (tf.constant([a for a, _ in pairs]),
                                                      tf.constant([b for _, b in pairs])))
    np.testing.assert_allclose(model.predict_on_batch(tokens), predictor.predict(pairs), atol=1e-5)


def test_a_missing_pair_column_is_one_clear_error(pair_run):
    tmp, run = pair_run
    data = write_text_csv(tmp / "half.csv", [("good fine", "pos"), ("awful bad", "neg")], ("review", "label"))
    assert_one_line_error(invoke("export", run, "--format", "keras", "--data", data,
                                 "--output", run / "export" / "half"), "no column 'reply'", "text_columns")
    assert not (run / "export" / "half").exists()
    assert_one_line_error(invoke("predict", run, data), "no column 'reply'", "'review' and 'reply'")
    assert_one_line_error(invoke("export", run, "--format", "keras", "--text-column", "review"),
                          "--text-column applies to runs on one text", "'reply'")


# ------------------------------------------------------------------------------------------
# Regression: values in the target's units


def scored_review(rng: random.Random) -> tuple[str, float]:
    """A review and its score on a 0..100 scale: 50 + 10 x (#positive - #negative words)."""
    words, score = [], 50.0
    for _ in range(rng.randint(3, 7)):
        r = rng.random()
        kind = POSITIVE_WORDS if r < 0.3 else NEGATIVE_WORDS if r < 0.6 else NEUTRAL_WORDS
        words.append(rng.choice(kind))
        score += 10.0 if r < 0.3 else -10.0 if r < 0.6 else 0.0
    return " ".join(words), score


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory, tiny_bert_preset):
    tmp = tmp_path_factory.mktemp("regression_exports")
    rng = random.Random(2)
    path = write_text_csv(tmp / "scores.csv", [scored_review(rng) for _ in range(120)], ("text", "score"))
    run = train_text_run(tmp, tiny_bert_preset, path, "reg", "regression", HEAD_THEN_ALL,
                         label_column="score")
    return tmp, run


TEXTS = ["good great love best", "bad awful worst hate", "the film was fine", "dull plot"]


def test_regression_savedmodel_returns_values_in_the_target_units(regression_run, tmp_path):
    import tftune

    tmp, run = regression_run
    result = invoke("export", run, "--format", "savedmodel")
    assert result.exit_code == 0, result.output
    out = run / "export" / "savedmodel"
    task = json.loads((run / "task.json").read_text())
    assert json.loads((out / "task.json").read_text()) == task
    v = verification(out)
    assert v["task"] == "regression" and v["compared"] == "values / target std"
    assert v["top1_agreement"] is None and v["max_abs_diff"] <= 1e-4
    assert "max |diff| of values / target std" in result.output and "agreement" not in result.output
    assert "`value`: float32 `[batch]`" in (out / "SERVING.md").read_text()

    answer = serve_in_fresh_python(out / "saved_model", {"texts": TEXTS}, tmp_path)
    assert set(answer) == {"value"}
    expected = tftune.load(run).predict(TEXTS)  # the target's units
    diff = np.abs(np.array(answer["value"]) - expected).max() / task["std"]
    print(f"regression SavedModel vs tftune.load(run).predict: max |diff| / std {diff:.2e} "
          f"(mean {task['mean']:.2f}, std {task['std']:.2f})")
    assert diff <= 1e-4
    # In the target's units, not standardised (those would be around 0): scores around 50.
    assert task["mean"] > 40 and abs(np.mean(answer["value"]) - task["mean"]) < 2 * task["std"]
    assert answer["value"][0] > answer["value"][1]


def test_regression_keras_and_litert_exports_return_the_target_units(regression_run):
    import keras

    import tftune
    import tftune.model.heads  # noqa: F401

    tmp, run = regression_run
    task = json.loads((run / "task.json").read_text())
    predictor = tftune.load(run)
    expected = predictor.predict(TEXTS)
    result = invoke("export", run, "--format", "keras")
    assert result.exit_code == 0, result.output
    assert verification(run / "export" / "keras")["max_abs_diff"] <= 1e-5
    model = keras.saving.load_model(str(run / "export" / "keras" / "model.keras"), compile=False)
    got = model.predict_on_batch(predictor.preprocessor(np.array(TEXTS)))
    assert got.shape == (4, 1)
    assert np.abs(got[:, 0] - expected).max() / task["std"] <= 1e-5
    for quantize, tolerance in (("none", 1e-4), ("float16", 0.05)):
        result = invoke("export", run, "--format", "litert", "--quantize", quantize)
        assert result.exit_code == 0, result.output
        v = verification(run / "export" / ("litert" if quantize == "none" else f"litert-{quantize}"))
        assert v["max_abs_diff"] <= tolerance and v["compared"] == "values / target std"
        print(f"regression litert {quantize}: max |diff| / std {v['max_abs_diff']:.2e}")
    assert "the predicted 'score' in its own units" in (run / "export" / "litert" / "TOKENIZE.md").read_text()


# ------------------------------------------------------------------------------------------
# Multi-label: the run's thresholds applied


def tagged_review(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS) for _ in range(rng.randint(3, 6))]
    tags = [t for t, hit in (("pos", any(w in POSITIVE_WORDS for w in words)),
                             ("neg", any(w in NEGATIVE_WORDS for w in words))) if hit]
    return " ".join(words), "|".join(tags)


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, tiny_bert_preset):
    tmp = tmp_path_factory.mktemp("multilabel_exports")
    rng = random.Random(4)
    path = write_text_csv(tmp / "tags.csv", [tagged_review(rng) for _ in range(160)], ("text", "tags"))
    run = train_text_run(tmp, tiny_bert_preset, path, "tags", "multilabel", HEAD_THEN_ALL[:1],
                         label_column="tags")
    return tmp, run


def test_multilabel_savedmodel_applies_the_thresholds(multilabel_run, tmp_path):
    import tftune

    tmp, run = multilabel_run
    thresholds = json.loads((run / "task.json").read_text())["thresholds"]
    result = invoke("export", run, "--format", "savedmodel")
    assert result.exit_code == 0, result.output
    out = run / "export" / "savedmodel"
    v = verification(out)
    assert v["task"] == "multilabel" and v["max_abs_diff"] <= 1e-4 and v["top1_agreement"] >= 0.98
    assert v["agreement"].startswith("thresholded decisions")
    assert json.loads((out / "task.json").read_text())["thresholds"] == thresholds

    texts = ["good movie", "bad awful", "great film but worst plot", "the plot"]
    answer = serve_in_fresh_python(out / "saved_model", {"texts": texts}, tmp_path)
    predictor = tftune.load(run)
    probabilities = np.array(answer["probabilities"])
    print(f"multilabel SavedModel: max |p diff| {np.abs(probabilities - predictor.predict(texts)).max():.2e}")
    np.testing.assert_allclose(probabilities, predictor.predict(texts), atol=1e-5)
    predicted = np.array(answer["predicted"])
    assert predicted.dtype == bool
    assert np.array_equal(predicted, probabilities >= np.array(thresholds, np.float32))
    names = json.loads((out / "classes.json").read_text())
    assert [[n for n, on in zip(names, row) if on] for row in predicted] == predictor.predict_labels(texts)


def test_multilabel_keras_export(multilabel_run):
    tmp, run = multilabel_run
    result = invoke("export", run, "--format", "keras")
    assert result.exit_code == 0, result.output
    v = verification(run / "export" / "keras")
    assert v["max_abs_diff"] <= 1e-5 and v["top1_agreement"] >= 0.98
    assert "thresholded decisions" in result.output
    assert (run / "export" / "keras" / "task.json").is_file()
