"""Single-label classification: a softmax over the classes, sparse categorical cross-entropy
(optionally label-smoothed, focal, or weighted by class)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tftune.errors import ConfigError
from tftune.tasks.base import Task


class Classification(Task):
    """One class per example. Labels are int32 indices into `class_names`; the head outputs
    class probabilities; training reports loss and accuracy; `evaluate` writes the per-class
    report of `tftune.evaluation.metrics.classification_report`; the SavedModel returns
    `probabilities` and `label`; an export is compared on probabilities and top-1 agreement.

    `train.loss: focal` uses Keras' categorical focal cross-entropy, `train.label_smoothing`
    smooths the one-hot targets, and `train.class_weight` (`balanced` or {class: weight})
    weighs each example's loss by its class in tftune's loop."""

    name = "classification"
    activation = "softmax"
    metric_names = ("accuracy",)
    headline = "accuracy"
    default_monitor = "val_accuracy"
    losses = ("auto", "crossentropy", "focal")
    image_folders = True
    balanced_sampling = True
    mixable = True

    def __init__(self, class_names: Sequence[str] = (), cfg=None, state: Optional[dict] = None):
        self.class_weights: Optional[list[float]] = None
        super().__init__(class_names, cfg, state)

    @property
    def output_units(self) -> int:
        return len(self.class_names)

    # -- class weights -----------------------------------------------------------------

    @property
    def needs_train_labels(self) -> bool:
        return self.setting("class_weight", None) == "balanced"

    def fit(self, train_labels: np.ndarray) -> None:
        """Turns `train.class_weight` into one weight per class: `balanced` gives class c
        `n / (classes * count_c)` (Keras' and scikit-learn's convention), a mapping its own
        weights (1 for classes it leaves out)."""
        setting = self.setting("class_weight", None)
        if setting is None:
            self.class_weights = None
        elif setting == "balanced":
            counts = np.bincount(np.asarray(train_labels, np.int64), minlength=len(self.class_names))
            n, k = counts.sum(), len(self.class_names)
            self.class_weights = [float(n / (k * c)) if c else 0.0 for c in counts]
        else:
            unknown = sorted(set(setting) - set(self.class_names))
            if unknown:
                raise ConfigError(
                    f"Invalid value for 'train.class_weight': {unknown} are not classes of the "
                    f"data. Expected weights for some of: {', '.join(self.class_names)}."
                )
            bad = {k: v for k, v in setting.items() if not v >= 0}
            if bad:
                raise ConfigError(f"Invalid value for 'train.class_weight': weights must be >= 0. "
                                  f"Received: {bad}")
            self.class_weights = [float(setting.get(c, 1.0)) for c in self.class_names]

    def state(self) -> dict:
        return {"class_weights": self.class_weights} if self.class_weights is not None else {}

    def load_state(self, state: dict) -> None:
        self.class_weights = state.get("class_weights")

    def example_weights(self, y):
        if self.class_weights is None:
            return None
        import tensorflow as tf

        table = tf.constant(self.class_weights, tf.float32)
        if self._mixed(y):  # class probabilities: the expected weight
            return tf.reduce_sum(tf.cast(y, tf.float32) * table, axis=-1)
        return tf.gather(table, tf.cast(tf.reshape(y, [-1]), tf.int32))

    def metric_labels(self, y):
        import tensorflow as tf

        return tf.argmax(y, axis=-1, output_type=tf.int32) if self._mixed(y) else y

    def _mixed(self, y) -> bool:
        """Whether `y` holds class probabilities (mixed labels) rather than class indices."""
        return self.soft_labels and y.dtype.is_floating and y.shape.rank == 2 and y.shape[-1] != 1

    # -- labels ------------------------------------------------------------------------

    def read_labels(self, rows, data_cfg, where, known=None, skip_unknown=False):
        from tftune.data.labels import class_labels, known_class_labels

        raw = [str(r.get(data_cfg.label_column) or "").strip() for r in rows]
        if known is not None:
            labels, keep = known_class_labels(raw, known, skip_unknown, where)
            return list(known), labels, keep
        return class_labels(raw, data_cfg, where)

    # -- the model ---------------------------------------------------------------------

    def loss(self, reduction: Optional[str] = "sum_over_batch_size"):
        import keras

        kind = self.setting("loss", "auto")
        smoothing = self.setting("label_smoothing", 0.0)
        if kind in ("auto", "crossentropy") and not smoothing and not self.soft_labels:
            return keras.losses.SparseCategoricalCrossentropy(reduction=reduction)
        from tftune.tasks.losses import OneHotLoss

        return OneHotLoss(len(self.class_names), "focal" if kind == "focal" else "crossentropy",
                          smoothing, reduction=reduction)

    def metrics(self) -> dict:
        import keras

        return {"accuracy": keras.metrics.SparseCategoricalAccuracy(name="accuracy")}

    # -- outputs -----------------------------------------------------------------------

    def decode(self, outputs: np.ndarray) -> list[str]:
        return [self.class_names[i] for i in np.argmax(outputs, axis=1)]

    def prediction_rows(self, outputs):
        rows = [{"label": label, "probabilities": dict(zip(self.class_names, map(float, row)))}
                for label, row in zip(self.decode(outputs), np.asarray(outputs))]
        return ["label", *[f"prob_{c}" for c in self.class_names]], rows

    def report(self, y_true: np.ndarray, outputs: np.ndarray) -> dict:
        from tftune.evaluation.metrics import classification_report

        return classification_report(np.asarray(y_true, np.int64), outputs, self.class_names)

    def evaluation_files(self, out_dir, scored):
        from tftune.evaluation.classification import write_files

        scored.y_true = np.asarray(scored.y_true, np.int64)
        return write_files(out_dir, scored, self.class_names)

    def serving_outputs(self, outputs) -> dict:
        import tensorflow as tf

        probabilities = tf.cast(outputs, tf.float32)
        names = tf.constant(self.class_names)
        return {"probabilities": probabilities,
                "label": tf.gather(names, tf.argmax(probabilities, axis=1))}

    def check_served(self, served: dict) -> Optional[str]:
        if list(served["label"]) != self.decode(served["probabilities"]):
            return "its `label` output does not name the most probable class"
        return None

    def export_outputs_doc(self) -> list[str]:
        return [f"`probabilities`: float32 `[batch, {len(self.class_names)}]`, in the class order of "
                f"`classes.json` ({', '.join(self.class_names)});",
                "`label`: string `[batch]`, the most probable class."]

    def artefact_output_doc(self) -> str:
        return (f"float32 `[batch, {len(self.class_names)}]` class probabilities in the order of "
                f"`classes.json`")

    def _decisions(self, outputs: np.ndarray) -> np.ndarray:
        return np.argmax(outputs, axis=1)
