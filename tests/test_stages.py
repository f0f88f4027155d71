"""Stages, stage by stage: what trains, what stays frozen (BatchNorm included), early stopping
with the best weights restored, a fresh optimizer per stage, and the learning-rate schedule."""

from __future__ import annotations

import numpy as np
import pytest

from tftune.model.backbones import LayerGroup, from_keras_model, load_backbone
from tftune.config import BackboneConfig, EarlyStoppingConfig, HeadConfig, StageConfig
from tftune.errors import ConfigError
from tftune.model.heads import build_classifier, head_layers
from tftune.training.optim import WarmupDecay, build_optimizer
from tftune.tasks import get_task
from tftune.training.plan import StagePlan
from tftune.training.stage import run_stage
from tftune.training.trainable import selected_groups, set_trainable, unused_layers

pytestmark = pytest.mark.usefixtures("eager")

SIZE = 16
HEAD_VARS = {"head_classifier/kernel", "head_classifier/bias"}


def trainable_paths(model) -> set[str]:
    return {v.path for v in model.trainable_weights}


def snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not np.array_equal(before[k], after[k])}


def colour_data(n: int, seed: int, size: int = SIZE):
    """Images whose dominant colour channel is the class (3 classes), pixels in 0..255."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.uniform(0, 90, (n, size, size, 3)).astype(np.float32)
    x[np.arange(n), :, :, y] += 140.0
    return tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))


@pytest.fixture
def cnn_classifier(make_tiny_cnn):
    """(classifier, backbone, head layers) on the tiny CNN: groups stem, stage_1, stage_2."""
    backbone = from_keras_model(make_tiny_cnn(SIZE), BackboneConfig())
    model = build_classifier(backbone, 3, HeadConfig(dropout=0.0), (SIZE, SIZE))
    return model, backbone, head_layers(model)


@pytest.fixture
def image_batches():
    return colour_data(24, 0).batch(8), colour_data(9, 1).batch(9)


def stage(**kw) -> StageConfig:
    kw.setdefault("early_stopping", EarlyStoppingConfig(monitor="val_loss", patience=10))
    kw.setdefault("optimizer", "adam")
    return StageConfig(**kw)


def fit_stage(model, cfg, data, callbacks=(), steps=3, index=0):
    train_ds, val_ds = data
    return run_stage(model, StagePlan.single(cfg, index), get_task("classification"), train_ds, val_ds,
                     steps, list(callbacks), False, 0)


# ------------------------------------------------------------------------------------------
# selected_groups


GROUPS = [LayerGroup(n, []) for n in ("embeddings", "block_0", "block_1", "final")]


@pytest.mark.parametrize(
    "train, expected",
    [
        ("head", []),
        ("all", [0, 1, 2, 3]),
        ("top:1", [3]),
        ("top:3", [1, 2, 3]),
        ("top:4", [0, 1, 2, 3]),
        ("block_1", [2]),
        (("final", "embeddings"), [0, 3]),
        (("block_0", "block_0"), [1]),
    ],
)
def test_selected_groups(train, expected):
    assert selected_groups(train, GROUPS) == expected


@pytest.mark.parametrize(
    "train, match",
    [
        ("top:0", "N >= 1"),
        ("top:x", "top:N"),
        ("top:5", "only 4 layer groups.*top:4"),
        ("block_7", "unknown layer group 'block_7'.*Did you mean 'block_1'"),
        (("block_0", "fnal"), "Did you mean 'final'"),
        ("everything", "'head', 'top:N', 'all'"),
    ],
)
def test_selected_groups_errors(train, match):
    with pytest.raises(ConfigError, match=match) as e:
        selected_groups(train, GROUPS, "stages.1.train")
    assert "stages.1.train" in str(e.value)


# ------------------------------------------------------------------------------------------
# set_trainable


def test_set_trainable_stage_by_stage(cnn_classifier):
    model, backbone, head = cnn_classifier
    groups = backbone.groups
    assert [g.name for g in groups] == ["stem", "stage_1", "stage_2"]

    def apply(train, train_bn=False):
        set_trainable(backbone.model, groups, selected_groups(train, groups), head, train_bn)
        return trainable_paths(model)

    assert apply("head") == HEAD_VARS
    assert apply("top:1") == HEAD_VARS | {"block2_conv/kernel"}
    assert apply("top:1", train_bn=True) == HEAD_VARS | {
        "block2_conv/kernel", "block2_bn/gamma", "block2_bn/beta"}
    assert apply("all") == HEAD_VARS | {"stem_conv/kernel", "block1_conv/kernel", "block2_conv/kernel"}
    assert apply(["stem"], train_bn=True) == HEAD_VARS | {
        "stem_conv/kernel", "stem_bn/gamma", "stem_bn/beta"}
    # Back to head only: everything unfrozen before is frozen again.
    assert apply("head") == HEAD_VARS
    # Moving statistics never train.
    apply("all", train_bn=True)
    assert not any("moving" in p for p in trainable_paths(model))


def test_set_trainable_bn_flags(cnn_classifier):
    model, backbone, head = cnn_classifier
    groups = backbone.groups
    bn = {l.name: l for l in backbone.model.layers if type(l).__name__ == "BatchNormalization"}
    set_trainable(backbone.model, groups, [2], head, train_bn=False)
    assert not any(l.trainable for l in bn.values())
    set_trainable(backbone.model, groups, [2], head, train_bn=True)
    assert bn["block2_bn"].trainable
    assert not bn["stem_bn"].trainable and not bn["block1_bn"].trainable


def test_set_trainable_always_frozen(cnn_classifier):
    model, backbone, head = cnn_classifier
    block2 = backbone.model.get_layer("block2_conv")
    set_trainable(backbone.model, backbone.groups, [0, 1, 2], head, False, always_frozen=[block2])
    assert trainable_paths(model) == HEAD_VARS | {"stem_conv/kernel", "block1_conv/kernel"}


def test_set_trainable_freezes_bn_inside_nested_blocks():
    """A BatchNormalization inside a nested sub-model of a trained group stays frozen."""
    import keras

    keras.utils.set_random_seed(0)
    block = keras.Sequential(
        [keras.Input((SIZE, SIZE, 4)), keras.layers.Conv2D(4, 3, strides=2, padding="same", name="inner_conv"),
         keras.layers.BatchNormalization(name="inner_bn")],
        name="block1",
    )
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(inputs)
    x = block(x)
    backbone = from_keras_model(keras.Model(inputs, x), BackboneConfig())
    model = build_classifier(backbone, 3, HeadConfig(dropout=0.0), (SIZE, SIZE))
    head = head_layers(model)
    set_trainable(backbone.model, backbone.groups, list(range(len(backbone.groups))), head, False)
    assert trainable_paths(model) == HEAD_VARS | {
        "stem_conv/kernel", "stem_conv/bias", "block1/inner_conv/kernel", "block1/inner_conv/bias"}


# ------------------------------------------------------------------------------------------
# run_stage: frozen weights, BatchNorm statistics, optimizer


def test_frozen_bn_statistics_do_not_move(cnn_classifier, image_batches):
    model, backbone, head = cnn_classifier
    set_trainable(backbone.model, backbone.groups, [0, 1, 2], head, train_bn=False)
    before = snapshot(model)
    fit_stage(model, stage(train="all", epochs=2, learning_rate=1e-2), image_batches)
    after = snapshot(model)
    assert not changed(bn_stats_of(before), bn_stats_of(after))
    # ... while the convolutions of the trained groups did train.
    assert {"stem_conv/kernel", "block1_conv/kernel", "block2_conv/kernel"} <= changed(before, after)
    assert not any(k.endswith(("gamma", "beta")) for k in changed(before, after))


def bn_stats_of(snap: dict) -> dict:
    return {k: v for k, v in snap.items() if "moving_" in k}


def test_trained_bn_statistics_move_only_in_trained_groups(cnn_classifier, image_batches):
    model, backbone, head = cnn_classifier
    set_trainable(backbone.model, backbone.groups, [2], head, train_bn=True)  # top:1
    before = snapshot(model)
    fit_stage(model, stage(train="top:1", epochs=1, learning_rate=1e-2), image_batches)
    moved = changed(bn_stats_of(before), bn_stats_of(snapshot(model)))
    assert moved == {"block2_bn/moving_mean", "block2_bn/moving_variance"}


def test_frozen_variables_do_not_change_and_optimizer_is_fresh(cnn_classifier, image_batches):
    import keras

    model, backbone, head = cnn_classifier
    seen = []

    class AtStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append((self.model.optimizer, int(self.model.optimizer.iterations.numpy())))

    set_trainable(backbone.model, backbone.groups, [], head)
    s0 = snapshot(model)
    fit_stage(model, stage(train="head", epochs=2, learning_rate=1e-2), image_batches, [AtStart()])
    s1 = snapshot(model)
    assert changed(s0, s1) == HEAD_VARS
    assert int(model.optimizer.iterations.numpy()) == 6

    set_trainable(backbone.model, backbone.groups, [2], head)
    fit_stage(model, stage(train="top:1", epochs=1, learning_rate=1e-2, optimizer="sgd"),
              image_batches, [AtStart()], index=1)
    s2 = snapshot(model)
    assert changed(s1, s2) == HEAD_VARS | {"block2_conv/kernel"}

    (opt1, it1), (opt2, it2) = seen
    assert opt1 is not opt2 and it1 == 0 and it2 == 0
    assert isinstance(opt2, keras.optimizers.SGD)
    assert int(model.optimizer.iterations.numpy()) == 3  # not carried over from stage 1


# ------------------------------------------------------------------------------------------
# early stopping


def flipped_label_data():
    """Training teaches `y = x0 > 0`; validation says the opposite, so every epoch of
    training makes the validation loss worse: epoch 1 is the best one."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    val = tf.data.Dataset.from_tensor_slices((x, 1 - y)).batch(64)
    return train, val


