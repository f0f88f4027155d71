"""Optimizers and learning-rate schedules for one stage.

Keras 3 optimizers take one learning rate for all variables. `GroupLR` optimizers (AdamW,
Adam, SGD) scale the step of each variable by its layer group's multiplier, inside the
optimizer's own `update_step`: so they work with any schedule, with `model.fit`, with
`tf.distribute` (the update runs per replica through `distribution.extended.update`), and they
save and load with the model like any Keras optimizer.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import keras
from keras import ops

from tftune.config import StageConfig
from tftune.errors import ConfigError, did_you_mean

SCHEDULES = ("constant", "cosine", "linear", "slanted_triangular", "one_cycle")
# Decay weights only: not biases, norms' scales and shifts, or BatchNorm statistics.
NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "moving_"]


@keras.saving.register_keras_serializable(package="tftune")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A stage's learning rate as a function of the optimizer's step (so it resumes with it).

    - `constant`, `cosine` (to 0), `linear` (to 0): linear warmup from 0 to `peak` over
      `warmup_steps`, then the decay until `total_steps`.
    - `slanted_triangular` (ULMFiT, Howard & Ruder 2018): a short linear rise from
      `peak / ratio` to `peak` over `warmup_steps` (their `cut_frac` of the steps), then a long
      linear fall back to `peak / ratio`; `ratio` = 32.
    - `one_cycle` (Smith 2018, as in fastai): cosine rise from `peak / 25` to `peak` over
      `warmup_steps`, then cosine annealing to `peak / 25e4`.

    `stretch(at, total)` (the time limit's revision of a stage's length) makes the rest of
    the schedule, from step `at` on, span the steps up to `total` instead: the same curve
    from the same value at `at`, stretched or squeezed, ending where it ended. Stretches are
    kept in a variable (the traced step reads them) and in the config, as (at, old total, new
    total) rows; `stretches` builds the schedule with earlier ones (a resumed stage). Only a
    schedule made `stretchable` (or with stretches) can be stretched after its first call.
    """

    MAX_STRETCHES = 8

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int = 0,
        decay: str = "constant",
        ratio: float = 32.0,
        stretches: Sequence = (),
        stretchable: bool = False,
    ):
        if decay not in SCHEDULES:
            raise ConfigError(
                f"Unknown schedule {decay!r}. Expected one of: {', '.join(SCHEDULES)}."
            )
        self.peak = float(peak)
        self.total_steps = int(max(total_steps, 1))
        self.warmup_steps = int(min(max(warmup_steps, 0), self.total_steps))
        self.decay = decay
        self.ratio = float(ratio)
        self.stretches = [tuple(int(v) for v in row) for row in stretches]
        self._table = None  # the stretches as a variable, read by the traced step
        if stretchable or self.stretches:
            import tensorflow as tf

            self._table = tf.Variable(self._rows(), trainable=False, dtype="float32",
                                      name="schedule_stretches")

    def _rows(self):
        rows = [list(map(float, r)) for r in self.stretches[: self.MAX_STRETCHES]]
        return rows + [[1e12, 1.0, 1.0]] * (self.MAX_STRETCHES - len(rows))  # no-op rows

    def stretch(self, at: int, total: int) -> bool:
        """The rest of the schedule from step `at` spans up to step `total` (see the class
        docstring); False when it cannot (the table is full, or `total` <= `at`)."""
        current = self.stretches[-1][2] if self.stretches else self.total_steps
        if self._table is None or len(self.stretches) >= self.MAX_STRETCHES or total <= at \
                or total == current:
            return False
        self.stretches.append((int(at), int(current), int(total)))
        self._table.assign(self._rows())
        return True

    def _warped(self, step):
        """The step of the unstretched schedule that `step` of the stretched one is at."""
        for k in reversed(range(self.MAX_STRETCHES)):
            at, old, new = self._table[k, 0], self._table[k, 1], self._table[k, 2]
            step = ops.where(step > at, at + (step - at) * (old - at) / ops.maximum(new - at, 1.0),
                             step)
        return step

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self._table is not None:
            step = self._warped(step)
        peak = self.peak
        warm = float(max(self.warmup_steps, 1))
        total = float(self.total_steps)
        rise = ops.clip(step / warm, 0.0, 1.0)  # 0 -> 1 over the warmup
        fall = ops.clip((step - self.warmup_steps) / max(total - self.warmup_steps, 1.0), 0.0, 1.0)
        in_warmup = step < float(self.warmup_steps)
        if self.decay == "slanted_triangular":
            p = ops.where(in_warmup, rise, 1.0 - fall)
            return peak * (1.0 + p * (self.ratio - 1.0)) / self.ratio
        if self.decay == "one_cycle":
            low, final = peak / 25.0, peak / 25.0e4
            up = low + (peak - low) * 0.5 * (1.0 - ops.cos(math.pi * rise))
            down = final + (peak - final) * 0.5 * (1.0 + ops.cos(math.pi * fall))
            return ops.where(in_warmup, up, down)
        if self.decay == "cosine":
            after = peak * 0.5 * (1.0 + ops.cos(math.pi * fall))
        elif self.decay == "linear":
            after = peak * (1.0 - fall)
        else:
            after = peak * ops.ones_like(step)
        if self.warmup_steps == 0:
            return after
        return ops.where(in_warmup, peak * (step + 1.0) / warm, after)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "ratio": self.ratio,
            "stretches": [list(r) for r in self.stretches],
        }


