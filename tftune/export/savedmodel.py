"""`--format savedmodel`: a SavedModel for TF Serving that takes raw inputs (encoded image
files or texts) and returns `probabilities` and `label`; checked from a fresh Python process
that imports only TensorFlow, and described in SERVING.md."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tftune import rundir
from tftune.export.base import Calibration, Exported, ExportVerificationError, Steps, reference
from tftune.runtime.progress import silent
from tftune.runtime.quiet import captured_stderr

SAVEDMODEL_DIR = "saved_model"
PAIR_INPUTS = ("text_a", "text_b")  # a text-pair run's signature: its two data.text_columns


def input_names(modality: str, pairs: bool = False) -> tuple[str, ...]:
    """The serving signature's string inputs: `images`, `texts`, or `text_a` and `text_b`."""
    if modality == "image":
        return ("images",)
    return PAIR_INPUTS if pairs else ("texts",)


def serving_module(model, class_names, modality: str, image_size=(224, 224), preprocessor=None,
                   task=None, pairs: bool = False):
    """A `tf.Module` whose `serve` takes raw inputs and returns the task's outputs
    (`Task.serving_outputs`; classification, the default: `probabilities` and `label`).

    Images: a 1-D string tensor `images` of encoded files (PNG, JPEG, BMP, GIF), decoded and
    resized inside the graph with `tftune.data.images.decode_image`, as in training.
    Texts: a 1-D string tensor `texts`, tokenised inside the graph by the run's KerasHub
    preprocessor (TensorFlow Text ops); with `pairs`, two (`text_a`, `text_b`) packed
    `[CLS] a [SEP] b [SEP]` by the preprocessor, as in training. Only the model's
    `tf.Variable`s are tracked, once each (Keras's own `ExportArchive` stores every weight
    twice on TensorFlow: keras#23553).
    """
    import tensorflow as tf

    from tftune.data.images import decode_image
    from tftune.data.pipeline import tokenize_texts

    if task is None:
        from tftune.tasks import Classification

        task = Classification(class_names)
    module = tf.Module()
    module.weights = [v.value for v in model.variables]

    if modality == "image":
        size = tuple(int(s) for s in image_size)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(images):
            pixels = tf.map_fn(lambda data: decode_image(data, size), images,
                               fn_output_signature=tf.TensorSpec((*size, 3), tf.float32))
            return task.serving_outputs(model(pixels, training=False))
    elif pairs:
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=n) for n in PAIR_INPUTS])
        def serve(text_a, text_b):
            return task.serving_outputs(model(tokenize_texts(preprocessor, (text_a, text_b)),
                                              training=False))
    else:
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def serve(texts):
            return task.serving_outputs(model(preprocessor(texts), training=False))

    module.serve = serve
    return module


_FRESH_PROCESS_CALL = r"""
import base64, json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
request = json.load(open(sys.argv[1]))
if request["text"]:
    import tensorflow_text  # noqa: F401  registers the tokenizer's ops before loading
loaded = tf.saved_model.load(request["path"])
serve = loaded.signatures["serving_default"]
inputs = {k: [base64.b64decode(v) for v in vs] for k, vs in request["inputs"].items()}
n = len(next(iter(inputs.values())))
outputs = {}
for start in range(0, n, 32):
    out = serve(**{k: tf.constant(v[start:start + 32], dtype=tf.string) for k, v in inputs.items()})
    for name, value in out.items():
        value = value.numpy()
        outputs.setdefault(name, []).extend(
            [v.decode("utf-8") for v in value] if value.dtype == object else value.tolist())
    print(min(start + 32, n), flush=True)  # examples served so far: the caller's progress
json.dump(outputs, open(request["output"], "w"))
"""


