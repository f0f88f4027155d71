"""`tftune evaluate`: the report on the run's test split (re-created from config.yaml) and
on --data, the files in RUN/eval/<name>/, and one-line errors that write nothing."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_line_error, copy_run, invoke, make_image_folder, make_sentence, write_text_csv

EVAL_FILES = {"metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "errors.csv", "report.txt"}




def keras_scores(run: Path, split: str = "test"):
    """(labels, probabilities) of the run's split, computed here with plain Keras on the
    training pipeline's inputs, independently of tftune.evaluation.evaluate."""
    import keras

    import tftune.model.heads  # noqa: F401
    from tftune.config import load_recipe
    from tftune.data import load_data

    config = load_recipe(run / "config.yaml")
    splits = load_data(config.data, config.train.seed)
    model = keras.saving.load_model(str(run / "model.keras"), compile=False)
    ds = getattr(splits, split).batch(config.train.batch_size)
    if splits.modality == "text":
        import keras_hub

        pre = keras_hub.models.TextClassifierPreprocessor.from_preset(str(run / "preprocessor"))
        ds = ds.map(lambda x, y: (pre(x), y))
    ys, ps = [], []
    for x, y in ds:
        ps.append(model.predict_on_batch(x))
        ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(ps)


@pytest.fixture
def image_run_copy(tiny_image_run, tmp_path):
    """This test's own copy of the session's finished image run (evaluate writes into it)."""
    return copy_run(tiny_image_run, tmp_path / "img")


@pytest.fixture
def text_run_copy(tiny_text_run, tmp_path):
    """This test's own copy of the session's finished text run (evaluate writes into it)."""
    return copy_run(tiny_text_run, tmp_path / "txt")


