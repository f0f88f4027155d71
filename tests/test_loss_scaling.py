"""Float16 with dynamic loss scaling, trained for real on CPU in tftune's own loop: the
optimizer is wrapped in Keras's `LossScaleOptimizer`, the gradients are computed on the scaled
loss and unscaled before the update (one SGD step equals a float32 reference), a step whose
gradients overflow is skipped and halves the scale, training goes on after it; with XLA too.
A float16 run checkpoints the loss scale, resumes exactly and its saved model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_run, make_image_folder, resume_recipe, save_tiny_cnn, sigterm_at
from tftune.config import EarlyStoppingConfig, StageConfig
from tftune.tasks import get_task
from tftune.training import loop
from tftune.training.plan import StagePlan
from tftune.training.stage import compile_model, open_stage, uses_float16

LR = 0.1


@pytest.fixture
def float16_policy():
    import keras

    before = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(before)


def model(policy=None):
    """Dense 4 -> 16 (relu) -> 2 (softmax, float32 as tftune's head), seeded: under the
    global policy, or `policy` for the hidden layer."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(16, activation="relu", dtype=policy)(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", dtype="float32")(hidden))


def batch(scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 4)).astype(np.float32) * scale
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    return x, y


def one_batch(x, y):
    import tensorflow as tf

    return iter(tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)))


def float16_steps(jit: bool):
    m = model()
    cfg = StageConfig(name="s", epochs=1, learning_rate=LR, optimizer="sgd",
                      early_stopping=EarlyStoppingConfig(monitor="loss", patience=10))
    steps, _, _ = open_stage(m, StagePlan.single(cfg), get_task("classification"), 10, [],
                             jit, 0)
    return m, steps


def float32_reference_step(weights, x, y):
    """The weights after one plain SGD step (lr `LR`) computed in float32, and the gradients."""
    import keras
    import tensorflow as tf

    before = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        ref = model()
    finally:
        keras.mixed_precision.set_global_policy(before)
    ref.set_weights(weights)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, ref(x)))
    grads = [g.numpy() for g in tape.gradient(loss, ref.trainable_variables)]
    return [w - LR * g for w, g in zip(weights, grads)], grads


