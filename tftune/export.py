"""`export`: a finished run as a `.keras` file, a SavedModel for TF Serving, or a LiteRT
(TFLite) model, each checked against the Keras model before it is put in place.

Every export runs N examples of the run's test split (or `--data`) through the Keras model
and through the exported artefact, and reports the largest absolute difference between the
class probabilities and the share of examples whose top class agrees. Past the tolerance
for the format and quantization the export fails and nothing is written.

Tolerances (max |difference| of a probability, minimum top-1 agreement):

| artefact | max abs diff | top-1 agreement | why |
|---|---|---|---|
| keras | 1e-5 | 1.0 | the same model, saved and loaded again |
| savedmodel | 1e-4 | 0.98 | same float32 weights; graph vs eager, decode / tokenise inside the graph |
| litert none | 1e-4 | 0.98 | float32 LiteRT kernels round differently from TensorFlow's |
| litert float16 | 0.05 | 0.98 | weights rounded to float16 (about 3 significant digits) |
| litert dynamic | 0.5 | 0.95 | weights int8; activations quantized per batch at run time |
| litert int8 | 0.5 | 0.95 | weights and activations int8, ranges calibrated on 200 training examples |

Measured on the two recipe runs (128 test examples each), max |p diff| and top-1 agreement:
MobileNetV2 / Fashion-MNIST float16 0.018 / 100 %, dynamic 0.165 / 100 %, int8 0.30 / 99.2 %;
MiniLM / Rotten Tomatoes float16 0.0005 / 100 %, dynamic 0.044 / 100 %, and int8 0.99 / 70 %:
static int8 activations wreck this transformer (keeping DIV, LayerNorm, softmax, attention
matmuls or all dense layers in float did not help), so its int8 export fails the check and
dynamic is the compact choice for text. Quantization moves the probabilities of uncertain examples most, so for dynamic and int8
the top-1 agreement floor is the check that matters; the difference bound still catches a
broken conversion (a wrong class order or scrambled inputs give confident disagreements,
differences near 1).

Layout: `RUN/export/<format>[-<quantization>]/` (or `--output`), never replaced without
`overwrite`; built in a temporary folder beside it and moved into place after verification.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tftune import rundir
from tftune.errors import ConfigError, TftuneError

FORMATS = ("keras", "savedmodel", "litert")
QUANTIZATIONS = ("none", "dynamic", "float16", "int8")
TOLERANCES = {  # (max abs diff of a probability, minimum top-1 agreement); see above
    ("keras", "none"): (1e-5, 1.0),
    ("savedmodel", "none"): (1e-4, 0.98),
    ("litert", "none"): (1e-4, 0.98),
    ("litert", "float16"): (0.05, 0.98),
    ("litert", "dynamic"): (0.5, 0.95),
    ("litert", "int8"): (0.5, 0.95),
}
REPRESENTATIVE_EXAMPLES = 200
VERIFY_FILE = "verification.json"
SAVEDMODEL_DIR = "saved_model"


class ExportVerificationError(TftuneError):
    """The exported artefact does not reproduce the Keras model within the tolerance."""


@dataclasses.dataclass
class ExportResult:
    """What `export` returns (also written to `verification.json` beside the artefact)."""

    out_dir: Path
    artefact: Path
    format: str
    quantize: str
    size_bytes: int
    samples: int
    data: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    tolerance: float
    min_top1_agreement: float
    converter: str
    runtime: str
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["artefact"] = str(self.artefact.relative_to(self.out_dir)) if self.artefact != self.out_dir else "."
        out["passed"] = True
        return out

    def summary(self) -> str:
        agree = round(self.top1_agreement * self.samples)
        return (
            f"Verified on {self.samples} examples ({self.data}) against the Keras model: "
            f"max |p diff| {self.max_abs_diff:.2e} (tolerance {self.tolerance:g}), mean "
            f"{self.mean_abs_diff:.2e}; top-1 agreement {agree}/{self.samples} = "
            f"{self.top1_agreement:.4f} (floor {self.min_top1_agreement:g})"
        )


def export_name(fmt: str, quantize: str = "none") -> str:
    """The folder name under RUN/export/: the format, and the quantization unless none."""
    return fmt if quantize == "none" else f"{fmt}-{quantize}"


def _check_choice(value: str, choices, option: str) -> None:
    if value not in choices:
        from tftune.errors import did_you_mean

        raise ConfigError(
            f"Unknown {option} {value!r}.{did_you_mean(value, choices)} Expected one of: "
            f"{', '.join(choices)}. Received: {option}={value!r}"
        )


def export(
    run_dir: str | Path,
    format: str = "savedmodel",
    quantize: str = "none",
    *,
    output: Optional[str | Path] = None,
    overwrite: bool = False,
    samples: int = 128,
    data: Optional[str] = None,
    tolerance: Optional[float] = None,
    min_agreement: Optional[float] = None,
    text_column: Optional[str] = None,
    label_column: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> ExportResult:
    """Exports the finished run in `run_dir` and verifies the artefact against Keras.

    Args:
        format: keras | savedmodel | litert.
        quantize: none | dynamic | float16 | int8 (litert only).
        output: the export folder (default `run_dir/export/<format>[-<quantize>]`).
        overwrite: replace an existing export folder.
        samples: how many examples to verify with (from the run's test split, or `data`).
        data: labelled examples to verify with (and, for int8, to calibrate with) instead of
            the run's own splits: a folder of class folders or a CSV / JSONL file.
        tolerance, min_agreement: override the format's limits (see the module docstring).
        text_column, label_column: columns of a CSV / JSONL `data` (default: the run's).
    """
    from tftune.rundir.reader import open_run

    _check_choice(format, FORMATS, "format")
    _check_choice(quantize, QUANTIZATIONS, "quantize")
    if format != "litert" and quantize != "none":
        raise ConfigError(
            f"--quantize {quantize} applies to --format litert only; a {format} export keeps the "
            f"float32 weights. Use --format litert --quantize {quantize}, or drop --quantize."
        )
    if samples < 1:
        raise ConfigError(f"samples must be at least 1. Received: samples={samples}")
    default_tol, default_agree = TOLERANCES[(format, quantize)]
    tol = default_tol if tolerance is None else float(tolerance)
    floor = default_agree if min_agreement is None else float(min_agreement)
    if tol < 0 or not 0.0 <= floor <= 1.0:
        raise ConfigError(
            f"tolerance must be >= 0 and min_agreement within 0..1. Received: tolerance={tol}, "
            f"min_agreement={floor}"
        )

    run = open_run(run_dir)
    dest = Path(output).expanduser() if output else run.path / "export" / export_name(format, quantize)
    if dest.exists() and not overwrite:
        raise TftuneError(
            f"Export folder {dest} already exists. Pass --overwrite to replace it, or choose "
            f"another --output."
        )
    started = time.perf_counter()
    from tftune.inference.predictor import predictor_for

    predictor = predictor_for(run)
    columns = (text_column or run.config.data.text_column, label_column or run.config.data.label_column)
    examples = _examples(run, data, "test", columns)
    inputs = _take_inputs(examples, samples)
    echo(f"Exporting {run.path.name} as {export_name(format, quantize)} "
         f"(verifying on {len(inputs)} examples from {examples.description})")

    with rundir.building_dir(dest) as tmp:
        rundir.write_json(tmp / rundir.CLASSES_FILE, run.class_names)
        notes: list[str] = []
        if run.trained_policy not in (None, "float32"):
            notes.append(f"the run trained in {run.trained_policy}; the export and its Keras "
                         f"reference compute in float32")
        if format == "keras":
            artefact, converter, runtime, got, ref = _export_keras(run, predictor, inputs, tmp)
        elif format == "savedmodel":
            artefact, converter, runtime, got, ref = _export_savedmodel(run, predictor, inputs, tmp, notes)
        else:
            representative = None
            if quantize == "int8":
                calibration = _examples(run, data, "train", columns)
                representative = _take_inputs(calibration, REPRESENTATIVE_EXAMPLES, shuffle=True)
                notes.append(f"int8 ranges calibrated on {len(representative)} examples from "
                             f"{calibration.description}")
            artefact, converter, runtime, got, ref = _export_litert(
                run, predictor, inputs, tmp, quantize, representative, notes)
        diff = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
        agreement = float(np.mean(np.argmax(got, axis=1) == np.argmax(ref, axis=1)))
        result = ExportResult(
            out_dir=dest, artefact=dest / artefact.relative_to(tmp), format=format,
            quantize=quantize, size_bytes=_size(artefact), samples=len(inputs),
            data=examples.description, max_abs_diff=float(diff.max()),
            mean_abs_diff=float(diff.mean()), top1_agreement=agreement, tolerance=tol,
            min_top1_agreement=floor, converter=converter, runtime=runtime,
            seconds=round(time.perf_counter() - started, 1), notes=notes,
        )
        if not (result.max_abs_diff <= tol and agreement >= floor):
            milder = {"int8": "dynamic or float16", "dynamic": "float16", "float16": "none"}
            raise ExportVerificationError(
                f"The {export_name(format, quantize)} export does not match the Keras model: "
                f"max |p diff| {result.max_abs_diff:.3g} (allowed {tol:g}), top-1 agreement "
                f"{agreement:.3f} (required {floor:g}) on {len(inputs)} examples. Nothing was "
                f"written. "
                + (f"Try --quantize {milder[quantize]}, or pass --tolerance / --min-agreement if "
                   f"this loss is acceptable." if quantize != "none"
                   else "This is a bug; please report it with the run's versions.json.")
                + (f" (Notes: {'; '.join(notes)}.)" if notes else "")
            )
        rundir.write_json(tmp / VERIFY_FILE, result.to_json())
    echo(f"Wrote {result.artefact} ({_human(result.size_bytes)})")
    echo(result.summary())
    return result


# ------------------------------------------------------------------------------------------
# verification examples


def _examples(run, data: Optional[str], split: str, columns: tuple[str, str]):
    from tftune.data.labelled import load_labelled

    if data is not None:
        return load_labelled(
            data, run.modality, run.class_names, run.image_size,
            text_column=columns[0], label_column=columns[1], skip_unknown_labels=True,
        )
    try:
        return run.split(split)
    except TftuneError:
        if split == "test":  # a run without a test split: verify on validation examples
            return run.split("val")
        raise


def _take_inputs(examples, n: int, shuffle: bool = False) -> list:
    """The first `n` inputs of `examples` (shuffled with a fixed seed if asked), as numpy
    arrays (images) or str (texts)."""
    ds = examples.dataset.map(lambda x, y: x)
    if shuffle:
        ds = ds.shuffle(min(examples.size, 2000), seed=0)
    out = []
    for x in ds.take(n).as_numpy_iterator():
        out.append(x.decode("utf-8") if isinstance(x, bytes) else x)
    return out


def _reference(predictor, inputs, batch_size: int = 32) -> np.ndarray:
    """The Keras model's probabilities for prepared inputs (images) or texts."""
    out = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        out.append(predictor.probabilities(np.stack(chunk) if predictor.modality == "image" else chunk))
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------
# keras


def _export_keras(run, predictor, inputs, tmp: Path):
    import keras

    artefact = tmp / rundir.MODEL_FILE
    predictor.model.save(str(artefact))
    if run.modality == "text":
        shutil.copytree(run.path / rundir.PREPROCESSOR_DIR, tmp / rundir.PREPROCESSOR_DIR)
    reloaded = keras.saving.load_model(str(artefact), compile=False)
    from tftune.inference.predictor import Predictor

    preprocessor = None
    if run.modality == "text":
        import keras_hub

        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(str(tmp / rundir.PREPROCESSOR_DIR))
    again = Predictor(reloaded, run.class_names, run.modality, run.image_size, preprocessor)
    return artefact, "keras.Model.save (float32, no optimizer)", "keras.saving.load_model", \
        _reference(again, inputs), _reference(predictor, inputs)


# ------------------------------------------------------------------------------------------
# SavedModel


def serving_module(model, class_names, modality: str, image_size=(224, 224), preprocessor=None):
    """A `tf.Module` whose `serve` takes raw inputs and returns `probabilities` and `label`.

    Images: a 1-D string tensor `images` of encoded files (PNG, JPEG, BMP, GIF), decoded and
    resized inside the graph with `tftune.data.images.decode_image`, as in training.
    Texts: a 1-D string tensor `texts`, tokenised inside the graph by the run's KerasHub
    preprocessor (TensorFlow Text ops). Only the model's `tf.Variable`s are tracked, once each
    (Keras's own `ExportArchive` stores every weight twice on TensorFlow: keras#23553).
    """
    import tensorflow as tf

    from tftune.data.images import decode_image

    module = tf.Module()
    module.weights = [v.value for v in model.variables]
    names = tf.constant(list(class_names))

    def outputs(probabilities):
        probabilities = tf.cast(probabilities, tf.float32)
        return {"probabilities": probabilities,
                "label": tf.gather(names, tf.argmax(probabilities, axis=1))}

    if modality == "image":
        size = tuple(int(s) for s in image_size)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(images):
            pixels = tf.map_fn(lambda data: decode_image(data, size), images,
                               fn_output_signature=tf.TensorSpec((*size, 3), tf.float32))
            return outputs(model(pixels, training=False))
    else:
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def serve(texts):
            return outputs(model(preprocessor(texts), training=False))

    module.serve = serve
    return module


_FRESH_PROCESS_CALL = r"""
import base64, json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
request = json.load(open(sys.argv[1]))
if request["modality"] == "text":
    import tensorflow_text  # noqa: F401  registers the tokenizer's ops before loading
loaded = tf.saved_model.load(request["path"])
serve = loaded.signatures["serving_default"]
values = [base64.b64decode(v) for v in request["inputs"]]
probabilities, labels = [], []
for start in range(0, len(values), 32):
    out = serve(**{request["input_name"]: tf.constant(values[start:start + 32], dtype=tf.string)})
    probabilities.append(out["probabilities"].numpy())
    labels += [v.decode("utf-8") for v in out["label"].numpy()]
json.dump({"probabilities": np.concatenate(probabilities).tolist(), "labels": labels},
          open(request["output"], "w"))
"""


def call_savedmodel_in_fresh_process(path: Path, modality: str, raw_inputs: list[bytes],
                                     timeout: float = 900) -> tuple[np.ndarray, list[str]]:
    """Loads the SavedModel with `tf.saved_model.load` in a new Python process that imports
    only TensorFlow (and TensorFlow Text for text models), calls `serving_default` on the raw
    inputs and returns (probabilities, labels). Proves the artefact needs nothing of tftune."""
    with tempfile.TemporaryDirectory(prefix="tftune-serve-check-") as work:
        request = Path(work) / "request.json"
        response = Path(work) / "response.json"
        request.write_text(json.dumps({
            "path": str(Path(path).resolve()), "modality": modality,
            "input_name": "images" if modality == "image" else "texts",
            "inputs": [base64.b64encode(v).decode("ascii") for v in raw_inputs],
            "output": str(response),
        }))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_CALL, str(request)], cwd=work,
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            last = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:] or ["(no output)"]
            raise ExportVerificationError(
                f"The SavedModel at {path} does not load and run in a fresh Python process: "
                f"{last[0]}. Nothing was written."
            )
        answer = json.loads(response.read_text())
    return np.asarray(answer["probabilities"], dtype=np.float32), answer["labels"]


