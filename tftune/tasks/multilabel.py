"""Multi-label classification: any number of labels per example, one sigmoid each."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tftune.errors import ConfigError
from tftune.tasks.base import Task

DEFAULT_THRESHOLD = 0.5


class Multilabel(Task):
    """Labels are float32 0/1 rows over `class_names`, read from a list column (`a|b`, a JSON
    list) or from one 0/1 column per label (`data.label_columns`). The head has one sigmoid
    per label and trains with binary cross-entropy (`train.loss: focal`: Keras' binary focal
    cross-entropy; `train.label_smoothing` applies). Training reports micro / macro F1 at 0.5
    and `map` (Keras' PR-AUC per label, averaged: close to mAP); the default monitor is
    `val_map`, higher is better (it needs no threshold). Once training ends, each label's
    threshold is chosen on the validation split to maximise its F1 and kept in task.json;
    `predict` and `evaluate` use them."""

    name = "multilabel"
    activation = "sigmoid"
    keeps_state = True  # the thresholds
    tunes_on_validation = True
    min_classes = 1
    metric_names = ("micro_f1", "macro_f1", "map")
    headline = "micro_f1"
    default_monitor = "val_map"
    losses = ("auto", "crossentropy", "focal")

    def __init__(self, class_names: Sequence[str] = (), cfg=None, state: Optional[dict] = None):
        self.thresholds = [DEFAULT_THRESHOLD] * len(class_names)
        super().__init__(class_names, cfg, state)

    @property
    def output_units(self) -> int:
        return len(self.class_names)

    def check_settings(self) -> None:
        super().check_settings()
        if self.setting("class_weight", None) is not None:
            raise ConfigError("'train.class_weight' applies to single-label classification, not "
                              "to task 'multilabel'. Remove it (train.loss: focal helps rare labels).")

    # -- thresholds (task.json) --------------------------------------------------------

    def after_training(self, y_val, val_outputs) -> list[str]:
        from tftune.evaluation.multilabel import best_thresholds

        self.thresholds = best_thresholds(y_val, val_outputs, DEFAULT_THRESHOLD)
        shown = ", ".join(f"{n} {t:.3f}" for n, t in list(zip(self.class_names, self.thresholds))[:8])
        return [f"Decision thresholds chosen on the validation split (max F1 per label): {shown}"
                + (" ..." if len(self.class_names) > 8 else "")]

    def state(self) -> dict:
        return {"labels": list(self.class_names), "thresholds": [float(t) for t in self.thresholds]}

    def load_state(self, state: dict) -> None:
        thresholds = state.get("thresholds")
        if thresholds is not None:
            self.thresholds = [float(t) for t in thresholds]

    # -- labels ------------------------------------------------------------------------

    def read_labels(self, rows, data_cfg, where, known=None, skip_unknown=False):
        from tftune.data.labels import multilabel_targets

        return multilabel_targets(rows, data_cfg, where, known, skip_unknown)

    def strata(self, labels: np.ndarray) -> np.ndarray:
        return np.zeros(len(labels), np.int64)  # a seeded random split

    # -- the model ---------------------------------------------------------------------

    def loss(self, reduction: Optional[str] = "sum_over_batch_size"):
        import keras

        smoothing = self.setting("label_smoothing", 0.0)
        if self.setting("loss", "auto") == "focal":
            return keras.losses.BinaryFocalCrossentropy(label_smoothing=smoothing, reduction=reduction)
        return keras.losses.BinaryCrossentropy(label_smoothing=smoothing, reduction=reduction)

    def metrics(self) -> dict:
        import keras

        from tftune.tasks.metrics import MultilabelF1

        k = len(self.class_names)
        return {"micro_f1": MultilabelF1(k, "micro", name="micro_f1"),
                "macro_f1": MultilabelF1(k, "macro", name="macro_f1"),
                "map": keras.metrics.AUC(curve="PR", multi_label=True, num_labels=k, name="map")}

    # -- outputs -----------------------------------------------------------------------

    def _predicted(self, outputs) -> np.ndarray:
        return np.asarray(outputs) >= np.asarray(self.thresholds)[None, :]

    def decode(self, outputs: np.ndarray) -> list[list[str]]:
        return [[n for n, on in zip(self.class_names, row) if on] for row in self._predicted(outputs)]

    def prediction_rows(self, outputs):
        rows = [{"labels": labels, "probabilities": dict(zip(self.class_names, map(float, row)))}
                for labels, row in zip(self.decode(outputs), np.asarray(outputs))]
        return ["labels", *[f"prob_{c}" for c in self.class_names]], rows

    def report(self, y_true, outputs) -> dict:
        from tftune.evaluation.multilabel import multilabel_report

        return multilabel_report(y_true, outputs, self.thresholds, self.class_names)

    def evaluation_files(self, out_dir, scored) -> str:
        from tftune.evaluation.multilabel import write_files

        return write_files(out_dir, scored, self.class_names, self.thresholds)

    def serving_outputs(self, outputs) -> dict:
        import tensorflow as tf

        probabilities = tf.cast(outputs, tf.float32)
        return {"probabilities": probabilities,
                "predicted": probabilities >= tf.constant(self.thresholds, tf.float32)[None, :]}

    agreement_kind = "thresholded decisions (every label of an example)"

    def _decisions(self, outputs: np.ndarray) -> np.ndarray:
        return self._predicted(np.asarray(outputs, np.float32))

    def compare(self, reference: np.ndarray, exported: np.ndarray) -> dict:
        """Probabilities' differences, and the share of examples whose thresholded decisions
        agree on every label."""
        out = super().compare(reference, exported)
        same = np.all(self._decisions(exported) == self._decisions(reference), axis=1)
        return {**out, "agreement": float(np.mean(same))}

    def check_served(self, served: dict) -> Optional[str]:
        expected = np.asarray(served["probabilities"], np.float32) >= np.asarray(self.thresholds, np.float32)
        if not np.array_equal(np.asarray(served["predicted"], bool), expected):
            return "its `predicted` output is not `probabilities >= thresholds`"
        return None

    def export_outputs_doc(self) -> list[str]:
        shown = ", ".join(f"{n} {t:.3f}" for n, t in zip(self.class_names, self.thresholds))
        return [f"`probabilities`: float32 `[batch, {len(self.class_names)}]`, one sigmoid per label "
                f"in the order of `classes.json`;",
                f"`predicted`: bool `[batch, {len(self.class_names)}]`, `probabilities >= "
                f"thresholds`, the per-label decision thresholds chosen on the validation split "
                f"(also in `task.json`): {shown}."]

    def artefact_output_doc(self) -> str:
        return (f"float32 `[batch, {len(self.class_names)}]` per-label probabilities in the order of "
                f"`classes.json` (a label is predicted when its probability is >= its threshold "
                f"in `task.json`)")
