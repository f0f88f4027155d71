"""`train.average: ema`: an exponential moving average of the trained weights, validated,
early-stopped and restored in place of the raw weights, and resumed exactly."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from helpers import (
    assert_same_run,
    make_image_folder,
    resume_recipe,
    save_tiny_cnn,
    sigterm_at,
)
from tftune.config import config_from_dict
from tftune.errors import ConfigError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("average")
    return make_image_folder(root / "images"), save_tiny_cnn(root / "cnn.keras")


class TrainedWeights(keras.callbacks.Callback):
    """The trained variables' values after every step (what EMA averages) and at every
    epoch's end (what a soup averages)."""

    def __init__(self):
        super().__init__()
        self.after_step, self.epochs = [], []

    def _values(self):
        return [v.numpy().copy() for v in self.model.trainable_variables]

    def on_train_batch_end(self, batch, logs=None):
        self.after_step.append(self._values())

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(self._values())


@pytest.mark.usefixtures("eager")
def test_the_kept_weights_are_the_moving_average_of_the_steps(tmp_path, data):
    """One stage, one epoch, one step a call: what the stage ends with is
    avg_1 = w_1, avg_k = m avg_(k-1) + (1 - m) w_k over the raw weights after each step."""
    from tftune.training.runner import train

    folder, cnn = data
    recipe = resume_recipe(folder, cnn, tmp_path, average="ema", ema_momentum=0.6,
                           steps_per_execution=1)
    recipe["stages"] = recipe["stages"][:1]
    recipe["stages"][0]["epochs"] = 1
    recorder = TrainedWeights()
    result = train(config_from_dict(recipe), callbacks=[recorder], echo=lambda _: None)
    steps = recorder.after_step
    assert len(steps) == 4  # 30 training images, batches of 8
    average = steps[0]
    for raw in steps[1:]:
        average = [0.6 * a + 0.4 * w for a, w in zip(average, raw)]
    head = result.model.get_layer("head_classifier")
    kept = [head.kernel.numpy(), head.bias.numpy()]
    expected = average[-2:]  # the head's kernel and bias are the suffix's last variables
    assert [e.shape for e in expected] == [k.shape for k in kept]
    for k, e, raw in zip(kept, expected, steps[-1][-2:]):
        np.testing.assert_allclose(k, e, atol=1e-5)
        assert np.abs(k - raw).max() > 1e-4  # and not the last raw weights


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("average", ["ema", "greedy"])
def test_an_averaged_run_resumes_exactly(tmp_path, data, monkeypatch, average):
    """SIGTERM inside stage 2, after an epoch end: EMA swapped the averages in for validation
    and back, a soup's epochs so far are checkpointed with the stage. The resumed run ends as
    the uninterrupted one does, soup included."""
    from tftune.runtime.preemption import Preempted
    from tftune.training.runner import train

    folder, cnn = data

    def cfg(out):
        return config_from_dict(resume_recipe(folder, cnn, out, average=average, ema_momentum=0.8))

    reference = train(cfg(tmp_path / "ref"), echo=lambda _: None)
    sigterm_at(monkeypatch, "step", 15)  # stage 2, epoch 2, step 3
    with pytest.raises(Preempted, match="stage 2/2 'top', epoch 2, step 3"):
        train(cfg(tmp_path / "cut"), echo=lambda _: None)
    monkeypatch.undo()
    resumed = train(cfg(tmp_path / "cut"), resume=True, echo=lambda _: None)
    assert_same_run(resumed, reference)
    if average == "greedy":
        assert all(s["soup"] is not None for s in reference.metrics["stages"])
        assert ([s["soup"] for s in resumed.metrics["stages"]]
                == [s["soup"] for s in reference.metrics["stages"]])


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("kind", ["uniform", "greedy"])
def test_a_soup_is_the_mean_of_its_epochs_and_is_kept_only_if_not_worse(tmp_path, data, kind):
    from tftune.training.runner import train

    folder, cnn = data
    recipe = resume_recipe(folder, cnn, tmp_path, average=kind, average_epochs=2)
    recipe["stages"] = [{**recipe["stages"][0], "epochs": 4,
                         "early_stopping": {"monitor": "val_accuracy", "patience": 9}}]
    recorder = TrainedWeights()
    lines = []
    result = train(config_from_dict(recipe), callbacks=[recorder], echo=lines.append)
    soup = result.metrics["stages"][0]["soup"]
    assert soup is not None and len(recorder.epochs) == 4
    assert any(f"{kind} soup of epochs" in l for l in lines), lines
    head = result.model.get_layer("head_classifier")
    kept = [head.kernel.numpy(), head.bias.numpy()]
    if soup["kept"]:
        assert len(soup["epochs"]) >= 2 and soup["value"] >= soup["best_single"]
        expected = [np.mean([recorder.epochs[e - 1][j] for e in soup["epochs"]], axis=0)
                    for j in (-2, -1)]
        assert result.metrics["stages"][0]["best_value"] == pytest.approx(soup["value"])
    else:  # the best single epoch's weights
        assert soup["value"] < soup["best_single"]
        best = result.metrics["stages"][0]["best_epoch"]
        expected = [recorder.epochs[best - 1][j] for j in (-2, -1)]
    for k, e in zip(kept, expected):
        np.testing.assert_allclose(k, e, atol=1e-6)
    if kind == "uniform":
        assert len(soup["epochs"]) == 2


def test_the_settings_are_checked(tmp_path, data):
    from tftune.training.runner import train

    folder, cnn = data
    recipe = resume_recipe(folder, cnn, tmp_path, average="greedy")
    recipe["stages"][0]["early_stopping"]["monitor"] = "loss"
    with pytest.raises(ConfigError, match="the monitor must be a validation metric"):
        train(config_from_dict(recipe), echo=lambda _: None)
    with pytest.raises(ConfigError, match=r"'train.average_epochs'. Expected an integer >= 2"):
        config_from_dict({"train": {"average_epochs": 1}})
    with pytest.raises(ConfigError, match=r"'train.average'.*one of: 'none', 'ema'"):
        config_from_dict({"train": {"average": "swa"}})
    with pytest.raises(ConfigError, match=r"'train.ema_momentum'. Expected a number in \[0, 1\)"):
        config_from_dict({"train": {"ema_momentum": 1.0}})


@pytest.mark.parametrize(("kind", "held", "passes"), [
    ("greedy", 3, 2), ("uniform", 3, 1), ("greedy", 1, 0), ("none", 3, 0), ("ema", 3, 0),
])  # fmt: skip
def test_the_time_limit_counts_the_validation_passes_make_soup_takes(kind, held, passes):
    """`average.trials` (what the time limit reserves for a soup) is the number of times
    `make_soup` validates, on snapshots of `held` epochs."""
    from types import SimpleNamespace

    from tftune.training import average

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    snaps = average.Snapshots("val_accuracy")
    for epoch in range(held):
        snaps.epochs.append(epoch)
        snaps.values.append(0.5 + 0.1 * epoch)
        snaps.weights.append([np.full(w.shape, epoch, "float32") for w in model.get_weights()])
    calls = []
    task = SimpleNamespace(mode=lambda monitor: "max", better=lambda monitor, a, b: a > b)
    if kind in average.KINDS:
        average.make_soup(kind, model, lambda: calls.append(1) or 0.5, snaps, task)
    assert average.trials(kind, held) == len(calls) == passes
