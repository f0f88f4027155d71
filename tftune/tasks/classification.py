"""Single-label classification: a softmax over the classes, sparse categorical cross-entropy."""

from __future__ import annotations

from typing import Optional

import numpy as np

from tftune.tasks.base import Task


class Classification(Task):
    """One class per example. Labels are int32 indices into `class_names`; the head outputs
    class probabilities; training reports loss and accuracy; `evaluate` writes the per-class
    report of `tftune.evaluation.metrics.classification_report`; the SavedModel returns
    `probabilities` and `label`; an export is compared on probabilities and top-1 agreement."""

    name = "classification"
    activation = "softmax"
    metric_names = ("accuracy",)
    headline = "accuracy"

    @property
    def output_units(self) -> int:
        return len(self.class_names)

    def loss(self, reduction: Optional[str] = "sum_over_batch_size"):
        import keras

        return keras.losses.SparseCategoricalCrossentropy(reduction=reduction)

    def metrics(self) -> dict:
        import keras

        return {"accuracy": keras.metrics.SparseCategoricalAccuracy(name="accuracy")}

    def decode(self, outputs: np.ndarray) -> list[str]:
        return [self.class_names[i] for i in np.argmax(outputs, axis=1)]

    def report(self, y_true: np.ndarray, outputs: np.ndarray) -> dict:
        from tftune.evaluation.metrics import classification_report

        return classification_report(y_true, outputs, self.class_names)

    def serving_outputs(self, outputs) -> dict:
        import tensorflow as tf

        probabilities = tf.cast(outputs, tf.float32)
        names = tf.constant(self.class_names)
        return {"probabilities": probabilities,
                "label": tf.gather(names, tf.argmax(probabilities, axis=1))}

    def _decisions(self, outputs: np.ndarray) -> np.ndarray:
        return np.argmax(outputs, axis=1)