def _export_savedmodel(run, predictor, inputs, tmp: Path, notes: list[str]):
    import tensorflow as tf

    from tftune.inference.predictor import encode_png

    artefact = tmp / SAVEDMODEL_DIR
    module = serving_module(predictor.model, run.class_names, run.modality, run.image_size,
                            predictor.preprocessor)
    with _quiet_native_stderr():
        tf.saved_model.save(module, str(artefact),
                            signatures={"serving_default": module.serve.get_concrete_function()})
    if run.modality == "image":
        raw = [encode_png(x.astype(np.uint8)) for x in inputs]  # pixels are whole 0..255 values
        ref = predictor.predict(raw)
    else:
        raw = [t.encode("utf-8") for t in inputs]
        ref = _reference(predictor, inputs)
        notes.append("the serving graph uses TensorFlow Text ops: `import tensorflow_text` "
                     "before tf.saved_model.load")
    got, labels = call_savedmodel_in_fresh_process(artefact, run.modality, raw)
    expected = [run.class_names[i] for i in np.argmax(got, axis=1)]
    if labels != expected:
        raise ExportVerificationError(
            "The SavedModel's `label` output does not name the most probable class. Nothing was written."
        )
    rundir.write_text(tmp / "SERVING.md", _serving_note(run, predictor))
    return (artefact, "tf.saved_model.save of a tf.Module (serve: raw inputs -> probabilities, label)",
            "tf.saved_model.load in a fresh Python process", got, ref)


