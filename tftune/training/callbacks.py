"""Keras callbacks used by the stage runner (all plain `keras.callbacks.Callback`s)."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Optional

import keras

from tftune.errors import TftuneError
from tftune.rundir.history import read_rows, write_rows


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in `history.csv`: stage, epoch, seconds, lr and all metrics.

    The whole file is rewritten atomically after each epoch (a kill never leaves a torn row),
    from `rows`: the rows so far, shared by the stages of a run and kept in its checkpoints,
    so a resumed run writes each epoch once. Without `rows` the file's own rows are read."""

    def __init__(self, path: Path, stage_index: int, stage_name: str, rows: Optional[list] = None):
        super().__init__()
        self.path = Path(path)
        self.stage_index = stage_index
        self.stage_name = stage_name
        self.rows = rows if rows is not None else read_rows(self.path)
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        lr = logs.pop("learning_rate", None)
        if lr is None:
            try:
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            except Exception:
                lr = ""
        self.rows.append({
            "stage": self.stage_index,
            "stage_name": self.stage_name,
            "epoch": epoch + 1,
            "seconds": round(time.perf_counter() - self._start, 3),
            "learning_rate": lr,
            **{k: float(v) for k, v in sorted(logs.items())},
        })
        write_rows(self.path, self.rows)


class StopOnNaN(keras.callbacks.Callback):
    """Stops training with a clear error when the loss becomes NaN or infinite."""

    def __init__(self, stage_name: str, setting: str):
        super().__init__()
        self.stage_name = stage_name
        self.setting = setting
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise TftuneError(
                f"The loss became {float(loss)} in stage {self.stage_name!r}, epoch "
                f"{self.epoch + 1}, batch {batch + 1}. Lower the learning rate "
                f"({self.setting}) or check the data for broken inputs or labels."
            )


class EpochLine(keras.callbacks.Callback):
    """One concise line per epoch (the quiet alternative to the progress bar)."""

    def __init__(self, stage_name: str, epochs: int, echo=print):
        super().__init__()
        self.stage_name = stage_name
        self.epochs = epochs
        self.echo = echo
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        parts = " ".join(
            f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate"
        )
        self.echo(
            f"  [{self.stage_name}] epoch {epoch + 1}/{self.epochs} "
            f"({time.perf_counter() - self._start:.0f}s) {parts}"
        )
