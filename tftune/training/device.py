"""Device policy: the dtype policy, XLA and loss scaling per accelerator, and how progress is
shown, per machine.

`choose_precision` is a pure function of a `DeviceDescription` (what kind of device trains,
the GPUs' compute capabilities, whether the CPU has native bfloat16) and the recipe's
`train.mixed_precision` / `train.jit_compile`; `describe_device` is the one adapter that
reads the description from TensorFlow. `auto` means:

| device                               | dtype policy     | loss scaling | XLA |
|--------------------------------------|------------------|--------------|-----|
| TPU                                  | mixed_bfloat16   | no           | on (TPUStrategy compiles every step) |
| GPUs, all compute capability >= 8.0  | mixed_bfloat16   | no           | on  |
| GPUs, any of compute capability 7.x  | mixed_float16    | dynamic      | on  |
| GPUs, any below 7.0 (or unknown)     | float32          | no           | on  |
| CPU with AVX512_BF16 / AMX, text     | mixed_bfloat16   | no           | off |
| other CPUs                           | float32          | no           | off |

Several GPUs of different generations get the policy all of them run well (the oldest
decides). XLA is off on CPU because it measured 1.1-9x slower than graph mode there for
every model tried. Explicit settings (`off`, `bfloat16`, `float16`, `on`) win over `auto`,
except that a TPU has no float16 (an error) and always compiles with XLA.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Optional

from tftune.errors import ConfigError

KINDS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class DeviceDescription:
    """What trains: `kind` cpu | gpu | tpu; for GPUs their compute capabilities ((major,
    minor), None where TensorFlow does not report one); for a CPU whether it computes
    bfloat16 natively (AVX512_BF16 or AMX)."""

    kind: str = "cpu"
    gpu_capabilities: tuple = ()
    cpu_bf16: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Unknown device kind {self.kind!r}. Expected one of: "
                             f"{', '.join(KINDS)}. Received: kind={self.kind!r}")

    def label(self) -> str:
        if self.kind == "tpu":
            return "TPU"
        if self.kind == "gpu":
            caps = ", ".join("unknown" if c is None else f"{c[0]}.{c[1]}"
                             for c in self.gpu_capabilities)
            return f"{len(self.gpu_capabilities)} GPU(s), compute capability {caps}"
        return "CPU" + (" with native bfloat16" if self.cpu_bf16 else "")


@dataclasses.dataclass(frozen=True)
class Precision:
    """What a run computes with: the Keras dtype `policy`, whether steps are compiled with
    XLA (`jit_compile`), whether the loss is scaled (dynamic loss scaling, float16 only),
    and `reason`: why, in words for the run log."""

    policy: str
    jit_compile: bool
    loss_scaling: bool
    reason: str

    def describe(self) -> str:
        return (f"Precision: {self.policy}"
                + (" with dynamic loss scaling" if self.loss_scaling else "")
                + f", XLA {'on' if self.jit_compile else 'off'} ({self.reason})")


def _auto_policy(device: DeviceDescription, modality: str) -> tuple[str, str]:
    """(dtype policy, why) for `mixed_precision: auto`."""
    if device.kind == "tpu":
        return "mixed_bfloat16", "TPU: bfloat16 matrix units"
    if device.kind == "gpu":
        caps = device.gpu_capabilities
        several = len(set(caps)) > 1
        if not caps or any(c is None for c in caps):
            return "float32", "GPU compute capability unknown: float32 to be safe"
        oldest = min(caps)
        if oldest < (7, 0):
            why = f"compute capability {oldest[0]}.{oldest[1]} < 7.0 has no tensor cores"
            return "float32", why + (" (the oldest GPU decides)" if several else "")
        if oldest < (8, 0):
            why = (f"compute capability {oldest[0]}.{oldest[1]}: float16 tensor cores, "
                   f"no fast bfloat16")
            return "mixed_float16", why + (" (the oldest GPU decides)" if several else "")
        return "mixed_bfloat16", (f"compute capability {oldest[0]}.{oldest[1]} >= 8.0: "
                                  f"bfloat16 tensor cores, no loss scaling needed")
    if modality == "text" and device.cpu_bf16:
        return "mixed_bfloat16", "CPU with native bfloat16, a transformer"
    if device.cpu_bf16:
        return "float32", "CPU: no bfloat16 gain measured for CNNs"
    return "float32", "CPU without native bfloat16"


def choose_precision(mixed_precision: str, jit_compile: str, modality: str,
                     device: DeviceDescription) -> Precision:
    """The run's `Precision` for `train.mixed_precision` (auto | off | bfloat16 | float16)
    and `train.jit_compile` (auto | on | off) on `device`, for a `modality` (image | text)
    model. Pure: the table in this module's docstring."""
    reasons = []
    if mixed_precision == "auto":
        policy, why = _auto_policy(device, modality)
        reasons.append(f"auto: {why}")
    elif mixed_precision == "off":
        policy = "float32"
        reasons.append("mixed_precision off")
    elif mixed_precision in ("bfloat16", "float16"):
        policy = f"mixed_{mixed_precision}"
        reasons.append(f"mixed_precision {mixed_precision}")
        if mixed_precision == "float16" and device.kind == "tpu":
            raise ConfigError(
                "Invalid value for 'train.mixed_precision' on a TPU: TPUs compute in "
                "bfloat16, not float16. Expected one of: auto, off, bfloat16. Received: "
                "mixed_precision='float16'")
    else:
        raise ConfigError(f"Unknown mixed_precision setting {mixed_precision!r}. Expected one "
                          f"of: auto, off, bfloat16, float16. Received: {mixed_precision!r}")

    if device.kind == "tpu":
        jit = True
        reasons.append("TPUStrategy compiles every step with XLA"
                       + (" (jit_compile off does not apply)" if jit_compile == "off" else ""))
    elif jit_compile == "auto":
        jit = device.kind == "gpu"
        if not jit:
            reasons.append("XLA auto: off on CPU, slower there")
    elif jit_compile in ("on", "off"):
        jit = jit_compile == "on"
    else:
        raise ConfigError(f"Unknown jit_compile setting {jit_compile!r}. Expected one of: "
                          f"auto, on, off. Received: {jit_compile!r}")
    return Precision(policy, jit, policy == "mixed_float16", "; ".join(reasons))


