"""Data sources -> (train, val, test) `tf.data.Dataset`s of raw examples."""

from __future__ import annotations

from tftune.config import DataConfig
from tftune.data.splits import DataSplits
from tftune.errors import DataError


def load_data(cfg: DataConfig, seed: int, task=None) -> DataSplits:
    """Loads the configured source, its labels read by `task` (a `tftune.tasks.Task`; default
    single-label classification), split and subsampled with `cfg.split_seed`, else `seed` (the
    run's `train.seed`). The `python` source is passed to `tftune.train` directly."""
    seed = cfg.split_seed_for(seed)
    if task is not None and not task.image_folders and cfg.source in ("folder", "fashion_mnist"):
        raise DataError(
            f"Task {task.name!r} reads its labels from a CSV / JSONL file (data.source: csv, "
            f"jsonl or image_csv) or from datasets passed from Python; data.source {cfg.source!r} labels "
            f"images by class folder. Received: data.source={cfg.source!r}"
        )
    if cfg.source == "folder":
        from tftune.data.images import load_image_folder

        return load_image_folder(cfg, seed)
    if cfg.source == "fashion_mnist":
        from tftune.data.images import load_fashion_mnist

        return load_fashion_mnist(cfg, seed)
    if cfg.source == "image_csv":
        from tftune.data.image_table import load_image_table

        return load_image_table(cfg, seed, task)
    if cfg.source in ("csv", "jsonl"):
        from tftune.data.text import load_text_file

        return load_text_file(cfg, seed, task)
    if cfg.source == "tfds":
        from tftune.data.tfds_source import load_tfds

        return load_tfds(cfg, seed, task)
    if cfg.source == "tfrecord":
        from tftune.data.tfrecord_source import load_tfrecord

        return load_tfrecord(cfg, seed, task)
    raise DataError(
        "data.source is 'python': pass your datasets from Python with "
        "tftune.train(config, datasets=DataSplits.from_datasets(...))."
    )


__all__ = ["DataSplits", "load_data"]
