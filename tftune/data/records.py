"""Sources read as a stream of records (`data.source: tfds`, `tfrecord`): what they share.

A source is one or more `Part`s (a TFDS split, the TFRecord files of one glob). Each part's
labels are read in one pass (only the label, no image decoding) and handed to the run's task
as rows, as a CSV's would be; the seeded split then picks example positions, and each split
is one filtered pass over its part (`split_dataset`) that decodes only the examples it keeps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from tftune.data.splits import DataSplits, stratified_split, subsample
from tftune.errors import DataError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Part:
    """One part of a source, read in the same order every time.

    `dataset()` makes a fresh `tf.data.Dataset` of the part's raw records (whatever
    `prepare` in `split_dataset` takes); `values` holds each record's label as a list of
    raw items (bytes, int or float; empty when the record has none); `ids` names each record."""

    where: str
    dataset: Callable[[], Any]
    values: list
    ids: list[str]


def _item(x):
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace").strip()
    if isinstance(x, (np.integer, int)) and not isinstance(x, bool):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x)
    return x


def label_rows(part: Part, column: str, task_name: str, names: Optional[Sequence[str]]) -> list[dict]:
    """The part's labels as rows `{column: value}` for `Task.read_labels`: a class name (text)
    for classification, a list of names for multi-label, a number for regression. Integer
    labels are indices into `names` (e.g. a TFDS ClassLabel's, or `data.classes`), else their
    decimal text; -1 means unlabelled (an empty label)."""
    rows = []
    for k, raw in enumerate(part.values):
        items = [_item(x) for x in raw]
        if task_name != "regression":
            for j, x in enumerate(items):
                if isinstance(x, float):
                    raise DataError(
                        f"{part.where}: the label of {part.ids[k]} is a number ({x}). A "
                        f"{task_name} label is a class index (int64) or a class name (bytes)."
                    )
                if isinstance(x, int):
                    if x == -1:
                        items[j] = ""
                    elif names is None:
                        items[j] = str(x)
                    elif 0 <= x < len(names):
                        items[j] = str(names[x])
                    else:
                        raise DataError(
                            f"{part.where}: {part.ids[k]} has label index {x}, outside the "
                            f"{len(names)} class names (0..{len(names) - 1}: "
                            f"{', '.join(map(str, names[:6]))}{' ...' if len(names) > 6 else ''})."
                            f" Fix the label, or list every class in data.classes."
                        )
            items = [x for x in items if x != ""]
        if task_name == "multilabel":
            value = items
        elif len(items) > 1:
            raise DataError(
                f"{part.where}: {part.ids[k]} has {len(items)} labels ({items[:4]}). Task "
                f"{task_name!r} takes one label per example; use task: multilabel for several."
            )
        else:
            value = items[0] if items else ""
        rows.append({column: value})
    return rows


def numeric_classes(parts: Sequence[Part]) -> Optional[tuple[str, ...]]:
    """The integer labels seen in `parts` (-1 left out) as class names in numeric order, or
    None when some label is not an integer."""
    seen = set()
    for part in parts:
        for raw in part.values:
            for x in raw:
                x = _item(x)
                if not isinstance(x, int):
                    return None
                if x != -1:
                    seen.add(x)
    return tuple(str(i) for i in sorted(seen)) if seen else None


def read_labels(parts: dict[str, Part], cfg, task, int_names: Optional[Sequence[str]]):
    """(class names, {split: (labels, keep)}) for every part, read by `task` with
    `data.label_key` as the label column; the training part names the classes, the others
    are read against them. `int_names` names integer labels (None: their decimal text, the
    classes in numeric order)."""
    label_cfg = dataclasses.replace(cfg, label_column=cfg.label_key)
    if int_names is None and task.name != "regression" and not cfg.classes:
        numeric = numeric_classes([parts["train"]])
        if numeric:  # "10" after "9", not after "1"
            label_cfg = dataclasses.replace(label_cfg, classes=numeric)
    rows = label_rows(parts["train"], cfg.label_key, task.name, int_names)
    names, labels, keep = task.read_labels(rows, label_cfg, parts["train"].where)
    out = {"train": (labels, keep)}
    for split, part in parts.items():
        if split == "train":
            continue
        other_cfg = dataclasses.replace(label_cfg, classes=tuple(names) if names else None)
        rows = label_rows(part, cfg.label_key, task.name, int_names)
        _, labels, keep = task.read_labels(rows, other_cfg, part.where)
        out[split] = (labels, keep)
    return list(names), out


def assign_splits(parts: dict[str, Part], labels: dict, task, cfg, seed: int, what: str) -> dict:
    """{split: (part name, sorted positions)}: mapped val / test parts are used whole, the
    missing ones are drawn from the training part by `data.val_fraction` / `test_fraction`
    (stratified over `task.strata`); `max_train_examples` / `max_test_examples` subsample."""
    train_labels, train_keep = labels["train"]
    kept = np.flatnonzero(train_keep)
    if len(kept) == 0:
        raise DataError(f"{parts['train'].where} has no usable examples (all labels skipped).")
    fractions = [0.0 if "test" in parts else cfg.test_fraction, 0.0 if "val" in parts else cfg.val_fraction]
    test_i, val_i, train_i = stratified_split(task.strata(train_labels[kept]), fractions, seed)
    chosen = {"train": ("train", kept[train_i]), "val": ("train", kept[val_i]), "test": ("train", kept[test_i])}
    for split in ("val", "test"):
        if split in parts:
            chosen[split] = (split, np.flatnonzero(labels[split][1]))
    for split, limit in (("train", cfg.max_train_examples), ("test", cfg.max_test_examples)):
        part, positions = chosen[split]
        keep = subsample(task.strata(labels[part][0][positions]), limit, seed)
        chosen[split] = (part, positions[keep])
    if len(chosen["train"][1]) == 0:
        raise DataError(f"The training split of {what} is empty. Add examples or lower the held-out fractions.")
    if len(chosen["val"][1]) == 0:
        raise DataError(
            f"The validation split of {what} is empty. Raise data.val_fraction, or map a "
            f"validation part with data.splits.val."
        )
    return {s: (part, np.sort(pos)) for s, (part, pos) in chosen.items()}


def split_dataset(part: Part, positions: np.ndarray, labels: np.ndarray, prepare):
    """The examples of `part` at `positions` as `(prepare(record), label)`, in the part's
    order, with a known cardinality (the pipeline sizes its shuffle and cache from it)."""
    import tensorflow as tf

    n = len(part.values)
    labels_t = tf.constant(labels)
    ds = part.dataset().enumerate()
    if len(positions) < n:
        mask = np.zeros(n, dtype=bool)
        mask[positions] = True
        mask_t = tf.constant(mask)
        ds = ds.filter(lambda i, record: tf.gather(mask_t, i))
    ds = ds.map(lambda i, record: (prepare(record), tf.gather(labels_t, i)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.apply(tf.data.experimental.assert_cardinality(len(positions)))


def record_splits(parts: dict[str, Part], cfg, seed: int, task, int_names, prepare, modality: str,
                  what: str, direct: Optional[tuple] = None) -> DataSplits:
    """`DataSplits` of a record source: labels read by `task` (or `direct`: names and
    {split: (labels, keep)} the source already has), split, and each split a filtered pass."""
    if task is None:
        from tftune.tasks import Classification

        task = Classification()
    names, labels = direct if direct is not None else read_labels(parts, cfg, task, int_names)
    chosen = assign_splits(parts, labels, task, cfg, seed, what)
    datasets, sizes, ids, split_labels, subsets = {}, {}, {}, {}, {}
    for split in SPLITS:
        part_name, positions = chosen[split]
        part = parts[part_name]
        all_labels = labels[part_name][0]
        sizes[split] = len(positions)
        ids[split] = [part.ids[i] for i in positions]
        split_labels[split] = all_labels[positions]
        if len(positions):
            datasets[split] = split_dataset(part, positions, all_labels, prepare)
            subsets[split] = (lambda i, part=part, positions=positions, all_labels=all_labels:
                              split_dataset(part, positions[i], all_labels, prepare))
    return DataSplits(
        train=datasets["train"],
        val=datasets["val"],
        test=datasets.get("test"),
        class_names=names,
        modality=modality,
        sizes=sizes,
        ids=ids,
        labels=split_labels,
        subsets=subsets,
    )
