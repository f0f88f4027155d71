"""Multi-label metrics in numpy, the per-label threshold choice, and `evaluate`'s files.

Conventions (checkable by hand):
- a label is predicted when its probability is >= its threshold;
- micro F1 / precision / recall pool every label's true and false positives and negatives;
  macro averages the labels' own F1 (precision, recall), a zero denominator counting 0;
- average precision (AP) of a label is sum over distinct score thresholds, highest first, of
  (recall_k - recall_{k-1}) * precision_k (scikit-learn's definition, ties as one step);
  mAP is its mean over the labels with at least one positive example (None if none has);
- subset accuracy: share of examples whose predicted label set equals the true one exactly;
- Hamming loss: share of (example, label) decisions that are wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tftune.evaluation.classification import closing_lines, write_csv


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _cuts(scores: np.ndarray, positive: np.ndarray):
    """Scores sorted high to low, cut at the end of each group of tied scores: (the score at
    each cut, true positives and false positives predicted at that cut)."""
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order].astype(np.float64)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], int)
    tp = np.cumsum(p)[ends]
    fp = (ends + 1) - tp
    return s[ends], tp, fp


def average_precision(scores, positive) -> Optional[float]:
    """AP of `scores` for the boolean labels `positive`; None without a positive."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    _, tp, fp = _cuts(scores, positive)
    recall = tp / n_pos
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_threshold(scores, positive, default: float = 0.5) -> float:
    """The threshold that maximises this label's F1 on (`scores`, `positive`): halfway
    between the last score predicted positive and the next one (the lowest score when every
    example is predicted). `default` when there are no positives (F1 is 0 whatever it is)."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float(default)
    at, tp, fp = _cuts(scores, positive)
    f1 = 2 * tp / (tp + fp + n_pos)
    k = int(np.argmax(f1))  # the first best: the highest threshold among equals
    if k + 1 < len(at):
        return float((at[k] + at[k + 1]) / 2)
    return float(at[k])


def best_thresholds(y_true: np.ndarray, probabilities: np.ndarray, default: float = 0.5) -> list[float]:
    """`best_threshold` for every label (column)."""
    y_true = np.asarray(y_true) > 0.5
    probs = np.asarray(probabilities, np.float64)
    return [best_threshold(probs[:, j], y_true[:, j], default) for j in range(probs.shape[1])]


def multilabel_report(y_true, probabilities, thresholds: Sequence[float], names: Sequence[str]) -> dict:
    """Micro and macro F1 / precision / recall, mAP, subset accuracy, Hamming loss, and per
    label: precision, recall, F1, AP, support and threshold."""
    y = np.asarray(y_true) > 0.5
    probs = np.asarray(probabilities, np.float64)
    n, k = probs.shape
    predicted = probs >= np.asarray(thresholds, np.float64)[None, :]
    tp = np.sum(y & predicted, axis=0)
    fp = np.sum(~y & predicted, axis=0)
    fn = np.sum(y & ~predicted, axis=0)
    per_label = {}
    for j, name in enumerate(names):
        precision, recall = _ratio(tp[j], tp[j] + fp[j]), _ratio(tp[j], tp[j] + fn[j])
        per_label[name] = {
            "precision": precision, "recall": recall,
            "f1": _ratio(2 * tp[j], 2 * tp[j] + fp[j] + fn[j]),
            "average_precision": average_precision(probs[:, j], y[:, j]),
            "support": int(y[:, j].sum()), "threshold": float(thresholds[j]),
        }
    aps = [m["average_precision"] for m in per_label.values() if m["average_precision"] is not None]
    micro_p, micro_r = _ratio(tp.sum(), tp.sum() + fp.sum()), _ratio(tp.sum(), tp.sum() + fn.sum())
    return {
        "examples": int(n),
        "labels": int(k),
        "micro_f1": _ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()),
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "macro_f1": float(np.mean([m["f1"] for m in per_label.values()])) if k else 0.0,
        "macro_precision": float(np.mean([m["precision"] for m in per_label.values()])) if k else 0.0,
        "macro_recall": float(np.mean([m["recall"] for m in per_label.values()])) if k else 0.0,
        "map": float(np.mean(aps)) if aps else None,
        "subset_accuracy": float(np.mean(np.all(y == predicted, axis=1))) if n else 0.0,
        "hamming_loss": float(np.mean(y != predicted)) if n else 0.0,
        "per_label": per_label,
    }


def _fmt(value) -> str:
    return "   n/a" if value is None else f"{value:.4f}"


def write_files(out_dir: Path, scored, names: Sequence[str], thresholds: Sequence[float]) -> str:
    """`per_label.csv` and `errors.csv` (the examples with the most wrong label decisions,
    surest first); returns the printed report."""
    report, examples = scored.report, scored.examples
    y = np.asarray(scored.y_true) > 0.5
    probs = np.asarray(scored.outputs, np.float64)
    predicted = probs >= np.asarray(thresholds)[None, :]
    write_csv(out_dir / "per_label.csv", [{"label": n, **m} for n, m in report["per_label"].items()],
              ["label", "precision", "recall", "f1", "average_precision", "support", "threshold"])
    wrong = np.sum(y != predicted, axis=1)
    margin = np.max(np.where(y != predicted, np.abs(probs - np.asarray(thresholds)[None, :]), 0.0), axis=1)
    worst = [int(i) for i in np.lexsort((-margin, -wrong)) if wrong[i]][:scored.errors]
    texts = scored.texts(worst)

    def listed(row):
        return "|".join(n for n, on in zip(names, row) if on)

    rows = [{"rank": r, "index": i, "id": examples.ids[i] if examples.ids else "",
             **({"text": texts[i]} if i in texts else {}),
             "true": listed(y[i]), "predicted": listed(predicted[i]), "wrong": int(wrong[i])}
            for r, i in enumerate(worst, 1)]
    write_csv(out_dir / "errors.csv", rows, ["rank", "index", "id", "true", "predicted", "wrong"])
    lines = [
        f"Run {scored.run_name} on {examples.description}: {report['examples']} examples, "
        f"{report['labels']} labels",
        f"micro F1 {report['micro_f1']:.4f}   macro F1 {report['macro_f1']:.4f}   mAP "
        f"{_fmt(report['map'])}   subset accuracy {report['subset_accuracy']:.4f}   Hamming loss "
        f"{report['hamming_loss']:.4f}",
    ]
    width = max(12, max((len(n) for n in names), default=0) + 1)
    lines.append(f"{'label':<{width}} precision  recall      f1      AP  support  threshold")
    for n, m in report["per_label"].items():
        lines.append(f"{n:<{width}}    {m['precision']:.4f}  {m['recall']:.4f}  {m['f1']:.4f}  "
                     f"{_fmt(m['average_precision'])}  {m['support']:>7}     {m['threshold']:.4f}")
    lines += closing_lines(
        report, rows, f"most wrong ({min(5, len(rows))} of {int(np.sum(wrong > 0))} examples with "
                      f"errors; {len(rows)} in errors.csv):",
        lambda r: f"predicted [{r['predicted']}] (true [{r['true']}])", 70)
    return "\n".join(lines)
