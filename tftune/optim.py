"""Optimizers and learning-rate schedules for one stage."""

from __future__ import annotations

import math

import keras
from keras import ops

from tftune.config import StageConfig


@keras.saving.register_keras_serializable(package="tftune")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then `constant`, `cosine` (to 0) or
    `linear` (to 0) decay until `total_steps`."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, decay: str = "constant"):
        self.peak = float(peak)
        self.total_steps = int(max(total_steps, 1))
        self.warmup_steps = int(max(warmup_steps, 0))
        self.decay = decay

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak, "float32")
        warm = float(self.warmup_steps)
        warmup_lr = peak * (step + 1.0) / max(warm, 1.0)
        span = max(float(self.total_steps) - warm, 1.0)
        progress = ops.clip((step - warm) / span, 0.0, 1.0)
        if self.decay == "cosine":
            after = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.decay == "linear":
            after = peak * (1.0 - progress)
        else:
            after = peak
        if self.warmup_steps == 0:
            return after * ops.ones_like(step)
        return ops.where(step < warm, warmup_lr, after)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
        }


def build_optimizer(stage: StageConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """A fresh optimizer for `stage`, with its warmup/decay schedule over the stage's steps."""
    total = max(1, stage.epochs * steps_per_epoch)
    warmup = int(round(stage.warmup * total)) if stage.warmup < 1 else int(stage.warmup)
    lr = (
        stage.learning_rate
        if stage.schedule == "constant" and warmup == 0
        else WarmupDecay(stage.learning_rate, total, warmup, stage.schedule)
    )
    if stage.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    if stage.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=stage.weight_decay)
    # Decay weights only: not biases, norms' scales and shifts, or embeddings' norms.
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "moving_"])
    return opt
