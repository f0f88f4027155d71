"""Device policy: XLA, mixed precision and how progress is shown, per machine."""

from __future__ import annotations

import sys


def has_accelerator() -> bool:
    """Whether TensorFlow sees a GPU or a TPU."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def jit_setting(setting: str):
    """`train.jit_compile` as Keras's `jit_compile`: XLA measured 1.1-9x slower than graph
    mode on CPU for every model tried, so `auto` is off there."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return "auto" if has_accelerator() else False


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision_policy(setting: str, modality: str) -> str:
    """The Keras dtype policy for `train.mixed_precision`.

    `auto` picks `mixed_bfloat16` for transformers on a CPU with native bfloat16 (MiniLM
    steps measured 0.49 -> 0.38 s here; no gain for CNNs), and float32 otherwise.
    """
    if setting == "off":
        return "float32"
    if setting in ("bfloat16", "float16"):
        return f"mixed_{setting}"
    if has_accelerator():
        return "float32"
    return "mixed_bfloat16" if modality == "text" and cpu_has_native_bf16() else "float32"


def verbosity(setting: str) -> tuple[int, bool]:
    """(Keras progress-bar verbose, whether to print tftune's one line per epoch)."""
    if setting == "bar" or (setting == "auto" and sys.stdout.isatty()):
        return 1, False
    if setting == "quiet":
        return 0, False
    return 0, True


CACHED_HEAD_STEPS_PER_CALL = 32
STATIC_STEPS_PER_CALL = 8


def steps_per_execution(setting, plan, data, static: bool = False) -> int:
    """`train.steps_per_execution` for the stage `plan` trains on `data` (its `StageData`):
    `auto` is 32 steps a call for a head trained on cached features, whose step (a few small
    products) costs less than the Python and runtime work of a call; 8 with static shapes
    (`train.static_shapes`: on a TPU a call's host round trip is what a step must not wait
    for; the loop ends an epoch inside a call and resumes at call boundaries exactly); and 1
    elsewhere."""
    if setting != "auto":
        return int(setting)
    if data.cached and not plan.train_indices:
        return CACHED_HEAD_STEPS_PER_CALL
    return STATIC_STEPS_PER_CALL if static else 1