def serve_in_fresh_process(path: Path, inputs: dict[str, list[bytes]], text: bool,
                           timeout: float = 900,
                           progress: Optional[Callable[[int], object]] = None) -> dict:
    """Loads the SavedModel with `tf.saved_model.load` in a new Python process that imports
    only TensorFlow (and TensorFlow Text for `text` models), calls `serving_default` with the
    string tensors `inputs` (name -> values) and returns every output: numpy arrays, or lists
    of str for string outputs. Proves the artefact needs nothing of tftune. `progress(n)` is
    called with the examples served so far, as the process reports them."""
    with tempfile.TemporaryDirectory(prefix="tftune-serve-check-") as work:
        request = Path(work) / "request.json"
        response = Path(work) / "response.json"
        request.write_text(json.dumps({
            "path": str(Path(path).resolve()), "text": text,
            "inputs": {k: [base64.b64encode(v).decode("ascii") for v in vs] for k, vs in inputs.items()},
            "output": str(response),
        }))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("PYTHONPATH", None)
        returncode, stderr = _run_reporting([sys.executable, "-c", _FRESH_PROCESS_CALL, str(request)],
                                            work, env, timeout, progress)
        if returncode != 0:
            last = [l for l in stderr.strip().splitlines() if l.strip()][-1:] or ["(no output)"]
            raise ExportVerificationError(
                f"The SavedModel at {path} does not load and run in a fresh Python process: "
                f"{last[0]}. Nothing was written."
            )
        answer = json.loads(response.read_text())
    return {k: v if v and isinstance(v[0], str) else np.asarray(v) for k, v in answer.items()}


def _run_reporting(cmd: list[str], cwd: str, env: dict, timeout: float,
                   progress: Optional[Callable[[int], object]]) -> tuple[int, str]:
    """Runs `cmd`, passing each whole number it prints on stdout to `progress`; (exit code,
    stderr). Raises subprocess.TimeoutExpired (after killing it) past `timeout` seconds."""
    timed_out = threading.Event()
    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True) as proc:

        def kill():
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            for line in proc.stdout:
                if progress is not None and line.strip().isdigit():
                    progress(int(line))
            proc.wait()
        finally:
            timer.cancel()
        if timed_out.is_set():
            raise subprocess.TimeoutExpired(cmd, timeout)
        err.seek(0)
        return proc.returncode, err.read()


def call_savedmodel_in_fresh_process(path: Path, modality: str, raw_inputs: list[bytes],
                                     timeout: float = 900) -> tuple[np.ndarray, list[str]]:
    """(probabilities, labels) of a classifier's SavedModel on one-input `raw_inputs`
    (encoded images or UTF-8 texts), from `serve_in_fresh_process`."""
    served = serve_in_fresh_process(path, {input_names(modality)[0]: raw_inputs},
                                    modality == "text", timeout)
    return np.asarray(served["probabilities"], np.float32), served["label"]


class SavedModelExporter:
    name = "savedmodel"

    def write(self, run, predictor, tmp: Path, inputs: list, quantize: str,
              calibration: Calibration, progress: Steps = silent) -> Exported:
        import tensorflow as tf

        from tftune.inference.predictor import encode_png

        task = predictor.task
        artefact = tmp / SAVEDMODEL_DIR
        module = serving_module(predictor.model, run.class_names, run.modality, run.image_size,
                                predictor.preprocessor, task=task, pairs=predictor.pairs)
        with captured_stderr():
            tf.saved_model.save(module, str(artefact),
                                signatures={"serving_default": module.serve.get_concrete_function()})
        notes = []
        names = input_names(run.modality, predictor.pairs)
        if run.modality == "image":
            raw = [encode_png(x.astype(np.uint8)) for x in inputs]  # pixels are whole 0..255 values
            with progress("the Keras model", len(raw)) as shown:
                ref = predictor.predict(raw, progress=shown.advance)
            feeds = {names[0]: raw}
        else:
            ref = reference(predictor, inputs, progress=progress("the Keras model", len(inputs)))
            rows = inputs if predictor.pairs else [(t,) for t in inputs]
            feeds = {n: [row[j].encode("utf-8") for row in rows] for j, n in enumerate(names)}
            notes.append("the serving graph uses TensorFlow Text ops: `import tensorflow_text` "
                         "before tf.saved_model.load")
        with progress("the SavedModel (a fresh Python process)", len(inputs)) as shown:
            served = serve_in_fresh_process(artefact, feeds, run.modality == "text", progress=shown)
        problem = task.check_served(served)
        if problem:
            raise ExportVerificationError(f"The SavedModel is inconsistent: {problem}. Nothing was written.")
        rundir.write_text(tmp / "SERVING.md", serving_note(run, predictor))
        return Exported(
            artefact=artefact,
            converter=f"tf.saved_model.save of a tf.Module (serve: {', '.join(names)} -> "
                      f"{', '.join(sorted(served))})",
            runtime="tf.saved_model.load in a fresh Python process",
            outputs=np.asarray(served[task.prediction_output], np.float32), reference=ref,
            notes=notes,
        )


