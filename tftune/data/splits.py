"""Train / validation / test splits of raw examples, as plain `tf.data.Dataset`s."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Sequence

import numpy as np

from tftune.errors import DataError


@dataclasses.dataclass
class DataSplits:
    """The data a recipe trains on.

    Each split is an unbatched `tf.data.Dataset` of `(raw_input, label)` pairs: an image as a
    float32 `[height, width, 3]` tensor in 0..255, or a text as a scalar string; the label is
    an int32 class index into `class_names` (classification), a float32 number (regression,
    `class_names` empty) or a float32 0/1 vector over `class_names` (multilabel). `test` may be None. `ids` names each example of
    a split, in order, where the source has names (image file paths, Fashion-MNIST indices):
    evaluation reports point at them.
    """

    train: "tf.data.Dataset"  # noqa: F821
    val: "tf.data.Dataset"  # noqa: F821
    test: Optional["tf.data.Dataset"]  # noqa: F821
    class_names: list[str]
    modality: Literal["image", "text"]
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    # Each split's labels as numpy, where the source has them at hand (file sources): tasks
    # that learn from the training labels (standardisation, class weights) read them here
    # instead of a pass over the dataset.
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # Files left out because they cannot be decoded (`data.skip_bad_files`); the run lists
    # them in its log and in skipped_files.txt.
    skipped: list[str] = dataclasses.field(default_factory=list)
    # split -> (positions in the split, ascending -> a dataset of just those examples, read
    # and decoded only for them): how a worker of a multi-worker run takes its shard
    # (`tftune.data.shards`). Sources without it are sharded after their own maps.
    subsets: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_datasets(
        cls,
        train,
        val,
        test=None,
        *,
        class_names: Sequence[str],
        modality: Literal["image", "text"],
    ) -> "DataSplits":
        """Wraps a user's own unbatched `(input, label)` datasets (the `python` data source)."""
        for name, ds in (("train", train), ("val", val)):
            if ds is None:
                raise DataError(f"The {name} dataset is missing. Pass a tf.data.Dataset.")
        sizes = {}
        for name, ds in (("train", train), ("val", val), ("test", test)):
            if ds is None:
                continue
            spec = ds.element_spec
            if not isinstance(spec, tuple) or len(spec) != 2:
                raise DataError(
                    f"The {name} dataset must yield (input, label) pairs. "
                    f"Received element_spec={spec}"
                )
            want = 3 if modality == "image" else 0
            rank = spec[0].shape.rank
            if rank != want:
                what = "one image [H, W, 3] float tensor" if modality == "image" else "one string"
                raise DataError(
                    f"The {name} dataset must be unbatched, with {what} per element for "
                    f"modality={modality!r}. Received element_spec={spec}. "
                    + ("Call .unbatch() first." if rank == want + 1 else "")
                )
            card = int(ds.cardinality())
            if card >= 0:
                sizes[name] = card
        return cls(train, val, test, list(class_names), modality, sizes)


def stratified_split(
    labels: np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Splits example indices per class: one index array per fraction, plus the rest last.

    Every class contributes `round(n_class * fraction)` examples to each split (at least one
    when the class has enough examples), so small classes are never left out of evaluation.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        start = 0
        for k, frac in enumerate(fractions):
            n = int(round(len(idx) * frac))
            if frac > 0 and n == 0 and len(idx) - start > 1:
                n = 1
            parts[k].append(idx[start : start + n])
            start += n
        parts[-1].append(idx[start:])
    out = []
    for chunks in parts:
        merged = np.concatenate(chunks) if chunks else np.array([], dtype=np.int64)
        rng.shuffle(merged)
        out.append(merged)
    return out


def subsample(labels: np.ndarray, limit: Optional[int], seed: int) -> np.ndarray:
    """Indices of at most `limit` examples, keeping the class proportions (stratified)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    keep, _ = stratified_split(labels, [limit / len(labels)], seed)
    return np.sort(keep[:limit])


def seeded_split(strata: np.ndarray, cfg, seed: int, what) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: index arrays of a seeded split kept in proportion over
    `strata`, by `cfg`'s val / test fractions, with its train and test subsamples
    (`max_train_examples`, `max_test_examples`). An empty validation split is an error."""
    test_idx, val_idx, train_idx = stratified_split(strata, [cfg.test_fraction, cfg.val_fraction], seed)
    train_idx = train_idx[subsample(strata[train_idx], cfg.max_train_examples, seed)]
    test_idx = test_idx[subsample(strata[test_idx], cfg.max_test_examples, seed)]
    if len(val_idx) == 0:
        raise DataError(f"The validation split of {what} is empty. Add rows or raise data.val_fraction.")
    return {"train": train_idx, "val": val_idx, "test": test_idx}


def unknown_labels(raw: Sequence[str], known) -> str:
    """The labels of `raw` not in `known`, quoted, sorted, at most five shown ('' if none)."""
    unknown = sorted({str(x) for x in raw if x not in known})
    return ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")


def class_index(
    raw_labels: Sequence[str],
    classes: Optional[Sequence[str]],
    skip_unlisted: bool,
    what: str,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Maps label strings to class indices.

    Returns (class_names, labels, keep) where `keep` selects the examples kept. Labels not in
    `classes` are an error naming them, unless `skip_unlisted` drops them.
    """
    raw = np.asarray([str(x) for x in raw_labels], dtype=object)
    if classes:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise DataError(f"data.classes lists a class twice: {names}")
        known = set(names)
        keep = np.array([x in known for x in raw], dtype=bool)
        shown = unknown_labels(raw, known)
        if shown and not skip_unlisted:
            raise DataError(
                f"{what} has labels that are not in data.classes: {shown}. Add them to "
                f"data.classes, or set data.skip_unlisted_labels: true to drop those rows."
            )
        present = set(raw[keep])
        empty = [n for n in names if n not in present]
        if empty:
            raise DataError(
                f"{what} has no examples of class {empty[0]!r}. Remove it from data.classes "
                f"or add examples of it."
            )
    else:
        names = sorted(set(raw))
        keep = np.ones(len(raw), dtype=bool)
    if len(names) < 2:
        raise DataError(
            f"{what} has {len(names)} class(es): {names}. A classifier needs at least two."
        )
    lookup = {n: i for i, n in enumerate(names)}
    labels = np.array([lookup.get(x, -1) for x in raw], dtype=np.int32)
    return names, labels, keep
