"""`data.source: tfds`: a prepared TensorFlow Datasets dataset read offline. The datasets are
built here with TFDS's own tooling (`GeneratorBasedBuilder.download_and_prepare`, which
downloads nothing for these builders) into tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import IMAGE_CLASSES, assert_one_line_error, image_recipe, invoke, make_sentence, write_recipe
from tftune.config import DataConfig, config_from_dict
from tftune.errors import ConfigError, DataError

COLOURS = list(IMAGE_CLASSES)  # red, green, blue


def _builders():
    """The two tiny builder classes (defined once: TFDS registers a builder class by name)."""
    import random

    import tensorflow_datasets as tfds

    class TftuneTinyColours(tfds.core.GeneratorBasedBuilder):
        """16 train and 6 test 20x24 RGB images per colour, or grey ones in config `grey`."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="rgb"), tfds.core.BuilderConfig(name="grey")]

        def _info(self):
            channels = 1 if self.builder_config.name == "grey" else 3
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(20, 24, channels)),
                    "label": tfds.features.ClassLabel(names=COLOURS),
                }),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 16), "test": self._generate_examples(1, 6)}

        def _generate_examples(self, seed, per_class):
            rng = np.random.default_rng(seed)
            grey = self.builder_config.name == "grey"
            for c, name in enumerate(COLOURS):
                for i in range(per_class):
                    noise = rng.integers(-40, 41, (20, 24, 3))
                    pixels = np.clip(np.asarray(IMAGE_CLASSES[name]) + noise, 0, 255).astype(np.uint8)
                    if grey:
                        pixels = pixels[..., c : c + 1]
                    yield f"{name}_{i}", {"image": pixels, "label": name}

    class TftuneTinyReviews(tfds.core.GeneratorBasedBuilder):
        """20 train and 6 test sentences per sentiment; a `review` text and a `stars` label."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "review": tfds.features.Text(),
                    "stars": tfds.features.ClassLabel(names=["neg", "pos"]),
                }),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 20), "test": self._generate_examples(1, 6)}

        def _generate_examples(self, seed, per_class):
            rng = random.Random(seed)
            for label in ("neg", "pos"):
                for i in range(per_class):
                    yield f"{label}_{i}", {"review": make_sentence(rng, label), "stars": label}

    return TftuneTinyColours, TftuneTinyReviews


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS data_dir holding the prepared tiny datasets (both configs of the colours)."""
    colours, reviews = _builders()
    root = tmp_path_factory.mktemp("tfds")
    for builder in (colours(data_dir=str(root), config="rgb"), colours(data_dir=str(root), config="grey"),
                    reviews(data_dir=str(root))):
        builder.download_and_prepare()
    return root


def _data(root, **extra) -> DataConfig:
    values = {"source": "tfds", "name": "tftune_tiny_colours/rgb", "data_dir": str(root),
              "image_size": [32, 32], **extra}
    return config_from_dict({"data": values}).data


def test_image_splits_follow_the_dataset(tfds_dir):
    from tftune.data import load_data

    splits = load_data(_data(tfds_dir), seed=0)
    assert splits.class_names == COLOURS  # the ClassLabel's names, in its order
    assert splits.modality == "image"
    # The dataset's own test split; validation drawn from train (10%, stratified).
    assert splits.sizes == {"train": 42, "val": 6, "test": 18}
    assert np.bincount(splits.labels["val"]).tolist() == [2, 2, 2]
    x, y = next(iter(splits.test))
    assert x.shape == (32, 32, 3) and x.dtype.name == "float32"
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 255.0
    # Labels and ids follow the dataset's order, as the run's reports read them.
    assert [int(y) for _, y in splits.val] == splits.labels["val"].tolist()
    assert len(splits.ids["test"]) == 18 and splits.ids["test"][0].startswith("tftune_tiny_colours/rgb test")
    # The same seed gives the same split.
    again = load_data(_data(tfds_dir), seed=0)
    assert again.ids == splits.ids


def test_split_mapping_and_fractions(tfds_dir):
    from tftune.data import load_data

    mapped = load_data(_data(tfds_dir, splits={"train": "train[:75%]", "val": "train[75%:]", "test": "test"}), 0)
    assert mapped.sizes == {"train": 36, "val": 12, "test": 18}
    # Only train mapped: val and test drawn from it by the fractions.
    drawn = load_data(_data(tfds_dir, splits={"train": "train"}, val_fraction=0.25, test_fraction=0.25), 0)
    assert drawn.sizes == {"train": 24, "val": 12, "test": 12}
    assert drawn.test is not None and np.bincount(drawn.labels["test"]).tolist() == [4, 4, 4]
    limited = load_data(_data(tfds_dir, max_train_examples=9, max_test_examples=6), 0)
    assert limited.sizes["train"] == 9 and limited.sizes["test"] == 6
    assert np.bincount(limited.labels["train"]).tolist() == [3, 3, 3]
    with pytest.raises(DataError, match=r"Invalid value for 'data.splits.val'.*splits: test, train.*'validation'"):
        load_data(_data(tfds_dir, splits={"train": "train", "val": "validation"}), 0)