def _serving_note(run, predictor) -> str:
    classes = ", ".join(run.class_names)
    if run.modality == "image":
        call = ('images = [open("photo.jpg", "rb").read()]\n'
                'out = serve(images=tf.constant(images))')
        rest = ('{"signature_name": "serving_default", "instances": [{"b64": "<base64 of the image file>"}]}')
        load = "import tensorflow as tf"
        what = (f"`images`: a 1-D string tensor of encoded image files (PNG, JPEG, BMP, GIF). They "
                f"are decoded (3 channels, first frame) and resized to {run.image_size[0]}x"
                f"{run.image_size[1]} inside the graph, as in training.")
    else:
        call = 'out = serve(texts=tf.constant(["A triumph.", "Two hours I will not get back."]))'
        rest = '{"signature_name": "serving_default", "instances": ["A triumph."]}'
        load = ("import tensorflow as tf\n"
                "import tensorflow_text  # registers the tokenizer ops the graph uses")
        what = ("`texts`: a 1-D string tensor of raw texts. They are tokenised inside the graph "
                f"(sequence length {predictor.preprocessor.sequence_length}) with TensorFlow "
                "Text ops: a process that loads this model must `import tensorflow_text` first "
                "(else: `Op type not registered 'RegexSplitWithOffsets'`), and a TF Serving "
                "binary must include the TF Text ops.")
    return f"""# SavedModel: `{SAVEDMODEL_DIR}/`

Signature `serving_default` (also the module's `serve` function).

Input: {what}

Outputs:
- `probabilities`: float32 `[batch, {len(run.class_names)}]`, in the class order of `classes.json` ({classes});
- `label`: string `[batch]`, the most probable class.

Python (TensorFlow only; tftune is not needed):

```python
{load}
serve = tf.saved_model.load("{SAVEDMODEL_DIR}").signatures["serving_default"]
{call}
print(out["label"].numpy(), out["probabilities"].numpy())
```

TF Serving: copy `{SAVEDMODEL_DIR}/` to `<model_base_path>/1/`; REST request body:

```json
{rest}
```

`verification.json` holds the check made at export time (max difference and top-1
agreement against the Keras model, from a fresh Python process).
"""


