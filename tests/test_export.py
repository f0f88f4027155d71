"""`tftune export`: .keras, SavedModel (raw inputs, called from a fresh Python process) and
LiteRT (each quantization), each verified against the Keras model in the same command;
failures write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_line_error, copy_run, invoke

NEW_TEXTS = ["good fun film", "the plot was awful and dull", "really lovely acting", "worst movie"]


def verification(folder: Path) -> dict:
    return json.loads((folder / "verification.json").read_text())


def no_leftovers(export_root: Path) -> bool:
    return not export_root.exists() or not [p for p in export_root.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def image_run(tiny_image_run, tmp_path_factory):
    """This module's copy of the session's finished image run (the exports are written into it)."""
    return copy_run(tiny_image_run, tmp_path_factory.mktemp("export_image") / "img")


@pytest.fixture(scope="module")
def text_run(tiny_text_run, tmp_path_factory):
    """This module's copy of the session's finished text run (the exports are written into it)."""
    return copy_run(tiny_text_run, tmp_path_factory.mktemp("export_text") / "txt")


def image_files(run: Path) -> list[Path]:
    """Every sixth training-folder image of the run (8 files, all classes)."""
    from tftune.config import load_recipe

    root = Path(load_recipe(run / "config.yaml").data.path)
    return sorted(root.rglob("*.png"))[::6]


def fresh_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs `code` in a new interpreter (no tftune import in the code, no PYTHONPATH)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})


# ------------------------------------------------------------------------------------------
# keras


def test_keras_export(image_run, image_predictor):
    import keras

    import tftune.model.heads  # noqa: F401

    result = invoke("export", image_run, "--format", "keras")
    assert result.exit_code == 0, result.output
    out = image_run / "export" / "keras"
    assert {p.name for p in out.iterdir()} == {"model.keras", "classes.json", "verification.json"}
    v = verification(out)
    assert (v["format"], v["quantize"], v["samples"], v["passed"]) == ("keras", "none", 12, True)
    assert v["max_abs_diff"] <= 1e-5 and v["top1_agreement"] == 1.0
    assert v["size_bytes"] == (out / "model.keras").stat().st_size
    assert "Verified on 12 examples" in result.output and "top-1 agreement 12/12" in result.output
    model = keras.saving.load_model(str(out / "model.keras"))
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict_on_batch(x), image_predictor.probabilities(x), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------
# SavedModel: raw inputs, called from a fresh process


def test_savedmodel_image_takes_encoded_bytes_in_a_fresh_process(image_run, image_predictor, tmp_path):
    result = invoke("export", image_run, "--format", "savedmodel")
    assert result.exit_code == 0, result.output
    out = image_run / "export" / "savedmodel"
    v = verification(out)
    assert v["max_abs_diff"] <= 1e-4 and v["top1_agreement"] == 1.0
    assert "fresh Python process" in v["runtime"]
    assert (out / "SERVING.md").is_file() and json.loads((out / "classes.json").read_text()) == image_predictor.class_names

    files = image_files(image_run)
    (tmp_path / "files.json").write_text(json.dumps([str(f) for f in files]))
    proc = fresh_python(f"""
        import json, sys
        import tensorflow as tf
        serve = tf.saved_model.load({str(out / 'saved_model')!r}).signatures["serving_default"]
        files = json.load(open("files.json"))
        out = serve(images=tf.constant([open(f, "rb").read() for f in files]))
        assert "tftune" not in sys.modules
        print(json.dumps({{"p": out["probabilities"].numpy().tolist(),
                          "label": [x.decode() for x in out["label"].numpy()]}}))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = image_predictor.predict(files)
    np.testing.assert_allclose(np.array(answer["p"]), expected, rtol=1e-5, atol=1e-6)
    assert answer["label"] == image_predictor.labels(expected)


