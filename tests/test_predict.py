"""`tftune.load(run).predict(...)` and `tftune predict`: raw images and texts in, prepared
exactly as in training, probabilities out; bad inputs are one-line errors that write nothing."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import (
    IMAGE_CLASSES,
    assert_one_line_error,
    copy_run,
    invoke,
    make_image_folder,
    write_png,
    write_text_csv,
)


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    """Three new images per class, at 40 px (the run trained at 32 px)."""
    root = tmp_path_factory.mktemp("new_images")
    rng = np.random.default_rng(11)
    for name, colour in IMAGE_CLASSES.items():
        (root / name).mkdir()
        for i in range(3):
            write_png(root / name / f"{name}_{i}.png", colour, rng, size=40)
    return root


def test_importing_tftune_does_not_import_tensorflow():
    code = "import sys, tftune; assert callable(tftune.load); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_image_predictions_match_the_training_pipeline(image_predictor, tiny_image_run):
    """Files predicted through tftune.load give what the model gives on the very tensors the
    training pipeline made from the same files."""
    import keras

    import tftune.model.heads  # noqa: F401
    from tftune.config import load_recipe
    from tftune.data import load_data

    config = load_recipe(tiny_image_run / "config.yaml")
    splits = load_data(config.data, config.train.seed)
    pixels = np.stack([x for x, _ in splits.test.as_numpy_iterator()])
    model = keras.saving.load_model(str(tiny_image_run / "model.keras"), compile=False)
    expected = model.predict_on_batch(pixels)

    probs = image_predictor.predict(splits.ids["test"], batch_size=5)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert image_predictor.class_names == ["blue", "green", "red"]
    names = [Path(p).parent.name for p in splits.ids["test"]]
    assert image_predictor.predict_labels(splits.ids["test"]) == [image_predictor.class_names[i] for i in probs.argmax(1)]
    assert np.mean(np.array(image_predictor.labels(probs)) == np.array(names)) >= 0.9


def test_every_image_input_kind_gives_the_same_answer(image_predictor, new_images):
    files = sorted(new_images.rglob("*.png"))
    from_paths = image_predictor.predict([str(f) for f in files])
    from_folder = image_predictor.predict(new_images)
    from_bytes = image_predictor.predict([f.read_bytes() for f in files])
    pil = [Image.open(f) for f in files]
    from_pil = image_predictor.predict(pil)
    from_arrays = image_predictor.predict([np.asarray(im) for im in pil])
    from_batch = image_predictor.predict(np.stack([np.asarray(im) for im in pil]))
    from_float = image_predictor.predict([np.asarray(im, dtype=np.float32) for im in pil])
    for other in (from_folder, from_bytes, from_pil, from_arrays, from_batch, from_float):
        np.testing.assert_allclose(other, from_paths, rtol=1e-6, atol=1e-7)
    assert image_predictor.predict_labels(new_images) == [f.parent.name for f in files]


def test_grey_and_alpha_images_are_converted_as_decode_image_does(image_predictor, tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    grey = rgb.convert("L")
    rgba = rgb.copy()
    rgba.putalpha(128)
    grey.save(tmp_path / "grey.png")
    rgba.save(tmp_path / "rgba.png")
    grey_as_rgb = grey.convert("RGB")
    np.testing.assert_allclose(image_predictor.predict(tmp_path / "grey.png"), image_predictor.predict(grey_as_rgb),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(image_predictor.predict(grey), image_predictor.predict(grey_as_rgb), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(image_predictor.predict(tmp_path / "rgba.png"), image_predictor.predict(rgb),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(image_predictor.predict(rgba), image_predictor.predict(rgb), rtol=1e-6, atol=1e-7)


def test_text_predictions_match_the_model_on_the_saved_preprocessor(text_predictor, tiny_text_run):
    import keras
    import keras_hub

    import tftune.model.heads  # noqa: F401

    texts = ["good fun film", "the plot was awful and dull", "really lovely acting", "worst movie"]
    pre = keras_hub.models.TextClassifierPreprocessor.from_preset(str(tiny_text_run / "preprocessor"))
    model = keras.saving.load_model(str(tiny_text_run / "model.keras"), compile=False)
    expected = model.predict_on_batch(pre(texts))
    probs = text_predictor.predict(texts, batch_size=3)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert text_predictor.predict("good fun film").shape == (1, 2)
    assert text_predictor.class_names == ["neg", "pos"]


def test_progress_is_reported_per_batch(text_predictor):
    seen = []
    text_predictor.predict(["good film"] * 7, batch_size=3, progress=seen.append)
    assert seen == [3, 3, 1]


# ------------------------------------------------------------------------------------------
# CLI


def test_cli_predicts_a_folder_of_images_as_csv(tiny_image_run, new_images):
    result = invoke("predict", tiny_image_run, new_images)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 9
    assert list(rows[0]) == ["input", "label", "prob_blue", "prob_green", "prob_red"]
    for row in rows:
        assert Path(row["input"]).is_file()
        probs = [float(row[f"prob_{c}"]) for c in ("blue", "green", "red")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == ["blue", "green", "red"][int(np.argmax(probs))]
        assert row["label"] == Path(row["input"]).parent.name


def test_cli_predicts_texts_from_arguments_files_and_a_csv_column(tiny_text_run, text_predictor, tmp_path):
    lines = tmp_path / "reviews.txt"
    lines.write_text("good fun film\nawful dull plot\n")
    table = write_text_csv(tmp_path / "table.csv", [("lovely acting", "x"), ("boring film", "y")],
                           columns=("review", "id"))
    out = tmp_path / "predictions.jsonl"
    result = invoke("predict", tiny_text_run, "the best movie", lines, table, "--column", "review",
                    "--output", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["input"] for r in rows] == ["the best movie", "good fun film", "awful dull plot",
                                          "lovely acting", "boring film"]
    expected = text_predictor.predict([r["input"] for r in rows])
    for row, p in zip(rows, expected):
        assert set(row["probabilities"]) == {"neg", "pos"}
        assert [row["probabilities"]["neg"], row["probabilities"]["pos"]] == pytest.approx(p.tolist(), abs=1e-5)
        assert row["label"] == ["neg", "pos"][int(np.argmax(p))]
    # --literal: a file name is a text.
    result = invoke("predict", tiny_text_run, "--literal", str(lines), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["input"] == str(lines)
    # stdin
    result = invoke("predict", tiny_text_run, "-", input="good film\nbad film\n")
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(io.StringIO(result.output)))) == 2


def test_cli_output_file_is_not_overwritten_without_overwrite(tiny_text_run, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    assert_one_line_error(invoke("predict", tiny_text_run, "good film", "--output", out),
                          "already exists", "--overwrite", alone=True)
    assert out.read_text() == "mine\n"
    result = invoke("predict", tiny_text_run, "good film", "--output", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("input,label,prob_neg,prob_pos\n")


# ------------------------------------------------------------------------------------------
# gathering inputs before the model loads (tftune.inference.inputs)


def test_gather_inputs_checks_every_image_without_tensorflow(tiny_image_run, new_images, tmp_path):
    code = (
        "import sys\n"
        "from tftune.inference.inputs import gather_inputs\n"
        "from tftune.rundir.reader import open_run\n"
        f"names, items = gather_inputs(open_run({str(tiny_image_run)!r}), [{str(new_images)!r}])\n"
        "print(len(names), names == [str(f) for f in items], 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["9", "True", "False"]
    from tftune.errors import DataError
    from tftune.inference.inputs import gather_inputs
    from tftune.rundir.reader import open_run

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(DataError, match="broken.png"):
        gather_inputs(open_run(tiny_image_run), [new_images, broken])


def test_gather_inputs_reads_texts_from_arguments_files_and_stdin(tiny_text_run, tmp_path):
    from tftune.errors import DataError
    from tftune.inference.inputs import gather_inputs
    from tftune.rundir.reader import open_run

    run = open_run(tiny_text_run)
    lines = tmp_path / "reviews.txt"
    lines.write_text("good fun film\nawful dull plot\n")
    table = write_text_csv(tmp_path / "table.csv", [("lovely acting", "x")], columns=("text", "id"))
    names, items = gather_inputs(run, ["the best movie", str(lines), str(table), "-"],
                                 stdin=io.StringIO("bad film\n"))
    assert names == items == ["the best movie", "good fun film", "awful dull plot", "lovely acting",
                              "bad film"]
    assert gather_inputs(run, [str(lines)], literal=True)[1] == [str(lines)]
    with pytest.raises(DataError, match="Text 2 \\(argument 2\\) is empty"):
        gather_inputs(run, ["good film", " "])


# ------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


def test_undecodable_image(tiny_image_run, new_images, tmp_path):
    folder = tmp_path / "mixed"
    make_image_folder(folder, per_class=1)
    (folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    out = tmp_path / "out.csv"
    assert_one_line_error(invoke("predict", tiny_image_run, folder, "--output", out),
                          "broken.jpg", "cannot be decoded", alone=True)
    assert not out.exists()
    assert list(tmp_path.glob(".out*")) == []


def test_undecodable_bytes_from_python(image_predictor):
    from tftune.errors import DataError
    from tftune.inference.predictor import encode_png

    with pytest.raises(DataError, match="Input 2 \\(bytes\\) cannot be decoded"):
        image_predictor.predict([encode_png(np.zeros((8, 8, 3), np.uint8)), b"\x89PNG\r\n\x1a\ngarbage"])


@pytest.mark.parametrize("args, fragments", [
    (["good film", ""], ["Text 2", "empty"]),
    (["good film", "   "], ["Text 2", "empty"]),
], ids=["empty", "blank"])
def test_empty_text_argument(tiny_text_run, tmp_path, args, fragments):
    out = tmp_path / "out.csv"
    assert_one_line_error(invoke("predict", tiny_text_run, *args, "--output", out), *fragments, alone=True)
    assert not out.exists()


def test_empty_line_in_a_text_file(tiny_text_run, tmp_path):
    lines = tmp_path / "reviews.txt"
    lines.write_text("good fun film\n\nawful dull plot\n")
    assert_one_line_error(invoke("predict", tiny_text_run, lines), "Line 2", "reviews.txt", "empty", alone=True)


def test_missing_and_wrong_image_inputs(tiny_image_run, tmp_path):
    assert_one_line_error(invoke("predict", tiny_image_run, tmp_path / "nope.png"), "not found", alone=True)
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(invoke("predict", tiny_image_run, tmp_path / "notes.txt"), "not an image file", alone=True)
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("predict", tiny_image_run, tmp_path / "empty"), "holds no images", alone=True)


def test_incomplete_run_directory(tiny_image_run, tmp_path):
    run = copy_run(tiny_image_run, tmp_path / "run")
    (run / "model.keras").unlink()
    out = tmp_path / "out.csv"
    assert_one_line_error(invoke("predict", run, tmp_path, "--output", out), "incomplete", "model.keras", alone=True)
    assert not out.exists()
