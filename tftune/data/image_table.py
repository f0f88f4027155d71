"""Images listed in a CSV file (`data.source: image_csv`): one row per image, its file in
`data.image_column` (relative to the CSV's folder) and its labels read by the run's task from
the other columns: a class, a number, or a list (`a|b`, a JSON list) or 0/1 columns for
multi-label. This is how a multi-label image set is given: a folder plus a `file,labels` CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tftune.config import DataConfig
from tftune.data.splits import DataSplits, seeded_split
from tftune.errors import DataError


def read_image_table(path: Path, cfg: DataConfig, task, known=None, skip_unknown: bool = False,
                     fix: str = "--set data.encoding={}"):
    """(image paths, label names, labels) of the rows of the CSV `path` (in `data.encoding`;
    `fix`: how to name another, see `tftune.data.text.read_rows`) that `task` keeps.

    Errors name the file and the first offending row: a missing column, an empty file cell,
    a listed image that does not exist, a label column with no labels at all, and (from the
    task) an unknown label when the names are given (`known`, or `data.classes`)."""
    from tftune.data.text import read_rows

    rows = read_rows(path, "csv", cfg.delimiter, cfg.encoding, fix)
    if not rows:
        raise DataError(f"{path} has no data rows. Expected a header ({cfg.image_column},"
                        f"{cfg.label_column}) and one row per image.")
    columns = ", ".join(map(str, rows[0]))
    label_columns = cfg.label_columns or (cfg.label_column,)
    for column, key in ((cfg.image_column, "image_column"),
                        *((c, "label_columns" if cfg.label_columns else "label_column") for c in label_columns)):
        if column not in rows[0]:
            raise DataError(f"{path} has no column {column!r}. Columns: {columns}. "
                            f"Set data.{key} to the right one.")
    root = path.parent
    paths = []
    for i, row in enumerate(rows):
        name = str(row.get(cfg.image_column) or "").strip()
        if not name:
            raise DataError(f"{path} data row {i + 1} has an empty {cfg.image_column!r} cell. "
                            f"Every row names one image file.")
        paths.append(str(root / name))
    missing = [(i, p) for i, p in enumerate(paths) if not Path(p).is_file()]
    if missing:
        i, p = missing[0]
        raise DataError(
            f"{path} lists {len(missing)} image file(s) that do not exist (first: data row "
            f"{i + 1}, {p}). File paths are relative to the CSV's folder {root}."
        )
    if not cfg.label_columns and not any(str(r.get(cfg.label_column) or "").strip() for r in rows):
        raise DataError(f"{path}: the label column {cfg.label_column!r} is empty in every row. "
                        f"Fill it in, or name the right column with data.label_column.")
    names, labels, keep = task.read_labels(rows, cfg, str(path), known=known, skip_unknown=skip_unknown)
    return [p for p, k in zip(paths, keep) if k], names, labels[keep]


def load_image_table(cfg: DataConfig, seed: int, task=None) -> DataSplits:
    """The images of the CSV `data.path`, split with a seeded split kept in proportion over
    the task's strata (classes; target quantiles for regression; none for multi-label)."""
    from tftune.assets import resolve
    from tftune.data.images import (SKIP_BAD_FILES, _paths_dataset, check_images, leave_out,
                                    path_subsets)

    if task is None:
        from tftune.tasks import Classification

        task = Classification()
    if not cfg.path:
        raise DataError("data.path is not set. Point it at a CSV file listing the images and their labels.")
    path = Path(resolve(cfg.path)).expanduser()
    if not path.is_file():
        raise DataError(f"Image list not found: {path}. Set data.path to a CSV file "
                        f"({cfg.image_column},{cfg.label_column}).")
    paths, names, labels = read_image_table(path, cfg, task)
    if len(labels) == 0:
        raise DataError(f"{path} has no usable rows (all labels skipped).")
    parts = seeded_split(task.strata(labels), cfg, seed, path)
    split_paths = {s: [paths[i] for i in ix] for s, ix in parts.items()}
    split_labels = {s: labels[ix] for s, ix in parts.items()}
    bad = check_images([p for s in split_paths.values() for p in s], cfg.skip_bad_files, SKIP_BAD_FILES)
    leave_out(bad, split_paths, split_labels)
    for s in ("train", "val"):
        if not split_paths[s]:
            raise DataError(f"The {s} split of {path} is empty once the images that cannot be "
                            f"decoded are left out. Replace them or add images.")
    size = tuple(cfg.image_size)

    def make(split: str):
        return _paths_dataset(split_paths[split], split_labels[split], size)

    return DataSplits(
        train=make("train"),
        val=make("val"),
        test=make("test") if len(split_paths["test"]) else None,
        class_names=names,
        modality="image",
        sizes={s: len(p) for s, p in split_paths.items()},
        ids=split_paths,
        labels=split_labels,
        skipped=bad,
        subsets={s: path_subsets(split_paths[s], split_labels[s], size)
                 for s in ("train", "val", "test") if len(split_paths[s])},
    )