def test_savedmodel_text_takes_strings_in_a_fresh_process(text_run, text_predictor, tmp_path):
    result = invoke("export", text_run, "--format", "savedmodel")
    assert result.exit_code == 0, result.output
    out = text_run / "export" / "savedmodel"
    assert verification(out)["max_abs_diff"] <= 1e-4
    assert "import tensorflow_text" in (out / "SERVING.md").read_text()
    call = f"""
        import json, sys
        import tensorflow as tf
        IMPORT
        serve = tf.saved_model.load({str(out / 'saved_model')!r}).signatures["serving_default"]
        out = serve(texts=tf.constant({NEW_TEXTS!r}))
        print(json.dumps({{"p": out["probabilities"].numpy().tolist(),
                          "label": [x.decode() for x in out["label"].numpy()]}}))
    """
    proc = fresh_python(call.replace("IMPORT", "import tensorflow_text"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = text_predictor.predict(NEW_TEXTS)
    np.testing.assert_allclose(np.array(answer["p"]), expected, rtol=1e-5, atol=1e-6)
    assert answer["label"] == text_predictor.labels(expected)
    # What SERVING.md warns about: without TensorFlow Text the tokenizer ops are unknown.
    proc = fresh_python(call.replace("IMPORT", "pass"), tmp_path)
    assert proc.returncode != 0 and "Op type not registered" in proc.stderr


# ------------------------------------------------------------------------------------------
# LiteRT


def run_tflite(path: Path, feeds: list[dict]) -> np.ndarray:
    """The LiteRT model's outputs, run here with TensorFlow's interpreter (not tftune's)."""
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = tf.lite.Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return np.concatenate([next(iter(runner(**feed).values())) for feed in feeds])


@pytest.mark.parametrize("quantize", ["none", "float16", "dynamic", "int8"])
def test_litert_image_export_for_each_quantization(image_run, image_predictor, quantize):
    from tftune.export import TOLERANCES

    result = invoke("export", image_run, "--format", "litert", "--quantize", quantize)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "INFO:" not in result.output
    out = image_run / "export" / ("litert" if quantize == "none" else f"litert-{quantize}")
    v = verification(out)
    tolerance, floor = TOLERANCES[("litert", quantize)]
    assert v["quantize"] == quantize and v["tolerance"] == tolerance and v["min_top1_agreement"] == floor
    assert v["max_abs_diff"] <= tolerance and v["top1_agreement"] >= floor
    assert "keras.Model.export" in v["converter"]
    assert v["size_bytes"] == (out / "model.tflite").stat().st_size
    if quantize == "int8":
        assert any("calibrated on" in n for n in v["notes"])
    # Independently of the export's own check: new pixels through the .tflite and through Keras.
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).round().astype(np.float32)
    got = run_tflite(out / "model.tflite", [{"image": x[i:i + 1]} for i in range(3)])
    ref = image_predictor.probabilities(x)
    assert np.abs(got - ref).max() <= tolerance
    # Quantized models may flip near-ties: the top-1 must agree wherever Keras's top two
    # probabilities are 0.1 or more apart (everywhere for the float formats).
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0] >= 0.1) if quantize in ("dynamic", "int8") else np.ones(3, bool)
    assert np.array_equal(got.argmax(1)[clear], ref.argmax(1)[clear])


