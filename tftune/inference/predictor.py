"""A trained run as a predictor: raw images or texts in, class probabilities out.

```python
import tftune

predictor = tftune.load("runs/rt-minilm")
predictor.predict(["A triumph.", "Two hours I will not get back."])  # -> [n, classes] array
predictor.predict_labels(["A triumph."])                              # -> ["fresh"]
```
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tftune.errors import DataError
from tftune.inference.inputs import check_texts, image_files


class Predictor:
    """A trained model with the preprocessing it was trained with, and its task (what its
    outputs mean: class probabilities, a number, label probabilities with thresholds).

    Image predictors take file paths (str / Path), folders of images, encoded image bytes,
    PIL images and numpy arrays (`[H, W]`, `[H, W, C]` uint8 or float pixels in 0..255, or a
    `[N, H, W, C]` batch); each is prepared with `tftune.data.images.prepare_image`, as in
    training. Text predictors take strings, tokenised with the run's saved preprocessor;
    a text-pair run (`data.text_columns`) takes (first, second) pairs of strings.
    """

    def __init__(self, model, class_names: Sequence[str], modality: str,
                 image_size: tuple[int, int] = (224, 224), preprocessor=None, task=None,
                 pairs: bool = False):
        import tensorflow as tf

        if task is None:
            from tftune.tasks import Classification

            task = Classification(class_names)
        self.model = model
        self.task = task
        self.class_names = list(class_names)
        self.modality = modality
        self.image_size = tuple(image_size)
        self.preprocessor = preprocessor
        self.pairs = pairs
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    # -- batches already in the model's input form ---------------------------------------

    def probabilities(self, batch) -> np.ndarray:
        """The model's outputs for one prepared batch (class probabilities for
        classification): float images `[n, H, W, 3]` in 0..255, or a 1-D batch of strings
        (tokenised here, trimmed to the longest text as in training)."""
        import tensorflow as tf

        if self.modality == "text":
            from tftune.data.pipeline import tokenize_texts

            tokens = tokenize_texts(self.preprocessor, text_batch(batch))
            longest = tf.reduce_max(tf.reduce_sum(tf.cast(tokens["padding_mask"], tf.int32), axis=1))
            batch = {k: v[:, :longest] for k, v in tokens.items()}
        else:
            batch = tf.cast(batch, tf.float32)
        return np.asarray(self._forward(batch), dtype=np.float32)

    # -- raw inputs ----------------------------------------------------------------------

    def _prepare_image(self, item, index: int):
        import tensorflow as tf

        from tftune.data.images import decode_image, prepare_image

        if isinstance(item, (str, Path)):
            name = str(item)
            try:
                data = Path(item).expanduser().read_bytes()
            except OSError as e:
                raise DataError(f"Cannot read image {name}: {e.strerror or e}.") from None
        elif isinstance(item, (bytes, bytearray)):
            name, data = f"Input {index + 1} (bytes)", bytes(item)
        else:
            pixels = _pixels(item, index)
            return prepare_image(pixels, self.image_size)
        try:
            return decode_image(data, self.image_size)
        except (tf.errors.InvalidArgumentError, ValueError):
            raise DataError(
                f"{name} cannot be decoded as an image (PNG, JPEG, BMP or GIF). Replace or remove it."
            ) from None

    def _items(self, inputs) -> list:
        if self.modality == "text":
            if isinstance(inputs, (str, bytes)):
                inputs = [inputs]
            inputs = list(inputs)
            if self.pairs:
                return check_pairs(inputs)
            return check_texts(inputs)
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            return list(inputs)
        if isinstance(inputs, (str, Path, bytes, bytearray, np.ndarray)) or _is_pil(inputs):
            inputs = [inputs]
        items = []
        paths = []
        for item in inputs:
            if isinstance(item, (str, Path)):
                files = image_files([item])
                paths += files
                items += files
            else:
                items.append(item)
        if paths:
            from tftune.data.images import check_images

            check_images([str(p) for p in paths])
        return items

    def predict(self, inputs, batch_size: int = 32,
                progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """The predictions for `inputs`, in input order, as the task gives them
        (`Task.predictions`): class probabilities `[n, len(class_names)]` float32
        (classification; multilabel: per label), or values `[n]` in the target's units
        (regression).

        Every input is checked before the first batch runs (unreadable images and empty texts
        are errors naming the input). `progress(k)` is called after each batch of k inputs.
        """
        return self.task.predictions(self.outputs(inputs, batch_size, progress))

    def outputs(self, inputs, batch_size: int = 32,
                progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """The model's raw outputs `[n, units]` for `inputs` (see `predict`)."""
        import tensorflow as tf

        items = self._items(inputs)
        out = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            if self.modality == "text":
                batch = chunk
            else:
                batch = tf.stack([self._prepare_image(x, start + i) for i, x in enumerate(chunk)])
            out.append(self.probabilities(batch))
            if progress is not None:
                progress(len(chunk))
        if not out:
            return np.zeros((0, self.task.output_units), dtype=np.float32)
        return np.concatenate(out)

    def labels(self, probabilities: np.ndarray) -> list[str]:
        """The most likely class name of each row of `probabilities` (classification)."""
        return [self.class_names[i] for i in np.argmax(probabilities, axis=1)]

    def predict_labels(self, inputs, batch_size: int = 32) -> list:
        """The decision for each input (`Task.decode`): the most likely class name
        (classification), the list of labels above their thresholds (multilabel), or the
        value (regression)."""
        return self.task.decode(self.outputs(inputs, batch_size=batch_size))


