"""Losses the tasks need beyond Keras' own, registered so a compiled model saves and loads.

- `OneHotLoss`: integer class labels -> one-hot, then categorical cross-entropy with label
  smoothing, or Keras' categorical focal cross-entropy (Keras' sparse loss has neither).
  Labels that already are class probabilities [batch, classes] (mixup / cutmix) are taken as
  they are.
- `StandardisedLoss`: a regression target in its own units against a head that predicts it
  standardised: `(y - mean) / std` is compared with the output (MSE or Huber).

Both return one loss per example with `reduction=None`, as tftune's loop needs.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tftune")
class OneHotLoss(keras.losses.Loss):
    def __init__(self, num_classes: int, kind: str = "crossentropy", label_smoothing: float = 0.0,
                 name: str = "one_hot_loss", reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.num_classes, self.kind, self.label_smoothing = int(num_classes), kind, float(label_smoothing)
        if kind == "focal":
            self._inner = keras.losses.CategoricalFocalCrossentropy(
                label_smoothing=self.label_smoothing, reduction=None)
        else:
            self._inner = keras.losses.CategoricalCrossentropy(
                label_smoothing=self.label_smoothing, reduction=None)

    def call(self, y_true, y_pred):
        if len(y_true.shape) == 2 and y_true.shape[-1] == self.num_classes and self.num_classes > 1 \
                and "float" in str(y_true.dtype):
            return self._inner(ops.cast(y_true, y_pred.dtype), y_pred)
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        return self._inner(ops.one_hot(y_true, self.num_classes, dtype=y_pred.dtype), y_pred)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "kind": self.kind,
                "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="tftune")
class StandardisedLoss(keras.losses.Loss):
    def __init__(self, mean: float = 0.0, std: float = 1.0, kind: str = "mse", delta: float = 1.0,
                 name: str = "standardised_loss", reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.mean, self.std, self.kind, self.delta = float(mean), float(std), kind, float(delta)

    def call(self, y_true, y_pred):
        y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        target = (ops.reshape(ops.cast(y_true, "float32"), (-1,)) - self.mean) / self.std
        error = y_pred - target
        if self.kind == "huber":
            small = ops.abs(error) <= self.delta
            return ops.where(small, 0.5 * ops.square(error),
                             self.delta * (ops.abs(error) - 0.5 * self.delta))
        return ops.square(error)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "kind": self.kind,
                "delta": self.delta}
