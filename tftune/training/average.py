"""Weight soups of a stage's epochs (`train.average: uniform | greedy`).

Each epoch's trained weights are kept (`Snapshots`, checkpointed with the stage so a resumed
stage has them too). When the stage ends:

- `uniform`: the mean of the best `train.average_epochs` epochs' weights (by the stage's
  early-stopping monitor);
- `greedy` (Wortsman et al. 2022, "Model soups"; AutoGluon's greedy soup): start from the best
  epoch, then try the others from best to worst, keeping each one whose addition does not make
  the soup worse on the validation split.

The stage keeps the soup (its validation value becomes the stage's) when it is at least as good
as the best single epoch; otherwise the best epoch's weights stay, and the log says so. (A
uniform soup is kept only then too: averaging epochs far apart can land off the loss basin.)
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np

KINDS = ("uniform", "greedy")


def snapshot(model) -> list:
    """The trained weights of `model` (its trainable variables), as numpy arrays."""
    return [np.array(v.numpy(), copy=True) for v in model.trainable_variables]


def assign(model, weights) -> None:
    for v, w in zip(model.trainable_variables, weights):
        v.assign(w)


def mean(snapshots: list) -> list:
    return [np.mean(np.stack(parts), axis=0).astype(parts[0].dtype) for parts in zip(*snapshots)]


class Snapshots(keras.callbacks.Callback):
    """Keeps every epoch's trained weights and its monitor value: `epochs`, `values`, `weights`
    (one list of arrays an epoch, aligned)."""

    def __init__(self, monitor: str):
        super().__init__()
        self.monitor = monitor
        self.epochs: list[int] = []
        self.values: list[float] = []
        self.weights: list[list] = []

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        self.epochs.append(int(epoch))
        self.values.append(float(value))
        self.weights.append(snapshot(self.model))

    def state(self) -> dict:
        return {"epochs": list(self.epochs), "values": list(self.values)}

    def load(self, state: dict, arrays: list) -> None:
        self.epochs, self.values = list(state["epochs"]), list(state["values"])
        self.weights = list(arrays)


@dataclasses.dataclass
class Soup:
    epochs: list  # 1-based epochs in the soup
    value: float  # its validation value of the monitor
    best_single: float
    kept: bool  # whether the model now holds the soup


def trials(kind: str, held: int) -> int:
    """Validation passes `make_soup` takes for a `kind` soup of `held` epochs' weights: one
    for each epoch a greedy soup tries after the best, one for a uniform soup, none for fewer
    than two epochs."""
    if kind not in KINDS or held < 2:
        return 0
    return held - 1 if kind == "greedy" else 1


def make_soup(kind: str, model, evaluate, snaps: Snapshots, task, size: int = 3) -> Optional[Soup]:
    """Builds the `kind` soup from `snaps` into `model` (the fitted model, holding the best
    epoch's weights on entry); `evaluate()` gives the monitor's validation value of what the
    model holds. Keeps the soup only when it is not worse than the best epoch."""
    if len(snaps.weights) < 2:
        return None
    monitor = snaps.monitor
    better_first = sorted(range(len(snaps.values)), key=lambda i: snaps.values[i],
                          reverse=task.mode(monitor) == "max")
    best = better_first[0]
    best_value = snaps.values[best]

    def not_worse(a, b):
        return not task.better(monitor, b, a)

    if kind == "uniform":
        chosen = better_first[:max(2, size)]
        assign(model, mean([snaps.weights[i] for i in chosen]))
        value = evaluate()
    else:
        chosen, value = [best], best_value
        for i in better_first[1:]:
            assign(model, mean([snaps.weights[j] for j in chosen + [i]]))
            trial = evaluate()
            if not_worse(trial, value):
                chosen, value = chosen + [i], trial
        assign(model, mean([snaps.weights[j] for j in chosen]))
    kept = len(chosen) > 1 and not_worse(value, best_value)
    if not kept:
        assign(model, snaps.weights[best])
    return Soup(sorted(snaps.epochs[i] + 1 for i in chosen), value, best_value, kept)
