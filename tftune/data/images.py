"""Image sources: a folder of class subfolders, and Fashion-MNIST."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Optional

import numpy as np

from tftune.config import DataConfig
from tftune.data.splits import DataSplits, class_index, stratified_split, subsample
from tftune.errors import DataError
from tftune.rundir import storage
from tftune.runtime import faults

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLIT_DIRS = ("train", "val", "test")


def list_class_folder(root: Path) -> tuple[list[str], list[str]]:
    """(paths, label strings) of the images in `root/<class>/*`; empty classes are errors."""
    if not root.is_dir():
        raise DataError(f"Image folder not found: {root}. Set data.path to a folder of class folders.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"No class folders in {root}. Expected {root}/<class name>/<image files>."
        )
    paths, labels = [], []
    for d in class_dirs:
        found = d.walk_files() if storage.is_url(d) else (f for f in d.rglob("*") if f.is_file())
        files = sorted(str(f) for f in found if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(
                f"Class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                f"Add images or remove the folder."
            )
        paths += files
        labels += [d.name] * len(files)
    return paths, labels


SKIP_BAD_FILES = "--set data.skip_bad_files=true"


def bad_images(paths: list[str]) -> list[str]:
    """The files of `paths` that cannot be decoded as images (fastai's `verify_images`)."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for p in paths:
        try:
            with Image.open(_image_file(p)) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            bad.append(p)
    return bad


def _image_file(p: str):
    """`p` for a local file; the bytes of a `tf.io.gfile` URL (gs://, ram://) as a file."""
    if not storage.is_url(p):
        return p
    import io

    return io.BytesIO(storage.path(p).read_bytes())


def check_images(paths: list[str], skip: bool = False, skip_option: Optional[str] = None) -> list[str]:
    """The files of `paths` that cannot be decoded as images: an error naming them, or with
    `skip` returned to be left out. `skip_option` is how the caller's user would ask to skip
    them (e.g. `--set data.skip_bad_files=true`), named in the error."""
    bad = bad_images(paths)
    if bad and not skip:
        shown = ", ".join(bad[:3])
        how = (f"Remove or replace them, or pass {skip_option} to leave them out (they are "
               f"then listed in the run directory's skipped_files.txt)." if skip_option
               else "Remove or replace them.")
        raise DataError(
            f"{len(bad)} image file(s) cannot be decoded: {shown}{' ...' if len(bad) > 3 else ''}. "
            + how
        )
    return bad


def leave_out(bad: list[str], split_paths: dict[str, list[str]], split_labels: dict) -> None:
    """Removes the files `bad` from each split's paths and labels, in place."""
    if not bad:
        return
    drop = set(bad)
    for s, paths in split_paths.items():
        keep = np.array([p not in drop for p in paths], dtype=bool)
        split_paths[s] = [p for p, k in zip(paths, keep) if k]
        split_labels[s] = np.asarray(split_labels[s])[keep] if len(paths) else split_labels[s]


def prepare_image(image, image_size: tuple[int, int]):
    """One image as the model takes it: float32 `[height, width, 3]` in 0..255.

    `image` is `[H, W]` or `[H, W, C]` pixels (uint8, or float in 0..255) with C = 1 (grey),
    2 (grey + alpha), 3 (RGB) or 4 (RGBA); alpha is dropped, as `decode_image(channels=3)`
    drops it. Resized with `tf.image.resize` (bilinear), rounded to whole values in 0..255
    (the training pipeline caches pixels as uint8) and grey repeated to RGB. Training,
    `tftune.load(...).predict` and the exported SavedModel all call this function, so an
    image is prepared the same way everywhere. Works eagerly and in graphs.
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels == 2:
        image = image[..., :1]
    elif channels == 4:
        image = image[..., :3]
    image = tf.image.resize(tf.cast(image, tf.float32), image_size)
    # Whole pixel values, as images are stored: training caches them as uint8.
    image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    if image.shape[-1] == 1:
        image = tf.repeat(image, 3, axis=-1)
    image.set_shape((*image_size, 3))
    return image


def decode_image(data, image_size: tuple[int, int]):
    """Encoded image bytes (PNG, JPEG, BMP, GIF: its first frame) -> `prepare_image`."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return prepare_image(image, image_size)


def _decode_fn(image_size: tuple[int, int]):
    import tensorflow as tf

    def decode(path, label):
        return decode_image(tf.io.read_file(path), image_size), label

    return decode


def _paths_dataset(paths, labels, image_size):
    import tensorflow as tf

    labels = np.asarray(labels)  # class indices as int32; numbers and multi-hot rows as given
    labels = labels if labels.dtype.kind == "f" else labels.astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths), labels))
    ds = faults.trace_decodes(ds, lambda path, label: path)  # off unless TFTUNE_DECODE_TRACE
    return ds.map(_decode_fn(image_size), num_parallel_calls=tf.data.AUTOTUNE)


def path_subsets(paths, labels, image_size):
    """positions -> `_paths_dataset` of just those files (`DataSplits.subsets`)."""
    labels = np.asarray(labels)
    return lambda idx: _paths_dataset([paths[i] for i in idx], labels[idx], image_size)