# ------------------------------------------------------------------------------------------
# LiteRT


def _litert_signature(run, predictor):
    import tensorflow as tf

    if run.modality == "image":
        return None  # the model's own: float32 [None, H, W, 3]
    length = int(predictor.preprocessor.sequence_length)
    return [{name: tf.TensorSpec([None, length], tf.int32, name=name)
             for name in predictor.model.input}]


def _litert_inputs(run, predictor, inputs) -> list[dict]:
    """One dict of numpy arrays per input, as the LiteRT signature takes them."""
    import tensorflow as tf

    if run.modality == "image":
        return [{"image": np.asarray(x, np.float32)[None]} for x in inputs]
    tokens = predictor.preprocessor(tf.constant(inputs))
    return [{k: np.asarray(v[i:i + 1], np.int32) for k, v in tokens.items()} for i in range(len(inputs))]


def _converter_settings(quantize: str, representative: Optional[list[dict]]) -> dict:
    import tensorflow as tf

    settings: dict = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize != "none":
        settings["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        settings["target_spec"]["supported_types"] = [tf.float16]
    if quantize == "int8":
        def representative_dataset():
            for example in representative:
                yield example

        settings["representative_dataset"] = representative_dataset
    return settings


def _litert_saved_model(model, signature, directory: Path) -> None:
    """The model as a SavedModel with one float32 / int32 serving signature (no raw-input
    preprocessing), for `tf.lite.TFLiteConverter.from_saved_model`."""
    import tensorflow as tf

    if signature is None:
        spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype, name="image")
        signature = [spec]
    module = tf.Module()
    module.weights = [v.value for v in model.variables]
    module.serve = tf.function(lambda inputs: model(inputs, training=False), input_signature=signature)
    tf.saved_model.save(module, str(directory),
                        signatures={"serving_default": module.serve.get_concrete_function()})


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _convert_litert(model, signature, settings: dict, path: Path, notes: list[str],
                    float_ops: tuple[str, ...] = ()) -> str:
    """Writes `path` (.tflite) and returns how it was made.

    Keras's own LiteRT export first; if it fails, `tf.lite.TFLiteConverter.from_saved_model`
    with the same settings. `float_ops` (int8 only) are op types kept in float, through
    `tf.lite.experimental.QuantizationDebugger`'s selective quantization: used when an int8
    kernel refuses to run (TFLite's int8 DIV rejects some divisors).
    """
    import tensorflow as tf

    with _quiet_native_stderr() as captured, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not float_ops:
            try:
                model.export(str(path), format="litert", input_signature=signature, verbose=False, **settings)
                return "keras.Model.export(format='litert'), TFLite built-in ops only"
            except Exception as keras_error:  # keras raises ValueError, ConverterError, ...
                notes.append(f"Keras's LiteRT export failed ({_first_line(keras_error)[:200]}); "
                             f"converted with tf.lite.TFLiteConverter.from_saved_model instead")
        with tempfile.TemporaryDirectory(prefix="tftune-litert-") as work:
            try:
                _litert_saved_model(model, signature, Path(work) / "model")
                converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(work) / "model"))
                converter.target_spec.supported_ops = settings["target_spec"]["supported_ops"]
                if "supported_types" in settings["target_spec"]:
                    converter.target_spec.supported_types = settings["target_spec"]["supported_types"]
                converter.optimizations = settings.get("optimizations", [])
                if "representative_dataset" in settings:
                    converter.representative_dataset = settings["representative_dataset"]
                if float_ops:
                    debugger = tf.lite.experimental.QuantizationDebugger(
                        converter=converter, debug_dataset=settings["representative_dataset"],
                        debug_options=tf.lite.experimental.QuantizationDebugOptions(
                            denylisted_ops=list(float_ops)),
                    )
                    path.write_bytes(debugger.get_nondebug_quantized_model())
                    return (f"tf.lite.TFLiteConverter.from_saved_model + QuantizationDebugger "
                            f"(ops kept in float: {', '.join(float_ops)}), TFLite built-in ops only")
                path.write_bytes(converter.convert())
            except Exception as e:
                native = [l for l in captured.text().splitlines() if "error" in l.lower()][:1]
                raise TftuneError(
                    f"LiteRT conversion failed: {_first_line(e)[:300]}"
                    f"{' / ' + native[0][:200] if native else ''}. The model may use ops without "
                    f"LiteRT built-in kernels; --format savedmodel serves it with full TensorFlow."
                ) from None
        return "tf.lite.TFLiteConverter.from_saved_model, TFLite built-in ops only"


