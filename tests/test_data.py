"""Data sources: image folders, CSV / JSONL texts, splits, and a user's own datasets."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers import make_image_folder, make_sentence, write_text_csv
from tftune.config import DataConfig
from tftune.data import DataSplits, load_data
from tftune.data.splits import stratified_split, subsample
from tftune.errors import DataError


def folder_cfg(path, **kw) -> DataConfig:
    return DataConfig(source="folder", path=str(path), image_size=(32, 32), **kw)


def labels_of(ds) -> list[int]:
    return [int(y) for _, y in ds.as_numpy_iterator()]


def texts_of(ds) -> list[str]:
    return [x.decode() for x, _ in ds.as_numpy_iterator()]


# ------------------------------------------------------------------------------------------
# splits


def test_stratified_split_keeps_every_class_and_partitions():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 3)
    test, val, train = stratified_split(labels, [0.1, 0.1], seed=3)
    all_idx = np.concatenate([test, val, train])
    assert sorted(all_idx.tolist()) == list(range(len(labels)))  # a partition
    for part in (test, val, train):
        assert set(labels[part]) == {0, 1, 2}
    assert Counter(labels[test])[0] == 5 and Counter(labels[val])[0] == 5
    again = stratified_split(labels, [0.1, 0.1], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((test, val, train), again))
    other = stratified_split(labels, [0.1, 0.1], seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip((test, val, train), other))


def test_subsample_is_stratified_and_bounded():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 30)
    idx = subsample(labels, 24, seed=0)
    assert len(idx) == 24 and len(set(idx.tolist())) == 24
    assert Counter(labels[idx].tolist()) == {0: 12, 1: 6, 2: 6}
    assert np.array_equal(subsample(labels, None, 0), np.arange(120))
    assert np.array_equal(subsample(labels, 500, 0), np.arange(120))


# ------------------------------------------------------------------------------------------
# image folders


def test_folder_split_is_stratified_seeded_and_decodes(image_folder):
    splits = load_data(folder_cfg(image_folder), seed=1)
    assert splits.class_names == ["blue", "green", "red"]
    assert splits.modality == "image"
    assert splits.sizes == {"train": 30, "val": 3, "test": 3}
    for ds in (splits.train, splits.val, splits.test):
        assert sorted(set(labels_of(ds))) == [0, 1, 2]
    x, y = next(iter(splits.train))
    assert x.shape == (32, 32, 3) and x.dtype.name == "float32"
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 255.0
    # The colour tells the class: each image's dominant channel matches its folder.
    channel = {"red": 0, "green": 1, "blue": 2}
    for image, label in splits.val.as_numpy_iterator():
        assert int(np.argmax(image.mean(axis=(0, 1)))) == channel[splits.class_names[label]]

    again = load_data(folder_cfg(image_folder), seed=1)
    other = load_data(folder_cfg(image_folder), seed=2)
    assert labels_of(again.val) == labels_of(splits.val)
    val_images = lambda s: [x.tobytes() for x, _ in s.val.as_numpy_iterator()]  # noqa: E731
    assert val_images(again) == val_images(splits)
    assert val_images(other) != val_images(splits)


def test_folder_with_train_val_test_subfolders(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", per_class=6, seed=0)
    make_image_folder(root / "val", per_class=2, seed=1)
    make_image_folder(root / "test", per_class=3, seed=2)
    splits = load_data(folder_cfg(root, val_fraction=0.5, test_fraction=0.5), seed=0)
    assert splits.sizes == {"train": 18, "val": 6, "test": 9}  # fractions are not used
    assert splits.class_names == ["blue", "green", "red"]
    assert Counter(labels_of(splits.test)) == {0: 3, 1: 3, 2: 3}


def test_folder_with_only_train_subfolder_draws_val_from_it(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", per_class=10)
    splits = load_data(folder_cfg(root, val_fraction=0.2), seed=0)
    assert splits.sizes["train"] == 24 and splits.sizes["val"] == 6
    assert splits.test is None
    assert sorted(set(labels_of(splits.val))) == [0, 1, 2]


def test_empty_class_folder_is_named(image_folder):
    (image_folder / "purple").mkdir()
    (image_folder / "purple" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="purple"):
        load_data(folder_cfg(image_folder), seed=0)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(folder_cfg(tmp_path / "nowhere"), seed=0)
    with pytest.raises(DataError, match="data.path"):
        load_data(DataConfig(source="folder"), seed=0)


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="No class folders"):
        load_data(folder_cfg(tmp_path / "flat"), seed=0)


def test_single_class_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "one", classes={"red": (255, 0, 0)})
    with pytest.raises(DataError, match="at least two"):
        load_data(folder_cfg(root), seed=0)


def test_corrupt_image_is_named(image_folder):
    bad = image_folder / "green" / "broken.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(DataError, match="broken.png"):
        load_data(folder_cfg(image_folder), seed=0)


def corrupt_jpeg(path: Path) -> Path:
    """A file that starts like a JPEG and then breaks off: PIL cannot decode it."""
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40)
    return path


def test_a_corrupt_jpeg_stops_the_run_and_names_the_fix(image_folder):
    bad = corrupt_jpeg(image_folder / "green" / "broken.jpg")
    with pytest.raises(DataError) as info:
        load_data(folder_cfg(image_folder), seed=0)
    assert str(bad) in str(info.value) and "--set data.skip_bad_files=true" in str(info.value)


def test_skip_bad_files_leaves_corrupt_images_out(image_folder):
    """fastai's `verify_images`: the undecodable file is left out of every split and listed;
    every image kept decodes."""
    bad = corrupt_jpeg(image_folder / "green" / "broken.jpg")
    splits = load_data(folder_cfg(image_folder, skip_bad_files=True), seed=0)
    assert splits.skipped == [str(bad)]
    kept = [p for s in ("train", "val", "test") for p in splits.ids[s]]
    assert str(bad) not in kept and len(kept) == sum(splits.sizes.values())
    assert sum(splits.sizes.values()) == len(list(image_folder.rglob("*.png")))
    for s in ("train", "val", "test"):
        assert len(labels_of(getattr(splits, s))) == splits.sizes[s] == len(splits.labels[s])


def latin1_csv(path: Path) -> Path:
    """A CSV saved in latin-1 (as Excel on Western European Windows saves it): 'é' is one byte, 0xe9."""
    rows = [("text", "label")] + [(f"film {i} très bon", "pos") if i % 2 else (f"film {i} mal joué", "neg")
                                  for i in range(20)]
    path.write_bytes("".join(f"{t},{l}\n" for t, l in rows).encode("latin-1"))
    return path


def test_a_latin1_csv_read_as_utf8_is_one_clear_error(tmp_path):
    path = latin1_csv(tmp_path / "latin.csv")
    cfg = DataConfig(source="csv", path=str(path))
    with pytest.raises(DataError) as info:
        load_data(cfg, seed=0)
    message = str(info.value)
    offset = path.read_bytes().index(b"\xe9")
    assert message.startswith(f"{path} is not valid utf-8 text: byte(s) e9 at byte {offset:,} (line 2)")
    assert "--set data.encoding=latin-1" in message
    splits = load_data(DataConfig(source="csv", path=str(path), encoding="latin-1"), seed=0)
    texts = texts_of(splits.train) + texts_of(splits.val) + texts_of(splits.test)
    assert "film 1 très bon" in texts and "film 2 mal joué" in texts


def test_encoding_gz_and_byte_order_mark(tmp_path):
    import gzip

    path = tmp_path / "latin.csv.gz"
    path.write_bytes(gzip.compress(latin1_csv(tmp_path / "plain.csv").read_bytes()))
    with pytest.raises(DataError, match=r"latin\.csv\.gz is not valid utf-8 text.* \(line 2\)"):
        load_data(DataConfig(source="csv", path=str(path)), seed=0)
    assert load_data(DataConfig(source="csv", path=str(path), encoding="latin-1"), seed=0).sizes["train"]
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.csv").read_bytes().decode("latin-1").encode("utf-8"))
    assert load_data(DataConfig(source="csv", path=str(bom)), seed=0).sizes["train"]  # header 'text'


def test_an_unknown_encoding_is_a_config_error():
    from tftune.config import config_from_dict
    from tftune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Invalid value for 'data\.encoding': an unknown codec\. "
                                          r"Expected the name of a Python text encoding .* Received: 'latin-9x'"):
        config_from_dict({"recipe": "text_classification", "name": "t",
                          "data": {"source": "csv", "path": "x.csv", "encoding": "latin-9x"},
                          "backbone": {"spec": "keras_hub:x"}, "stages": [{"name": "head", "train": "head"}]})


def test_truncated_image_is_named(image_folder):
    good = image_folder / "red" / "red_00.png"
    truncated = image_folder / "red" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(DataError, match="truncated.png"):
        load_data(folder_cfg(image_folder), seed=0)


def test_folder_classes_setting(image_folder):
    with pytest.raises(DataError, match="'red'"):
        load_data(folder_cfg(image_folder, classes=("blue", "green")), seed=0)
    splits = load_data(
        folder_cfg(image_folder, classes=("green", "blue"), skip_unlisted_labels=True), seed=0
    )
    assert splits.class_names == ["green", "blue"]  # the order given, not sorted
    assert splits.sizes["train"] + splits.sizes["val"] + splits.sizes["test"] == 24


def test_folder_max_train_examples(image_folder):
    splits = load_data(folder_cfg(image_folder, max_train_examples=15), seed=0)
    assert splits.sizes["train"] == 15
    assert Counter(labels_of(splits.train)) == {0: 5, 1: 5, 2: 5}


# ------------------------------------------------------------------------------------------
# CSV and JSONL


def text_cfg(path, source="csv", **kw) -> DataConfig:
    return DataConfig(source=source, path=str(path), **kw)


def test_csv_source(text_csv):
    splits = load_data(text_cfg(text_csv, val_fraction=0.1, test_fraction=0.2), seed=0)
    assert splits.modality == "text"
    assert splits.class_names == ["neg", "pos"]
    assert splits.sizes == {"train": 42, "val": 6, "test": 12}
    for ds in (splits.train, splits.val, splits.test):
        assert sorted(set(labels_of(ds))) == [0, 1]
    x, _ = next(iter(splits.train))
    assert x.dtype.name == "string" and x.shape == ()
    # Every text keeps its label.
    rows = {}
    import csv

    with open(text_csv, newline="") as f:
        for r in csv.DictReader(f):
            rows[r["text"]] = r["label"]
    for ds in (splits.train, splits.val, splits.test):
        for text, label in ds.as_numpy_iterator():
            assert rows[text.decode()] == splits.class_names[label]


def test_split_seed_holds_the_splits_while_the_run_seed_changes(text_csv):
    def split(seed, **kw):
        splits = load_data(text_cfg(text_csv, val_fraction=0.1, test_fraction=0.2, max_train_examples=30, **kw),
                           seed=seed)
        return {name: sorted(texts_of(getattr(splits, name))) for name in ("train", "val", "test")}

    # Without it the run's seed draws the split: another seed validates on other examples.
    assert split(0)["val"] != split(1)["val"]
    # With it, every train.seed sees the same validation, test and (subsampled) training examples.
    assert split(0, split_seed=7) == split(1, split_seed=7) == split(123, split_seed=7)
    assert split(5, split_seed=0) == split(0)


def test_jsonl_source_with_other_columns(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "data.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            label = "pos" if i % 2 else "neg"
            f.write(json.dumps({"review": make_sentence(rng, label), "sentiment": label, "id": i}) + "\n")
        f.write("\n")  # blank lines are fine
    splits = load_data(
        text_cfg(path, "jsonl", text_column="review", label_column="sentiment"), seed=0
    )
    assert splits.class_names == ["neg", "pos"]
    assert sum(splits.sizes.values()) == 40


def test_compressed_csv(tmp_path, text_csv):
    import gzip

    gz = tmp_path / "texts.csv.gz"
    gz.write_bytes(gzip.compress(text_csv.read_bytes()))
    assert load_data(text_cfg(gz), seed=0).sizes == load_data(text_cfg(text_csv), seed=0).sizes


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "good", "label": "pos"}\n{"text": broken\n')
    with pytest.raises(DataError, match="line 2"):
        load_data(text_cfg(path, "jsonl"), seed=0)


def test_missing_column_lists_the_columns(tmp_path):
    path = write_text_csv(tmp_path / "t.csv", [("good", "pos"), ("bad", "neg")] * 10,
                          columns=("sentence", "label"))
    with pytest.raises(DataError) as e:
        load_data(text_cfg(path), seed=0)
    assert "'text'" in str(e.value) and "sentence" in str(e.value) and "label" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(text_cfg(tmp_path / "none.csv"), seed=0)


def test_unknown_label_with_classes(tmp_path):
    rows = [("good film", "pos"), ("bad film", "neg"), ("the plot", "plot")] * 10
    path = write_text_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataError) as e:
        load_data(text_cfg(path, classes=("neg", "pos")), seed=0)
    assert "'plot'" in str(e.value) and "skip_unlisted_labels" in str(e.value)
    splits = load_data(text_cfg(path, classes=("pos", "neg"), skip_unlisted_labels=True), seed=0)
    assert splits.class_names == ["pos", "neg"]
    assert sum(splits.sizes.values()) == 20
    for ds in (splits.train, splits.val, splits.test):
        for text, label in ds.as_numpy_iterator():
            assert text.decode() == ("good film" if label == 0 else "bad film")


def test_class_listed_but_absent(tmp_path):
    path = write_text_csv(tmp_path / "t.csv", [("good", "pos"), ("bad", "neg")] * 10)
    with pytest.raises(DataError, match="'meh'"):
        load_data(text_cfg(path, classes=("neg", "pos", "meh")), seed=0)


def test_deduplicate(tmp_path):
    rng = random.Random(2)
    unique = [(make_sentence(rng, lab, 8), lab) for lab in ("pos", "neg") for _ in range(15)]
    unique = list(dict((t, (t, lab)) for t, lab in unique).values())
    path = write_text_csv(tmp_path / "t.csv", unique + unique[:10] + unique[:5])
    kept = load_data(text_cfg(path), seed=0)
    assert sum(kept.sizes.values()) == len(unique) + 15
    dedup = load_data(text_cfg(path, deduplicate=True), seed=0)
    assert sum(dedup.sizes.values()) == len(unique)
    texts = [t for ds in (dedup.train, dedup.val, dedup.test) for t in texts_of(ds)]
    assert len(texts) == len(set(texts))


def test_empty_texts_are_dropped(tmp_path):
    path = write_text_csv(tmp_path / "t.csv", [("good", "pos"), ("bad", "neg"), ("  ", "pos")] * 10)
    splits = load_data(text_cfg(path), seed=0)
    assert sum(splits.sizes.values()) == 20


def test_empty_label_does_not_become_a_class(tmp_path):
    """A row without a label must not silently create a class named ''."""
    rows = [("good film", "pos"), ("bad film", "neg")] * 10 + [("the plot", "")] * 3
    path = write_text_csv(tmp_path / "t.csv", rows)
    try:
        splits = load_data(text_cfg(path), seed=0)
    except DataError:
        return
    assert "" not in splits.class_names


def test_text_max_train_examples_is_stratified(tmp_path):
    rng = random.Random(3)
    rows = [(f"{make_sentence(rng, 'pos')} {i}", "pos") for i in range(60)]
    rows += [(f"{make_sentence(rng, 'neg')} {i}", "neg") for i in range(30)]
    path = write_text_csv(tmp_path / "t.csv", rows)
    splits = load_data(text_cfg(path, max_train_examples=15, max_test_examples=6), seed=0)
    assert splits.sizes["train"] == 15 and splits.sizes["test"] == 6
    assert Counter(labels_of(splits.train)) == {1: 10, 0: 5}  # pos:neg = 2:1
    assert Counter(labels_of(splits.test)) == {1: 4, 0: 2}


def test_python_source_points_to_from_datasets():
    with pytest.raises(DataError, match="from_datasets"):
        load_data(DataConfig(source="python"), seed=0)


# ------------------------------------------------------------------------------------------
# DataSplits.from_datasets


def _images(n=6, batch=None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(
        (np.zeros((n, 8, 8, 3), np.float32), np.arange(n, dtype=np.int32) % 2)
    )
    return ds.batch(batch) if batch else ds


def _texts(n=6):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(([f"t{i}" for i in range(n)], np.arange(n) % 2))


def test_from_datasets_accepts_unbatched_pairs():
    splits = DataSplits.from_datasets(_images(6), _images(4), _images(2), class_names=["a", "b"],
                                      modality="image")
    assert splits.sizes == {"train": 6, "val": 4, "test": 2}
    assert splits.class_names == ["a", "b"] and splits.modality == "image"
    text = DataSplits.from_datasets(_texts(5), _texts(3), class_names=("a", "b"), modality="text")
    assert text.test is None and text.sizes == {"train": 5, "val": 3}


def test_from_datasets_rejects_batched_datasets():
    with pytest.raises(DataError, match="unbatch"):
        DataSplits.from_datasets(_images(6, batch=2), _images(4), class_names=["a", "b"],
                                 modality="image")
    with pytest.raises(DataError, match="unbatch"):
        DataSplits.from_datasets(_texts(6).batch(2), _texts(4), class_names=["a", "b"],
                                 modality="text")


def test_from_datasets_rejects_images_for_text_and_missing_splits():
    with pytest.raises(DataError):
        DataSplits.from_datasets(_images(), _images(), class_names=["a", "b"], modality="text")
    with pytest.raises(DataError, match="val dataset is missing"):
        DataSplits.from_datasets(_images(), None, class_names=["a", "b"], modality="image")


def test_from_datasets_rejects_strings_for_images():
    with pytest.raises(DataError):
        DataSplits.from_datasets(_texts(), _texts(), class_names=["a", "b"], modality="image")


def test_from_datasets_rejects_elements_that_are_not_pairs():
    import tensorflow as tf

    images_only = tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match="pairs"):
        DataSplits.from_datasets(images_only, images_only, class_names=["a", "b"], modality="image")
    triples = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, np.int32), np.ones(4, np.float32))
    )
    with pytest.raises(DataError, match="pairs"):
        DataSplits.from_datasets(triples, triples, class_names=["a", "b"], modality="image")


def test_csv_with_byte_order_mark(tmp_path, text_csv):
    """Spreadsheet programs save CSVs with a UTF-8 byte order mark; the header still reads
    `text`, not an invisible '\\ufefftext'."""
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text_csv.read_bytes())
    assert load_data(text_cfg(bom), seed=0).sizes == load_data(text_cfg(text_csv), seed=0).sizes


@pytest.mark.assets
def test_fashion_mnist_source():
    from helpers import requires_asset

    requires_asset("fashion-mnist")
    cfg = DataConfig(source="fashion_mnist", image_size=(32, 32), val_fraction=0.01,
                     max_train_examples=200, max_test_examples=100)
    splits = load_data(cfg, seed=0)
    assert len(splits.class_names) == 10 and splits.modality == "image"
    assert splits.sizes == {"train": 200, "val": 600, "test": 100}
    assert Counter(labels_of(splits.train)) == {k: 20 for k in range(10)}
    x, _ = next(iter(splits.test))
    assert x.shape == (32, 32, 3) and float(np.max(x)) <= 255.0
    assert np.array_equal(x[..., 0], x[..., 2])  # grey images, repeated to 3 channels
