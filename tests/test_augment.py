"""`data.augment`: Keras 3's augmentation layers by name, mixup / cutmix soft labels, seeding.

Each augmentation must really change the images (a flip must mirror them), mixed labels must
say how much of each image a mixed image holds, and a batch's augmentation must be a pure
function of (seed, stage, epoch, batch). (Resume with augmentation: tests/test_resume.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import image_recipe, make_image_folder, save_tiny_cnn, train_eagerly
from tftune.config import config_from_dict
from tftune.data import pipeline
from tftune.data.augment import KINDS, parse
from tftune.errors import ConfigError

PER_IMAGE = [name for name, kind in KINDS.items() if not kind.mixes]


def _images(n=8, size=24, seed=0):
    """`n` images with structure (a left-to-right ramp plus noise, so a flip shows) and
    labels 0..n-1."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size, dtype=np.float32)[None, None, :, None]
    x = np.round(ramp + rng.uniform(0, 50, (n, size, size, 3))).astype(np.float32)  # uint8-exact
    return x, np.arange(n, dtype=np.int64)


def _batches(augment, x, y, epoch_seed=7, num_classes=None, batch=None):
    import tensorflow as tf

    pipe = pipeline.image_pipeline(len(x), batch or len(x), 1, augment, x.shape[1:3],
                                   num_classes=num_classes or len(x))
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return list(pipe.batches(pipe.source(ds), True, epoch_seed).as_numpy_iterator()), pipe


def test_recipe_names_parameters_and_errors():
    cfg = config_from_dict({"data": {"augment": [
        "flip", {"rotation": 0.1}, {"randaugment": {"num_ops": 1, "factor": 0.3}},
        {"color_jitter": {"hue_factor": 0.1}}, {"resized_crop": {"scale": [0.5, 1.0]}},
        {"mixup": {"alpha": 0.4}}]}})
    specs = parse(cfg.data.augment)
    assert specs[0] == ("flip", {"mode": "horizontal"})
    assert specs[1] == ("rotation", {"factor": 0.1})
    assert specs[2] == ("randaugment", {"num_ops": 1, "factor": 0.3})
    assert type(specs[2][1]["num_ops"]) is int  # RandAugment uses it as a shape
    assert specs[3][1]["hue_factor"] == 0.1 and specs[3][1]["brightness_factor"] == 0.2
    assert specs[4] == ("resized_crop", {"scale": (0.5, 1.0), "ratio": (0.75, 4 / 3)})
    assert specs[5] == ("mixup", {"alpha": 0.4})

    with pytest.raises(ConfigError, match=r"Unknown augmentation 'rotate' in 'data.augment.0'.*"
                                          r"Did you mean 'rotation'"):
        config_from_dict({"data": {"augment": ["rotate"]}})
    with pytest.raises(ConfigError, match=r"Unknown parameter 'magnitude' of augmentation "
                                          r"'randaugment'.*Expected some of: num_ops, factor"):
        config_from_dict({"data": {"augment": [{"randaugment": {"magnitude": 9}}]}})
    with pytest.raises(ConfigError, match="lists a mixing augmentation twice"):
        config_from_dict({"data": {"augment": ["mixup", {"mixup": 0.3}]}})
    with pytest.raises(ConfigError, match="one name"):
        config_from_dict({"data": {"augment": [{"flip": {}, "zoom": {}}]}})


def test_every_parameter_declares_what_it_takes_and_bad_values_are_refused():
    for name, kind in KINDS.items():
        assert kind.main in kind.params, name
        for param, rule in kind.params.items():
            assert rule.range or rule.choices or rule.boolean, f"{name}.{param}"
        parse([name])  # the defaults pass their own rules
        parse([{name: kind.defaults}] if kind.defaults else [name])
    cases = [
        ({"rotation": 2.0}, "'data.augment.0.rotation.factor'. Expected a number in [-1, 1], "
                            "or [low, high] of them. Received: 2.0"),
        ({"zoom": {"height_factor": [0.3, -0.3]}}, "Received: [0.3, -0.3]"),
        ({"randaugment": {"num_ops": 1.5}}, "Expected an integer >= 1. Received: 1.5"),
        ({"flip": {"mode": "diagonal"}}, "Expected one of: horizontal, vertical, "
                                         "horizontal_and_vertical. Received: 'diagonal'"),
        ({"mixup": {"alpha": 0}}, "Expected a number > 0. Received: 0"),
        ({"resized_crop": {"scale": [0.0, 1.0]}}, "Expected a number in (0, 1]"),
        ({"augmix": {"all_ops": "yes"}}, "Expected true or false"),
    ]
    for entry, message in cases:
        with pytest.raises(ConfigError) as info:
            config_from_dict({"data": {"augment": [entry]}})
        assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("name", PER_IMAGE)
