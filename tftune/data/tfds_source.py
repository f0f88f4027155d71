"""A prepared TensorFlow Datasets dataset (`data.source: tfds`), read offline.

`data.name` is the TFDS name (`mnist`, `my_dataset:1.0.0`, `imagenette/320px`), found in
`data.data_dir` (default: TFDS's own, `$TFDS_DATA_DIR` or ~/tensorflow_datasets). Nothing is
downloaded unless `data.download: true`: a dataset that is not prepared there is one error
saying how to prepare it. A dataset prepared by a builder this process does not know is read
from its files (TFDS's read-only builder).

Splits: `data.splits` maps `train` / `val` / `test` to TFDS split strings (`train[:90%]`);
without it, `train` is the dataset's `train` split and `val` / `test` its `validation` /
`test` splits where it has them. A part not mapped is drawn from the training part by
`data.val_fraction` / `data.test_fraction`, stratified, as for the file sources.
The input is `data.image_key` (an Image feature, decoded as the folder source decodes files)
or `data.text_key` (a Text feature); unset, `image`, else `text`, else the dataset's
supervised input. Labels are `data.label_key`: a ClassLabel names the classes.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from tftune.config import DataConfig
from tftune.data.records import Part, record_splits
from tftune.data.splits import DataSplits
from tftune.errors import DataError

DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _data_dir(cfg: DataConfig) -> Optional[str]:
    if not cfg.data_dir:
        return None
    from tftune.assets import resolve

    return os.path.expanduser(resolve(cfg.data_dir))


def _not_prepared(name: str, root: str, why: str = "") -> DataError:
    folder = name.split(":")[0].split("/")[0]
    return DataError(
        f"TFDS dataset {name!r} is not prepared under {root}{why}. tftune reads prepared data "
        f"offline: on a machine with network run `tfds build {name} --data_dir DIR` and copy DIR "
        f"here, then set data.data_dir: DIR (a folder holding {folder}/...); "
        f"or set data.download: true to let TFDS download and prepare it here."
    )


def load_builder(cfg: DataConfig):
    """The TFDS builder of `data.name` with its data prepared (downloaded first only when
    `data.download` is true)."""
    import tensorflow_datasets as tfds

    data_dir = _data_dir(cfg)
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or str(tfds.core.constants.DATA_DIR)
    try:
        builder = tfds.builder(cfg.name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise _not_prepared(cfg.name, root, " (and TFDS has no builder of that name)") from None
    except (ValueError, TypeError) as e:
        raise DataError(
            f"Invalid value for 'data.name'. Expected a TFDS dataset name (`mnist`, "
            f"`name:1.0.0`, `name/config`). Received: {cfg.name!r} ({str(e).splitlines()[0]})"
        ) from None
    if not builder.is_prepared():
        if not cfg.download:
            raise _not_prepared(cfg.name, root)
        try:
            builder.download_and_prepare()
        except Exception as e:  # the network, a manual download, disk space...
            raise DataError(
                f"TFDS could not download and prepare {cfg.name!r} into {root}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
    return builder


def _feature_keys(features) -> str:
    return ", ".join(sorted(features.keys()))


def _input_feature(builder, cfg: DataConfig) -> tuple[str, str]:
    """(feature key, modality) of the examples' input."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    where = f"TFDS dataset {cfg.name!r}"
    key = cfg.image_key or cfg.text_key
    if key is None:
        supervised = builder.info.supervised_keys
        fallback = supervised[0] if supervised and isinstance(supervised[0], str) else None
        key = next((k for k in ("image", "text", fallback) if k and k in features), None)
        if key is None:
            raise DataError(
                f"{where} has no feature 'image' or 'text'. Features: {_feature_keys(features)}. "
                f"Set data.image_key or data.text_key to the input feature."
            )
    elif key not in features:
        option = "image_key" if cfg.image_key else "text_key"
        raise DataError(
            f"{where} has no feature {key!r}. Features: {_feature_keys(features)}. "
            f"Set data.{option} to one of them."
        )
    feature = features[key]
    if isinstance(feature, tfds.features.Image) or (
        getattr(feature, "shape", None) is not None and len(feature.shape) in (2, 3)
        and np.dtype(getattr(feature, "np_dtype", object)).kind in "ui"
    ):
        return key, "image"
    if np.dtype(getattr(feature, "np_dtype", object)).kind in "OSU" and getattr(feature, "shape", None) == ():
        return key, "text"
    raise DataError(
        f"{where}: feature {key!r} is {type(feature).__name__}{getattr(feature, 'shape', '')}. "
        f"Expected an Image feature (data.image_key) or a Text feature (data.text_key)."
    )


