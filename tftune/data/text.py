"""Text sources: CSV and JSON-lines files with a text column and a label column."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np

from tftune.config import DataConfig
from tftune.data.splits import DataSplits, class_index, stratified_split, subsample
from tftune.errors import DataError


def _open_text(path: Path) -> io.TextIOBase:
    """Opens plain, .gz or .bz2 text files."""
    if path.suffix == ".bz2":
        return io.TextIOWrapper(bz2.open(path, "rb"), encoding="utf-8-sig", newline="")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_rows(path: Path, fmt: str) -> list[dict]:
    """The rows of a CSV (with a header) or JSONL file as dicts."""
    try:
        with _open_text(path) as f:
            if fmt == "csv":
                reader = csv.DictReader(f)
                if not reader.fieldnames:
                    raise DataError(f"{path} is empty: a CSV needs a header row and data rows.")
                return list(reader)
            rows = []
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {n} is not valid JSON: {e.msg}.") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {n} must be a JSON object with named fields.")
                rows.append(row)
            return rows
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"Cannot read {path}: {e}") from None


def load_text_file(cfg: DataConfig, seed: int) -> DataSplits:
    """Texts and labels from `data.path` (CSV or JSONL), split with a seeded stratified split."""
    import tensorflow as tf

    from tftune.assets import resolve

    if not cfg.path:
        raise DataError(f"data.path is not set. Point it at a {cfg.source.upper()} file.")
    path = Path(resolve(cfg.path)).expanduser()
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Set data.path to an existing file.")
    rows = read_rows(path, cfg.source)
    if not rows:
        raise DataError(f"{path} has no data rows.")
    for column in (cfg.text_column, cfg.label_column):
        if column not in rows[0]:
            raise DataError(
                f"{path} has no column {column!r}. Columns: {', '.join(map(str, rows[0]))}. "
                f"Set data.text_column / data.label_column."
            )
    texts = [str(r.get(cfg.text_column) or "").strip() for r in rows]
    raw_labels = [str(r.get(cfg.label_column) or "").strip() for r in rows]
    empty = [i for i, label in enumerate(raw_labels) if not label]
    if empty and not cfg.skip_unlisted_labels:
        raise DataError(
            f"{path} has {len(empty)} row(s) with an empty {cfg.label_column!r} label (first: "
            f"data row {empty[0] + 1}). Fill them in, or set data.skip_unlisted_labels: true "
            f"(with data.classes) to drop them."
        )
    has_label = np.array([bool(label) for label in raw_labels])
    names, labels_kept, keep_kept = class_index(
        [label for label in raw_labels if label], cfg.classes, cfg.skip_unlisted_labels, str(path)
    )
    labels = np.full(len(rows), -1, dtype=np.int32)
    labels[has_label] = labels_kept
    keep = np.zeros(len(rows), dtype=bool)
    keep[has_label] = keep_kept
    keep &= np.array([bool(t) for t in texts])
    if cfg.deduplicate:
        seen = set()
        for i, t in enumerate(texts):
            if keep[i]:
                if t in seen:
                    keep[i] = False
                seen.add(t)
    texts_arr = np.asarray(texts, dtype=object)[keep]
    labels = labels[keep]
    if len(labels) == 0:
        raise DataError(f"{path} has no usable rows (all texts empty or labels skipped).")
    test_idx, val_idx, train_idx = stratified_split(labels, [cfg.test_fraction, cfg.val_fraction], seed)
    train_idx = train_idx[subsample(labels[train_idx], cfg.max_train_examples, seed)]
    test_idx = test_idx[subsample(labels[test_idx], cfg.max_test_examples, seed)]
    if len(val_idx) == 0:
        raise DataError(f"The validation split of {path} is empty. Add rows or raise data.val_fraction.")

    def make(idx):
        return tf.data.Dataset.from_tensor_slices(
            (tf.constant(list(texts_arr[idx]), dtype=tf.string), labels[idx].astype(np.int32))
        )

    return DataSplits(
        train=make(train_idx),
        val=make(val_idx),
        test=make(test_idx) if len(test_idx) else None,
        class_names=names,
        modality="text",
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
    )