def serving_note(run, predictor) -> str:
    """SERVING.md: the signature, and how to call it from Python and TF Serving."""
    task = predictor.task
    if run.modality == "image":
        call = ('images = [open("photo.jpg", "rb").read()]\n'
                'out = serve(images=tf.constant(images))')
        rest = ('{"signature_name": "serving_default", "instances": [{"b64": "<base64 of the image file>"}]}')
        load = "import tensorflow as tf"
        what = (f"`images`: a 1-D string tensor of encoded image files (PNG, JPEG, BMP, GIF). They "
                f"are decoded (3 channels, first frame) and resized to {run.image_size[0]}x"
                f"{run.image_size[1]} inside the graph, as in training.")
    else:
        ops = ("with TensorFlow Text ops: a process that loads this model must `import "
               "tensorflow_text` first (else: `Op type not registered 'RegexSplitWithOffsets'`), "
               "and a TF Serving binary must include the TF Text ops.")
        length = predictor.preprocessor.sequence_length
        load = ("import tensorflow as tf\n"
                "import tensorflow_text  # registers the tokenizer ops the graph uses")
        if predictor.pairs:
            first, second = run.config.data.text_columns
            a, b = PAIR_INPUTS
            call = (f'out = serve({a}=tf.constant(["A triumph."]), '
                    f'{b}=tf.constant(["I loved every minute."]))')
            rest = (f'{{"signature_name": "serving_default", "instances": '
                    f'[{{"{a}": "A triumph.", "{b}": "I loved every minute."}}]}}')
            what = (f"two 1-D string tensors of the same length, `{a}` (the run's "
                    f"{first!r} column) and `{b}` (its {second!r} column). Each pair is packed "
                    f"`[CLS] {a} [SEP] {b} [SEP]` (segment ids 0 then 1; sequence length "
                    f"{length}, truncation {getattr(predictor.preprocessor, 'truncate', 'round_robin')!r}) "
                    f"by the run's KerasHub "
                    f"preprocessor inside the graph, as in training, {ops}")
        else:
            call = 'out = serve(texts=tf.constant(["A triumph.", "Two hours I will not get back."]))'
            rest = '{"signature_name": "serving_default", "instances": ["A triumph."]}'
            what = ("`texts`: a 1-D string tensor of raw texts. They are tokenised inside the graph "
                    f"(sequence length {length}) {ops}")
    outputs = "\n".join(f"- {line}" for line in task.export_outputs_doc())
    shown = ", ".join(f'out["{n}"].numpy()' for n in _output_names(task))
    check = ("max difference and top-1 agreement" if task.agreement_kind == "top-1" else
             f"max difference of the {task.compared}" + (
                 f" and the agreement of the {task.agreement_kind}" if task.agreement_kind else ""))
    return f"""# SavedModel: `{SAVEDMODEL_DIR}/`

Signature `serving_default` (also the module's `serve` function).

Input: {what}

Outputs:
{outputs}

Python (TensorFlow only; tftune is not needed):

```python
{load}
serve = tf.saved_model.load("{SAVEDMODEL_DIR}").signatures["serving_default"]
{call}
print({shown})
```

TF Serving: copy `{SAVEDMODEL_DIR}/` to `<model_base_path>/1/`; REST request body:

```json
{rest}
```

`verification.json` holds the check made at export time ({check} against the Keras model,
from a fresh Python process).
"""


def _output_names(task) -> list[str]:
    """The task's serving output names, in the order it returns them."""
    import tensorflow as tf

    return list(task.serving_outputs(tf.zeros([1, task.output_units], tf.float32)))
