"""Classification metrics from labels and predicted probabilities, in numpy.

Conventions (the usual ones, stated so the numbers can be checked by hand):
- the confusion matrix has true classes as rows and predicted classes as columns;
- precision, recall or F1 with a zero denominator (a class never predicted, or absent) is 0;
- macro averages run over the classes that occur in the labels or the predictions; weighted
  averages weight each class by its number of true examples (support);
- ROC-AUC is one-vs-rest per class, computed as the Mann-Whitney statistic (the chance that
  a random positive scores above a random negative, ties counting one half); it is None for
  a class without positive or without negative examples. For two classes the headline
  `roc_auc` is that of the second class (the first class's is the same number);
  for more, it is the macro average over the classes where it is defined;
- top-k accuracy (k = 3 and 5) is reported when there are more than 5 classes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

TOP_K = (3, 5)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """`[num_classes, num_classes]` counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of `scores` for the boolean labels `positive`, or None when
    there are no positives or no negatives."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average 1-based ranks over runs of tied scores.
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of examples whose true class is among the k most probable."""
    top = np.argsort(-np.asarray(probabilities), axis=1, kind="mergesort")[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def classification_report(y_true: Sequence[int], probabilities: np.ndarray,
                          class_names: Sequence[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 / support / ROC-AUC, macro and weighted
    averages, top-k accuracy (more than 5 classes), log loss and the confusion matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    n, c = probs.shape
    if len(class_names) != c:
        raise ValueError(f"{c} probability columns but {len(class_names)} class names")
    if len(y_true) != n:
        raise ValueError(f"{len(y_true)} labels but {n} rows of probabilities")
    y_pred = np.argmax(probs, axis=1)
    cm = confusion_matrix(y_true, y_pred, c)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = cm[i, i]
        precision = _ratio(tp, predicted[i])
        recall = _ratio(tp, support[i])
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(support[i]),
            "roc_auc": roc_auc(probs[:, i], y_true == i),
        }
    present = [name for i, name in enumerate(class_names) if support[i] or predicted[i]]
    weights = np.array([per_class[name]["support"] for name in class_names], dtype=np.float64)

    def macro(key):
        return float(np.mean([per_class[name][key] for name in present])) if present else 0.0

    def weighted(key):
        values = np.array([per_class[name][key] for name in class_names], dtype=np.float64)
        return float(np.sum(values * weights) / weights.sum()) if weights.sum() else 0.0

    aucs = [per_class[name]["roc_auc"] for name in class_names if per_class[name]["roc_auc"] is not None]
    if c == 2:
        headline_auc = per_class[class_names[1]]["roc_auc"]
    else:
        headline_auc = float(np.mean(aucs)) if aucs else None
    report = {
        "examples": int(n),
        "accuracy": _ratio(np.trace(cm), n),
        "macro_avg": {k: macro(k) for k in ("precision", "recall", "f1")},
        "weighted_avg": {k: weighted(k) for k in ("precision", "recall", "f1")},
        "roc_auc": headline_auc,
        "roc_auc_kind": f"binary, {class_names[1]!r} positive" if c == 2 else "one-vs-rest, macro average",
        "log_loss": float(-np.mean(np.log(np.clip(probs[np.arange(n), y_true], 1e-12, 1.0)))) if n else None,
    }
    if c > 5:
        report["top_k_accuracy"] = {str(k): top_k_accuracy(y_true, probs, k) for k in TOP_K if k < c}
    report["per_class"] = per_class
    report["confusion_matrix"] = cm.tolist()
    return report