def litert_interpreter(path: Path):
    """(interpreter, name): `ai_edge_litert`'s Interpreter when installed, else TensorFlow
    2.21's `tf.lite.Interpreter` (same runtime; its deprecation warning is silenced)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=str(path)), "ai_edge_litert.interpreter.Interpreter"
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated")
            return tf.lite.Interpreter(model_path=str(path)), "tf.lite.Interpreter (TensorFlow 2.21)"


def run_litert(path: Path, examples: list[dict]) -> tuple[np.ndarray, str]:
    """Runs the LiteRT model's serving signature on each example: ([n, classes] outputs,
    the interpreter's name).

    Example keys are matched to the signature's input names exactly, or as their suffix
    (a converter may prefix them with the function's argument name)."""
    # The runtime prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." natively.
    with _quiet_native_stderr():
        interpreter, runtime = litert_interpreter(path)
        runner = interpreter.get_signature_runner("serving_default")
        names = list(runner.get_input_details())
        out = []
        for example in examples:
            feed = {}
            for key, value in example.items():
                match = key if key in names else next((n for n in names if n.endswith(key)), None)
                if match is None and len(example) == 1 and len(names) == 1:
                    match = names[0]
                if match is None:
                    raise TftuneError(f"The LiteRT model has no input {key!r} (inputs: {', '.join(names)}).")
                feed[match] = value
            result = runner(**feed)
            out.append(np.asarray(next(iter(result.values())), np.float32)[0])
    return np.stack(out), runtime


def _failed_op(error: BaseException) -> Optional[str]:
    """The op type in a LiteRT runtime error such as 'Node number 480 (DIV) failed to invoke'."""
    import re

    match = re.search(r"Node number \d+ \(([A-Z0-9_]+)\) failed to invoke", str(error))
    return match.group(1) if match else None


def _export_litert(run, predictor, inputs, tmp: Path, quantize: str, representative_inputs, notes):
    artefact = tmp / "model.tflite"
    signature = _litert_signature(run, predictor)
    representative = (_litert_inputs(run, predictor, representative_inputs)
                      if representative_inputs is not None else None)
    settings = _converter_settings(quantize, representative)
    examples = _litert_inputs(run, predictor, inputs)
    float_ops: tuple[str, ...] = ()
    while True:
        converter = _convert_litert(predictor.model, signature, settings, artefact, notes, float_ops)
        try:
            got, runtime = run_litert(artefact, examples)
            break
        except (RuntimeError, ValueError) as e:
            op = _failed_op(e)
            if quantize == "int8" and op and op not in float_ops and len(float_ops) < 3:
                notes.append(f"the int8 {op} kernel failed at run time ({_first_line(e)[:160]}); "
                             f"{op} kept in float")
                float_ops += (op,)
                continue
            raise TftuneError(
                f"The converted LiteRT model fails at run time: {_first_line(e)[:300]}. Try another "
                f"--quantize (none, float16, dynamic), or --format savedmodel."
            ) from None
    ref = _reference(predictor, inputs)
    if run.modality == "text":
        _write_tokenizer_files(run, predictor, tmp)
        notes.append("takes token ids: see TOKENIZE.md (raw-string tokenizers cannot run inside LiteRT)")
    else:
        notes.append(f"takes float32 pixels [batch, {run.image_size[0]}, {run.image_size[1]}, 3] in "
                     f"0..255 (normalisation is inside the model)")
    if quantize != "none":
        notes.append("inputs and outputs stay float32" + (" (int8 kernels inside, float where LiteRT "
                     "has no int8 kernel)" if quantize == "int8" else ""))
    return artefact, converter, runtime, got, ref


def _write_tokenizer_files(run, predictor, tmp: Path) -> None:
    """The tokenizer's files (vocabulary) and TOKENIZE.md: how to make the LiteRT inputs."""
    source = run.path / rundir.PREPROCESSOR_DIR
    shutil.copytree(source, tmp / rundir.PREPROCESSOR_DIR)
    vocab_files = sorted((tmp / rundir.PREPROCESSOR_DIR / "assets" / "tokenizer").glob("*"))
    for f in vocab_files:
        shutil.copy2(f, tmp / f.name)
    pre = predictor.preprocessor
    tok = pre.tokenizer
    length = int(pre.sequence_length)
    special = []
    for attr in ("cls_token", "sep_token", "pad_token", "unk_token", "start_token", "end_token"):
        token = getattr(tok, attr, None)
        entry = f"`{token}` = {tok.token_to_id(token)}" if isinstance(token, str) else None
        if entry and entry not in special:
            special.append(entry)
    inputs = ", ".join(f"`{k}`" for k in predictor.model.input)
    example = pre(["A triumph."])
    shown = {k: np.asarray(v, np.int32)[0][:8].tolist() for k, v in example.items()}
    files = ", ".join(f"`{f.name}`" for f in vocab_files) or "(none)"
    rundir.write_text(tmp / "TOKENIZE.md", f"""# Tokenizing for `model.tflite`

A LiteRT model cannot run this text tokenizer, so `model.tflite` takes token ids. Its
signature `serving_default` takes {inputs}: int32 `[batch, {length}]` each, and returns
float32 `[batch, {len(run.class_names)}]` class probabilities in the order of `classes.json`.

Tokenizer: KerasHub `{type(tok).__name__}` (`{type(pre).__name__}`), vocabulary file(s):
{files}; lowercase: {getattr(tok, 'lowercase', 'n/a')}; special tokens: {', '.join(special) or 'n/a'}.

- `token_ids`: `[CLS]`-style start token, the text's word pieces, the end token, then
  padding ids up to {length} (texts longer than that are cut);
- `padding_mask`: 1 for real tokens (including the special ones), 0 for padding;
- `segment_ids` (if listed above): all 0 for a single text.

"A triumph." becomes (first 8 of {length}): {json.dumps(shown)}

The same tokenizer in Python, from the `{rundir.PREPROCESSOR_DIR}/` folder here:

```python
import keras_hub, numpy as np
pre = keras_hub.models.TextClassifierPreprocessor.from_preset("{rundir.PREPROCESSOR_DIR}")
inputs = {{k: np.asarray(v, np.int32) for k, v in pre(["A triumph."]).items()}}  # [1, {length}] each
```

On a device, use a tokenizer of the same kind with these files and settings, and check its
ids against the example above.
""")


# ------------------------------------------------------------------------------------------
# helpers


class _Captured:
    def __init__(self, file):
        self._file = file

    def text(self) -> str:
        self._file.flush()
        self._file.seek(0)
        return self._file.read().decode(errors="replace")


@contextlib.contextmanager
def _quiet_native_stderr():
    """Points file descriptor 2 at a temporary file while TensorFlow's converters and savers
    run (their C++ logs ignore TF_CPP_MIN_LOG_LEVEL); yields an object whose `text()` gives
    what they printed, for error messages."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield _Captured(f)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
