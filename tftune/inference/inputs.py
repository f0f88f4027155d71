"""What `tftune predict` reads and writes: image files and folders, texts from arguments,
files and stdin, each checked before the model loads; and the predictions as CSV or JSON
lines."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from tftune.data.images import IMAGE_EXTENSIONS
from tftune.errors import DataError

TEXT_FILE_SUFFIXES = (".txt", ".csv", ".jsonl", ".json")


def gather_inputs(run, inputs: Sequence[str], column: Optional[str] = None, literal: bool = False,
                  stdin=None) -> tuple[list[str], list]:
    """(names, items) for the `tftune predict` arguments `inputs` of the opened run `run`,
    every input checked before the model loads (a bad one fails fast, naming it).

    Image runs: `inputs` are image files or folders of images (`image_files`), each decoded
    once to check it; names are the paths, items the files. Text runs: texts gathered with
    `gather_texts` (`column` defaults to the run's `data.text_column`); names and items are
    the texts.
    """
    if run.modality == "image":
        from tftune.data.images import check_images

        files = image_files(inputs)
        check_images([str(f) for f in files])
        return [str(f) for f in files], files
    if run.config.data.text_columns:
        pairs = gather_pairs(inputs, tuple(run.config.data.text_columns))
        return [f"{a} [SEP] {b}" for a, b in pairs], pairs
    pairs = gather_texts(inputs, column or run.config.data.text_column, literal, stdin)
    texts = [t for _, t in pairs]
    return texts, texts


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named by `paths`: files as given, folders searched recursively (sorted).

    Raises DataError for a path that does not exist, a file that is not an image type, or a
    folder without images.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
            )
            if not found:
                raise DataError(f"Folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
            out += found
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{p} is not an image file. Expected one of: {', '.join(IMAGE_EXTENSIONS)}."
                )
            out.append(p)
        else:
            raise DataError(f"Input {p} not found. Pass image files or folders of images.")
    return out


def check_texts(texts: Sequence[str], what: Callable[[int], str] = lambda i: f"Text {i + 1}") -> list[str]:
    """The texts as str; an empty (or whitespace-only) text is an error naming it."""
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, bytes):
            t = t.decode("utf-8")
        if not isinstance(t, str):
            raise DataError(f"{what(i)} is a {type(t).__name__}, not a string.")
        if not t.strip():
            raise DataError(f"{what(i)} is empty. Pass non-empty texts.")
        out.append(t)
    return out


TEXT_FILE_SUFFIXES = (".txt", ".csv", ".jsonl", ".json")


def read_texts(path: str | Path, column: str = "text") -> list[tuple[str, str]]:
    """(where, text) pairs from a file: `.txt` one text per line, `.csv` / `.jsonl`
    (optionally `.gz` / `.bz2`) the `column` of each row. An empty text is an error naming
    its line or row."""
    from tftune.data.text import _open_text, read_rows

    p = Path(path).expanduser()
    suffixes = [s for s in p.suffixes if s not in (".gz", ".bz2")]
    kind = suffixes[-1].lower() if suffixes else ""
    out = []
    if kind == ".txt":
        try:
            with _open_text(p) as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"Cannot read {p}: {e}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                raise DataError(f"Line {n} of {p} is empty. Remove empty lines (one text per line).")
            out.append((f"{p.name}:{n}", line.strip()))
        return out
    if kind not in (".csv", ".jsonl", ".json"):
        raise DataError(f"{p}: expected a .txt, .csv or .jsonl file of texts.")
    rows = read_rows(p, "csv" if kind == ".csv" else "jsonl")
    if rows and column not in rows[0]:
        raise DataError(
            f"{p} has no column {column!r}. Columns: {', '.join(map(str, rows[0]))}. Name the "
            f"text column with --column."
        )
    for n, row in enumerate(rows, 1):
        text = str(row.get(column) or "").strip()
        if not text:
            raise DataError(f"Row {n} of {p} has an empty {column!r} text. Fill it in or remove the row.")
        out.append((f"{p.name} row {n}", text))
    if not out:
        raise DataError(f"{p} has no data rows.")
    return out


def gather_texts(inputs: Sequence[str], column: str = "text", literal: bool = False,
                 stdin=None) -> list[tuple[str, str]]:
    """(where, text) pairs from `tftune predict` arguments: `-` reads lines from `stdin`, an
    existing .txt / .csv / .jsonl file (optionally .gz / .bz2) is read with `read_texts`, any
    other argument (every argument when `literal`) is a text itself. Empty texts are errors."""
    pairs: list[tuple[str, str]] = []
    for a, raw in enumerate(inputs, 1):
        path = Path(raw)
        if not literal and raw == "-" and stdin is not None:
            pairs += [(f"stdin line {n}", t) for n, t in enumerate(stdin.read().splitlines(), 1)]
        elif not literal and path.is_file() and path.suffix.lower() in TEXT_FILE_SUFFIXES + (".gz", ".bz2"):
            pairs += read_texts(path, column)
        else:
            pairs.append((f"argument {a}", raw))
    check_texts([t for _, t in pairs], lambda i: f"Text {i + 1} ({pairs[i][0]})")
    return pairs


def gather_pairs(inputs: Sequence[str], columns: tuple[str, str]) -> list[tuple[str, str]]:
    """Text pairs from CSV / JSONL files (optionally .gz / .bz2) with both `columns`; an
    argument that is not such a file, a missing column or an empty text is an error naming it."""
    from tftune.data.text import read_rows, text_values

    out = []
    for raw in inputs:
        p = Path(raw).expanduser()
        kinds = [s.lower() for s in p.suffixes if s not in (".gz", ".bz2")]
        if not p.is_file() or not kinds or kinds[-1] not in (".csv", ".jsonl", ".json"):
            raise DataError(
                f"{raw!r} is not a CSV or JSONL file. This run takes text pairs: pass files with "
                f"the columns {columns[0]!r} and {columns[1]!r}."
            )
        rows = read_rows(p, "csv" if kinds[-1] == ".csv" else "jsonl")
        missing = [c for c in columns if rows and c not in rows[0]]
        if missing:
            raise DataError(f"{p} has no column {missing[0]!r} (a text pair run reads "
                            f"{columns[0]!r} and {columns[1]!r}). Columns: {', '.join(map(str, rows[0]))}.")
        for n, pair in enumerate(text_values(rows, columns), 1):
            if not all(pair):
                raise DataError(f"Row {n} of {p} has an empty text in {columns}. Fill it in or remove the row.")
            out.append(pair)
    if not out:
        raise DataError("No text pairs to predict: the files have no data rows.")
    return out


def format_predictions(inputs: Sequence[str], outputs: np.ndarray, task, fmt: str = "csv") -> str:
    """Predictions as CSV or JSON lines, one row per input, as the run's `task` (a
    `tftune.tasks.Task`; a list of class names means single-label classification) words
    them (`Task.prediction_rows`): classification `input,label,prob_<class>...` /
    `{"input", "label", "probabilities": {class: p}}`; regression `input,<target>`;
    multilabel `input,labels,prob_<label>...`."""
    import csv
    import json

    if not hasattr(task, "prediction_rows"):
        from tftune.tasks import Classification

        task = Classification(task)
    columns, rows = task.prediction_rows(outputs)
    if fmt == "jsonl":
        return "".join(
            json.dumps({"input": str(x), **{k: _rounded(v) for k, v in row.items()}},
                       ensure_ascii=False) + "\n"
            for x, row in zip(inputs, rows)
        )
    if fmt != "csv":
        raise ValueError(f"Unknown format {fmt!r}. Expected one of: csv, jsonl. Received: fmt={fmt!r}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["input", *columns])
    for x, row in zip(inputs, rows):
        cells = []
        for value in row.values():
            if isinstance(value, dict):
                cells += [f"{float(p):.6f}" for p in value.values()]
            elif isinstance(value, list):
                cells.append("|".join(map(str, value)))
            else:
                cells.append(value)
        writer.writerow([str(x), *cells])
    return buf.getvalue()


def _rounded(value):
    if isinstance(value, dict):
        return {k: round(float(p), 6) for k, p in value.items()}
    return value
