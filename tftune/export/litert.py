"""`--format litert`: a LiteRT (TFLite) model, float32 or quantized (dynamic, float16, int8),
built from TFLite built-in ops and run with the LiteRT interpreter to check it. Image models
take float32 pixels; text models take token ids (the tokenizer's files and TOKENIZE.md are
written beside them: a raw-string tokenizer cannot run inside LiteRT; a text pair is packed
into one row with segment ids). The output is the task's (`Task.export_model`): class or
label probabilities, or a regression target's value in its own units."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tftune import rundir
from tftune.rundir import storage
from tftune.errors import TftuneError
from tftune.export.base import Calibration, Exported, Steps, reference
from tftune.runtime.progress import Progress, silent
from tftune.runtime.quiet import captured_stderr

MODEL_FILE = "model.tflite"
MAX_FLOAT_OPS = 3  # int8 op types kept in float, one per failed run, before giving up


class LiteRTExporter:
    name = "litert"

    def write(self, run, predictor, tmp: Path, inputs: list, quantize: str,
              calibration: Calibration, progress: Steps = silent) -> Exported:
        notes: list[str] = []
        representative = None
        if quantize == "int8":
            calibration_inputs, source = calibration()
            representative = _litert_inputs(run, predictor, calibration_inputs)
            notes.append(f"int8 ranges calibrated on {len(calibration_inputs)} examples from {source}")
        artefact = tmp / MODEL_FILE
        converter, got, runtime = _convert_and_run(
            predictor.task.export_model(predictor.model), _litert_signature(run, predictor), quantize,
            _converter_settings(quantize, representative), artefact,
            _litert_inputs(run, predictor, inputs), notes, progress)
        ref = reference(predictor, inputs, progress=progress("the Keras model", len(inputs)))
        if run.modality == "text":
            write_tokenizer_files(run, predictor, tmp)
            notes.append("takes token ids: see TOKENIZE.md (raw-string tokenizers cannot run inside LiteRT)")
        else:
            notes.append(f"takes float32 pixels [batch, {run.image_size[0]}, {run.image_size[1]}, 3] in "
                         f"0..255 (normalisation is inside the model)")
        if predictor.task.keeps_state:
            notes.append(f"returns {predictor.task.artefact_output_doc()}")
        if quantize != "none":
            notes.append("inputs and outputs stay float32" + (" (int8 kernels inside, float where LiteRT "
                         "has no int8 kernel)" if quantize == "int8" else ""))
        return Exported(artefact=artefact, converter=converter, runtime=runtime, outputs=got,
                        reference=ref, notes=notes)


def _convert_and_run(model, signature, quantize: str, settings: dict, artefact: Path,
                     examples: list[dict], notes: list[str], progress: Steps = silent
                     ) -> tuple[str, np.ndarray, str]:
    """Converts the model and runs it on `examples`: (converter, outputs, runtime). An int8
    kernel that fails at run time is kept in float and the model converted again."""
    float_ops: tuple[str, ...] = ()
    while True:
        converter = _convert_litert(model, signature, settings, artefact, notes, float_ops)
        try:
            got, runtime = _run_public(artefact, examples, progress("the LiteRT model", len(examples)))
            return converter, got, runtime
        except (RuntimeError, ValueError) as e:
            op = _failed_op(e)
            if quantize == "int8" and op and op not in float_ops and len(float_ops) < MAX_FLOAT_OPS:
                notes.append(f"the int8 {op} kernel failed at run time ({_first_line(e)[:160]}); "
                             f"{op} kept in float")
                float_ops += (op,)
                continue
            raise TftuneError(
                f"The converted LiteRT model fails at run time: {_first_line(e)[:300]}. Try another "
                f"--quantize (none, float16, dynamic), or --format savedmodel."
            ) from None


def _run_public(path: Path, examples: list[dict], progress: Progress) -> tuple[np.ndarray, str]:
    """`tftune.export.run_litert`, looked up when called: replacing that public name (the
    tests make it fail once, as an int8 kernel does on the MiniLM run) reaches the exporter."""
    from tftune import export

    with progress:
        return export.run_litert(path, examples, progress=progress)


def _litert_signature(run, predictor):
    import tensorflow as tf

    if run.modality == "image":
        return None  # the model's own: float32 [None, H, W, 3]
    length = int(predictor.preprocessor.sequence_length)
    return [{name: tf.TensorSpec([None, length], tf.int32, name=name)
             for name in predictor.model.input}]


def _litert_inputs(run, predictor, inputs) -> list[dict]:
    """One dict of numpy arrays per input, as the LiteRT signature takes them."""
    from tftune.data.pipeline import tokenize_texts
    from tftune.inference.predictor import text_batch

    if run.modality == "image":
        return [{"image": np.asarray(x, np.float32)[None]} for x in inputs]
    tokens = tokenize_texts(predictor.preprocessor, text_batch(inputs))
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
    with captured_stderr() as captured, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not float_ops:
            try:
                model.export(str(path), format="litert", input_signature=signature, verbose=False, **settings)
                return "keras.Model.export(format='litert'), TFLite built-in ops only"
            except Exception as keras_error:  # keras raises ValueError, ConverterError, ...
                notes.append(f"Keras's LiteRT export failed ({_first_line(keras_error)[:200]}); "
                             f"converted with tf.lite.TFLiteConverter.from_saved_model instead")
        try:
            return _convert_from_saved_model(model, signature, settings, path, float_ops)
        except Exception as e:
            native = [l for l in captured.text().splitlines() if "error" in l.lower()][:1]
            raise TftuneError(
                f"LiteRT conversion failed: {_first_line(e)[:300]}"
                f"{' / ' + native[0][:200] if native else ''}. The model may use ops without "
                f"LiteRT built-in kernels; --format savedmodel serves it with full TensorFlow."
            ) from None


def _convert_from_saved_model(model, signature, settings: dict, path: Path,
                              float_ops: tuple[str, ...]) -> str:
    """`_convert_litert`'s fallback and its selective quantization: through a SavedModel of
    the model and `tf.lite.TFLiteConverter.from_saved_model`."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="tftune-litert-") as work:
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


