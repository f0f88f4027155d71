"""tftune's loop with several steps in one call (`train.steps_per_execution`): the same
training as one step a call, callbacks once a call, step checkpoints on their boundaries, and
`auto` choosing it only for a head on cached features."""

from __future__ import annotations

import types

import numpy as np
import pytest

from tftune.config import EarlyStoppingConfig, StageConfig
from tftune.tasks import get_task
from tftune.training import loop
from tftune.training.device import CACHED_HEAD_STEPS_PER_CALL, steps_per_execution
from tftune.training.plan import StagePlan
from tftune.training.stage import open_stage


def data():
    """10 batches of 8 (the last short: 76 examples) and a validation batch."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(76, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return train, tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(16)


def model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))


class Batches:
    """A callback recording the batch indices its batch hooks see."""

    def __new__(cls):
        import keras

        class _Batches(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.begins, self.ends = [], []

            def on_train_batch_begin(self, batch, logs=None):
                self.begins.append(batch)

            def on_train_batch_end(self, batch, logs=None):
                self.ends.append(batch)

        return _Batches()


def train(per_call: int, epochs: int = 2, hooks=loop.Hooks(), start=loop.Position()):
    """Trains `model()` for `epochs` epochs, `per_call` steps a call: (model, epoch logs,
    the batch callback)."""
    m = model()
    train_ds, val_ds = data()
    cfg = StageConfig(name="s", epochs=epochs, learning_rate=0.05, optimizer="adam",
                      early_stopping=EarlyStoppingConfig(monitor="val_loss", patience=10))
    batches = Batches()
    steps, _, callbacks = open_stage(m, StagePlan.single(cfg), get_task("classification"), 10,
                                     [batches], False, 0, steps_per_execution=per_call)
    callbacks.on_train_begin()
    logs = loop.run_epochs(steps, epochs, lambda e: train_ds, val_ds, callbacks, start,
                           hooks=hooks)
    return m, logs, batches


@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_several_steps_a_call_train_exactly_as_one_step_a_call(mode, request):
    if mode == "eager":
        request.getfixturevalue("eager")
    one, logs_one, _ = train(1)
    four, logs_four, batches = train(4)
    for a, b in zip(one.get_weights(), four.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert len(logs_one) == len(logs_four) == 2
    for a, b in zip(logs_one, logs_four):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k
    # The optimizer counts the steps run, no more: reaching the end of an epoch's data is not
    # a step (the schedule and Adam's bias correction read this count).
    assert int(one.optimizer.iterations) == int(four.optimizer.iterations) == 20
    # Callbacks once a call: 10 batches are calls of 4, 4 and 2 steps, every epoch.
    assert batches.begins == [0, 4, 8] * 2
    assert batches.ends == [3, 7, 9] * 2


def test_step_checkpoints_and_stop_requests_fall_on_call_boundaries():
    positions = []
    hooks = loop.Hooks(checkpoint=lambda at: positions.append((at.epoch, at.step)),
                       every_steps=3)
    _, _, batches = train(4, hooks=hooks)
    # Calls end at every step checkpoint (3, 6, 9 steps into the stage...) and epoch end.
    assert positions == [(0, 3), (0, 6), (0, 9), (1, 0), (1, 2), (1, 5), (1, 8), (2, 0)]
    assert batches.ends == [2, 5, 8, 9, 1, 4, 7, 9]

    from tftune.runtime.preemption import Preempted

    calls = iter(range(100))
    stop = loop.Hooks(checkpoint=lambda at: positions.append(("stop", at.epoch, at.step)),
                      stop_requested=lambda: next(calls) == 1)  # asked during the 2nd call
    positions.clear()
    with pytest.raises(Preempted):
        train(4, hooks=stop)
    assert positions == [("stop", 0, 8)]


def test_a_run_resumed_mid_epoch_with_several_steps_a_call_ends_as_the_uninterrupted_one():
    whole, logs, _ = train(4)
    from tftune.runtime.preemption import Preempted

    # Stop after the first call (4 steps) and continue from there in a new stage whose
    # weights, optimizer and metric sums are the stopped one's: here, checked by training
    # the first part in the same process and skipping it when resuming is the loop's job
    # (`start`); the runner's checkpoint round trip is tested in test_resume.py.
    m = model()
    train_ds, val_ds = data()
    cfg = StageConfig(name="s", epochs=2, learning_rate=0.05, optimizer="adam",
                      early_stopping=EarlyStoppingConfig(monitor="val_loss", patience=10))
    steps, _, callbacks = open_stage(m, StagePlan.single(cfg), get_task("classification"), 10,
                                     [], False, 0, steps_per_execution=4)
    callbacks.on_train_begin()
    asked = iter([True])
    with pytest.raises(Preempted):
        loop.run_epochs(steps, 2, lambda e: train_ds, val_ds, callbacks,
                        hooks=loop.Hooks(stop_requested=lambda: next(asked, False)))
    resumed = loop.run_epochs(steps, 2, lambda e: train_ds, val_ds, callbacks,
                              loop.Position(0, 4))
    for a, b in zip(whole.get_weights(), m.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert resumed[-1]["val_loss"] == pytest.approx(logs[-1]["val_loss"], rel=1e-6)


@pytest.mark.parametrize(
    "setting, cached, train_indices, expected",
    [
        ("auto", True, (), CACHED_HEAD_STEPS_PER_CALL),
        ("auto", True, (3,), 1),   # a backbone group on the cache: steps cost real work
        ("auto", False, (), 1),    # uncached head: the backbone's forward pass every step
        (5, False, (0, 1), 5),
    ],
)
def test_auto_steps_per_execution(setting, cached, train_indices, expected):
    plan = types.SimpleNamespace(train_indices=train_indices)
    data = types.SimpleNamespace(cached=cached)
    assert steps_per_execution(setting, plan, data) == expected