def test_float16_models_get_a_loss_scale_optimizer_and_float32_ones_do_not(float16_policy):
    import keras

    task = get_task("classification")
    m = model()
    compile_model(m, task, keras.optimizers.SGD(LR), False)
    assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer)
    # Compiled again with it (the feature cache's full model): not wrapped twice.
    other = model()
    compile_model(other, task, m.optimizer, False)
    assert other.optimizer is m.optimizer
    keras.mixed_precision.set_global_policy("float32")
    plain = model()
    compile_model(plain, task, keras.optimizers.SGD(LR), False)
    assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)
    # A float32 model around a float16 layer: Keras's compile would not wrap it, tftune does.
    inner = model(policy="mixed_float16")
    assert inner.dtype_policy.name == "float32" and uses_float16(inner)
    compile_model(inner, task, keras.optimizers.SGD(LR), False)
    assert isinstance(inner.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_scaled_gradients_unscaled_update_and_an_overflow_step_skipped(float16_policy, jit):
    m, steps = float16_steps(jit)
    optimizer = m.optimizer
    assert steps.jit is jit
    scale = float(optimizer.dynamic_scale)
    assert scale == 2.0 ** 15
    x, y = batch()
    w0 = m.get_weights()
    expected, grads32 = float32_reference_step(w0, x, y)

    # The gradients tftune's step computes are those of the loss times the scale.
    scaled, *_ = steps._gradients(x, y, None, float(len(x)), 1.0)
    for g, g32 in zip(scaled, grads32):
        np.testing.assert_allclose(np.asarray(g) / scale, g32, rtol=2e-2, atol=1e-4)
        assert np.abs(np.asarray(g)).max() > 100 * np.abs(g32).max()

    # One step: the update used the unscaled gradients (the float32 step, fp16 tolerance).
    count, logs = steps.train_steps(one_batch(x, y), 1)
    assert count == 1 and np.isfinite(logs["loss"])
    for w, e in zip(m.get_weights(), expected):
        np.testing.assert_allclose(w, e, rtol=1e-2, atol=2e-4)
    assert int(optimizer.iterations) == 1 and float(optimizer.dynamic_scale) == scale

    # An overflow: inputs beyond float16's range make every gradient inf / NaN. The step is
    # skipped (weights and step count unchanged) and the scale halves.
    w1 = m.get_weights()
    steps.train_steps(one_batch(*batch(scale=1e6)), 1)
    for a, b in zip(m.get_weights(), w1):
        np.testing.assert_array_equal(a, b)
    assert int(optimizer.iterations) == 1
    assert float(optimizer.dynamic_scale) == scale / 2

    # Training goes on: finite steps update the weights again, at the halved scale.
    steps.reset_train()
    for seed in (1, 2, 3):
        count, logs = steps.train_steps(one_batch(*batch(seed=seed)), 1)
        assert count == 1 and np.isfinite(logs["loss"])
    assert int(optimizer.iterations) == 4
    assert float(optimizer.dynamic_scale) == scale / 2
    assert all(np.isfinite(w).all() for w in m.get_weights())
    assert max(np.abs(a - b).max() for a, b in zip(m.get_weights(), w1)) > 1e-4


def test_the_scale_doubles_after_its_growth_steps(float16_policy):
    m = model()
    cfg = StageConfig(name="s", epochs=1, learning_rate=LR, optimizer="sgd",
                      early_stopping=EarlyStoppingConfig(monitor="loss", patience=10))
    steps, _, _ = open_stage(m, StagePlan.single(cfg), get_task("classification"), 10, [],
                             False, 0)
    m.optimizer.dynamic_growth_steps = 3  # read when the step is traced
    for seed in range(3):
        steps.train_steps(one_batch(*batch(seed=seed)), 1)
    assert float(m.optimizer.dynamic_scale) == 2.0 ** 16


# ------------------------------------------------------------------------------------------
# a whole float16 run: checkpoint, resume, load


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("float16")
    return root, make_image_folder(root / "images"), save_tiny_cnn(root / "cnn.keras")


@pytest.mark.usefixtures("eager")
def test_float16_run_checkpoints_the_loss_scale_resumes_exactly_and_loads(tmp_path, data,
                                                                           monkeypatch):
    import keras

    import tftune
    from tftune.config import config_from_dict
    from tftune.rundir import checkpoint as ckpt
    from tftune.rundir.reader import open_run
    from tftune.runtime.preemption import Preempted
    from tftune.training.runner import train

    root, folder, cnn = data
    recipe = resume_recipe(folder, cnn, tmp_path / "ref", mixed_precision="float16")
    lines = []
    reference = train(config_from_dict(recipe), echo=lines.append)
    assert any(l.startswith("Precision: mixed_float16 with dynamic loss scaling, XLA off")
               for l in lines), lines
    assert isinstance(reference.model.optimizer, keras.optimizers.LossScaleOptimizer)

    cfg = config_from_dict(resume_recipe(folder, cnn, tmp_path / "cut", mixed_precision="float16"))
    sigterm_at(monkeypatch, "step", 11)  # mid stage 2, which trains the CNN's top block
    with pytest.raises(Preempted):
        train(cfg, echo=lambda _: None)
    monkeypatch.undo()
    saved = ckpt.latest(tmp_path / "cut" / "r")
    paths = [p for p, _ in saved.state.variables["optimizer"]]
    assert any(p.endswith("dynamic_scale") for p in paths), paths
    resumed = train(cfg, resume=True, echo=lambda _: None)
    assert_same_run(resumed, reference)
    assert float(resumed.model.optimizer.dynamic_scale) == float(
        reference.model.optimizer.dynamic_scale)

    finished = open_run(resumed.run_dir)
    loaded = finished.load_model()
    assert finished.trained_policy == "mixed_float16"
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), resumed.model.predict(x, verbose=0),
                               atol=2e-3)
    predictions = tftune.load(resumed.run_dir).predict([str(p) for p in sorted(
        folder.rglob("*.png"))[:2]])
    assert len(predictions) == 2


# ------------------------------------------------------------------------------------------
# XLA and float16 under MirroredStrategy (2 logical CPUs: set before TensorFlow starts)

MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, sys.argv[1])
    import test_loss_scaling as T
    from tftune.runtime.distribute import make_distribution
    keras.mixed_precision.set_global_policy("mixed_float16")
    out = {}
    for setting in ("default", "mirrored"):
        dist = make_distribution(setting)
        with dist.scope():
            m = T.model()
            cfg = T.StageConfig(name="s", epochs=1, learning_rate=T.LR, optimizer="sgd",
                                early_stopping=T.EarlyStoppingConfig(monitor="loss", patience=9))
            steps, _, _ = T.open_stage(m, T.StagePlan.single(cfg), T.get_task("classification"),
                                       10, [], True, 0, dist)
            for seed in range(4):
                steps.train_steps(steps.batches(T.dataset(seed)), 1)
            before = [w.tolist() for w in m.get_weights()]
            steps.train_steps(steps.batches(T.dataset(9, scale=1e6)), 1)  # overflow: skipped
            skipped = all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
            steps.train_steps(steps.batches(T.dataset(5)), 1)
            local = lambda v: [float(x) for x in dist.strategy.experimental_local_results(v.value)]
            out[setting] = {"weights": [w.tolist() for w in m.get_weights()], "jit": steps.jit,
                            "scale": local(m.optimizer.dynamic_scale), "skipped": skipped,
                            "steps": local(m.optimizer.iterations), "replicas": dist.replicas}
    print("RESULT " + json.dumps(out))
""")


def dataset(seed: int, scale: float = 1.0):
    """One batch of 8 (`batch(scale, seed)`) as a dataset."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(batch(scale, seed)).batch(8)