def run_litert(path: Path, examples: list[dict],
               progress: Optional[Callable[[int], object]] = None) -> tuple[np.ndarray, str]:
    """Runs the LiteRT model's serving signature on each example: ([n, classes] outputs,
    the interpreter's name); `progress(examples run so far)` after each.

    Example keys are matched to the signature's input names exactly, or as their suffix
    (a converter may prefix them with the function's argument name)."""
    # The runtime prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." natively.
    with captured_stderr():
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
            if progress is not None:
                progress(len(out))
    return np.stack(out), runtime


def _failed_op(error: BaseException) -> Optional[str]:
    """The op type in a LiteRT runtime error such as 'Node number 480 (DIV) failed to invoke'."""
    match = re.search(r"Node number \d+ \(([A-Z0-9_]+)\) failed to invoke", str(error))
    return match.group(1) if match else None


def write_tokenizer_files(run, predictor, tmp: Path) -> None:
    """The tokenizer's files (vocabulary) and TOKENIZE.md: how to make the LiteRT inputs."""
    source = run.path / rundir.PREPROCESSOR_DIR
    storage.copy_tree(source, tmp / rundir.PREPROCESSOR_DIR)
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
    from tftune.data.pipeline import tokenize_texts
    from tftune.inference.predictor import text_batch

    inputs = ", ".join(f"`{k}`" for k in predictor.model.input)
    columns = run.config.data.text_columns
    if columns:
        sample, said = [("A triumph.", "I loved it.")], '("A triumph.", "I loved it.")'
        made = 'pre(x=(["A triumph."], ["I loved it."]))'
        packing = (f"a pair ({columns[0]!r}, {columns[1]!r}) is packed into one row: `[CLS]`-style "
                   f"start token, the first text's word pieces, the end token, the second's, the "
                   f"end token again, then padding ids up to {length} (longer pairs are cut, "
                   f"{getattr(pre, 'truncate', 'round_robin')!r})")
        segments = "0 for the start token, the first text and its end token, 1 for the rest"
    else:
        sample, said, made = ["A triumph."], '"A triumph."', 'pre(["A triumph."])'
        packing = (f"`[CLS]`-style start token, the text's word pieces, the end token, then "
                   f"padding ids up to {length} (texts longer than that are cut)")
        segments = "all 0 for a single text"
    example = tokenize_texts(pre, text_batch(sample))
    shown = {k: np.asarray(v, np.int32)[0][:8].tolist() for k, v in example.items()}
    files = ", ".join(f"`{f.name}`" for f in vocab_files) or "(none)"
    rundir.write_text(tmp / "TOKENIZE.md", f"""# Tokenizing for `model.tflite`

A LiteRT model cannot run this text tokenizer, so `model.tflite` takes token ids. Its
signature `serving_default` takes {inputs}: int32 `[batch, {length}]` each, and returns
{predictor.task.artefact_output_doc()}.

Tokenizer: KerasHub `{type(tok).__name__}` (`{type(pre).__name__}`), vocabulary file(s):
{files}; lowercase: {getattr(tok, 'lowercase', 'n/a')}; special tokens: {', '.join(special) or 'n/a'}.

- `token_ids`: {packing};
- `padding_mask`: 1 for real tokens (including the special ones), 0 for padding;
- `segment_ids` (if listed above): {segments}.

{said} becomes (first 8 of {length}): {json.dumps(shown)}

The same tokenizer in Python, from the `{rundir.PREPROCESSOR_DIR}/` folder here:

```python
import keras_hub, numpy as np
pre = keras_hub.models.TextClassifierPreprocessor.from_preset("{rundir.PREPROCESSOR_DIR}")
inputs = {{k: np.asarray(v, np.int32) for k, v in {made}.items()}}  # [1, {length}] each
```

On a device, use a tokenizer of the same kind with these files and settings, and check its
ids against the example above.
""")
