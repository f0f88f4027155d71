"""`data.source: tfrecord`: sharded TFRecord files of tf.train.Example, written here in
tmp_path: encoded images or texts, int64 or bytes labels, plain or GZIP."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest

from helpers import (
    IMAGE_CLASSES,
    VOCAB,
    assert_one_line_error,
    image_recipe,
    invoke,
    make_sentence,
    write_recipe,
)
from tftune.config import DataConfig, config_from_dict
from tftune.errors import DataError

COLOURS = sorted(IMAGE_CLASSES)  # blue, green, red: names collected from the data are sorted


def _png(colour, rng, shape=(20, 24)) -> bytes:
    from PIL import Image

    noise = rng.integers(-40, 41, (*shape, 3))
    pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _example(**features):
    import tensorflow as tf

    def feature(v):
        if isinstance(v, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        if isinstance(v, str):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
        if isinstance(v, float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def write_shards(folder, prefix: str, examples: list[bytes], shards: int, compression=None) -> str:
    """`examples` round-robin over `shards` files folder/prefix-0000N-of-0000S.tfrecord[.gz];
    returns their glob."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".tfrecord.gz" if compression else ".tfrecord"
    options = tf.io.TFRecordOptions(compression_type=compression)
    for s in range(shards):
        with tf.io.TFRecordWriter(str(folder / f"{prefix}-{s:05d}-of-{shards:05d}{suffix}"), options) as w:
            for record in examples[s::shards]:
                w.write(record)
    return str(folder / f"{prefix}-*{suffix}")


def colour_records(per_class: int, seed: int, label: str = "name", **extra) -> list[bytes]:
    """`per_class` PNG records per colour, labelled by name (bytes) or by index (int64)."""
    rng = np.random.default_rng(seed)
    return [_example(image=_png(IMAGE_CLASSES[c], rng), label=c if label == "name" else k, **extra)
            for _ in range(per_class) for k, c in enumerate(COLOURS)]


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    """The glob of 3 shards of 45 PNG records, 15 per colour, labelled by name."""
    return write_shards(tmp_path_factory.mktemp("records"), "train", colour_records(15, 0), 3)


def _data(**values) -> DataConfig:
    return config_from_dict({"data": {"source": "tfrecord", "image_size": [32, 32], **values}}).data


def test_image_shards_split_by_fraction(image_shards):
    from tftune.data import load_data

    splits = load_data(_data(path=image_shards, val_fraction=0.2, test_fraction=0.2), 0)
    assert splits.class_names == COLOURS and splits.modality == "image"
    assert splits.sizes == {"train": 27, "val": 9, "test": 9}
    assert np.bincount(splits.labels["test"]).tolist() == [3, 3, 3]
    x, y = next(iter(splits.val))
    assert x.shape == (32, 32, 3) and x.dtype.name == "float32"
    # Labels follow the records' order; a blue image is blue.
    xs, ys = zip(*[(np.asarray(x), int(y)) for x, y in splits.val])
    assert list(ys) == splits.labels["val"].tolist()
    assert all(COLOURS[y] == ("red", "green", "blue")[int(np.argmax(x.mean(axis=(0, 1))))] for x, y in zip(xs, ys))
    assert splits.ids["val"][0].endswith(".tfrecord record " + splits.ids["val"][0].rsplit(" ", 1)[1])


def test_int64_labels_with_classes_gzip_and_split_globs(tmp_path):
    from tftune.data import load_data

    names = ["r", "g", "b"]  # index k names COLOURS[k]: blue, green, red
    train = write_shards(tmp_path, "train", colour_records(8, 0, label="index"), 2, "GZIP")
    test = write_shards(tmp_path, "test", colour_records(2, 1, label="index"), 1, "GZIP")
    data = _data(splits={"train": train, "test": test}, compression="gzip", classes=names, val_fraction=0.25)
    splits = load_data(data, 0)
    assert splits.class_names == names
    assert splits.sizes == {"train": 18, "val": 6, "test": 6}
    # Without data.classes the indices are the class names, in numeric order.
    assert load_data(_data(splits={"train": train}, compression="gzip"), 0).class_names == ["0", "1", "2"]
    # An index outside data.classes is an error naming it.
    with pytest.raises(DataError, match=r"label index 2, outside the 2 class names"):
        load_data(_data(splits={"train": train}, compression="gzip", classes=["r", "g"]), 0)
    # The wrong compression says what to set.
    with pytest.raises(DataError, match=r"data.compression: none.*Set data.compression"):
        load_data(_data(path=train), 0)


def test_text_records_with_named_keys(tmp_path):
    from tftune.data import load_data

    rng = random.Random(0)
    records = [_example(review=make_sentence(rng, s), sentiment=s, stars=4) for s in ("pos", "neg") * 20]
    path = write_shards(tmp_path, "reviews", records, 2)
    splits = load_data(_data(path=path, text_key="review", label_key="sentiment"), 0)
    assert splits.modality == "text" and splits.class_names == ["neg", "pos"]
    assert splits.sizes == {"train": 32, "val": 4, "test": 4}
    x, _ = next(iter(splits.train))
    assert x.shape == () and x.dtype.name == "string"
    assert set(x.numpy().decode().split()) <= set(VOCAB)


def test_errors_name_what_is_there(tmp_path, image_shards):
    from tftune.data import load_data

    with pytest.raises(DataError, match=r"No files match data.path '.*nothing-\*\.tfrecord'"):
        load_data(_data(path=str(tmp_path / "nothing-*.tfrecord")), 0)
    with pytest.raises(DataError, match=r"No files match data.splits.test"):
        load_data(_data(splits={"train": image_shards, "test": str(tmp_path / "x*")}), 0)
    with pytest.raises(DataError, match=r"has no feature 'pixels'\. Features: image, label\. Set data.image_key"):
        load_data(_data(path=image_shards, image_key="pixels"), 0)
    with pytest.raises(DataError, match=r"have no feature 'class'\. Features: image, label\. Set data.label_key"):
        load_data(_data(path=image_shards, label_key="class"), 0)
    with pytest.raises(DataError, match=r"labels that are not in data.classes: 'red'"):
        load_data(_data(path=image_shards, classes=["blue", "green"]), 0)
    # A record without the input is named.
    records = colour_records(3, 0) + [_example(label="red")]
    path = write_shards(tmp_path, "holes", records, 1)
    with pytest.raises(DataError, match=r"record 9 has 0 values in feature 'image'"):
        load_data(_data(path=path), 0)


def test_train_from_a_recipe_file(tmp_path, image_shards, tiny_cnn_file):
    recipe = image_recipe(tmp_path, tmp_path, tiny_cnn_file)
    recipe["data"] = {"source": "tfrecord", "path": image_shards, "image_size": [32, 32],
                      "val_fraction": 0.2, "test_fraction": 0.2}
    recipe["stages"] = [{"name": "head", "train": "head", "epochs": 2, "learning_rate": 0.05}]
    path = write_recipe(tmp_path / "tfrecord.yaml", recipe)
    result = invoke("train", path)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "img"
    assert json.loads((run / "classes.json").read_text()) == COLOURS
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sizes"] == {"train": 27, "val": 9, "test": 9}
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # The run's test split is re-created from its config for `tftune evaluate`.
    result = invoke("evaluate", run)
    assert result.exit_code == 0, result.output
    # The CLI shows a data error as one line.
    recipe["data"]["path"] = str(tmp_path / "missing-*.tfrecord")
    bad = write_recipe(tmp_path / "bad.yaml", {**recipe, "name": "bad"})
    assert_one_line_error(invoke("train", bad), "No files match data.path")
