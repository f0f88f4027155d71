"""The frozen-prefix feature cache: where it cuts, that training on cached features gives the
same losses as the uncached run (dropout off), that it spills to disk past its budget, and
when `train` uses it."""

from __future__ import annotations

import random

import keras
import numpy as np
import pytest

from helpers import build_tiny_cnn, make_sentence, save_bert_preset
from tftune.data import pipeline
from tftune.model.backbones import from_keras_model, load_backbone
from tftune.config import BackboneConfig
from tftune.training.cache import FeatureCache, cached_datasets, plan_cache
from tftune.config import EarlyStoppingConfig, HeadConfig, StageConfig
from tftune.data import DataSplits
from tftune.model.heads import build_classifier, head_layers
from tftune.tasks import get_task
from tftune.training.plan import StagePlan
from tftune.training.stage import run_stage
from tftune.training.trainable import prune_groups, selected_groups, set_trainable, unused_layers

pytestmark = pytest.mark.usefixtures("eager")


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({k: float(v) for k, v in logs.items() if k != "learning_rate"})


@pytest.fixture(scope="module")
def dropout_free_bert(tmp_path_factory):
    """A 3-layer BERT preset (hidden 8) with dropout 0, so cached and uncached runs agree."""
    return save_bert_preset(tmp_path_factory.mktemp("bert_nodrop") / "preset", num_layers=3,
                            sequence_length=24, seed=1, dropout=0.0)