def load_image_folder(cfg: DataConfig, seed: int) -> DataSplits:
    """Images in `path/<class>/*` (seeded stratified split) or `path/{train,val,test}/<class>/*`."""
    from tftune.assets import resolve

    if not cfg.path:
        raise DataError("data.path is not set. Point it at a folder of class folders.")
    root = storage.path(resolve(cfg.path))  # a local folder or a tf.io.gfile URL
    if not root.is_dir():
        raise DataError(f"Image folder not found: {root}. Set data.path to an existing folder.")
    has_splits = (root / "train").is_dir()
    if has_splits:
        found = {s: list_class_folder(root / s) for s in SPLIT_DIRS if (root / s).is_dir()}
        names, train_labels, keep = class_index(
            found["train"][1], cfg.classes, cfg.skip_unlisted_labels, f"{root / 'train'}"
        )
        split_paths = {}
        split_labels = {}
        for s, (paths, raw) in found.items():
            _, lab, kp = class_index(raw, names, cfg.skip_unlisted_labels, f"{root / s}")
            split_paths[s] = [p for p, k in zip(paths, kp) if k]
            split_labels[s] = lab[kp]
        if "val" not in split_paths:
            val_idx, train_idx = stratified_split(split_labels["train"], [cfg.val_fraction], seed)
            tp, tl = split_paths["train"], split_labels["train"]
            split_paths["val"] = [tp[i] for i in val_idx]
            split_labels["val"] = tl[val_idx]
            split_paths["train"] = [tp[i] for i in train_idx]
            split_labels["train"] = tl[train_idx]
    else:
        paths, raw = list_class_folder(root)
        names, labels, keep = class_index(raw, cfg.classes, cfg.skip_unlisted_labels, str(root))
        paths = [p for p, k in zip(paths, keep) if k]
        labels = labels[keep]
        test_idx, val_idx, train_idx = stratified_split(
            labels, [cfg.test_fraction, cfg.val_fraction], seed
        )
        split_paths = {s: [paths[i] for i in ix] for s, ix in
                       (("train", train_idx), ("val", val_idx), ("test", test_idx))}
        split_labels = {"train": labels[train_idx], "val": labels[val_idx], "test": labels[test_idx]}
    for s, limit in (("train", cfg.max_train_examples), ("test", cfg.max_test_examples)):
        if s in split_paths:
            idx = subsample(split_labels[s], limit, seed)
            split_paths[s] = [split_paths[s][i] for i in idx]
            split_labels[s] = split_labels[s][idx]
    bad = check_images([p for s in split_paths.values() for p in s], cfg.skip_bad_files, SKIP_BAD_FILES)
    leave_out(bad, split_paths, split_labels)
    if len(split_paths["val"]) == 0:
        raise DataError(
            f"The validation split of {root} is empty. Add images or raise data.val_fraction."
        )
    datasets = {
        s: _paths_dataset(split_paths[s], split_labels[s], tuple(cfg.image_size))
        for s in split_paths
        if len(split_paths[s])
    }
    return DataSplits(
        train=datasets["train"],
        val=datasets["val"],
        test=datasets.get("test"),
        class_names=names,
        modality="image",
        sizes={s: len(p) for s, p in split_paths.items()},
        ids={s: list(p) for s, p in split_paths.items()},
        labels=dict(split_labels),
        skipped=bad,
        subsets={s: path_subsets(split_paths[s], split_labels[s], tuple(cfg.image_size))
                 for s in datasets},
    )


FASHION_MNIST_CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]


def _read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file (the MNIST array format: magic, dims, big-endian uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)) from the offline asset, else `keras.datasets`."""
    from tftune.assets import asset_path
    from tftune.errors import AssetError

    try:
        root = asset_path("fashion-mnist")
    except AssetError as offline_error:
        if os.environ.get("TFTUNE_ALLOW_DOWNLOAD") == "1":
            import keras

            return keras.datasets.fashion_mnist.load_data()
        raise DataError(
            f"{offline_error} (or set TFTUNE_ALLOW_DOWNLOAD=1 on a machine with network to "
            f"download it through keras.datasets)."
        ) from None
    return (
        (_read_idx(root / "train-images-idx3-ubyte.gz"), _read_idx(root / "train-labels-idx1-ubyte.gz")),
        (_read_idx(root / "t10k-images-idx3-ubyte.gz"), _read_idx(root / "t10k-labels-idx1-ubyte.gz")),
    )


def _array_dataset(x: np.ndarray, y: np.ndarray, image_size):
    """Grayscale uint8 arrays -> (float32 [H, W, 3] in 0..255, label), resized in the pipeline."""
    import tensorflow as tf

    def prepare(image, label):
        return prepare_image(image, image_size), label

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)


def load_fashion_mnist(cfg: DataConfig, seed: int) -> DataSplits:
    """Fashion-MNIST: the official 60k/10k split; validation drawn from the training part."""
    (x_train, y_train), (x_test, y_test) = fashion_mnist_arrays()
    val_idx, train_idx = stratified_split(y_train, [cfg.val_fraction], seed)
    train_idx = train_idx[subsample(y_train[train_idx], cfg.max_train_examples, seed)]
    test_idx = subsample(y_test, cfg.max_test_examples, seed)
    size = tuple(cfg.image_size)
    return DataSplits(
        train=_array_dataset(x_train[train_idx], y_train[train_idx], size),
        val=_array_dataset(x_train[val_idx], y_train[val_idx], size),
        test=_array_dataset(x_test[test_idx], y_test[test_idx], size),
        class_names=list(FASHION_MNIST_CLASSES),
        modality="image",
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        ids={
            "train": [f"fashion-mnist train image {i}" for i in train_idx],
            "val": [f"fashion-mnist train image {i}" for i in val_idx],
            "test": [f"fashion-mnist test image {i}" for i in test_idx],
        },
        labels={"train": y_train[train_idx].astype(np.int32), "val": y_train[val_idx].astype(np.int32),
                "test": y_test[test_idx].astype(np.int32)},
        subsets={
            "train": lambda i: _array_dataset(x_train[train_idx[i]], y_train[train_idx[i]], size),
            "val": lambda i: _array_dataset(x_train[val_idx[i]], y_train[val_idx[i]], size),
            "test": lambda i: _array_dataset(x_test[test_idx[i]], y_test[test_idx[i]], size),
        },
    )
