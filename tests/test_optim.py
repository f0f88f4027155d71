"""Per-group learning rates inside Keras optimizers, and the stage schedules: the update each
variable really gets, weight decay, saving/loading, resuming a schedule, tf.distribute."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tftune.config import StageConfig
from tftune.errors import ConfigError
from tftune.training.optim import (
    GroupLRAdam,
    GroupLRAdamW,
    GroupLRSGD,
    WarmupDecay,
    build_optimizer,
    group_multipliers,
    warmup_steps,
)

MULTIPLIERS = {"low/kernel": 0.25, "low/bias": 0.25, "mid/kernel": 0.5, "mid/bias": 0.5}


def three_layers():
    keras.utils.set_random_seed(0)
    x = keras.Input((5,))
    h = keras.layers.Dense(4, name="low")(x)
    h = keras.layers.Dense(4, name="mid")(h)
    return keras.Model(x, keras.layers.Dense(3, name="top")(h))


def one_step(model, optimizer, zero_grads=False):
    """Applies one optimizer step; returns ({path: weight change}, {path: gradient})."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    if zero_grads:
        grads = [tf.zeros_like(g) for g in grads]
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    delta = {v.path: v.numpy() - before[v.path] for v in model.trainable_variables}
    return delta, {v.path: g.numpy() for v, g in zip(model.trainable_variables, grads)}, before


def test_sgd_applies_exactly_each_groups_multiplier():
    model = three_layers()
    delta, grads, before = one_step(
        model, GroupLRSGD(learning_rate=0.1, lr_multipliers=MULTIPLIERS)
    )
    for path, d in delta.items():
        step = np.float32(0.1) * np.float32(MULTIPLIERS.get(path, 1.0))
        # w - (lr * m) * g, in float32 as the optimizer computes it: equal to the last bit.
        np.testing.assert_array_equal(before[path] + d, before[path] - grads[path] * step)


def test_adam_first_step_scales_with_the_multiplier():
    # Adam's first step is lr * g / (|g| + eps): about lr per weight, times the multiplier.
    model = three_layers()
    delta, grads, _ = one_step(model, GroupLRAdam(learning_rate=0.01, lr_multipliers=MULTIPLIERS))
    for path, d in delta.items():
        m = MULTIPLIERS.get(path, 1.0)
        big = np.abs(grads[path]) > 1e-2  # where epsilon does not matter
        np.testing.assert_allclose(np.abs(d[big]), 0.01 * m, rtol=2e-3)


def test_adamw_weight_decay_is_scaled_by_the_multiplier_and_skips_biases():
    model = three_layers()
    opt = GroupLRAdamW(learning_rate=0.1, weight_decay=0.5, lr_multipliers=MULTIPLIERS)
    opt.exclude_from_weight_decay(var_names=["bias"])
    delta, _, before = one_step(model, opt, zero_grads=True)
    for path, d in delta.items():
        m = MULTIPLIERS.get(path, 1.0)
        expected = 0 * d if path.endswith("bias") else -0.1 * m * 0.5 * before[path]
        np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-8)


def test_multipliers_for_unknown_variables_are_an_error():
    model = three_layers()
    opt = GroupLRSGD(learning_rate=0.1, lr_multipliers={"nope/kernel": 0.5})
    with pytest.raises(ValueError, match="nope/kernel"):
        opt.build(model.trainable_variables)


def test_group_multipliers_layer_decay_and_explicit_values():
    names = ["embeddings", "block_0", "block_1", "block_2"]
    assert group_multipliers(names, [0, 1, 2, 3], layer_decay=0.5) == {
        "embeddings": 0.0625, "block_0": 0.125, "block_1": 0.25, "block_2": 0.5,
    }
    # Only trained groups get one; explicit values win over the decay.
    assert group_multipliers(names, [2, 3], 0.5, {"block_1": 0.9, "block_0": 0.1}) == {
        "block_1": 0.9, "block_2": 0.5,
    }
    assert group_multipliers(names, [1, 2]) == {"block_0": 1.0, "block_1": 1.0}
    with pytest.raises(ConfigError, match="unknown layer group 'blok_1'.*Did you mean 'block_1'"):
        group_multipliers(names, [3], None, {"blok_1": 0.5}, "stages.1")
    with pytest.raises(ConfigError, match=r"stages.1.layer_decay.*\(0, 1\]"):
        group_multipliers(names, [3], 1.5, None, "stages.1")