class GroupLR:
    """Mixin for a Keras optimizer: variable `v` steps with `learning_rate * multiplier(v)`.

    `lr_multipliers` maps variable paths (`v.path`) to multipliers; variables not named
    train at 1.0. Decoupled weight decay (`weight_decay`) is scaled the same way, as with
    per-group learning rates in AdamW everywhere else. The multipliers are part of the
    optimizer's config, so a saved model reloads with them.
    """

    def __init__(self, *args, lr_multipliers: Optional[Mapping[str, float]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        self._scales: list[float] = []

    def build(self, variables):
        super().build(variables)
        paths = [v.path for v in variables]
        unknown = set(self.lr_multipliers) - set(paths)
        if unknown:
            raise ValueError(
                f"lr_multipliers name variables the optimizer does not train: "
                f"{', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}"
            )
        self._scales = [self.lr_multipliers.get(p, 1.0) for p in paths]

    def scale_for(self, variable) -> float:
        """The multiplier of a trainable variable (a Python float: fixed while tracing)."""
        if not self._scales:
            return 1.0
        return self._scales[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        scale = self.scale_for(variable)
        lr = ops.cast(learning_rate, variable.dtype)
        if scale != 1.0:
            lr = lr * scale
        if self.weight_decay is not None and self._use_weight_decay(variable):
            wd = ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, variable * wd * lr)
        return super().update_step(gradient, variable, lr)

    def _apply_weight_decay(self, variables):
        # Applied per variable in `update_step`, where the group's multiplier is known.
        return None

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": dict(self.lr_multipliers)}


@keras.saving.register_keras_serializable(package="tftune")
class GroupLRAdamW(GroupLR, keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers (see `GroupLR`)."""


@keras.saving.register_keras_serializable(package="tftune")
class GroupLRAdam(GroupLR, keras.optimizers.Adam):
    """Adam with per-variable learning-rate multipliers (see `GroupLR`)."""


@keras.saving.register_keras_serializable(package="tftune")
class GroupLRSGD(GroupLR, keras.optimizers.SGD):
    """SGD (momentum 0.9 in stages) with per-variable learning-rate multipliers."""


def group_multipliers(
    group_names: Sequence[str],
    train_indices: Sequence[int],
    layer_decay: Optional[float] = None,
    explicit: Optional[Mapping[str, float]] = None,
    where: str = "stage",
) -> dict[str, float]:
    """Multiplier per trained group name. With `layer_decay` d, the head counts as k = 0 and
    the trained group k places below it gets d**k (the top backbone group d, the one under it
    d**2, ...); `explicit` {group name: multiplier} entries win over the decay."""
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ConfigError(
            f"Invalid value for '{where}.layer_decay'. Expected a number in (0, 1]. "
            f"Received: {layer_decay!r}"
        )
    out: dict[str, float] = {}
    n = len(group_names)
    for i in train_indices:
        out[group_names[i]] = layer_decay ** (n - i) if layer_decay is not None else 1.0
    for name, m in (explicit or {}).items():
        if name not in group_names:
            raise ConfigError(
                f"Invalid value for '{where}.lr_multipliers': unknown layer group {name!r}."
                f"{did_you_mean(name, group_names)} Expected group names: {', '.join(group_names)}."
            )
        if not m > 0:
            raise ConfigError(
                f"Invalid value for '{where}.lr_multipliers.{name}'. Expected a number > 0. "
                f"Received: {m!r}"
            )
        if group_names.index(name) in train_indices:
            out[name] = float(m)
    return out


def variable_multipliers(groups, multipliers: Mapping[str, float]) -> dict[str, float]:
    """{variable path: multiplier} for the trainable variables of the groups named."""
    out = {}
    for g in groups:
        m = multipliers.get(g.name)
        if m is None or m == 1.0:
            continue
        for layer in g.layers:
            for v in layer.trainable_weights:
                out[v.path] = m
    return out


def warmup_steps(stage: StageConfig, total: int) -> int:
    """`warmup` < 1 is a fraction of the stage's steps, >= 1 a number of steps; the
    slanted-triangular and one-cycle schedules default to 10% and 25% of the steps."""
    if stage.warmup == 0 and stage.schedule == "slanted_triangular":
        return int(round(0.1 * total))
    if stage.warmup == 0 and stage.schedule == "one_cycle":
        return int(round(0.25 * total))
    return int(round(stage.warmup * total)) if stage.warmup < 1 else int(stage.warmup)


def build_optimizer(
    stage: StageConfig,
    steps_per_epoch: int,
    lr_multipliers: Optional[Mapping[str, float]] = None,
    ema_momentum: Optional[float] = None,
    total_steps: Optional[int] = None,
    stretches: Sequence = (),
    stretchable: bool = False,
) -> keras.optimizers.Optimizer:
    """A fresh optimizer for `stage`, with its warmup/decay schedule over the stage's steps
    (`total_steps`, or its epochs' steps) and `lr_multipliers` ({variable path: multiplier})
    for discriminative learning rates; with `ema_momentum`, it also keeps a moving average
    of the weights (Keras' `use_ema`)."""
    total = max(1, total_steps or stage.epochs * steps_per_epoch)
    warmup = warmup_steps(stage, total)
    lr = (
        stage.learning_rate
        if stage.schedule == "constant" and warmup == 0
        else WarmupDecay(stage.learning_rate, total, warmup, stage.schedule,
                         stretches=stretches, stretchable=stretchable)
    )
    multipliers = dict(lr_multipliers or {})
    ema = {} if ema_momentum is None else {"use_ema": True, "ema_momentum": float(ema_momentum)}
    if stage.optimizer == "sgd":
        return GroupLRSGD(learning_rate=lr, momentum=0.9, lr_multipliers=multipliers, **ema)
    if stage.optimizer == "adam":
        return GroupLRAdam(learning_rate=lr, lr_multipliers=multipliers, **ema)
    opt = GroupLRAdamW(
        learning_rate=lr, weight_decay=stage.weight_decay, lr_multipliers=multipliers, **ema
    )
    opt.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return opt