def test_litert_text_export_takes_token_ids(text_run, text_predictor):
    result = invoke("export", text_run, "--format", "litert")
    assert result.exit_code == 0, result.output
    out = text_run / "export" / "litert"
    for name in ("model.tflite", "vocabulary.txt", "TOKENIZE.md", "classes.json", "verification.json"):
        assert (out / name).is_file(), name
    assert verification(out)["max_abs_diff"] <= 1e-4
    note = (out / "TOKENIZE.md").read_text()
    assert "`[CLS]` = 2" in note and "[batch, 16]" in note
    assert (out / "vocabulary.txt").read_text().split()[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    # The tokenizer shipped beside the model makes its inputs.
    import keras_hub

    pre = keras_hub.models.TextClassifierPreprocessor.from_preset(str(out / "preprocessor"))
    tokens = pre(NEW_TEXTS)
    feeds = [{k: np.asarray(v[i:i + 1], np.int32) for k, v in tokens.items()} for i in range(len(NEW_TEXTS))]
    np.testing.assert_allclose(run_tflite(out / "model.tflite", feeds), text_predictor.predict(NEW_TEXTS),
                               atol=1e-5)


def test_litert_text_int8(text_run):
    result = invoke("export", text_run, "--format", "litert", "--quantize", "int8")
    assert result.exit_code == 0, result.output
    v = verification(text_run / "export" / "litert-int8")
    assert v["top1_agreement"] >= 0.95 and v["max_abs_diff"] <= 0.5
    n_train = json.loads((text_run / "metrics.json").read_text())["sizes"]["train"]  # < 200: all of them
    assert f"int8 ranges calibrated on {n_train} examples from the run's train split" in v["notes"]


def test_an_int8_kernel_that_fails_at_run_time_is_kept_in_float(text_run, monkeypatch):
    """On the MiniLM recipe run, Keras's int8 model stops at run time in TFLite's int8 DIV
    ('data[i] != 0 was not true ... (DIV) failed to invoke': the kernel rejects a divisor whose
    raw int8 value is 0, here the mean pooling's token count). The tiny model does not hit
    such a count, so the first run of the converted model is made to fail with that message;
    the re-quantization with DIV kept in float and its verification are real."""
    from tftune import export as export_mod

    real_run = export_mod.run_litert
    calls = []

    def first_run_fails(path, examples, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("tensorflow/lite/kernels/div.cc:242 data[i] != 0 was not true."
                               "Node number 41 (DIV) failed to invoke.")
        return real_run(path, examples, **kwargs)

    monkeypatch.setattr(export_mod, "run_litert", first_run_fails)
    result = export_mod.export(text_run, "litert", "int8", output=text_run / "export" / "int8-div",
                               echo=lambda _: None)
    assert len(calls) == 2
    assert "ops kept in float: DIV" in result.converter
    assert any("DIV kernel failed at run time" in n for n in result.notes)
    assert result.top1_agreement >= 0.95
    interpreter, _ = export_mod.litert_interpreter(result.artefact)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    divs = [o for o in ops if o["op_name"] == "DIV"]
    assert divs and all(tensors[o["outputs"][0]]["dtype"] == np.float32 for o in divs)
    assert any(tensors[o["outputs"][0]]["dtype"] == np.int8 for o in ops if o["op_name"] == "FULLY_CONNECTED")


def test_verify_with_data_of_your_own(text_run, tmp_path):
    from helpers import write_text_csv

    data = write_text_csv(tmp_path / "mine.csv", [("good fun film", "pos"), ("awful dull plot", "neg"),
                                                 ("lovely acting", "pos")], columns=("review", "stars"))
    result = invoke("export", text_run, "--format", "keras", "--data", data, "--text-column", "review",
                    "--label-column", "stars", "--output", text_run / "export" / "mine")
    assert result.exit_code == 0, result.output
    v = verification(text_run / "export" / "mine")
    assert v["samples"] == 3 and v["data"] == f"3 texts in {data}"


def test_verification_shows_progress_as_plain_lines_in_a_log(image_run, monkeypatch):
    """Not a terminal (CliRunner): each run over the verification examples (the Keras
    reference, the LiteRT interpreter, the SavedModel in its fresh process) reports its
    count as plain lines, here one per update; no control characters."""
    import re

    monkeypatch.setenv("TFTUNE_PROGRESS_SECONDS", "0")
    for fmt, artefact in (("litert", "the LiteRT model"),
                          ("savedmodel", "the SavedModel (a fresh Python process)")):
        result = invoke("export", image_run, "--format", fmt, "--output",
                        image_run / "export" / f"progress-{fmt}")
        assert result.exit_code == 0, result.output
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.output), repr(result.output)
        lines = result.output.splitlines()
        for what in ("the Keras model", artefact):
            shown = [l.split(" examples")[0] for l in lines if l.startswith(f"   verifying: {what} ")]
            assert shown and shown[-1] == f"   verifying: {what} 12 / 12", lines


# ------------------------------------------------------------------------------------------
# failures write nothing


def test_past_the_tolerance_the_export_fails_and_writes_nothing(image_run):
    result = invoke("export", image_run, "--format", "litert", "--quantize", "int8", "--tolerance", "0",
                    "--output", image_run / "export" / "strict")
    assert_one_line_error(result, "does not match the Keras model", "allowed 0", "Nothing was written")
    assert not (image_run / "export" / "strict").exists()
    assert no_leftovers(image_run / "export")


def test_an_existing_export_is_kept_unless_overwrite(image_run):
    out = image_run / "export" / "again"
    assert invoke("export", image_run, "--format", "keras", "--output", out).exit_code == 0
    (out / "mine.txt").write_text("mine")
    assert_one_line_error(invoke("export", image_run, "--format", "keras", "--output", out),
                          "already exists", "--overwrite")
    assert (out / "mine.txt").exists()
    result = invoke("export", image_run, "--format", "keras", "--output", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "mine.txt").exists() and (out / "model.keras").is_file()
    assert no_leftovers(out.parent)


@pytest.mark.parametrize("args, fragments", [
    (["--format", "savedmodel", "--quantize", "int8"], ["--quantize int8 applies to --format litert only"]),
    (["--format", "tflite"], ["'tflite'"]),
], ids=["quantize-savedmodel", "bad-format"])
def test_bad_options(image_run, args, fragments):
    result = invoke("export", image_run, *args)
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.output


def test_incomplete_run_directory(tiny_image_run, tmp_path):
    run = copy_run(tiny_image_run, tmp_path / "run")
    (run / "config.yaml").unlink()
    assert_one_line_error(invoke("export", run, "--format", "keras"), "incomplete", "config.yaml")
    assert not (run / "export").exists()


def test_litert_falls_back_to_the_tflite_converter_when_keras_export_fails(image_run, monkeypatch):
    """Keras's exporter is made to fail; tftune converts through its own SavedModel with the
    real TFLite converter and still verifies the result."""
    import keras

    from tftune.export import export

    def broken_export(self, *args, **kwargs):
        raise ValueError("simulated Keras LiteRT export failure")

    monkeypatch.setattr(keras.Model, "export", broken_export)
    result = export(image_run, "litert", output=image_run / "export" / "fallback", echo=lambda _: None)
    assert "from_saved_model" in result.converter
    assert any("simulated Keras LiteRT export failure" in n for n in result.notes)
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0
    assert (image_run / "export" / "fallback" / "model.tflite").is_file()
