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
from pathlib import Path

import numpy as np

from tftune import rundir
from tftune.export.base import Calibration, Exported, ExportVerificationError, reference
from tftune.runtime.quiet import captured_stderr

SAVEDMODEL_DIR = "saved_model"


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


class SavedModelExporter:
    name = "savedmodel"

    def write(self, run, predictor, tmp: Path, inputs: list, quantize: str,
              calibration: Calibration) -> Exported:
        import tensorflow as tf

        from tftune.inference.predictor import encode_png

        artefact = tmp / SAVEDMODEL_DIR
        module = serving_module(predictor.model, run.class_names, run.modality, run.image_size,
                                predictor.preprocessor)
        with captured_stderr():
            tf.saved_model.save(module, str(artefact),
                                signatures={"serving_default": module.serve.get_concrete_function()})
        notes = []
        if run.modality == "image":
            raw = [encode_png(x.astype(np.uint8)) for x in inputs]  # pixels are whole 0..255 values
            ref = predictor.predict(raw)
        else:
            raw = [t.encode("utf-8") for t in inputs]
            ref = reference(predictor, inputs)
            notes.append("the serving graph uses TensorFlow Text ops: `import tensorflow_text` "
                         "before tf.saved_model.load")
        got, labels = call_savedmodel_in_fresh_process(artefact, run.modality, raw)
        if labels != [run.class_names[i] for i in np.argmax(got, axis=1)]:
            raise ExportVerificationError(
                "The SavedModel's `label` output does not name the most probable class. Nothing was written."
            )
        rundir.write_text(tmp / "SERVING.md", serving_note(run, predictor))
        return Exported(
            artefact=artefact,
            converter="tf.saved_model.save of a tf.Module (serve: raw inputs -> probabilities, label)",
            runtime="tf.saved_model.load in a fresh Python process", outputs=got, reference=ref,
            notes=notes,
        )


def serving_note(run, predictor) -> str:
    """SERVING.md: the signature, and how to call it from Python and TF Serving."""
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