def test_xla_and_loss_scaling_under_mirrored_strategy_match_one_device(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    one, two = result["default"], result["mirrored"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    for r in (one, two):
        # every replica's copy of the scale halved once, the overflow step not counted
        assert r["jit"] and r["skipped"]
        assert r["steps"] == [5] * r["replicas"] and r["scale"] == [2.0 ** 14] * r["replicas"]
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(one["weights"], two["weights"]))
    print(f"max |weight difference| mirrored vs one device (float16, XLA): {diff:.2e}")
    assert diff < 1e-3


@pytest.mark.usefixtures("eager")
def test_auto_on_a_v100_trains_float16_and_resumes_there_but_not_on_an_a100(tmp_path, data,
                                                                             monkeypatch):
    """`mixed_precision: auto` with the device description mocked: a V100 (7.0) trains in
    float16 with loss scaling; its mid-stage checkpoint resumes on a V100, and on an A100
    (bfloat16, no loss scale in the optimizer) the resume is refused with the reason."""
    from tftune.config import config_from_dict
    from tftune.errors import ConfigError
    from tftune.runtime.preemption import Preempted
    from tftune.training import runner
    from tftune.training.device import DeviceDescription

    root, folder, cnn = data
    cfg = config_from_dict(resume_recipe(folder, cnn, tmp_path, mixed_precision="auto"))
    v100, a100 = DeviceDescription("gpu", ((7, 0),)), DeviceDescription("gpu", ((8, 0),))
    monkeypatch.setattr(runner, "describe_device", lambda kind=None: v100)
    sigterm_at(monkeypatch, "step", 11)
    lines = []
    with pytest.raises(Preempted):
        runner.train(cfg, echo=lines.append)
    assert any(l.startswith("Precision: mixed_float16 with dynamic loss scaling, XLA on (auto: "
                            "compute capability 7.0") for l in lines), lines
    monkeypatch.undo()
    monkeypatch.setattr(runner, "describe_device", lambda kind=None: a100)
    with pytest.raises(ConfigError, match="mid-stage float16 with loss scaling.*mixed_bfloat16"):
        runner.train(cfg, resume=True, echo=lambda _: None)
    monkeypatch.setattr(runner, "describe_device", lambda kind=None: v100)
    result = runner.train(cfg, resume=True, echo=lambda _: None)
    assert [s["epochs_run"] for s in result.metrics["stages"]] == [2, 2]


def test_lr_find_scales_the_loss_of_a_float16_model(float16_policy, monkeypatch):
    import keras
    import tensorflow as tf

    from tftune.training import lr_find

    m = model()
    before = m.get_weights()
    wrapped = []
    original = keras.optimizers.LossScaleOptimizer.scale_loss
    monkeypatch.setattr(keras.optimizers.LossScaleOptimizer, "scale_loss",
                        lambda self, loss: (wrapped.append(True), original(self, loss))[1])
    x, y = batch()
    result = lr_find.sweep(m, tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
                           keras.optimizers.SGD(), steps=8, min_lr=1e-4, max_lr=1e-1,
                           echo=lambda _: None)
    assert wrapped and len(result.losses) == 8 and np.isfinite(result.losses).all()
    for a, b in zip(m.get_weights(), before):  # restored after the sweep
        np.testing.assert_array_equal(a, b)


def test_a_saved_float32_backbone_is_rebuilt_in_the_runs_mixed_policy(tmp_path, float16_policy):
    """A `keras:` file (saved in float32) computes in the run's policy like the backbones
    tftune builds: same weights and variable paths, outputs within float16 rounding; a model
    that cannot be rebuilt stays float32 with a note; under float32 nothing changes."""
    import keras

    from tftune.config import BackboneConfig
    from tftune.model import backbones

    keras.mixed_precision.set_global_policy("float32")  # saved as a float32 model
    path = save_tiny_cnn(tmp_path / "cnn.keras")
    reference = keras.saving.load_model(str(path))
    keras.mixed_precision.set_global_policy("mixed_float16")
    backbone = backbones.load_backbone(BackboneConfig(spec=f"keras:{path}"), (32, 32))
    assert "rebuilt in the run's dtype policy mixed_float16" in backbone.notes[-1]
    assert {l.dtype_policy.name for l in backbone.model.layers if l.weights} == {"mixed_float16"}
    assert [v.path for v in backbone.model.weights] == [v.path for v in reference.weights]
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(backbone.model(x), np.float32), reference(x),
                               atol=0.05, rtol=0.01)

    def broken(obj):
        raise ValueError("Unknown layer: 'MyLayer'")

    import tftune.model.backbones as module

    original = module._with_policy
    module._with_policy = lambda config, policy: broken(config)
    try:
        model, note = backbones.in_run_policy(reference, "keras:x")
    finally:
        module._with_policy = original
    assert model is reference and "computes in float32, not mixed_float16" in note
    keras.mixed_precision.set_global_policy("float32")
    assert backbones.in_run_policy(reference, "keras:x") == (reference, None)
