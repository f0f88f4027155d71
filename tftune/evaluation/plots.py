"""PNG plots: training curves from history.csv, a confusion matrix, a grid of images.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), and
written atomically.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tftune import rundir
from tftune.rundir import storage
from tftune.errors import TftuneError

TRAINING_CURVES_FILE = "training_curves.png"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png: Path) -> Path:
    out_png = storage.path(out_png)
    if storage.is_url(out_png):  # matplotlib writes local files: the PNG's bytes, one upload
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
        rundir.atomic_write(out_png, lambda p: p.write_bytes(buffer.getvalue()))
        return out_png
    rundir.atomic_write(out_png, lambda p: fig.savefig(str(p), format="png", bbox_inches="tight"))
    return out_png


def read_history(history_csv: str | Path) -> list[dict]:
    """The rows of a run's history.csv; an unreadable or empty file is an error."""
    path = storage.path(history_csv)
    try:
        if storage.is_url(path):
            import io

            if not path.is_file():
                raise FileNotFoundError(2, "No such file or directory")
            rows = list(csv.DictReader(io.StringIO(path.read_text())))
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
    except OSError as e:
        raise TftuneError(f"Cannot read {path}: {e.strerror or e}. Pass a run directory with a history.csv.") from None
    if not rows or "epoch" not in rows[0] or "loss" not in rows[0]:
        raise TftuneError(f"{path} has no epochs (expected columns stage, epoch, loss, ...). Train the run first.")
    return rows


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def training_curves(history_csv: str | Path, out_png: str | Path,
                    monitors: Optional[Sequence[str]] = None,
                    minimised: Sequence[str] = ("loss",)) -> Path:
    """Loss and the other metrics per epoch, across all stages, with stage boundaries marked.

    The x axis counts epochs over the whole run; a dashed line starts each stage, labelled
    with its name. `monitors` (one per stage, e.g. `val_accuracy`) marks each stage's best
    epoch on that metric, the weights the stage kept: the lowest value for the metrics in
    `minimised` (the task's `Task.minimised`, e.g. loss, rmse), else the highest.
    """
    rows = read_history(history_csv)
    x = np.arange(1, len(rows) + 1)
    columns = [k for k in rows[0] if k not in ("stage", "stage_name", "epoch", "seconds", "learning_rate")]
    series = {k: np.array([_float(r.get(k)) for r in rows]) for k in columns}
    base = sorted({k.removeprefix("val_") for k in columns})
    panels = ["loss"] + [m for m in base if m != "loss"]
    stages = [(r.get("stage", ""), r.get("stage_name", "")) for r in rows]

    fig = _figure(4.2 * len(panels), 3.6)
    for p, metric in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for key, style, label in ((metric, "-o", "train"), (f"val_{metric}", "-s", "validation")):
            if key in series and not np.all(np.isnan(series[key])):
                ax.plot(x, series[key], style, markersize=4, label=label)
        starts = [i for i in range(len(rows)) if i == 0 or stages[i] != stages[i - 1]]
        starred = False
        for s_i, start in enumerate(starts):
            end = starts[s_i + 1] if s_i + 1 < len(starts) else len(rows)
            if start > 0:
                ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
            # The stage's name above its span of epochs.
            ax.text((start + end + 1) / 2, 1.01, stages[start][1] or f"stage {s_i + 1}",
                    transform=ax.get_xaxis_transform(), va="bottom", ha="center", fontsize=8,
                    color="dimgrey")
            if monitors and s_i < len(monitors):
                monitor = monitors[s_i]
                if monitor in (metric, f"val_{metric}") and monitor in series:
                    values = series[monitor][start:end]
                    if not np.all(np.isnan(values)):
                        lowest = monitor.removeprefix("val_") in minimised
                        best = start + int(np.nanargmin(values) if lowest else np.nanargmax(values))
                        ax.plot([x[best]], [series[monitor][best]], "*", color="black", markersize=11,
                                label=None if starred else f"best {monitor} of each stage (restored)")
                        starred = True
        ax.set_xlim(0.5, len(rows) + 0.5)
        ax.set_xlabel("epoch (whole run)")
        ax.set_ylabel(metric)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Training curves ({storage.path(history_csv).parent.name})", fontsize=10)
    return _save(fig, storage.path(out_png))


def confusion_matrix(cm: np.ndarray, class_names: Sequence[str], out_png: str | Path,
                     title: str = "Confusion matrix") -> Path:
    """Counts, true class by row, predicted by column; colour is the row share (recall)."""
    cm = np.asarray(cm)
    n = len(class_names)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.55 * n + 2.5)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    return _save(fig, storage.path(out_png))


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], out_png: str | Path,
               title: str = "", columns: int = 4) -> Path:
    """Images (`[H, W, 3]`, 0..255) in a grid, each with a caption."""
    n = len(images)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = _figure(2.6 * cols, 2.9 * rows)
    for i, (image, caption) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, storage.path(out_png))


def regression(y_true: np.ndarray, y_pred: np.ndarray, out_png: str | Path,
               title: str = "Predicted vs true") -> Path:
    """Two panels: predicted against true values (with the y = x line), and a histogram of
    the residuals (predicted - true)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    fig = _figure(10.0, 4.5)
    ax = fig.add_subplot(1, 2, 1)
    ax.scatter(y_true, y_pred, s=8, alpha=0.5)
    if len(y_true):
        low = float(min(y_true.min(), y_pred.min()))
        high = float(max(y_true.max(), y_pred.max()))
        ax.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax = fig.add_subplot(1, 2, 2)
    ax.hist(y_pred - y_true, bins=min(50, max(5, len(y_true) // 5)))
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_xlabel("residual (predicted - true)")
    ax.set_ylabel("examples")
    ax.grid(alpha=0.3)
    ax.set_title("Residuals", fontsize=10)
    return _save(fig, storage.path(out_png))


def run_training_curves(run: Path) -> Path:
    """Re-creates `run/training_curves.png` from the run's history.csv, marking each stage's
    kept epoch by its monitor (from config.yaml, when readable)."""
    from tftune.config import load_recipe
    from tftune.tasks import TASKS

    monitors, minimised = None, ("loss",)
    if (run / rundir.CONFIG_FILE).is_file():
        config = load_recipe(run / rundir.CONFIG_FILE)
        monitors = [s.early_stopping.monitor for s in config.stages]
        minimised = TASKS[config.task].minimised
    return training_curves(run / rundir.HISTORY_FILE, run / TRAINING_CURVES_FILE, monitors,
                           minimised)