def resume_conflict(precision: Precision, optimizer_layout) -> Optional[str]:
    """Why a checkpoint taken mid-stage cannot resume under `precision`, or None.
    `optimizer_layout` is the checkpoint's optimizer variables ([[path, shape], ...], empty
    at a stage boundary, where the next stage's optimizer starts fresh): float16 loss
    scaling adds the scale and its step counter to them, so a run checkpointed with it
    resumes only with it, and one without it only without (`mixed_precision: auto` picks
    per device: a V100's float16 run resumed on an A100 would be bfloat16)."""
    if not optimizer_layout:
        return None
    scaled = any(str(path).endswith("dynamic_scale") for path, *_ in optimizer_layout)
    if scaled == precision.loss_scaling:
        return None
    was = "float16 with loss scaling" if scaled else "without float16 loss scaling"
    return (f"its checkpoint was taken mid-stage {was}, and here the run would compute in "
            f"{precision.policy} ({precision.reason}): the stage's optimizer state does not "
            f"carry over. Resume on the same kind of accelerator as before, or from a "
            f"checkpoint at a stage boundary.")


# -- the adapter: TensorFlow's view of this machine ---------------------------------------


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_capabilities() -> tuple:
    """The compute capability of every GPU TensorFlow sees ((major, minor), or None when
    its details do not say: e.g. a ROCm GPU)."""
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            cap = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        except Exception:  # details are best effort in TensorFlow
            cap = None
        caps.append(tuple(int(v) for v in cap) if cap else None)
    return tuple(caps)


def describe_device(distribution_kind: Optional[str] = None) -> DeviceDescription:
    """This machine as `choose_precision` sees it: a TPU when the run's distribution is a
    TPUStrategy (`distribution_kind == 'tpu'`) or TensorFlow lists a TPU, else the GPUs it
    lists with their compute capabilities, else the CPU."""
    import tensorflow as tf

    if distribution_kind == "tpu" or tf.config.list_logical_devices("TPU"):
        return DeviceDescription("tpu")
    caps = gpu_capabilities()
    if caps:
        return DeviceDescription("gpu", caps)
    return DeviceDescription("cpu", cpu_bf16=cpu_has_native_bf16())


def model_supports_jit(model) -> bool:
    """Whether every layer of `model` can be compiled with XLA (a layer says so with
    `supports_jit = False`, as Keras's own `jit_compile='auto'` checks)."""
    return all(getattr(layer, "supports_jit", True) for layer in model._flatten_layers())


def run_jit(precision: Precision, model, echo=print) -> bool:
    """`precision.jit_compile` for `model`: off (said in the log) when a layer cannot be
    compiled with XLA."""
    if precision.jit_compile and not model_supports_jit(model):
        echo("XLA off: a layer of the model does not support XLA compilation (supports_jit).")
        return False
    return precision.jit_compile


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
