"""Device policy: the precision table (dtype policy, loss scaling, XLA) per device description,
explicit settings over `auto`, the CPU's behaviour as before, and the adapter that reads the
description from TensorFlow (mocked: no GPU or TPU here)."""

from __future__ import annotations

import types

import pytest

from tftune.errors import ConfigError
from tftune.training import device as dev
from tftune.training.device import DeviceDescription as D

CPU = D("cpu")
CPU_BF16 = D("cpu", cpu_bf16=True)
TPU = D("tpu")
P100, T4, V100, A100, L4, H100 = (6, 0), (7, 5), (7, 0), (8, 0), (8, 9), (9, 0)


def gpus(*caps):
    return D("gpu", tuple(caps))


# (device, train.mixed_precision, modality) -> (dtype policy, loss scaling)
POLICY_TABLE = [
    # auto on accelerators
    (TPU, "auto", "text", "mixed_bfloat16", False),
    (TPU, "auto", "image", "mixed_bfloat16", False),
    (gpus(V100), "auto", "image", "mixed_float16", True),
    (gpus(T4), "auto", "text", "mixed_float16", True),
    (gpus(A100), "auto", "image", "mixed_bfloat16", False),
    (gpus(L4), "auto", "text", "mixed_bfloat16", False),
    (gpus(H100, H100), "auto", "text", "mixed_bfloat16", False),
    (gpus(P100), "auto", "image", "float32", False),
    (gpus(None), "auto", "image", "float32", False),  # no compute capability reported
    # GPUs of different generations: the oldest decides
    (gpus(A100, V100), "auto", "image", "mixed_float16", True),
    (gpus(H100, T4, A100), "auto", "text", "mixed_float16", True),
    (gpus(A100, P100), "auto", "image", "float32", False),
    (gpus(V100, P100), "auto", "text", "float32", False),
    # auto on CPU: as before (bfloat16 for transformers with native bfloat16 only)
    (CPU_BF16, "auto", "text", "mixed_bfloat16", False),
    (CPU_BF16, "auto", "image", "float32", False),
    (CPU, "auto", "text", "float32", False),
    (CPU, "auto", "image", "float32", False),
    # explicit settings win over auto
    (gpus(A100), "off", "text", "float32", False),
    (TPU, "off", "image", "float32", False),
    (CPU_BF16, "off", "text", "float32", False),
    (gpus(A100), "float16", "image", "mixed_float16", True),
    (gpus(V100), "bfloat16", "image", "mixed_bfloat16", False),
    (gpus(P100), "float16", "text", "mixed_float16", True),
    (CPU, "bfloat16", "image", "mixed_bfloat16", False),
    (CPU, "float16", "text", "mixed_float16", True),
    (TPU, "bfloat16", "text", "mixed_bfloat16", False),
]


@pytest.mark.parametrize("device, setting, modality, policy, scaling", POLICY_TABLE,
                         ids=[f"{d.label()}-{s}-{m}" for d, s, m, *_ in POLICY_TABLE])
def test_precision_policy_table(device, setting, modality, policy, scaling):
    p = dev.choose_precision(setting, "auto", modality, device)
    assert (p.policy, p.loss_scaling) == (policy, scaling)
    assert p.loss_scaling == (p.policy == "mixed_float16")
    assert p.reason  # the run log says why


# (device, train.jit_compile) -> XLA
JIT_TABLE = [
    (CPU, "auto", False), (CPU_BF16, "auto", False),  # XLA measured slower on CPU
    (gpus(V100), "auto", True), (gpus(A100, T4), "auto", True), (gpus(P100), "auto", True),
    (TPU, "auto", True),
    (CPU, "on", True), (gpus(A100), "off", False), (CPU, "off", False),
    (TPU, "off", True),  # TPUStrategy compiles with XLA whatever the setting
]


@pytest.mark.parametrize("device, setting, expected", JIT_TABLE)
def test_xla_table(device, setting, expected):
    p = dev.choose_precision("off", setting, "image", device)
    assert p.jit_compile is expected
    if device.kind == "tpu":
        assert "XLA" in p.reason


