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
from tftune.data.splits import DataSplits, seeded_split
from tftune.errors import DataError
from tftune.rundir import storage


ENCODING_FIX = "--set data.encoding={}"
"""How a recipe run names a file's encoding (`read_rows`'s `fix`; the CLI's --data: --encoding)."""


def _codec(encoding: str) -> str:
    """The codec a file is read with: `encoding`, UTF-8 also skipping a byte-order mark."""
    import codecs

    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _raw(path: Path):
    """Opens plain, .gz or .bz2 files as bytes."""
    if storage.is_url(path):  # gs://, ram://: read through tf.io.gfile
        path = storage.path(path)
        raw = io.BytesIO(path.read_bytes())
        if path.suffix == ".bz2":
            return bz2.open(raw, "rb")
        if path.suffix == ".gz":
            return gzip.open(raw, "rb")
        return raw
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Opens plain, .gz or .bz2 text files in `encoding` (any Python codec name)."""
    return io.TextIOWrapper(_raw(path), encoding=_codec(encoding), newline="")


def decode_error(path: Path, encoding: str, error: UnicodeDecodeError,
                 fix: str = ENCODING_FIX) -> DataError:
    """One DataError for a file that is not valid `encoding` text: where (byte offset and line,
    found by decoding the whole file again), the bytes, and how to name its encoding (`fix`
    with the codec to try, e.g. `--set data.encoding=latin-1`)."""
    where, bad = "", error.object[error.start:error.end]
    try:
        with _raw(path) as f:
            data = f.read()
        data.decode(_codec(encoding))
    except UnicodeDecodeError as e:
        bad = e.object[e.start:e.end]
        line = data.count(b"\n", 0, e.start) + 1
        where = f" at byte {e.start:,} (line {line})"
    except OSError:
        pass
    guess = "cp1252" if b"\x80" <= bad[:1] <= b"\x9f" else "latin-1"
    return DataError(
        f"{path} is not valid {encoding} text: byte(s) {bad.hex(' ')}{where} cannot be decoded "
        f"({error.reason}). Expected a file in data.encoding ({encoding!r}). If it was saved in "
        f"another encoding, name it: {fix.format(guess)} (Western European; or cp1252, "
        f"utf-16, shift_jis ..., any Python codec)."
    )


def read_rows(path: Path, fmt: str, delimiter: str = ",", encoding: str = "utf-8",
              fix: str = ENCODING_FIX) -> list[dict]:
    """The rows of a CSV (with a header; fields separated by `delimiter`) or JSONL file as
    dicts, read in `encoding`. A file that is not valid `encoding` text is one DataError
    naming the file, the byte and line, and the fix (`fix`, formatted with a codec name)."""
    try:
        with _open_text(path, encoding) as f:
            if fmt == "csv":
                reader = csv.DictReader(f, delimiter=delimiter)
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
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e, fix) from None
    except (OSError, EOFError, csv.Error) as e:
        raise DataError(f"Cannot read {path}: {e}") from None


def text_values(rows: list[dict], columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Each row's texts in `columns` (one column, or the two of a text pair), stripped."""
    return [tuple(str(r.get(c) or "").strip() for c in columns) for r in rows]


def text_tensors(texts: list[tuple[str, ...]]):
    """Rows of one text -> a string tensor; rows of a pair -> a tuple of two (what the
    KerasHub preprocessor packs as `[CLS] a [SEP] b [SEP]`)."""
    import tensorflow as tf

    width = len(texts[0]) if texts else 1
    columns = tuple(tf.constant([t[j] for t in texts], dtype=tf.string) for j in range(width))
    return columns[0] if width == 1 else columns


def load_text_file(cfg: DataConfig, seed: int, task=None) -> DataSplits:
    """Texts and labels from `data.path` (CSV or JSONL), split with a seeded split kept in
    proportion over the task's strata (classes; target quantiles for regression). `task` (a
    `tftune.tasks.Task`, default single-label classification) reads the labels."""
    import tensorflow as tf

    from tftune.assets import resolve

    if task is None:
        from tftune.tasks import Classification

        task = Classification()
    if not cfg.path:
        raise DataError(f"data.path is not set. Point it at a {cfg.source.upper()} file.")
    path = storage.path(resolve(cfg.path))  # a local file or a tf.io.gfile URL
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Set data.path to an existing file.")
    rows = read_rows(path, cfg.source, cfg.delimiter, cfg.encoding)
    if not rows:
        raise DataError(f"{path} has no data rows.")
    text_columns = tuple(cfg.text_columns or (cfg.text_column,))
    for column in (*text_columns, *(() if cfg.label_columns else (cfg.label_column,))):
        if column not in rows[0]:
            raise DataError(
                f"{path} has no column {column!r}. Columns: {', '.join(map(str, rows[0]))}. "
                f"Set data.text_column{'s' if cfg.text_columns else ''} / data.label_column."
            )
    texts = text_values(rows, text_columns)
    names, labels, keep = task.read_labels(rows, cfg, str(path))
    keep = keep & np.array([all(t) for t in texts])
    if cfg.deduplicate:
        seen = set()
        for i, t in enumerate(texts):
            if keep[i]:
                if t in seen:
                    keep[i] = False
                seen.add(t)
    texts_arr = [t for t, k in zip(texts, keep) if k]
    labels = labels[keep]
    if len(labels) == 0:
        raise DataError(f"{path} has no usable rows (all texts empty or labels skipped).")
    parts = seeded_split(task.strata(labels), cfg, seed, path)

    def make(idx):
        return tf.data.Dataset.from_tensor_slices((text_tensors([texts_arr[i] for i in idx]), labels[idx]))

    return DataSplits(
        train=make(parts["train"]),
        val=make(parts["val"]),
        test=make(parts["test"]) if len(parts["test"]) else None,
        class_names=names,
        modality="text",
        sizes={s: len(ix) for s, ix in parts.items()},
        labels={s: labels[ix] for s, ix in parts.items()},
        subsets={s: (lambda i, ix=ix: make(ix[i])) for s, ix in parts.items() if len(ix)},
    )
