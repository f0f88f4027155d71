"""TFRecord files of `tf.train.Example`s (`data.source: tfrecord`).

`data.path` is a glob of the files (`data/train-*.tfrecord`; any path `tf.io.gfile` reads,
`gs://...` too), or `data.splits` maps `train` / `val` / `test` to one glob each; a part not
mapped is drawn from the training files by `data.val_fraction` / `data.test_fraction`,
stratified. `data.compression`: `none`, `gzip` or `zlib`.

Each record holds the input as bytes, `data.image_key` (encoded PNG / JPEG / BMP / GIF,
decoded as the folder source decodes files) or `data.text_key` (UTF-8 text); unset, `image`
if the records have it, else `text`. `data.label_key` is an int64 class index (into
`data.classes` when given, else the indices are the class names), a bytes class name, a
float (regression), or several (multi-label).
"""

from __future__ import annotations

from tftune.config import DataConfig
from tftune.data.records import Part, record_splits
from tftune.data.splits import DataSplits
from tftune.errors import DataError

COMPRESSION = {"none": None, "gzip": "GZIP", "zlib": "ZLIB"}
KINDS = {"bytes_list": "bytes", "int64_list": "int64", "float_list": "float"}


def match_files(pattern: str, key: str) -> list[str]:
    """The files matching the glob `pattern` (sorted), or an error naming data.<key>."""
    import tensorflow as tf

    try:
        files = sorted(tf.io.gfile.glob(pattern))
    except tf.errors.OpError as e:
        raise DataError(f"Cannot list data.{key} {pattern!r}: {e.message}") from None
    if not files:
        raise DataError(
            f"No files match data.{key} {pattern!r}. Expected a glob of TFRecord files "
            f"(e.g. data/train-*.tfrecord; any path tf.io.gfile reads)."
        )
    return files


def _read_error(path: str, cfg: DataConfig, e) -> DataError:
    message = getattr(e, "message", str(e)).splitlines()[0]
    return DataError(
        f"Cannot read {path} as TFRecord files of tf.train.Example with data.compression: "
        f"{cfg.compression} ({message}). Set data.compression to how the files were written "
        f"(none, gzip, zlib)."
    )


def feature_kinds(files: list[str], cfg: DataConfig) -> dict[str, str]:
    """{feature key: bytes | int64 | float} of the first record of the files."""
    import tensorflow as tf

    for path in files:
        try:
            first = next(iter(tf.data.TFRecordDataset(path, COMPRESSION[cfg.compression]).take(1)), None)
        except (tf.errors.OpError, ValueError) as e:
            raise _read_error(path, cfg, e) from None
        if first is None:
            continue
        try:
            example = tf.train.Example.FromString(first.numpy())
        except Exception as e:  # google.protobuf.message.DecodeError
            raise _read_error(path, cfg, e) from None
        return {k: KINDS.get(v.WhichOneof("kind"), "empty") for k, v in example.features.feature.items()}
    raise DataError(f"The files of {files[0]!r}{' ...' if len(files) > 1 else ''} hold no records.")


def _input_key(kinds: dict[str, str], cfg: DataConfig, where: str) -> tuple[str, str]:
    """(feature key, modality) of the records' input."""
    present = ", ".join(sorted(kinds)) or "none"
    if cfg.image_key or cfg.text_key:
        key, option = (cfg.image_key, "image_key") if cfg.image_key else (cfg.text_key, "text_key")
        if key not in kinds:
            raise DataError(f"{where} has no feature {key!r}. Features: {present}. Set data.{option} to one of them.")
    else:
        key = next((k for k in ("image", "text") if k in kinds), None)
        if key is None:
            raise DataError(
                f"{where} has no feature 'image' or 'text'. Features: {present}. Set "
                f"data.image_key (encoded image bytes) or data.text_key (text bytes)."
            )
        option = f"{key}_key"
    if kinds[key] != "bytes":
        raise DataError(
            f"{where}: feature {key!r} holds {kinds[key]} values. Expected bytes (encoded "
            f"image files for data.image_key, UTF-8 text for data.text_key). Set data.{option}."
        )
    return key, "image" if option == "image_key" else "text"


def read_part(files: list[str], cfg: DataConfig, input_key: str, label_dtype) -> tuple[list, list[str]]:
    """(label values, ids) of every record of `files`, checking that each has the input."""
    import tensorflow as tf

    spec = {cfg.label_key: tf.io.RaggedFeature(label_dtype),
            input_key: tf.io.RaggedFeature(tf.string)}
    values: list = []
    ids: list[str] = []
    for path in files:
        ds = tf.data.TFRecordDataset(path, COMPRESSION[cfg.compression]).batch(4096)
        ds = ds.map(lambda s: tf.io.parse_example(s, spec))
        count = 0
        try:
            for batch in ds.as_numpy_iterator():
                inputs = batch[input_key]
                lengths = [len(x) for x in inputs]
                if any(n != 1 for n in lengths):
                    k = next(i for i, n in enumerate(lengths) if n != 1)
                    raise DataError(
                        f"{path} record {count + k} has {lengths[k]} values in feature "
                        f"{input_key!r}. Every record needs exactly one (an image file or a text)."
                    )
                values += [list(x) for x in batch[cfg.label_key]]
                count += len(lengths)
        except tf.errors.InvalidArgumentError as e:
            raise DataError(
                f"{path}: a record's {cfg.label_key!r} or {input_key!r} feature does not have the "
                f"type of the first record's ({e.message.splitlines()[0]}). Every record needs the "
                f"same feature types."
            ) from None
        except tf.errors.OpError as e:
            raise _read_error(path, cfg, e) from None
        ids += [f"{path} record {i}" for i in range(count)]
    return values, ids


def load_tfrecord(cfg: DataConfig, seed: int, task=None) -> DataSplits:
    """The splits of the TFRecord files `data.path` / `data.splits` (see the module docstring)."""
    import tensorflow as tf

    from tftune.data.images import decode_image

    if cfg.splits:
        patterns = {s: (p, f"splits.{s}") for s, p in cfg.splits.items()}
    elif cfg.path:
        patterns = {"train": (cfg.path, "path")}
    else:
        raise DataError("data.path is not set. Point it at TFRecord files (a glob such as data/train-*.tfrecord).")
    files = {s: match_files(p, key) for s, (p, key) in patterns.items()}
    where = f"The records of {patterns['train'][0]!r}"
    kinds = feature_kinds(files["train"], cfg)
    input_key, modality = _input_key(kinds, cfg, where)
    if cfg.label_key not in kinds:
        raise DataError(
            f"{where} have no feature {cfg.label_key!r}. Features: {', '.join(sorted(kinds))}. "
            f"Set data.label_key to the label feature."
        )
    label_dtype = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}.get(kinds[cfg.label_key], tf.string)
    compression = COMPRESSION[cfg.compression]
    parts = {}
    for split, paths in files.items():
        values, ids = read_part(paths, cfg, input_key, label_dtype)

        def dataset(paths=paths):
            return tf.data.TFRecordDataset(paths, compression)

        parts[split] = Part(f"{patterns[split][0]!r}", dataset, values, ids)
    size = tuple(cfg.image_size)
    feature = {input_key: tf.io.FixedLenFeature([], tf.string)}

    def prepare(record):
        x = tf.io.parse_single_example(record, feature)[input_key]
        return x if modality == "text" else decode_image(x, size)

    int_names = list(cfg.classes) if cfg.classes and kinds[cfg.label_key] == "int64" else None
    return record_splits(parts, cfg, seed, task, int_names, prepare, modality, patterns["train"][0])