def test_mixed_generations_and_choices_are_explained_in_the_log_line():
    p = dev.choose_precision("auto", "auto", "image", gpus(A100, V100))
    line = p.describe()
    assert line.startswith("Precision: mixed_float16 with dynamic loss scaling, XLA on (")
    assert "7.0" in line and "oldest GPU decides" in line
    assert "no tensor cores" in dev.choose_precision("auto", "auto", "image", gpus(P100)).reason
    cpu = dev.choose_precision("auto", "auto", "image", CPU).describe()
    assert cpu == ("Precision: float32, XLA off (auto: CPU without native bfloat16; "
                   "XLA auto: off on CPU, slower there)")


def test_float16_on_a_tpu_is_an_error_naming_the_alternatives():
    with pytest.raises(ConfigError, match="TPUs compute in bfloat16.*auto, off, bfloat16"):
        dev.choose_precision("float16", "auto", "text", TPU)


def test_unknown_settings_and_kinds_are_errors():
    with pytest.raises(ConfigError, match="Expected one of: auto, off, bfloat16, float16"):
        dev.choose_precision("fp16", "auto", "text", CPU)
    with pytest.raises(ConfigError, match="Expected one of: auto, on, off"):
        dev.choose_precision("off", "yes", "text", CPU)
    with pytest.raises(ValueError, match="Expected one of: cpu, gpu, tpu"):
        D("xpu")


# -- the adapter, with TensorFlow's answers mocked ------------------------------------------


def fake_tf(monkeypatch, gpus=(), tpus=(), details=None):
    """TensorFlow's device listing replaced: `gpus` physical GPU names, `tpus` logical TPU
    names, `details(gpu)` what `get_device_details` returns."""
    import tensorflow as tf

    def physical(kind=None):
        return [types.SimpleNamespace(name=n, device_type="GPU") for n in gpus] if kind == "GPU" else []

    def logical(kind=None):
        return [types.SimpleNamespace(name=n) for n in tpus] if kind == "TPU" else []

    monkeypatch.setattr(tf.config, "list_physical_devices", physical)
    monkeypatch.setattr(tf.config, "list_logical_devices", logical)
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        details or (lambda gpu: {}))


def test_describe_device_reads_compute_capabilities(monkeypatch):
    caps = {"/physical_device:GPU:0": {"compute_capability": (8, 0), "device_name": "A100"},
            "/physical_device:GPU:1": {"compute_capability": (7, 0)}}
    fake_tf(monkeypatch, gpus=list(caps), details=lambda gpu: caps[gpu.name])
    assert dev.describe_device() == gpus(A100, V100)
    assert dev.describe_device("mirrored").kind == "gpu"
    assert dev.describe_device("tpu") == TPU  # the strategy says TPU


def test_describe_device_without_details_and_on_tpu_and_cpu(monkeypatch):
    def broken(gpu):
        raise RuntimeError("no details")

    fake_tf(monkeypatch, gpus=["/physical_device:GPU:0"], details=broken)
    assert dev.describe_device() == gpus(None)
    fake_tf(monkeypatch, tpus=["/device:TPU:0"])
    assert dev.describe_device() == TPU
    fake_tf(monkeypatch)
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.describe_device() == CPU_BF16


def test_a_model_with_a_layer_xla_cannot_compile_turns_xla_off():
    import keras

    inputs = keras.Input((2,))
    layer = keras.layers.Dense(1)
    model = keras.Model(inputs, layer(inputs))
    on = dev.choose_precision("off", "auto", "image", gpus(A100))
    lines = []
    assert dev.run_jit(on, model, lines.append) is True and not lines
    layer.supports_jit = False
    assert dev.run_jit(on, model, lines.append) is False
    assert "supports_jit" in lines[0]


def test_a_mid_stage_checkpoint_resumes_only_with_the_loss_scaling_it_was_taken_with():
    scaled = [["optimizer/iterations", []], ["loss_scale_optimizer/dynamic_scale", []]]
    plain = [["adamw/iterations", []], ["adamw/dense_kernel_momentum", [4, 2]]]
    v100 = dev.choose_precision("auto", "auto", "image", gpus(V100))
    a100 = dev.choose_precision("auto", "auto", "image", gpus(A100))
    assert dev.resume_conflict(v100, scaled) is None
    assert dev.resume_conflict(a100, plain) is None
    assert dev.resume_conflict(a100, []) is None and dev.resume_conflict(v100, None) is None
    message = dev.resume_conflict(a100, scaled)
    assert "mid-stage float16 with loss scaling" in message and "mixed_bfloat16" in message
    assert "same kind of accelerator" in message
    assert "without float16 loss scaling" in dev.resume_conflict(v100, plain)
