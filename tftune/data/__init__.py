"""Data sources -> (train, val, test) `tf.data.Dataset`s of raw examples."""

from __future__ import annotations

from tftune.config import DataConfig
from tftune.data.splits import DataSplits
from tftune.errors import DataError


def load_data(cfg: DataConfig, seed: int) -> DataSplits:
    """Loads the configured source. The `python` source is passed to `tftune.train` directly."""
    if cfg.source == "folder":
        from tftune.data.images import load_image_folder

        return load_image_folder(cfg, seed)
    if cfg.source == "fashion_mnist":
        from tftune.data.images import load_fashion_mnist

        return load_fashion_mnist(cfg, seed)
    if cfg.source in ("csv", "jsonl"):
        from tftune.data.text import load_text_file

        return load_text_file(cfg, seed)
    raise DataError(
        "data.source is 'python': pass your datasets from Python with "
        "tftune.train(config, datasets=DataSplits.from_datasets(...))."
    )


__all__ = ["DataSplits", "load_data"]