def text_splits(n_train=40, n_val=12) -> DataSplits:
    import tensorflow as tf

    rng = random.Random(3)

    def make(n):
        # Lengths from 2 to 18 words, so the length buckets and the trimming both matter.
        rows = [(make_sentence(rng, lab, rng.randint(2, 18)), i % 2)
                for i, lab in enumerate(["pos", "neg"] * (n // 2))]
        return tf.data.Dataset.from_tensor_slices(
            ([r[0] for r in rows], np.array([r[1] for r in rows], np.int32))
        )

    return DataSplits.from_datasets(make(n_train), make(n_val), class_names=["pos", "neg"], modality="text")


def image_splits(n_train=40, n_val=12, size=16) -> DataSplits:
    import tensorflow as tf

    def make(n, seed):
        rng = np.random.default_rng(seed)
        y = np.arange(n) % 3
        x = rng.uniform(0, 90, (n, size, size, 3)).astype(np.float32)
        x[np.arange(n), :, :, y] += 140.0
        return tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))

    return DataSplits.from_datasets(make(n_train, 0), make(n_val, 1), class_names=["r", "g", "b"], modality="image")


def prepared(kind, preset=None):
    """(model, backbone, head, pipe, splits): a fresh classifier with the same weights each call."""
    keras.utils.set_random_seed(0)
    if kind == "text":
        backbone = load_backbone(BackboneConfig(spec=f"keras_hub:{preset}", sequence_length=24))
        splits = text_splits()
        model = build_classifier(backbone, 2, HeadConfig(dropout=0.0))
        pipe = pipeline.text_pipeline(backbone.preprocessor, 40, 8, seed=5)
    else:
        backbone = from_keras_model(build_tiny_cnn(16), BackboneConfig())
        splits = image_splits()
        model = build_classifier(backbone, 3, HeadConfig(dropout=0.0), (16, 16))
        pipe = pipeline.image_pipeline(40, 8, seed=5, augment=(), image_size=(16, 16))
    sample = next(iter(pipe.prepare(splits.train, training=False)))[0]
    unused = unused_layers(model, backbone.model, sample)
    backbone.groups = prune_groups(backbone.groups, unused)
    return model, backbone, head_layers(model), pipe, splits, unused


spill_record: list = []  # (spilled, shuffle buffer below the split size) per cache of the last fit


def fit_stage(kind, train, cached, preset=None, memory_bytes=2**30, spill_dir=None, epochs=3):
    model, backbone, head, pipe, splits, unused = prepared(kind, preset)
    idx = selected_groups(train, backbone.groups)
    set_trainable(backbone.model, backbone.groups, idx, head, False, unused)
    stage = StageConfig(
        name="s", train=train, epochs=epochs, learning_rate=0.05, optimizer="sgd",
        early_stopping=EarlyStoppingConfig(monitor="val_loss", patience=10),
    )
    caches = []
    fit_model = model
    if cached:
        plan, why = plan_cache(model, backbone.model)
        assert plan is not None, why
        train_ds, val_ds, caches = cached_datasets(
            plan, pipe, splits.train, splits.val, memory_bytes, spill_dir
        )
        fit_model = plan.suffix
    else:
        train_ds = pipe.prepare(splits.train, training=True)
        val_ds = pipe.prepare(splits.val, training=False)
    steps = int(pipe.prepare(splits.train, training=True).reduce(0, lambda n, _: n + 1))
    rec = Recorder()
    run_stage(fit_model, StagePlan.single(stage), get_task("classification"), train_ds, val_ds, steps,
              [rec], False, 0)
    weights = [w.copy() for w in model.get_weights()]
    spill_record[:] = [(c.spilled, c.shuffle_limit(10**6) < c.count) for c in caches]
    for c in caches:
        c.close()
    return rec.epochs, weights, caches, model, fit_model


def assert_same_training(a, b, rtol=2e-4, atol=1e-5):
    (logs_a, weights_a), (logs_b, weights_b) = a[:2], b[:2]
    assert len(logs_a) == len(logs_b)
    for ea, eb in zip(logs_a, logs_b):
        for k in ("loss", "val_loss", "accuracy", "val_accuracy"):
            np.testing.assert_allclose(ea[k], eb[k], rtol=rtol, atol=atol, err_msg=k)
    for wa, wb in zip(weights_a, weights_b):
        np.testing.assert_allclose(wa, wb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("train", ["head", "top:1"])
def test_image_cache_matches_uncached_losses(train):
    uncached = fit_stage("image", train, cached=False)
    cached = fit_stage("image", train, cached=True)
    assert uncached[0][0]["loss"] != uncached[0][-1]["loss"]  # it did train
    assert_same_training(uncached, cached)


@pytest.mark.parametrize("train", ["head", "top:1", "top:2"])
def test_text_cache_matches_uncached_losses(dropout_free_bert, train):
    uncached = fit_stage("text", train, cached=False, preset=dropout_free_bert)
    cached = fit_stage("text", train, cached=True, preset=dropout_free_bert)
    assert uncached[0][0]["loss"] != uncached[0][-1]["loss"]
    assert_same_training(uncached, cached)


def test_top_n_suffix_runs_only_the_trained_blocks(dropout_free_bert):
    model, backbone, head, pipe, splits, unused = prepared("text", dropout_free_bert)
    set_trainable(backbone.model, backbone.groups, selected_groups("top:1", backbone.groups),
                  head, False, unused)
    plan, _ = plan_cache(model, backbone.model)
    layers = {l.name for l in plan.suffix.graph_layers}
    assert "transformer_layer_2" in layers
    assert not {"transformer_layer_0", "transformer_layer_1", "token_embedding"} & layers
    # The boundary: the second block's output (tokens) and the padding mask it attends with.
    assert plan.sequence_axes.count(1) >= 2

    set_trainable(backbone.model, backbone.groups, [], head, False, unused)
    plan, _ = plan_cache(model, backbone.model)
    assert [l.name for l in plan.suffix.graph_layers if l.weights] == ["head_classifier"]
    assert "head_pool" in plan.boundary


def test_nothing_frozen_means_no_cache():
    model, backbone, head, *_ , unused = prepared("image")
    set_trainable(backbone.model, backbone.groups, list(range(len(backbone.groups))), head,
                  False, unused)
    plan, why = plan_cache(model, backbone.model)
    assert plan is None and why == ""


def test_training_from_spilled_shards(tmp_path):
    logs, _, caches, *_ = fit_stage("image", "top:1", cached=True, memory_bytes=20_000,
                                    spill_dir=tmp_path)
    # 40 train examples of 1.5 KB against a 20 KB budget: shards on disk, a bounded shuffle.
    assert spill_record[0] == (True, True)
    assert len(logs) == 3 and all(np.isfinite(e["loss"]) for e in logs)
    assert not list(tmp_path.iterdir())  # the shards are gone after the stage


def test_feature_cache_spill_keeps_every_example(tmp_path):
    model, backbone, head, pipe, splits, unused = prepared("image")
    set_trainable(backbone.model, backbone.groups, [], head, False, unused)
    plan, _ = plan_cache(model, backbone.model)
    memory = FeatureCache(2**30).fill(plan, pipe.prepare(splits.train, False))
    disk = FeatureCache(1_000, tmp_path).fill(plan, pipe.prepare(splits.train, False))
    assert not memory.spilled and disk.spilled and len(disk._shards) > 1
    a = list(memory.dataset().as_numpy_iterator())
    b = list(disk.dataset().as_numpy_iterator())
    assert len(a) == len(b) == 40
    for (fa, ya, _), (fb, yb, _) in zip(a, b):
        assert ya == yb
        np.testing.assert_array_equal(fa[0], fb[0])
    disk.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("train", ["head", "top:1"])
def test_text_fill_by_length_keeps_the_split_order(dropout_free_bert, train):
    """Blocks of texts run in sub-batches of similar length, each trimmed to its longest:
    the same features per example, in the split's order, as the split's own batches give."""
    model, backbone, head, pipe, splits, unused = prepared("text", dropout_free_bert)
    set_trainable(backbone.model, backbone.groups, selected_groups(train, backbone.groups),
                  head, False, unused)
    plan, _ = plan_cache(model, backbone.model)
    plain = FeatureCache(2**30).fill(plan, pipe.prepare(splits.train, False), pipe.length_fn)
    by_length = FeatureCache(2**30).fill(plan, pipe.blocks(pipe.source(splits.train), 16),
                                         pipe.length_fn, sub_batch=3)
    a = list(plain.dataset().as_numpy_iterator())
    b = list(by_length.dataset().as_numpy_iterator())
    labels = [y for _, y in splits.train.as_numpy_iterator()]
    assert [r[1] for r in a] == [r[1] for r in b] == labels and len(set(r[2] for r in b)) > 5
    for (fa, _, na), (fb, _, nb) in zip(a, b):
        assert na == nb and len(fa) == len(fb)
        for x, y in zip(fa, fb):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("setting", ["auto", "off", "augment"])
def test_train_says_when_the_cache_is_used_and_saves_the_stage_state(tmp_path, setting):
    """Through `train`: head -> top:1 with layer decay; the log says what the cache did, the
    saved model reloads, and its optimizer holds the last stage's multipliers."""
    from tftune.config import config_from_dict
    from tftune.training.runner import train

    import tftune.model.heads  # noqa: F401  (registers the layers for loading)

    cfg = config_from_dict({
        "recipe": "image_classification", "name": "c", "output_dir": str(tmp_path),
        "data": {"source": "python", "image_size": [16, 16],
                 "augment": ["flip"] if setting == "augment" else []},
        "head": {"dropout": 0.0},
        "stages": [
            {"name": "head", "train": "head", "epochs": 2, "learning_rate": 0.05},
            {"name": "top", "train": "top:2", "epochs": 1, "learning_rate": 0.01,
             "layer_decay": 0.5},
        ],
        "train": {"batch_size": 8, "verbose": "quiet",
                  "feature_cache": "off" if setting == "off" else "auto"},
    })
    lines = []
    splits = image_splits()
    result = train(cfg, datasets=splits, backbone_model=build_tiny_cnn(16), echo=lines.append)
    log = "\n".join(lines)
    if setting == "auto":
        assert log.count("feature cache: frozen part run once over 40 train + 12 val") == 2
        assert "steps run only from the output of head_pool" in log
        assert "steps run only from the input of the trained blocks (stem_relu outputs)" in log
    elif setting == "off":
        assert "feature cache" not in log
    else:
        assert log.count("feature cache: off (random augmentation [flip]") == 2
    assert "lr multipliers: stage_1 x0.25, stage_2 x0.5, head x1" in log
    loaded = keras.saving.load_model(result.run_dir / "model.keras")
    assert loaded.optimizer.lr_multipliers == {
        "block1_conv/kernel": 0.25, "block2_conv/kernel": 0.5,
    }
    x = np.stack([x for x, _ in splits.val.as_numpy_iterator()])
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_cache_fill_reports_its_progress(capsys):
    """The fill shows progress as training does: a line at most every N seconds in a log,
    Keras's progress bar on a terminal, nothing when quiet."""
    from tftune.training.stage_data import fill_progress

    model, backbone, head, pipe, splits, unused = prepared("image")
    set_trainable(backbone.model, backbone.groups, [], head, False, unused)
    plan, why = plan_cache(model, backbone.model)
    assert plan is not None, why
    lines: list[str] = []
    FeatureCache(2**30).fill(plan, pipe.prepare(splits.train, training=False),
                             progress=fill_progress("epoch", "train", 40, lines.append, every=0))
    assert [l.split(" examples")[0] for l in lines] == [
        f"   feature cache: train {n} / 40" for n in (8, 16, 24, 32, 40)]
    assert fill_progress("quiet", "train", 40, lines.append) is None
    bar = fill_progress("bar", "val", 40, lines.append)
    for n in (8, 40):
        bar(n)
    assert "40/40" in capsys.readouterr().out