def _split_mapping(builder, cfg: DataConfig) -> dict[str, str]:
    if cfg.splits:
        return dict(cfg.splits)
    available = set(builder.info.splits.keys())
    if "train" not in available:
        raise DataError(
            f"TFDS dataset {cfg.name!r} has no 'train' split (splits: {', '.join(sorted(available))}). "
            f"Map them with data.splits, e.g. {{train: \"{sorted(available)[0]}[:80%]\", ...}}."
        )
    return {s: name for s, name in DEFAULT_SPLITS.items() if name in available}


def _read_values(ds, key: str) -> list:
    """Each example's `key` as a list of raw items (one pass, batched when scalar)."""
    import tensorflow as tf

    spec = ds.element_spec[key]
    values: list = []
    if spec.shape.rank == 0:
        for batch in ds.map(lambda ex: ex[key]).batch(4096).as_numpy_iterator():
            values += [[x] for x in batch]
    else:
        for x in ds.map(lambda ex: tf.reshape(ex[key], [-1])).as_numpy_iterator():
            values.append(list(x))
    return values


def load_tfds(cfg: DataConfig, seed: int, task=None) -> DataSplits:
    """The splits of the prepared TFDS dataset `data.name` (see the module docstring)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from tftune.data.images import decode_image, prepare_image

    if not cfg.name:
        raise DataError("data.name is not set. Name the TFDS dataset to read (e.g. mnist).")
    builder = load_builder(cfg)
    features = builder.info.features
    key, modality = _input_feature(builder, cfg)
    if cfg.label_key not in features:
        raise DataError(
            f"TFDS dataset {cfg.name!r} has no feature {cfg.label_key!r}. Features: "
            f"{_feature_keys(features)}. Set data.label_key to the label feature."
        )
    is_image_feature = isinstance(features[key], tfds.features.Image)
    decoders = {key: tfds.decode.SkipDecoding()} if is_image_feature else None
    size = tuple(cfg.image_size)

    parts = {}
    for split, spec in _split_mapping(builder, cfg).items():
        def dataset(spec=spec):
            return builder.as_dataset(split=spec, shuffle_files=False, decoders=decoders)

        try:
            ds = dataset()
        except (ValueError, KeyError, AssertionError) as e:
            raise DataError(
                f"Invalid value for 'data.splits.{split}'. Expected a split of TFDS dataset "
                f"{cfg.name!r} (splits: {', '.join(sorted(builder.info.splits.keys()))}; slices "
                f"such as train[:90%]). Received: {spec!r} ({str(e).splitlines()[0]})"
            ) from None
        values = _read_values(ds, cfg.label_key)
        parts[split] = Part(f"TFDS {cfg.name} split {spec!r}", dataset, values,
                            [f"{cfg.name} {spec} example {i}" for i in range(len(values))])

    def prepare(example):
        x = example[key]
        if modality == "text":
            return tf.reshape(x, [])
        return decode_image(x, size) if is_image_feature else prepare_image(x, size)

    label_feature = features[cfg.label_key]
    names = list(label_feature.names) if isinstance(label_feature, tfds.features.ClassLabel) else None
    if names is not None and cfg.classes is None and (task is None or task.name == "classification"):
        direct = (names, {s: _class_label_indices(p) for s, p in parts.items()})
    else:
        direct = None
    return record_splits(parts, cfg, seed, task, names, prepare, modality, f"TFDS {cfg.name}", direct)


def _class_label_indices(part: Part) -> tuple[np.ndarray, np.ndarray]:
    """(labels, keep) of a ClassLabel part taken as they are: every example needs a label."""
    labels = np.array([int(v[0]) if len(v) == 1 else -1 for v in part.values], dtype=np.int32)
    missing = np.flatnonzero(labels < 0)
    if len(missing):
        raise DataError(
            f"{part.where} has {len(missing)} unlabelled example(s) (label -1; first: "
            f"{part.ids[missing[0]]}). Map a labelled split with data.splits, or draw it from "
            f"the training part (leave it out of data.splits)."
        )
    return labels, np.ones(len(labels), dtype=bool)