def test_each_augmentation_changes_the_images(name):
    x, y = _images()
    [(out, labels)], _ = _batches([name], x, y)
    assert out.shape == x.shape and out.dtype == np.float32
    assert sorted(labels) == list(y)  # per-image augmentations keep the labels
    x = x[labels]  # the batch is shuffled: label i is image i
    changed = np.abs(out - x).reshape(len(x), -1).mean(axis=1) > 0.5
    assert changed.any(), f"{name} changed no image"
    assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3


def test_flip_mirrors_some_images_and_leaves_the_rest():
    x, y = _images(n=16)
    [(out, labels)], _ = _batches(["flip"], x, y)
    x = x[labels]
    mirrored = [np.allclose(o, i[:, ::-1]) for o, i in zip(out, x)]
    kept = [np.allclose(o, i) for o, i in zip(out, x)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 0 < sum(mirrored) < len(x)


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_gives_soft_labels_that_match_the_pixels(name):
    """Image i is a constant v_i; a mixed image's mean is then the label-weighted mean of the
    v's, for mixup (a blend) and cutmix (a pasted box) alike. (Keras weighs a cutmix label by
    the box's exact area while the box pastes whole pixels: up to about a pixel's row and
    column of difference, hence the tolerance.)"""
    n, size = 16, 48
    values = np.linspace(0, 240, n).astype(np.float32)
    x = np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).copy()
    y = np.arange(n)
    [(out, labels)], pipe = _batches([{name: 1.0}], x, y)
    assert pipe.mixes
    assert labels.shape == (n, n) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    mixed = (labels > 1e-3).sum(axis=1) == 2
    assert mixed.sum() >= n // 2, labels.round(2)
    tolerance = 0.05 if name == "mixup" else 240 * 3 / size
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), labels @ values, atol=tolerance)


def test_both_mixers_take_turns():
    x, y = _images(n=8)
    outs, _ = _batches(["mixup", "cutmix"], np.repeat(x, 8, 0), np.tile(y, 8), batch=8,
                       num_classes=8)
    # cutmix pastes pixels unchanged, mixup blends every pixel: tell them apart per batch
    kinds = set()
    for images, labels in outs:
        blended = (labels.max(axis=1) < 0.999) & (np.abs(images - np.round(images)) > 1e-3).any(axis=(1, 2, 3))
        kinds.add(bool(blended.any()))
    assert kinds == {True, False}


def test_a_batch_is_a_pure_function_of_the_seed():
    x, y = _images(n=32)
    augment = ["randaugment", "augmix", "resized_crop", {"cutmix": 1.0}]
    first, _ = _batches(augment, x, y, epoch_seed=11, batch=8, num_classes=32)
    again, _ = _batches(augment, x, y, epoch_seed=11, batch=8, num_classes=32)
    other, _ = _batches(augment, x, y, epoch_seed=12, batch=8, num_classes=32)
    for (a, la), (b, lb) in zip(first, again):
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, other))


def test_mixup_trains_a_classifier_on_soft_labels(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    cnn = save_tiny_cnn(tmp_path / "cnn.keras")
    recipe = image_recipe(tmp_path, folder, cnn)
    recipe["data"]["augment"] = ["flip", {"mixup": 0.4}]
    recipe["train"]["class_weight"] = "balanced"
    result = train_eagerly(recipe)
    for stage in result.metrics["stages"]:
        assert np.isfinite(stage["best_value"])
    history = (result.run_dir / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    accuracy = [float(row.split(",")[header.index("accuracy")]) for row in history[1:]]
    assert all(0.0 <= a <= 1.0 for a in accuracy)


def test_mixing_needs_class_labels():
    from tftune.data.augmenter import Augmenter

    with pytest.raises(ConfigError, match="need a classification task"):
        Augmenter(["mixup"], num_classes=None)


def test_a_stage_can_augment_while_another_trains_on_cached_features(tmp_path):
    """`stages.N.augment` replaces `data.augment` for one stage: the head stage (`[]`) trains
    on cached features with integer labels, the next augments with mixup on soft labels."""
    from tftune.training.runner import train

    folder = make_image_folder(tmp_path / "images")
    cnn = save_tiny_cnn(tmp_path / "cnn.keras")
    recipe = image_recipe(tmp_path, folder, cnn)
    recipe["data"]["augment"] = ["flip", {"mixup": 0.4}]
    recipe["stages"][0]["augment"] = []
    lines = []
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        result = train(config_from_dict(recipe), echo=lines.append)
    finally:
        tf.config.run_functions_eagerly(False)
    cache_lines = [l for l in lines if "feature cache:" in l]
    assert "frozen part run once" in cache_lines[0], cache_lines
    assert "off (random augmentation" in cache_lines[-1] and "mixup" in cache_lines[-1]
    assert all(np.isfinite(s["best_value"]) for s in result.metrics["stages"])

    with pytest.raises(ConfigError, match=r"Unknown augmentation 'mixpu' in 'stages.1.augment.0'"):
        recipe["stages"][1]["augment"] = ["mixpu"]
        config_from_dict(recipe)
