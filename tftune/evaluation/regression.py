"""Regression metrics in numpy (no scipy), and `evaluate`'s regression files.

Conventions: RMSE and MAE in the target's units; R² is 1 - SS_res / SS_tot (None when the
true values are all equal); Pearson's r on the raw values and Spearman's rho as Pearson's r
on average ranks (ties share their mean rank), each None when either side is constant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from tftune import rundir
from tftune.evaluation import plots

PLOT_FILE = "predicted_vs_true.png"


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, tied values sharing the mean of their positions."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    norm = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / norm) if norm > 0 else None


def regression_report(y_true, y_pred) -> dict:
    """examples, RMSE, MAE, R², Pearson and Spearman, and the residuals' mean and std."""
    y_true = np.asarray(y_true, np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, np.float64).reshape(-1)
    residual = y_pred - y_true
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2)) if len(y_true) else 0.0
    return {
        "examples": int(len(y_true)),
        "rmse": float(np.sqrt(np.mean(residual ** 2))) if len(y_true) else None,
        "mae": float(np.mean(np.abs(residual))) if len(y_true) else None,
        "r2": float(1.0 - np.sum(residual ** 2) / ss_tot) if ss_tot > 0 else None,
        "pearson": pearson(y_true, y_pred) if len(y_true) > 1 else None,
        "spearman": pearson(average_ranks(y_true), average_ranks(y_pred)) if len(y_true) > 1 else None,
        "residual_mean": float(residual.mean()) if len(y_true) else None,
        "residual_std": float(residual.std()) if len(y_true) else None,
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write_files(out_dir: Path, scored, y_pred) -> str:
    """`predicted_vs_true.png` (scatter and residual histogram) and `errors.csv` (the
    largest absolute errors first) for `scored` (an `evaluate.Scored`) and its predictions
    `y_pred` in the target's units; returns the printed report."""
    y_true = np.asarray(scored.y_true, np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, np.float64).reshape(-1)
    report, examples = scored.report, scored.examples
    title = f"Run {scored.run_name} on {examples.description}"
    plots.regression(y_true, y_pred, out_dir / PLOT_FILE,
                     title=f"{title} (RMSE {_fmt(report['rmse'])}, r {_fmt(report['pearson'])})")
    worst = np.argsort(-np.abs(y_pred - y_true), kind="mergesort")[:scored.errors]
    texts = scored.texts(worst)
    rows = [{"rank": k, "index": int(i), "id": examples.ids[i] if examples.ids else "",
             **({"text": texts[int(i)]} if int(i) in texts else {}),
             "true": float(y_true[i]), "predicted": round(float(y_pred[i]), 6),
             "error": round(float(y_pred[i] - y_true[i]), 6)} for k, i in enumerate(worst, 1)]
    from tftune.evaluation.classification import closing_lines, write_csv

    write_csv(out_dir / "errors.csv", rows, ["rank", "index", "id", "true", "predicted", "error"])
    lines = [
        f"{title}: {report['examples']} examples",
        f"RMSE {_fmt(report['rmse'])}   MAE {_fmt(report['mae'])}   R² {_fmt(report['r2'])}   "
        f"Pearson r {_fmt(report['pearson'])}   Spearman rho {_fmt(report['spearman'])}",
    ]
    lines += closing_lines(report, rows, f"largest errors ({min(5, len(rows))} of {len(rows)} in errors.csv):",
                           lambda r: f"{r['predicted']:.3f} (true {r['true']:.3f})")
    return "\n".join(lines)