def check_pairs(items: list) -> list[tuple[str, str]]:
    """(first, second) string pairs; anything else, or an empty text, is an error naming it."""
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"Input {i + 1} is {str(item)[:60]!r}: this run takes text pairs. "
                            f"Pass (first, second) tuples of strings.")
        out.append(tuple(check_texts(list(item), lambda j: f"Input {i + 1}, text {j + 1}")))
    return out


def text_batch(batch):
    """Strings, (first, second) tuples, or a tuple of two string batches (a dataset's) ->
    a string tensor or a tuple of two."""
    import tensorflow as tf

    if isinstance(batch, tuple) and len(batch) == 2 and not isinstance(batch[0], (str, bytes)) \
            and getattr(batch[0], "shape", None) is not None and len(batch[0].shape) == 1:
        return tuple(tf.convert_to_tensor(b, dtype=tf.string) for b in batch)
    items = list(batch) if not hasattr(batch, "numpy") else batch
    if isinstance(items, list) and items and isinstance(items[0], (tuple, list)):
        return tuple(tf.constant([p[j] for p in items], dtype=tf.string) for j in range(2))
    return tf.convert_to_tensor(items, dtype=tf.string)


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def _pixels(item, index: int) -> np.ndarray:
    """A PIL image or an array-like -> a `[H, W]` / `[H, W, C]` numpy array."""
    if _is_pil(item):
        image = item
        if image.mode not in ("L", "LA", "RGB", "RGBA"):
            image = image.convert("RGB")
        item = np.asarray(image)
    arr = np.asarray(item)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4)) or arr.size == 0:
        raise DataError(
            f"Input {index + 1} is an array of shape {arr.shape}. Expected an image: [H, W] or "
            f"[H, W, C] with C in 1..4, pixels in 0..255."
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"Input {index + 1} is an array of {arr.dtype}. Expected numbers (pixels in 0..255).")
    return arr


def load(run_dir: str | Path, from_adapters: bool = False) -> Predictor:
    """The predictor of the finished run in `run_dir` (see `Predictor`); `from_adapters`:
    its model rebuilt from the base and the run's adapters file (`tftune.model.adapters.rebuild`)
    instead of loaded from model.keras."""
    from tftune.rundir.reader import open_run

    run = open_run(run_dir)
    return predictor_for(run, from_adapters)


def predictor_for(run, from_adapters: bool = False) -> Predictor:
    """A `Predictor` for an opened `tftune.rundir.reader.FinishedRun`."""
    from tftune.model.adapters import rebuild

    model = rebuild(run) if from_adapters else run.load_model()
    preprocessor = run.load_preprocessor() if run.modality == "text" else None
    return Predictor(model, run.class_names, run.modality, run.image_size, preprocessor, run.task,
                     pairs=bool(run.config.data.text_columns))


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 pixels `[H, W]` / `[H, W, 3]` -> PNG bytes (used to make raw inputs for checks)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8).squeeze()).save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["Predictor", "load", "predictor_for", "encode_png", "text_batch"]
