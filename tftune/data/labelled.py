"""Labelled examples from a folder or a file, mapped onto a trained run's classes.

This is what `tftune evaluate --data` and `tftune export --data` read: images in
`FOLDER/<class>/*`, or texts in a CSV / JSONL file with a text and a label column.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from tftune.errors import DataError

TEXT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
ENCODING_OPTION = "--encoding {}"  # how --data names its file's encoding (see read_rows)


@dataclasses.dataclass
class Examples:
    """Labelled examples to evaluate on (or to check an export with).

    `dataset` is an unbatched `tf.data.Dataset` of `(input, label)`: an image as float32
    `[H, W, 3]` in 0..255 (prepared as in training) or a text as a scalar string; the label
    an int32 index into the run's classes. `ids` names each example where the source has
    names (file paths, dataset indices), else None.
    """

    name: str
    description: str
    dataset: Any
    size: int
    ids: Optional[list[str]] = None


def _name(path: Path) -> str:
    stem = path.name
    for suffix in (".gz", ".bz2", ".csv", ".jsonl", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "data"


def load_labelled(
    spec: str | Path,
    modality: str,
    class_names: Sequence[str],
    image_size: tuple[int, int] = (224, 224),
    *,
    text_column: str = "text",
    label_column: str = "label",
    skip_unknown_labels: bool = False,
    task=None,
    label_columns: Optional[Sequence[str]] = None,
    label_separator: str = "|",
    text_columns: Optional[Sequence[str]] = None,
    image_column: str = "file",
    encoding: str = "utf-8",
) -> Examples:
    """Images in `spec/<class>/*` or listed in the CSV file `spec` (`image_column`, as
    `data.source: image_csv` reads it) for modality `image`, or texts in the CSV / JSONL file
    `spec` (modality `text`), labelled with the run's `class_names` as its `task` (a
    `tftune.tasks.Task`, default single-label classification) reads labels: a class, a
    number, or a list of labels (`label_columns`: one 0/1 column per label). CSV / JSONL
    files are read in `encoding` (any Python codec; a wrong one is an error naming
    `--encoding`)."""
    from tftune.assets import resolve

    if task is None:
        from tftune.tasks import Classification

        task = Classification(class_names)
    from tftune.rundir import storage

    path = storage.path(resolve(str(spec)))  # a local path or a tf.io.gfile URL
    from tftune.config import DataConfig

    cfg = DataConfig(text_column=text_column, label_column=label_column,
                     label_columns=tuple(label_columns) if label_columns else None,
                     label_separator=label_separator, image_column=image_column,
                     encoding=encoding)
    from tftune.config.schema import _check_encoding

    _check_encoding(encoding, "--encoding")
    if modality == "image" and path.is_file():
        return _listed_images(path, class_names, image_size, cfg, task, skip_unknown_labels)
    if modality == "image":
        return _labelled_images(spec, path, class_names, image_size, task, skip_unknown_labels)
    return _labelled_texts(spec, path, class_names, cfg, tuple(text_columns or ()), task,
                           skip_unknown_labels)


def _labelled_images(spec, path: Path, class_names, image_size, task, skip_unknown: bool) -> Examples:
    """Images in `path/<class>/*` with the run's classes (unknown ones skipped or an error)."""
    from tftune.data.images import list_class_folder
    from tftune.data.labels import known_class_labels

    if not path.is_dir():
        raise DataError(
            f"--data {spec} is not a folder. For an image run, pass a folder of class "
            f"folders: {spec}/<class name>/<image files>."
        )
    paths, raw = list_class_folder(path)
    if not task.image_folders:
        raise DataError(f"A {task.name} run is evaluated on a CSV / JSONL file, not on a "
                        f"folder of class folders. Received: --data {spec}")
    labels, keep = known_class_labels(raw, class_names, skip_unknown, str(path))
    paths = [p for p, k in zip(paths, keep) if k]
    labels = labels[keep]
    if not paths:
        raise DataError(f"{path} holds no images of the run's classes ({', '.join(class_names)}).")
    return _image_examples(path, paths, labels, image_size, f"{len(paths)} images in {path}")


def _listed_images(path: Path, class_names, image_size, cfg, task, skip_unknown: bool) -> Examples:
    """The images listed in the CSV `path`, labelled with the run's names by its task."""
    from tftune.data.image_table import read_image_table

    paths, _, labels = read_image_table(path, cfg, task, known=list(class_names) or None,
                                        skip_unknown=skip_unknown, fix=ENCODING_OPTION)
    if not paths:
        raise DataError(f"{path} lists no images labelled with the run's labels.")
    return _image_examples(path, paths, labels, image_size, f"{len(paths)} images listed in {path}")


def _image_examples(path: Path, paths: list, labels, image_size, description: str) -> Examples:
    """`Examples` of the image files `paths` (checked to decode) and their labels."""
    from tftune.data.images import _paths_dataset, check_images

    check_images(paths)
    return Examples(
        name=_name(path),
        description=description,
        dataset=_paths_dataset(paths, labels, tuple(image_size)),
        size=len(paths),
        ids=list(paths),
    )


def _labelled_texts(spec, path: Path, class_names, cfg, text_columns: tuple, task,
                    skip_unknown: bool) -> Examples:
    """Texts (or text pairs, `text_columns`) and labels from a CSV / JSONL file, labels read
    by the run's task from `cfg`'s columns."""
    import tensorflow as tf

    from tftune.data.text import read_rows, text_tensors, text_values

    suffix = next((s for s in path.suffixes[::-1] if s in TEXT_SUFFIXES), None)
    if not path.is_file() or suffix is None:
        raise DataError(
            f"--data {spec} is not a CSV or JSONL file. For a text run, pass a .csv or .jsonl "
            f"file (optionally .gz / .bz2) with a {cfg.text_column!r} and a "
            f"{cfg.label_column!r} column."
        )
    rows = read_rows(path, TEXT_SUFFIXES[suffix], encoding=cfg.encoding, fix=ENCODING_OPTION)
    if not rows:
        raise DataError(f"{path} has no data rows.")
    columns = text_columns or (cfg.text_column,)
    checks = [(c, "the run's data.text_columns" if text_columns else "--text-column") for c in columns]
    for column, option in (*checks, (cfg.label_column, "--label-column")):
        if column not in rows[0] and not (cfg.label_columns and option == "--label-column"):
            raise DataError(
                f"{path} has no column {column!r}. Columns: {', '.join(map(str, rows[0]))}. "
                f"Name the right one with {option}."
            )
    texts = text_values(rows, columns)
    empty = [i for i, t in enumerate(texts) if not all(t)]
    if empty:
        raise DataError(
            f"{path} has {len(empty)} row(s) with an empty {' / '.join(map(repr, columns))} text "
            f"(first: data row {empty[0] + 1}). Fill them in or remove those rows."
        )
    _, labels, keep = task.read_labels(rows, cfg, str(path), known=class_names,
                                       skip_unknown=skip_unknown)
    rows_kept = [i for i in range(len(rows)) if keep[i]]
    if not rows_kept:
        raise DataError(f"{path} has no rows labelled with the run's classes ({', '.join(class_names)}).")
    texts_kept = [texts[i] for i in rows_kept]
    dataset = tf.data.Dataset.from_tensor_slices((text_tensors(texts_kept), labels[keep]))
    return Examples(
        name=_name(path),
        description=f"{len(rows_kept)} texts in {path}",
        dataset=dataset,
        size=len(rows_kept),
        ids=[f"row {i + 1}" for i in rows_kept],
    )