def test_evaluate_image_run_on_its_test_split(image_run_copy):
    train_metrics = (image_run_copy / "metrics.json").read_bytes()
    result = invoke("evaluate", image_run_copy)
    assert result.exit_code == 0, result.output
    out = image_run_copy / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    # errors.png shows the wrong images, so it exists only when there are some.
    assert {p.name for p in out.iterdir()} == EVAL_FILES | ({"errors.png"} if metrics["accuracy"] < 1 else set())

    # The same numbers, computed independently from the re-created split with Keras.
    y, probs = keras_scores(image_run_copy)
    assert metrics["examples"] == len(y) == 12
    assert metrics["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    # ... and the same accuracy training recorded (float32 run, same split, same pipeline).
    assert metrics["accuracy"] == pytest.approx(json.loads(train_metrics)["test"]["accuracy"])
    cm = np.array(metrics["confusion_matrix"])
    assert cm.sum() == 12 and cm.sum(axis=1).tolist() == [4, 4, 4]
    for i, name in enumerate(["blue", "green", "red"]):
        assert metrics["per_class"][name]["support"] == 4
        predicted = cm[:, i].sum()
        assert metrics["per_class"][name]["precision"] == pytest.approx(cm[i, i] / predicted if predicted else 0.0)
    assert (image_run_copy / "metrics.json").read_bytes() == train_metrics  # train's file untouched

    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == ["blue", "green", "red"]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == cm.tolist()
    report = (out / "report.txt").read_text()
    assert "accuracy" in report and "confusion matrix" in report
    assert f"accuracy {metrics['accuracy']:.4f}" in result.output
    assert "Traceback" not in result.output


def test_errors_are_the_most_confidently_wrong_with_their_files(image_run_copy, tmp_path):
    """A folder whose 'red' images are labelled 'green': every red image is an error, listed
    with its path, most confident first."""
    data = tmp_path / "swapped"
    make_image_folder(data, per_class=3, classes={"green": (220, 30, 30), "blue": (30, 40, 220)}, seed=7)
    result = invoke("evaluate", image_run_copy, "--data", data)
    assert result.exit_code == 0, result.output
    out = image_run_copy / "eval" / "swapped"
    with open(out / "errors.csv", newline="") as f:
        errors = list(csv.DictReader(f))
    metrics = json.loads((out / "metrics.json").read_text())
    wrong = metrics["examples"] - round(metrics["accuracy"] * metrics["examples"])
    assert len(errors) == wrong > 0
    confidences = [float(e["confidence"]) for e in errors]
    assert confidences == sorted(confidences, reverse=True)
    assert all(Path(e["id"]).is_file() and e["predicted"] != e["true"] for e in errors)
    assert (out / "errors.png").is_file()


def test_rerun_replaces_only_its_own_report(image_run_copy):
    assert invoke("evaluate", image_run_copy).exit_code == 0
    other = image_run_copy / "eval" / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    stale = image_run_copy / "eval" / "test" / "stale.txt"
    stale.write_text("from an older evaluate")
    result = invoke("evaluate", image_run_copy, "--errors", "2")
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert (other / "keep.txt").read_text() == "mine"
    assert len(list(csv.DictReader(open(image_run_copy / "eval" / "test" / "errors.csv")))) <= 2
    leftovers = [p.name for p in (image_run_copy / "eval").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_evaluate_text_run_and_a_labelled_csv(text_run_copy, tmp_path):
    result = invoke("evaluate", text_run_copy)
    assert result.exit_code == 0, result.output
    metrics = json.loads((text_run_copy / "eval" / "test" / "metrics.json").read_text())
    y, probs = keras_scores(text_run_copy)
    assert metrics["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert metrics["roc_auc"] is not None and "'pos' positive" in metrics["roc_auc_kind"]

    rng = random.Random(3)
    rows = [(make_sentence(rng, label), label) for label in ("pos", "neg") for _ in range(5)]
    data = write_text_csv(tmp_path / "new_reviews.csv", rows, columns=("review", "sentiment"))
    result = invoke("evaluate", text_run_copy, "--data", data, "--text-column", "review",
                    "--label-column", "sentiment")
    assert result.exit_code == 0, result.output
    out = text_run_copy / "eval" / "new_reviews"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 10
    assert metrics["per_class"]["pos"]["support"] == 5
    with open(out / "errors.csv", newline="") as f:
        for row in csv.DictReader(f):
            assert row["text"] in {r[0] for r in rows}


def test_evaluate_from_python(image_run_copy):
    from tftune.evaluation.evaluate import evaluate

    result = evaluate(image_run_copy, split="val", name="val-check", errors=1)
    assert result.out_dir == image_run_copy / "eval" / "val-check"
    assert result.metrics["examples"] == 6
    assert result.report.startswith("Run img on the run's val split")


# ------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


def test_unknown_labels_are_an_error_unless_skipped(image_run_copy, tmp_path):
    data = make_image_folder(tmp_path / "more", per_class=2,
                             classes={"red": (220, 30, 30), "purple": (150, 30, 150)})
    assert_one_line_error(invoke("evaluate", image_run_copy, "--data", data), "'purple'", "--skip-unknown-labels",
                          alone=True)
    assert not (image_run_copy / "eval").exists()
    result = invoke("evaluate", image_run_copy, "--data", data, "--skip-unknown-labels")
    assert result.exit_code == 0, result.output
    assert json.loads((image_run_copy / "eval" / "more" / "metrics.json").read_text())["examples"] == 2


def test_undecodable_image_in_data(image_run_copy, tmp_path):
    data = make_image_folder(tmp_path / "broken", per_class=2)
    (data / "red" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    assert_one_line_error(invoke("evaluate", image_run_copy, "--data", data), "corrupt.png", "cannot be decoded",
                          alone=True)
    assert not (image_run_copy / "eval").exists()


def test_empty_text_in_data(text_run_copy, tmp_path):
    data = write_text_csv(tmp_path / "gaps.csv", [("good fun film", "pos"), ("   ", "neg")])
    assert_one_line_error(invoke("evaluate", text_run_copy, "--data", data), "empty", "row 2", alone=True)
    assert not (text_run_copy / "eval").exists()


@pytest.mark.parametrize("remove, fragment", [
    ("model.keras", "model.keras"),
    ("classes.json", "classes.json"),
    ("preprocessor", "preprocessor/"),
], ids=["model", "classes", "preprocessor"])
def test_incomplete_run_directory(text_run_copy, remove, fragment):
    import shutil

    target = text_run_copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    (text_run_copy / "metrics.json").unlink()
    assert_one_line_error(invoke("evaluate", text_run_copy), "incomplete", fragment, "did not finish",
                          alone=True)
    assert not (text_run_copy / "eval").exists()


def test_not_a_run_directory(tmp_path):
    assert_one_line_error(invoke("evaluate", tmp_path / "nope"), "not found", alone=True)
    assert_one_line_error(invoke("evaluate", tmp_path), "incomplete", "config.yaml", alone=True)


def test_damaged_model_file(image_run_copy):
    (image_run_copy / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    assert_one_line_error(invoke("evaluate", image_run_copy), "Cannot load", "model.keras", alone=True)
    assert not (image_run_copy / "eval").exists()


def test_evaluate_data_in_another_encoding(text_run_copy, tmp_path):
    """A latin-1 CSV read as the run's utf-8: one error naming the file, the byte and line,
    and --encoding; with --encoding latin-1 it is scored."""
    data = tmp_path / "latin.csv"
    data.write_bytes("text,label\ngood fun film,pos\nthe plot was awful and dull é,neg\n".encode("latin-1"))
    line = assert_one_line_error(invoke("evaluate", text_run_copy, "--data", data), str(data),
                                 "not valid utf-8 text", "(line 3)", "--encoding latin-1", alone=True)
    assert "--set data.encoding" not in line
    assert not (text_run_copy / "eval").exists()
    assert_one_line_error(invoke("evaluate", text_run_copy, "--data", data, "--encoding", "latin-9x"),
                          "Invalid value for '--encoding'", "Received: 'latin-9x'")
    result = invoke("evaluate", text_run_copy, "--data", data, "--encoding", "latin-1")
    assert result.exit_code == 0, result.output
    assert json.loads((text_run_copy / "eval" / "latin" / "metrics.json").read_text())["examples"] == 2


def test_a_folder_of_runs_names_the_runs_inside_it(tiny_image_run, tmp_path):
    """`tftune train --output out` writes out/<name>/; `tftune evaluate out` is told which
    runs out holds instead of "incomplete"."""
    out = tmp_path / "out"
    copy_run(tiny_image_run, out / "img")
    unfinished = copy_run(tiny_image_run, out / "older")
    (unfinished / "metrics.json").unlink()
    (out / "img-lr-find").mkdir()
    line = assert_one_line_error(invoke("evaluate", out), alone=True)
    assert line == (f"Error: {out} is not a run directory; it holds runs: {out / 'img'}, "
                    f"{out / 'older'} (unfinished). Pass one of them, e.g. {out / 'img'} "
                    f"(`tftune train --output {out}` writes each run to {out}/<name>/).")
    assert_one_line_error(invoke("predict", out, "x.png"), "is not a run directory", str(out / "img"))
    assert_one_line_error(invoke("evaluate", tmp_path), "Run directory", "incomplete")  # no runs inside
