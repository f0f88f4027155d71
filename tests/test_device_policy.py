"""Device policy: XLA off on CPU (measured slower here for every model tried) and `auto` on
accelerators; the mixed-precision setting picks the Keras dtype policy."""

from __future__ import annotations

import pytest

from tftune.training import device as train_mod


@pytest.mark.parametrize("accelerator, setting, expected", [
    (False, "auto", False), (True, "auto", "auto"),
    (False, "on", True), (True, "off", False),
])
def test_jit_compile(monkeypatch, accelerator, setting, expected):
    monkeypatch.setattr(train_mod, "has_accelerator", lambda: accelerator)
    assert train_mod.jit_setting(setting) == expected


@pytest.mark.parametrize("accelerator, bf16_cpu, setting, modality, expected", [
    (False, True, "auto", "text", "mixed_bfloat16"),
    (False, True, "auto", "image", "float32"),       # no gain for CNNs measured here
    (False, False, "auto", "text", "float32"),       # no native bf16: emulated, slower
    (True, True, "auto", "text", "float32"),
    (False, False, "bfloat16", "image", "mixed_bfloat16"),
    (True, False, "float16", "text", "mixed_float16"),
    (False, True, "off", "text", "float32"),
])
def test_mixed_precision_policy(monkeypatch, accelerator, bf16_cpu, setting, modality, expected):
    monkeypatch.setattr(train_mod, "has_accelerator", lambda: accelerator)
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: bf16_cpu)
    assert train_mod.mixed_precision_policy(setting, modality) == expected

