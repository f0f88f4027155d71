"""`tftune preview RECIPE`: the training examples as training will see them, before it trains."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import (
    assert_one_line_error,
    image_recipe,
    invoke,
    make_image_folder,
    save_bert_preset,
    save_tiny_cnn,
    text_recipe,
    write_recipe,
    write_sentiment_csv,
)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview")
    return make_image_folder(root / "images"), save_tiny_cnn(root / "cnn.keras")


def test_image_preview_is_the_first_augmented_training_batch(tmp_path, image_files):
    from PIL import Image

    from tftune.config import load_recipe
    from tftune.data import pipeline
    from tftune.data import load_data

    folder, cnn = image_files
    recipe = image_recipe(tmp_path, folder, cnn)
    recipe["data"]["augment"] = ["flip", {"rotation": 0.1}, {"mixup": 0.4}]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = invoke("preview", path, "--count", 8)
    assert result.exit_code == 0, result.output
    png = tmp_path / "runs" / "img-preview.png"
    assert f"8 training images after augmentation -> {png}" in result.output
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 400

    # The grid shows what epoch 1 of stage 1 trains on: the same batch, mixed labels and all.
    from tftune.data.preview import label_text

    cfg = load_recipe(path)
    splits = load_data(cfg.data, cfg.train.seed)
    pipe = pipeline.image_pipeline(int(splits.train.cardinality()), 8, cfg.train.seed,
                                   cfg.data.augment, (32, 32), num_classes=len(splits.class_names))
    _, labels = next(iter(pipe.batches(pipe.source(splits.train), True,
                                       pipeline.epoch_seed(cfg.train.seed, 0, 0))))
    assert labels.shape == (8, len(splits.class_names))
    titles = [label_text(y, splits.class_names) for y in labels.numpy()]
    assert any(" + " in t for t in titles)  # some labels are mixed

    other = invoke("preview", path, "--count", 8, "--epoch", 2, "-o", tmp_path / "e2.png")
    assert other.exit_code == 0, other.output
    assert (tmp_path / "e2.png").read_bytes() != png.read_bytes()


def test_text_preview_is_a_table_of_tokens(tmp_path):
    preset = save_bert_preset(tmp_path / "bert")
    csv = write_sentiment_csv(tmp_path / "s.csv")
    path = write_recipe(tmp_path / "t.yaml", text_recipe(tmp_path, csv, preset))
    result = invoke("preview", path, "--count", 3)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "runs" / "txt-preview.txt").read_text().splitlines()
    rows = [l for l in table if l.strip().startswith("-> [CLS]")]
    assert len(rows) == 3 and all(r.rstrip().endswith(("[SEP]", "[..]")) for r in rows)
    assert table[0].startswith("First 3 training examples of the epoch")
    assert "-> [CLS]" in result.output


def test_preview_errors_are_one_line(tmp_path, image_files):
    folder, cnn = image_files
    recipe = image_recipe(tmp_path, folder, cnn)
    recipe["data"]["augment"] = ["randaugmnt"]
    path = write_recipe(tmp_path / "bad.yaml", recipe)
    assert_one_line_error(invoke("preview", path), "Unknown augmentation 'randaugmnt'",
                          "Did you mean 'randaugment'")
    recipe["data"]["augment"] = []
    path = write_recipe(tmp_path / "ok.yaml", recipe)
    assert_one_line_error(invoke("preview", path, "--stage", 5), "Expected 1..2")


def test_preview_refuses_what_training_refuses(tmp_path, image_files):
    """One check serves preview and train: augmentation on text data, and mixing for a task
    without class labels, are refused with the key named, before anything loads a backbone."""
    preset = save_bert_preset(tmp_path / "bert")
    csv = write_sentiment_csv(tmp_path / "s.csv")
    recipe = text_recipe(tmp_path, csv, preset)
    recipe["stages"][0]["augment"] = ["flip"]
    path = write_recipe(tmp_path / "t.yaml", recipe)
    for command in ("preview", "train"):
        assert_one_line_error(invoke(command, path), "Invalid value for 'stages.0.augment'",
                              "recipe's data is text")
