"""`history.csv`: one row per epoch of every stage, rewritten atomically after each epoch."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tftune.rundir import storage
from tftune.rundir.io import write_text


def read_rows(path: Path) -> list[dict]:
    """The rows of a history CSV (values as text); [] when there is none."""
    try:
        p = storage.path(path)
        if storage.is_url(p):
            if not p.is_file():
                return []
            return list(csv.DictReader(io.StringIO(p.read_text())))
        with open(p, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def write_rows(path: Path, rows: list[dict]) -> None:
    """Writes `rows` as a CSV (columns in order of first appearance), atomically."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(storage.path(path), buffer.getvalue())
