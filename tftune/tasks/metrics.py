"""Keras metrics the tasks report during training (streaming, exact under `tf.distribute`:
every state is a sum, reduced across replicas by Keras).

- `ScaledRMSE` / `ScaledMAE`: a regression head predicts the target standardised; these
  measure the error in the target's own units (`output * std + mean` against the label).
- `MultilabelF1`: micro or macro F1 of sigmoid outputs thresholded at 0.5 (the run's tuned
  thresholds are chosen after training, see `tftune.tasks.multilabel`).
"""

from __future__ import annotations

import keras
from keras import ops


class _Scaled(keras.metrics.Metric):
    def __init__(self, mean: float = 0.0, std: float = 1.0, name: str = "scaled", **kwargs):
        super().__init__(name=name, **kwargs)
        self.mean, self.std = float(mean), float(std)
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def _error(self, error):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        value = ops.reshape(ops.cast(y_pred, "float32"), (-1,)) * self.std + self.mean
        error = self._error(value - ops.reshape(ops.cast(y_true, "float32"), (-1,)))
        weight = ops.ones_like(error) if sample_weight is None else ops.reshape(
            ops.cast(sample_weight, "float32"), (-1,))
        self.total.assign_add(ops.sum(error * weight))
        self.count.assign_add(ops.sum(weight))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="tftune")
class ScaledRMSE(_Scaled):
    def _error(self, error):
        return ops.square(error)

    def result(self):
        return ops.sqrt(self.total / ops.maximum(self.count, 1e-12))


@keras.saving.register_keras_serializable(package="tftune")
class ScaledMAE(_Scaled):
    def _error(self, error):
        return ops.abs(error)

    def result(self):
        return self.total / ops.maximum(self.count, 1e-12)


@keras.saving.register_keras_serializable(package="tftune")
class MultilabelF1(keras.metrics.Metric):
    """F1 over labels of `y_pred >= threshold`: `micro` pools every label's hits, `macro`
    averages the labels' F1 (a label never true nor predicted counts as 0, as in
    `tftune.evaluation.multilabel`)."""

    def __init__(self, num_labels: int, average: str = "micro", threshold: float = 0.5,
                 name: str = "f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_labels, self.average, self.threshold = int(num_labels), average, float(threshold)
        shape = (self.num_labels,)
        self.tp = self.add_variable(shape, initializer="zeros", name="tp")
        self.fp = self.add_variable(shape, initializer="zeros", name="fp")
        self.fn = self.add_variable(shape, initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        predicted = ops.cast(ops.cast(y_pred, "float32") >= self.threshold, "float32")
        w = 1.0 if sample_weight is None else ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        self.tp.assign_add(ops.sum(w * y_true * predicted, axis=0))
        self.fp.assign_add(ops.sum(w * (1.0 - y_true) * predicted, axis=0))
        self.fn.assign_add(ops.sum(w * y_true * (1.0 - predicted), axis=0))

    def result(self):
        if self.average == "micro":
            tp, fp, fn = ops.sum(self.tp), ops.sum(self.fp), ops.sum(self.fn)
            return 2 * tp / ops.maximum(2 * tp + fp + fn, 1e-12)
        return ops.mean(2 * self.tp / ops.maximum(2 * self.tp + self.fp + self.fn, 1e-12))

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(ops.zeros_like(v))

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels, "average": self.average,
                "threshold": self.threshold}
