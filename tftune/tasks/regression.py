"""Regression: one number per example, predicted standardised and returned in its own units."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tftune.errors import DataError
from tftune.tasks.base import Task

STRATA = 5  # the seeded split keeps the target's quintiles in proportion


class Regression(Task):
    """A numeric target (`data.label_column`). The training split's mean and std are stored
    in task.json; the head (Dense(1), linear) predicts `(y - mean) / std`, so its scale does
    not depend on the target's units, and every output leaves tftune (`predict`, `evaluate`,
    the SavedModel) as `output * std + mean`. Loss: MSE (`train.loss: auto | mse`) or Huber
    (`huber`, threshold `train.huber_delta` in std units). Training reports RMSE and MAE in
    the target's units; the default monitor is `val_rmse` (lower is better)."""

    name = "regression"
    activation = "linear"
    metric_names = ("rmse", "mae")
    minimised = ("loss", "rmse", "mae")
    headline = "rmse"
    default_monitor = "val_rmse"
    min_classes = 0
    losses = ("auto", "mse", "huber")
    keeps_state = True

    def __init__(self, class_names: Sequence[str] = (), cfg=None, state: Optional[dict] = None):
        self.mean, self.std = 0.0, 1.0
        self.target = cfg.data.label_column if cfg is not None else "target"
        super().__init__(class_names, cfg, state)

    @property
    def output_units(self) -> int:
        return 1

    # -- standardisation (task.json) ---------------------------------------------------

    @property
    def needs_train_labels(self) -> bool:
        return True

    def fit(self, train_labels: np.ndarray) -> None:
        y = np.asarray(train_labels, np.float64).reshape(-1)
        if len(y) == 0 or not np.all(np.isfinite(y)):
            raise DataError("The regression targets of the training split must be finite numbers.")
        self.mean = float(y.mean())
        std = float(y.std())
        self.std = std if std > 0 else 1.0  # a constant target: predict it, unscaled

    def state(self) -> dict:
        return {"target": self.target, "mean": self.mean, "std": self.std}

    def load_state(self, state: dict) -> None:
        self.target = state.get("target", self.target)
        self.mean, self.std = float(state["mean"]), float(state["std"])

    def values(self, outputs) -> np.ndarray:
        """Model outputs -> predictions in the target's units, `[n]` float32."""
        out = np.asarray(outputs, np.float64).reshape(len(outputs), -1)[:, 0]
        return (out * self.std + self.mean).astype(np.float32)

    # -- labels ------------------------------------------------------------------------

    def read_labels(self, rows, data_cfg, where, known=None, skip_unknown=False):
        from tftune.data.labels import regression_targets

        return [], regression_targets(rows, data_cfg.label_column, where), np.ones(len(rows), bool)

    def strata(self, labels: np.ndarray) -> np.ndarray:
        y = np.asarray(labels, np.float64)
        if len(y) < 2 * STRATA:
            return np.zeros(len(y), np.int64)
        edges = np.quantile(y, np.linspace(0, 1, STRATA + 1)[1:-1])
        return np.searchsorted(edges, y, side="right").astype(np.int64)

    # -- the model ---------------------------------------------------------------------

    def check_settings(self) -> None:
        super().check_settings()
        from tftune.errors import ConfigError

        if self.setting("huber_delta", 1.0) <= 0:
            raise ConfigError(f"Invalid value for 'train.huber_delta'. Expected a number > 0. "
                              f"Received: {self.setting('huber_delta', 1.0)!r}")
        for key, default in (("class_weight", None), ("label_smoothing", 0.0)):
            if self.setting(key, default) not in (None, 0.0):
                raise ConfigError(f"'train.{key}' applies to classification, not to task "
                                  f"'regression'. Remove it.")

    def loss(self, reduction: Optional[str] = "sum_over_batch_size"):
        from tftune.tasks.losses import StandardisedLoss

        kind = "huber" if self.setting("loss", "auto") == "huber" else "mse"
        return StandardisedLoss(self.mean, self.std, kind, self.setting("huber_delta", 1.0),
                                reduction=reduction)

    def metrics(self) -> dict:
        from tftune.tasks.metrics import ScaledMAE, ScaledRMSE

        return {"rmse": ScaledRMSE(self.mean, self.std, name="rmse"),
                "mae": ScaledMAE(self.mean, self.std, name="mae")}

    # -- outputs -----------------------------------------------------------------------

    def predictions(self, outputs: np.ndarray) -> np.ndarray:
        return self.values(outputs)

    def decode(self, outputs: np.ndarray) -> list[float]:
        return [float(v) for v in self.values(outputs)]

    def prediction_rows(self, outputs):
        return [self.target], [{self.target: round(v, 6)} for v in self.decode(outputs)]

    def report(self, y_true: np.ndarray, outputs: np.ndarray) -> dict:
        from tftune.evaluation.regression import regression_report

        return {"target": self.target, **regression_report(y_true, self.values(outputs))}

    def evaluation_files(self, out_dir, scored) -> str:
        from tftune.evaluation.regression import write_files

        return write_files(out_dir, scored, self.values(scored.outputs))

    def serving_outputs(self, outputs) -> dict:
        import tensorflow as tf

        return {"value": tf.cast(outputs, tf.float32)[:, 0] * self.std + self.mean}

    prediction_output = "value"
    compared = "values / target std"
    agreement_kind = None  # a value has no decision to agree on: the difference is the check

    def export_model(self, model):
        """The model with `output * std + mean` as a last layer (Keras' `Rescaling`): the
        `.keras` and LiteRT artefacts return values in the target's units."""
        import keras

        value = keras.layers.Rescaling(scale=self.std, offset=self.mean, dtype="float32",
                                       name="to_target_units")(model.output)
        return keras.Model(model.input, value, name=model.name)

    def compare(self, reference: np.ndarray, exported: np.ndarray) -> dict:
        """Differences of values in the target's units (`predictions`, or an artefact's
        `[n, 1]` outputs), relative to its std: `max_abs_diff` 0.01 is a hundredth of a std."""
        ref = np.asarray(reference, np.float64).reshape(len(reference), -1)[:, 0]
        got = np.asarray(exported, np.float64).reshape(len(exported), -1)[:, 0]
        diff = np.abs(got - ref) / self.std
        return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                "agreement": None}

    def export_outputs_doc(self) -> list[str]:
        return [f"`value`: float32 `[batch]`, the predicted {self.target!r} in its own units "
                f"(the model's standardised output `* {self.std:.6g} + {self.mean:.6g}`, the "
                f"training split's std and mean, inside the graph)."]

    def artefact_output_doc(self) -> str:
        return (f"float32 `[batch, 1]`: the predicted {self.target!r} in its own units "
                f"(de-standardised inside the model)")

    def summary(self, metrics: dict) -> str:
        return super().summary(metrics) + f" ({self.target}: mean {self.mean:.4g}, std {self.std:.4g})"
