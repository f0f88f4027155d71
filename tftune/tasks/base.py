"""The `Task` interface every problem type implements (see `tftune.tasks`)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from tftune.errors import ConfigError, did_you_mean


class Task:
    """What a problem type means for the head, the loss, the metrics and the outputs.

    Subclasses set `name`, `activation` and `metric_names` (the metrics training reports
    besides `loss`, as Keras metric names), and implement the methods below. An instance is
    bound to the run's labels (`class_names` for classification).
    """

    name: str = ""
    activation: str = "linear"
    metric_names: tuple[str, ...] = ()
    minimised: tuple[str, ...] = ("loss",)  # metrics that are better when lower
    headline: str = "loss"  # the metric a run's summary line prints

    def __init__(self, class_names: Sequence[str] = ()):
        self.class_names = list(class_names)

    # -- the model --------------------------------------------------------------------

    @property
    def output_units(self) -> int:
        """How many units the head's last Dense layer has."""
        raise NotImplementedError

    def loss(self, reduction: Optional[str] = "sum_over_batch_size"):
        """A fresh Keras loss; `reduction=None` gives per-example losses (tftune's loop)."""
        raise NotImplementedError

    def metrics(self) -> dict[str, Any]:
        """Fresh Keras metrics keyed by `metric_names` (created in a strategy scope by the
        caller when there is one)."""
        raise NotImplementedError

    # -- monitors ----------------------------------------------------------------------

    @property
    def monitors(self) -> tuple[str, ...]:
        """Every metric a stage can monitor: training's and validation's."""
        names = ("loss", *self.metric_names)
        return (*names, *(f"val_{n}" for n in names))

    def mode(self, monitor: str) -> str:
        """'min' when lower values of `monitor` are better, else 'max' (decided here only)."""
        base = monitor[4:] if monitor.startswith("val_") else monitor
        return "min" if base in self.minimised else "max"

    def better(self, monitor: str, a: float, b: Optional[float]) -> bool:
        """Whether value `a` of `monitor` beats `b` (None is beaten by anything)."""
        if b is None:
            return True
        return a < b if self.mode(monitor) == "min" else a > b

    def check_monitor(self, monitor: str, where: str) -> None:
        """Raises ConfigError unless training reports `monitor`."""
        if monitor not in self.monitors:
            raise ConfigError(
                f"Invalid value for '{where}': {monitor!r} is not reported by training."
                f"{did_you_mean(monitor, self.monitors)} Expected one of: "
                f"{', '.join(self.monitors)}."
            )

    # -- outputs -----------------------------------------------------------------------

    def decode(self, outputs: np.ndarray) -> list:
        """The label (or value) of each row of model outputs, for `predict`."""
        raise NotImplementedError

    def report(self, y_true: np.ndarray, outputs: np.ndarray) -> dict:
        """The evaluation report's metrics for true labels and model outputs."""
        raise NotImplementedError

    def serving_outputs(self, outputs) -> dict:
        """The export signature's outputs (TensorFlow tensors) for a batch of model outputs."""
        raise NotImplementedError

    def compare(self, reference: np.ndarray, exported: np.ndarray) -> dict:
        """How far an export's outputs are from the Keras model's: `max_abs_diff`,
        `mean_abs_diff` and `agreement` (share of equal decisions)."""
        diff = np.abs(np.asarray(exported, np.float64) - np.asarray(reference, np.float64))
        return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                "agreement": float(np.mean(self._decisions(exported) == self._decisions(reference)))}

    def _decisions(self, outputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        """E.g. 'val accuracy 0.8439, test accuracy 0.8365' from a run's final metrics."""
        return ", ".join(
            f"{split} {self.headline} {metrics[split][self.headline]:.4f}"
            for split in ("val", "test") if split in metrics and self.headline in metrics[split]
        )
