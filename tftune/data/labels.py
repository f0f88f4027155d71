"""Labels from the rows of a CSV / JSONL file, one reader per kind of label:

- `class_labels` / `known_class_labels`: one class name per row -> int32 class indices;
- `regression_targets`: one number per row -> float32 values (non-numbers, NaN and
  infinities are errors naming the row);
- `multilabel_targets`: a list of names per row (`a|b`, a JSON list, or a JSONL list), or one
  0/1 column per label -> float32 multi-hot rows.

Each returns (names, labels, keep): the label names, one label per row, and which rows to use.
The tasks (`tftune.tasks`) pick the reader; the sources (`text.py`, `labelled.py`) call the task.
"""

from __future__ import annotations

import json
import math
from typing import Optional, Sequence

import numpy as np

from tftune.data.splits import class_index, unknown_labels
from tftune.errors import DataError


def class_labels(raw: Sequence[str], cfg, where: str):
    """Class names (from `cfg.classes` or the data), indices and the rows kept: empty labels
    are an error unless `cfg.skip_unlisted_labels` drops them."""
    empty = [i for i, label in enumerate(raw) if not label]
    if empty and not cfg.skip_unlisted_labels:
        raise DataError(
            f"{where} has {len(empty)} row(s) with an empty {cfg.label_column!r} label (first: "
            f"data row {empty[0] + 1}). Fill them in, or set data.skip_unlisted_labels: true "
            f"(with data.classes) to drop them."
        )
    has_label = np.array([bool(label) for label in raw], dtype=bool)
    names, labels_kept, keep_kept = class_index(
        [label for label in raw if label], cfg.classes, cfg.skip_unlisted_labels, where
    )
    labels = np.full(len(raw), -1, dtype=np.int32)
    labels[has_label] = labels_kept
    keep = np.zeros(len(raw), dtype=bool)
    keep[has_label] = keep_kept
    return names, labels, keep


def known_class_labels(raw: Sequence[str], class_names: Sequence[str], skip_unknown: bool, what: str):
    """(indices, keep): labels mapped onto a run's classes; unknown labels are an error
    naming them unless `skip_unknown` drops those examples."""
    lookup = {c: i for i, c in enumerate(class_names)}
    shown = unknown_labels(raw, lookup)
    if shown and not skip_unknown:
        raise DataError(
            f"{what} has labels the run was not trained on: {shown}. "
            f"The run's classes are {', '.join(class_names)}. Rename them, or pass "
            f"--skip-unknown-labels to leave those examples out."
        )
    keep = np.array([r in lookup for r in raw], dtype=bool)
    labels = np.array([lookup.get(r, -1) for r in raw], dtype=np.int32)
    return labels, keep


def regression_targets(rows: list[dict], column: str, where: str) -> np.ndarray:
    """The number in `column` of every row (float32); one clear error for the first row
    whose value is missing, not a number, NaN or infinite."""
    values = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        raw = row.get(column)
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
            ok = not isinstance(raw, bool) and math.isfinite(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(
                f"{where} data row {i + 1}: the regression target {column!r} is {raw!r}, not a "
                f"finite number. Every row needs a number there (no empty cells, NaN or inf)."
            )
        values[i] = value
    return values.astype(np.float32)


def _label_list(value, separator: str, where: str, row: int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = value
    else:
        text = str(value).strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise DataError(f"{where} data row {row}: {text!r} starts like a JSON list but is "
                                f"not valid JSON. Write [\"a\", \"b\"] or a{separator}b.") from None
            if not isinstance(items, list):
                raise DataError(f"{where} data row {row}: expected a list of labels. Received: {text!r}")
        else:
            items = text.split(separator) if text else []
    return [str(x).strip() for x in items if str(x).strip()]


def _binary(value, where: str, row: int, column: str) -> float:
    text = str(value).strip().lower() if value is not None else ""
    if text in ("1", "1.0", "true", "yes"):
        return 1.0
    if text in ("0", "0.0", "false", "no"):
        return 0.0
    raise DataError(f"{where} data row {row}: label column {column!r} is {value!r}. Expected 0 or 1.")


def multilabel_targets(rows: list[dict], cfg, where: str, known: Optional[Sequence[str]] = None,
                       skip_unknown: bool = False):
    """(names, multi-hot float32 [rows, labels], keep). With `cfg.label_columns` each named
    column holds 0/1; else `cfg.label_column` holds the row's labels. Names are `known` (a
    trained run's), else `cfg.classes`, else every label seen (sorted). A label outside the
    names is an error naming it (or, with `skip_unknown`, is ignored)."""
    if cfg.label_columns:
        names = list(known) if known is not None else list(cfg.label_columns)
        missing = [c for c in names if rows and c not in rows[0]]
        if missing:
            raise DataError(
                f"{where} has no label column(s) {missing}. Columns: {', '.join(map(str, rows[0]))}."
            )
        y = np.array([[_binary(r.get(c), where, i + 1, c) for c in names] for i, r in enumerate(rows)],
                     dtype=np.float32).reshape(len(rows), len(names))
        return names, y, np.ones(len(rows), dtype=bool)
    lists = [_label_list(r.get(cfg.label_column), cfg.label_separator, where, i + 1)
             for i, r in enumerate(rows)]
    listed = known if known is not None else cfg.classes
    names = [str(c) for c in listed] if listed else sorted({x for labels in lists for x in labels})
    lookup = {n: i for i, n in enumerate(names)}
    for i, labels in enumerate(lists):
        unknown = [x for x in labels if x not in lookup]
        if unknown and not (skip_unknown or (known is None and cfg.skip_unlisted_labels)):
            raise DataError(
                f"{where} data row {i + 1} has label(s) {unknown} that are not among the labels "
                f"({', '.join(names[:12])}{' ...' if len(names) > 12 else ''}). Fix them, or "
                + ("pass --skip-unknown-labels." if known is not None else
                   "set data.skip_unlisted_labels: true to ignore them.")
            )
    if known is None and len(names) < 1:
        raise DataError(f"{where} has no labels in column {cfg.label_column!r}.")
    y = np.zeros((len(rows), len(names)), dtype=np.float32)
    for i, labels in enumerate(lists):
        for x in labels:
            if x in lookup:
                y[i, lookup[x]] = 1.0
    return names, y, np.ones(len(rows), dtype=bool)