@pytest.mark.usefixtures("eager")
def test_fit_save_and_load_keep_the_multipliers_and_the_schedule_position(tmp_path):
    model = three_layers()
    stage = StageConfig(epochs=2, learning_rate=0.05, optimizer="adamw", warmup=0.25,
                        schedule="cosine")
    model.compile(optimizer=build_optimizer(stage, 4, MULTIPLIERS), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)), rng.normal(size=(32, 3))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 4 of the schedule's 8 steps
    lr_before = float(model.optimizer.learning_rate)
    model.save(tmp_path / "m.keras")

    loaded = keras.saving.load_model(tmp_path / "m.keras")
    opt = loaded.optimizer
    assert isinstance(opt, GroupLRAdamW) and opt.lr_multipliers == MULTIPLIERS
    assert int(opt.iterations) == 4
    assert float(opt.learning_rate) == pytest.approx(lr_before)  # the schedule resumes there
    for a, b in zip(model.optimizer.variables, opt.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(opt.iterations) == 8


def test_schedules_shapes():
    lr = lambda s, t: float(s(t))  # noqa: E731
    warm = WarmupDecay(1.0, 100, 10, "linear")
    assert lr(warm, 0) == pytest.approx(0.1) and lr(warm, 9) == pytest.approx(1.0)
    assert lr(warm, 55) == pytest.approx(0.5) and lr(warm, 100) == pytest.approx(0.0)
    cos = WarmupDecay(1.0, 100, 0, "cosine")
    assert lr(cos, 0) == pytest.approx(1.0) and lr(cos, 50) == pytest.approx(0.5)
    # Slanted triangular: peak/32 at both ends, the peak at the cut, linear in between.
    stlr = WarmupDecay(1.0, 100, 10, "slanted_triangular")
    assert lr(stlr, 0) == pytest.approx(1 / 32) and lr(stlr, 10) == pytest.approx(1.0)
    assert lr(stlr, 5) == pytest.approx((1 + 0.5 * 31) / 32)
    assert lr(stlr, 55) == pytest.approx((1 + 0.5 * 31) / 32) and lr(stlr, 100) == pytest.approx(1 / 32)
    # One-cycle: peak/25 -> peak (cosine) -> peak/25e4 (cosine).
    oc = WarmupDecay(1.0, 100, 25, "one_cycle")
    assert lr(oc, 0) == pytest.approx(0.04) and lr(oc, 25) == pytest.approx(1.0)
    assert lr(oc, 100) == pytest.approx(4e-6, abs=1e-9)
    assert lr(oc, 62.5) == pytest.approx(0.5, abs=1e-3)
    # Default warmups: 10% for slanted triangular, 25% for one-cycle; explicit steps or a fraction.
    assert warmup_steps(StageConfig(schedule="slanted_triangular"), 200) == 20
    assert warmup_steps(StageConfig(schedule="one_cycle"), 200) == 50
    assert warmup_steps(StageConfig(warmup=0.1), 200) == 20
    assert warmup_steps(StageConfig(warmup=30), 200) == 30
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(stlr))
    assert lr(restored, 37) == pytest.approx(lr(stlr, 37))


def test_multipliers_under_mirrored_strategy_on_two_logical_cpus():
    """The real tf.distribute engine: two replicas, all-reduced gradients, and each group's
    step still scaled exactly (SGD). Runs in its own process: logical devices are fixed when
    TensorFlow starts."""
    code = textwrap.dedent(
        """
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tftune.training.optim import GroupLRSGD
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        mult = {"low/kernel": 0.25, "low/bias": 0.25}
        with strategy.scope():
            keras.utils.set_random_seed(0)
            x = keras.Input((5,))
            h = keras.layers.Dense(4, name="low")(x)
            model = keras.Model(x, keras.layers.Dense(3, name="top")(h))
            model.compile(optimizer=GroupLRSGD(learning_rate=0.1, lr_multipliers=mult),
                          loss="mse")
        rng = np.random.default_rng(1)
        xs = rng.normal(size=(16, 5)).astype("float32")
        ys = rng.normal(size=(16, 3)).astype("float32")
        before = [v.numpy().copy() for v in model.trainable_variables]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xs) - ys) ** 2)
        grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
        model.fit(xs, ys, batch_size=16, epochs=1, verbose=0, shuffle=False)
        for v, b, g in zip(model.trainable_variables, before, grads):
            m = mult.get(v.path, 1.0)
            np.testing.assert_allclose(v.numpy() - b, -0.1 * m * g, rtol=2e-4, atol=1e-7)
        print("OK", [mult.get(v.path, 1.0) for v in model.trainable_variables])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK [0.25, 0.25, 1.0, 1.0]" in out.stdout