def test_grey_images_come_out_as_rgb(tfds_dir):
    from tftune.data import load_data

    splits = load_data(_data(tfds_dir, name="tftune_tiny_colours/grey:1.0.0"), 0)
    x, _ = next(iter(splits.train))
    assert x.shape == (32, 32, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_text_dataset_with_named_features(tfds_dir):
    from tftune.data import load_data

    data = _data(tfds_dir, name="tftune_tiny_reviews", text_key="review", label_key="stars", val_fraction=0.2)
    splits = load_data(data, 0)
    assert splits.modality == "text" and splits.class_names == ["neg", "pos"]
    assert splits.sizes == {"train": 32, "val": 8, "test": 12}
    x, y = next(iter(splits.train))
    assert x.shape == () and x.dtype.name == "string" and int(y) in (0, 1)
    with pytest.raises(DataError, match=r"has no feature 'label'\. Features: review, stars\. Set data.label_key"):
        load_data(_data(tfds_dir, name="tftune_tiny_reviews", text_key="review"), 0)
    with pytest.raises(DataError, match=r"has no feature 'image' or 'text'\. Features: review, stars\. Set data.image_key"):
        load_data(_data(tfds_dir, name="tftune_tiny_reviews"), 0)
    # data.classes picks (and orders) the classes.
    ordered = load_data(_data(tfds_dir, name="tftune_tiny_reviews", text_key="review", label_key="stars",
                              classes=["pos", "neg"]), 0)
    assert ordered.class_names == ["pos", "neg"]


def test_not_prepared_is_one_clear_error(tmp_path, tfds_dir):
    from tftune.data import load_data

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        load_data(_data(empty), 0)
    message = str(e.value)
    assert f"TFDS dataset 'tftune_tiny_colours/rgb' is not prepared under {empty}" in message
    assert "tfds build tftune_tiny_colours/rgb --data_dir DIR" in message
    assert "data.data_dir" in message and "data.download: true" in message
    assert "\n" not in message
    assert not any(empty.iterdir())  # nothing was downloaded or written
    with pytest.raises(DataError, match="not prepared under .*TFDS has no builder of that name"):
        load_data(_data(empty, name="no_such_dataset_anywhere"), 0)
    # data.download: true lets TFDS prepare it (these builders need no network).
    splits = load_data(_data(empty, download=True), 0)
    assert splits.sizes["test"] == 18


def test_config_checks():
    with pytest.raises(ConfigError, match=r"Invalid value for 'data.name'.*Received: None"):
        config_from_dict({"data": {"source": "tfds"}})
    with pytest.raises(ConfigError, match=r"'data.splits'.*Received keys: \['training'\]"):
        config_from_dict({"data": {"source": "tfds", "name": "mnist", "splits": {"training": "train"}}})
    with pytest.raises(ConfigError, match=r"'data.download' applies to data.source 'tfds'"):
        config_from_dict({"data": {"source": "folder", "download": True}})


def test_train_from_a_recipe_file(tmp_path, tfds_dir, tiny_cnn_file):
    recipe = image_recipe(tmp_path, tfds_dir, tiny_cnn_file)
    recipe["data"] = {"source": "tfds", "name": "tftune_tiny_colours/rgb", "data_dir": str(tfds_dir),
                      "splits": {"train": "train", "test": "test"}, "image_size": [32, 32],
                      "val_fraction": 0.2}
    recipe["stages"] = [{"name": "head", "train": "head", "epochs": 2, "learning_rate": 0.05}]
    path = write_recipe(tmp_path / "tfds.yaml", recipe)
    result = invoke("train", path)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "img"
    assert json.loads((run / "classes.json").read_text()) == COLOURS
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sizes"]["test"] == 18 and metrics["sizes"]["val"] == 9
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # The CLI shows a data error as one line.
    recipe["data"]["data_dir"] = str(tmp_path / "nowhere")
    bad = write_recipe(tmp_path / "bad.yaml", {**recipe, "name": "bad"})
    assert_one_line_error(invoke("train", bad), "is not prepared under", "tfds build tftune_tiny_colours")