def dense_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(8)(inputs)))


class Recorder:
    """A callback that records the weights and logs at the end of every epoch."""

    def __new__(cls):
        import keras

        class _Recorder(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.weights, self.logs = [], []

            def on_epoch_end(self, epoch, logs=None):
                self.weights.append([np.array(w) for w in self.model.get_weights()])
                self.logs.append(dict(logs))

        return _Recorder()


def same_weights(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("patience, epochs_run", [(10, 4), (1, 2)])
def test_early_stopping_restores_the_best_epoch(patience, epochs_run):
    model = dense_model()
    rec = Recorder()
    cfg = stage(epochs=4, learning_rate=0.05,
                early_stopping=EarlyStoppingConfig(monitor="val_loss", patience=patience))
    result = fit_stage(model, cfg, flipped_label_data(), [rec], steps=4)
    losses = [l["val_loss"] for l in rec.logs]
    assert all(b > a for a, b in zip(losses, losses[1:])), losses  # the setup works as intended
    assert result.epochs_run == epochs_run == len(rec.weights)
    assert result.best_epoch == 1
    assert result.best_value == pytest.approx(losses[0])
    assert result.monitor == "val_loss"
    assert same_weights(model.get_weights(), rec.weights[0])
    assert not same_weights(model.get_weights(), rec.weights[-1])


def test_early_stopping_on_accuracy_keeps_the_highest():
    import tensorflow as tf

    model = dense_model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    data = (tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
            tf.data.Dataset.from_tensor_slices((x, y)).batch(64))
    rec = Recorder()
    cfg = stage(epochs=4, learning_rate=0.01,
                early_stopping=EarlyStoppingConfig(monitor="val_accuracy", patience=10))
    result = fit_stage(model, cfg, data, [rec], steps=4)
    accs = [l["val_accuracy"] for l in rec.logs]
    best = int(np.argmax(accs))
    assert accs[-1] < accs[best], accs  # the setup works as intended: the last epoch is worse
    assert result.best_epoch == best + 1 and result.best_value == pytest.approx(accs[best])
    assert same_weights(model.get_weights(), rec.weights[best])


def test_unknown_monitor_is_a_config_error():
    """A monitor training does not report is the user's config error, named as such."""
    model = dense_model()
    cfg = stage(epochs=1, early_stopping=EarlyStoppingConfig(monitor="val_acc"))
    with pytest.raises(ConfigError, match="val_accuracy"):
        fit_stage(model, cfg, flipped_label_data(), steps=4)


# ------------------------------------------------------------------------------------------
# unused layers


def test_unused_layers_finds_the_bert_pooler(tiny_bert_preset):
    backbone = load_backbone(BackboneConfig(spec=f"keras_hub:{tiny_bert_preset}", sequence_length=16))
    sample = backbone.preprocessor(["good movie", "the plot was dull"])
    for pooling in ("mean", "cls"):
        model = build_classifier(backbone, 2, HeadConfig(pooling=pooling))
        assert [l.name for l in unused_layers(model, backbone.model, sample)] == ["pooled_dense"]


def test_no_unused_layers_in_a_cnn(cnn_classifier):
    model, backbone, _ = cnn_classifier
    x = next(iter(colour_data(4, 0).batch(4)))[0]
    assert unused_layers(model, backbone.model, x) == []


# ------------------------------------------------------------------------------------------
# schedules and optimizers


def lr_at(schedule, step) -> float:
    return float(np.asarray(schedule(step)))


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_warmup_ramps_linearly_to_the_peak(decay):
    s = WarmupDecay(2.0, total_steps=100, warmup_steps=10, decay=decay)
    ramp = [lr_at(s, k) for k in range(10)]
    assert ramp == pytest.approx([2.0 * (k + 1) / 10 for k in range(10)])
    assert lr_at(s, 10) == pytest.approx(2.0)


def test_cosine_and_linear_decay_to_zero():
    cos = WarmupDecay(1.0, total_steps=110, warmup_steps=10, decay="cosine")
    lin = WarmupDecay(1.0, total_steps=110, warmup_steps=10, decay="linear")
    assert lr_at(cos, 60) == pytest.approx(0.5, abs=1e-6)
    assert lr_at(lin, 60) == pytest.approx(0.5, abs=1e-6)
    assert lr_at(lin, 35) == pytest.approx(0.75, abs=1e-6)
    for s in (cos, lin):
        values = [lr_at(s, k) for k in range(10, 111)]
        assert all(b <= a + 1e-7 for a, b in zip(values, values[1:]))
        assert values[-1] == pytest.approx(0.0, abs=1e-7)
        assert lr_at(s, 109) < 0.01
        assert lr_at(s, 500) == pytest.approx(0.0, abs=1e-7)


def test_constant_without_warmup():
    s = WarmupDecay(0.3, total_steps=10)
    assert [lr_at(s, k) for k in (0, 5, 10, 50)] == pytest.approx([0.3] * 4)


def test_schedule_serialises():
    import keras

    s = WarmupDecay(0.1, 50, 5, "cosine")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert isinstance(again, WarmupDecay)
    assert [lr_at(again, k) for k in (0, 7, 49)] == pytest.approx([lr_at(s, k) for k in (0, 7, 49)])


def test_build_optimizer():
    import keras

    opt = build_optimizer(StageConfig(learning_rate=1e-3), steps_per_epoch=10)
    assert isinstance(opt, keras.optimizers.AdamW)
    assert float(np.asarray(opt.learning_rate)) == pytest.approx(1e-3)
    opt = build_optimizer(StageConfig(epochs=2, learning_rate=1.0, warmup=0.1, schedule="linear"), 50)
    sched = opt._learning_rate
    assert isinstance(sched, WarmupDecay)
    assert (sched.total_steps, sched.warmup_steps) == (100, 10)
    opt = build_optimizer(StageConfig(epochs=2, warmup=7, schedule="cosine", optimizer="sgd"), 50)
    assert isinstance(opt, keras.optimizers.SGD) and opt._learning_rate.warmup_steps == 7


def test_schedule_spans_the_steps_the_stage_runs(cnn_classifier, image_batches):
    """With `steps_per_epoch` set on the stage, the decay must end at the stage's last step."""
    model, backbone, head = cnn_classifier
    set_trainable(backbone.model, backbone.groups, [], head)
    cfg = stage(epochs=2, steps_per_epoch=1, learning_rate=1.0, schedule="linear")
    fit_stage(model, cfg, image_batches, steps=3)
    assert int(model.optimizer.iterations.numpy()) == 2
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(0.0, abs=1e-6)
