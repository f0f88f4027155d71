"""Keras callbacks used by the stage runner (all plain `keras.callbacks.Callback`s)."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Optional

import keras

from tftune.errors import TftuneError
from tftune.rundir import storage
from tftune.rundir.history import read_rows, write_rows


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in `history.csv`: stage, epoch, seconds, lr and all metrics.

    The whole file is rewritten atomically after each epoch (a kill never leaves a torn row),
    from `rows`: the rows so far, shared by the stages of a run and kept in its checkpoints,
    so a resumed run writes each epoch once. Without `rows` the file's own rows are read."""

    def __init__(self, path: Path, stage_index: int, stage_name: str, rows: Optional[list] = None):
        super().__init__()
        self.path = storage.path(path)  # a local path or a URL (`tftune.rundir.storage`)
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
    """One concise line per epoch (the quiet alternative to the progress bar). `epochs`: the
    stage's epochs, or its `loop.Length` (which a time limit may change between epochs)."""

    def __init__(self, stage_name: str, epochs, echo=print):
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
            f"  [{self.stage_name}] epoch {epoch + 1}/{getattr(self.epochs, 'epochs', self.epochs)} "
            f"({time.perf_counter() - self._start:.0f}s) {parts}"
        )


class TensorBoardLog(keras.callbacks.Callback):
    """`train.tensorboard`: TensorBoard event files in `logdir` (`runs/<name>/tensorboard`),
    laid out as Keras's own TensorBoard callback lays them out (`train/` and `validation/`
    writers, `epoch_<metric>` tags), so the two curves of a metric share a chart.

    The step is the run's epoch count over all stages (`rows`: the history rows, shared with
    `HistoryCSV`, which appends the epoch's row first), so stages follow each other on one
    axis. Per epoch also: the learning rate each trained group stepped with at the epoch's
    end (`learning_rate/<group>`: the stage's rate times the group's multiplier; the head's is
    the stage's) and the stage number (`stage`); at each stage's start, a text summary
    (`stage_start`: the stage's banner, what it trains and how)."""

    def __init__(self, logdir: Path, stage_index: int, description: str, multipliers: dict,
                 rows: list):
        super().__init__()
        self.logdir = storage.path(logdir)  # tf.summary writes to gs:// etc. itself
        self.stage_index = stage_index
        self.description = description
        self.multipliers = dict(multipliers)
        self.rows = rows
        self._writers: dict = {}

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.logdir / name))
        return self._writers[name]

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        if any(int(r["stage"]) == self.stage_index for r in self.rows):
            return  # a stage resumed after some of its epochs: its start is written already
        with self._writer("train").as_default():
            tf.summary.text("stage_start", self.description, step=len(self.rows))
        self._writer("train").flush()

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        step = len(self.rows)
        row = self.rows[-1] if self.rows else {}
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        with self._writer("train").as_default():
            for k, v in sorted(train.items()):
                tf.summary.scalar(f"epoch_{k}", float(v), step=step)
            lr = row.get("learning_rate")
            if isinstance(lr, (int, float)):
                tf.summary.scalar("learning_rate/head", float(lr), step=step)
                for group, m in self.multipliers.items():
                    tf.summary.scalar(f"learning_rate/{group}", float(lr) * m, step=step)
            tf.summary.scalar("stage", float(self.stage_index + 1), step=step)
        if val:
            with self._writer("validation").as_default():
                for k, v in sorted(val.items()):
                    tf.summary.scalar(f"epoch_{k}", float(v), step=step)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()
        self._writers = {}


def user_callbacks(names, objects=()) -> list:
    """A run's own callbacks: each `train.callbacks` entry "package.module:factory" imported
    and called with no arguments, then `objects` (`callbacks=` from Python). Each must be a
    `keras.callbacks.Callback` (a class works as a factory too). Raises ConfigError naming the
    entry that cannot be imported or is not one."""
    import importlib

    from tftune.errors import ConfigError

    out = []
    for i, name in enumerate(names):
        where = f"train.callbacks.{i}"
        module_name, sep, attr = str(name).partition(":")
        if not sep or not module_name or not attr:
            raise ConfigError(
                f"Invalid value for '{where}'. Expected 'package.module:factory' (a "
                f"function or class returning a keras.callbacks.Callback). Received: {name!r}")
        try:
            factory = importlib.import_module(module_name)
            for part in attr.split("."):
                factory = getattr(factory, part)
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"Invalid value for '{where}': cannot import {name!r} ({e}). Check the "
                f"name, and that its package is installed or on PYTHONPATH.") from None
        out.append((f"Invalid value for '{where}': {name!r} returned", factory()))
    out += [("callbacks= takes keras.callbacks.Callback instances. Received:", c) for c in objects]
    for problem, callback in out:
        if not isinstance(callback, keras.callbacks.Callback):
            raise ConfigError(f"{problem} {type(callback).__name__}, not a "
                              f"keras.callbacks.Callback.")
    return [callback for _, callback in out]
