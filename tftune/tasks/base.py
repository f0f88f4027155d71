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
    default_monitor: str = "val_loss"  # what `early_stopping.monitor: auto` means
    min_classes: int = 2  # how many names classes.json must hold
    losses: tuple[str, ...] = ("auto",)  # the `train.loss` values this task accepts
    image_folders: bool = False  # whether a folder of class folders can label it
    keeps_state: bool = False  # whether inference needs task.json (e.g. a target's mean)
    tunes_on_validation: bool = False  # whether `after_training` needs the val outputs
    balanced_sampling: bool = False  # whether `data.sampling: balanced` applies (class labels)
    mixable: bool = False  # whether training batches may carry mixed labels (mixup / cutmix)
    # Set when the run's training batches carry mixed labels: class probabilities [batch,
    # classes] (the loss and the class weights take them; metrics see their argmax).
    soft_labels: bool = False

    def __init__(self, class_names: Sequence[str] = (), cfg=None, state: Optional[dict] = None):
        """`cfg` is the run's `RecipeConfig` (loss settings; None: the defaults); `state` what
        `state()` returned when the run trained (read back from task.json)."""
        self.class_names = list(class_names)
        self.cfg = cfg
        self.train_cfg = cfg.train if cfg is not None else None
        if state:
            self.load_state(state)

    # -- settings and state (task.json) ------------------------------------------------

    def setting(self, key: str, default):
        """A `train.<key>` setting of the run (its default without a config)."""
        return getattr(self.train_cfg, key, default) if self.train_cfg is not None else default

    def check_settings(self) -> None:
        """Raises ConfigError for settings this task cannot honour (before anything loads)."""
        loss = self.setting("loss", "auto")
        if loss not in self.losses:
            raise ConfigError(
                f"Invalid value for 'train.loss' with task {self.name!r}. Expected one of: "
                f"{', '.join(repr(l) for l in self.losses)}. Received: {loss!r}"
            )
        if self.cfg is not None and self.cfg.data.sampling == "balanced" and not self.balanced_sampling:
            raise ConfigError(
                f"data.sampling: balanced draws examples by class: it applies to task "
                f"'classification', not {self.name!r}. Remove it."
            )
        smoothing = self.setting("label_smoothing", 0.0)
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(
                f"Invalid value for 'train.label_smoothing'. Expected a number in [0, 1). "
                f"Received: {smoothing!r}"
            )

    @property
    def needs_train_labels(self) -> bool:
        """Whether `fit` must see the training labels (e.g. to standardise a target)."""
        return False

    def fit(self, train_labels: np.ndarray) -> None:
        """Learns what the task needs from the training split's labels before training."""

    def state(self) -> dict:
        """What the run must keep beyond the weights (written to task.json)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restores `state()` (from task.json)."""

    def after_training(self, y_val: np.ndarray, val_outputs: np.ndarray) -> list[str]:
        """Decides what is tuned on the validation split once training is over (e.g.
        decision thresholds); returns lines for the run log."""
        return []

    # -- labels ------------------------------------------------------------------------

    def read_labels(self, rows: list[dict], data_cfg, where: str,
                    known: Optional[Sequence[str]] = None, skip_unknown: bool = False):
        """(label names, labels, keep) for the rows of a CSV / JSONL file: `known` are a
        trained run's names (evaluation data), else they come from the data (training).
        `keep` selects the rows to use. Labels are a numpy array, one row per input row."""
        raise NotImplementedError

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """Integer groups the seeded split keeps in proportion (class indices by default)."""
        return np.asarray(labels)

    def example_weights(self, y):
        """Per-example loss weights for a batch of labels (a tensor), or None (all 1)."""
        return None

    def metric_labels(self, y):
        """A training batch's labels as the metrics take them (mixed labels: their argmax)."""
        return y

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

    def predictions(self, outputs: np.ndarray) -> np.ndarray:
        """What `Predictor.predict` returns for model outputs (probabilities by default)."""
        return np.asarray(outputs)

    def prediction_rows(self, outputs: np.ndarray) -> tuple[list[str], list[dict]]:
        """(CSV columns, one dict per row) for `tftune predict`; a dict value may itself be
        a dict (JSON lines keep it, CSV spreads it as `<key>_<name>` columns)."""
        raise NotImplementedError

    def evaluation_files(self, out_dir, scored) -> str:
        """Writes the task's evaluation files (plots, tables) for `scored` (a
        `tftune.evaluation.evaluate.Scored`: examples, true labels, outputs, report) into
        `out_dir` and returns the report printed on the terminal."""
        raise NotImplementedError

    def decode(self, outputs: np.ndarray) -> list:
        """The label (or value) of each row of model outputs, for `predict`."""
        raise NotImplementedError

    def report(self, y_true: np.ndarray, outputs: np.ndarray) -> dict:
        """The evaluation report's metrics for true labels and model outputs."""
        raise NotImplementedError

    # -- export ------------------------------------------------------------------------
    # Every artefact is compared with the Keras model in the units of `predictions` (what
    # `tftune.load(run).predict` returns): probabilities, or a regression target's values.

    prediction_output: str = "probabilities"  # the SavedModel output that equals `predictions`
    compared: str = "probabilities"  # what `compare`'s differences are of (for reports)
    agreement_kind: Optional[str] = "top-1"  # what `compare`'s agreement counts (None: none)

    def serving_outputs(self, outputs) -> dict:
        """The export signature's outputs (TensorFlow tensors) for a batch of model outputs."""
        raise NotImplementedError

    def export_model(self, model):
        """The Keras model the `.keras` and LiteRT artefacts hold: one whose output is in the
        units of `predictions` (the run's model itself by default)."""
        return model

    def check_served(self, served: dict) -> Optional[str]:
        """What is wrong with a SavedModel's decision output (e.g. `label`) given its
        `prediction_output` (numpy arrays, strings decoded), or None when they agree."""
        return None

    def export_outputs_doc(self) -> list[str]:
        """Markdown list items: the SavedModel's outputs, for SERVING.md."""
        raise NotImplementedError

    def artefact_output_doc(self) -> str:
        """What the `.keras` / LiteRT model returns, for TOKENIZE.md and the notes."""
        return f"float32 `[batch, {self.output_units}]` {self.compared}"

    def compare(self, reference: np.ndarray, exported: np.ndarray) -> dict:
        """How far an export's outputs are from the Keras model's, both in the units of
        `predictions`: `max_abs_diff`, `mean_abs_diff` and `agreement` (share of equal
        decisions; None when the task has none)."""
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
