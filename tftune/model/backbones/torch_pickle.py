"""Read PyTorch-saved state dicts into numpy arrays without importing torch.

`torch.save` writes one of two container formats:

* **zip** (torch >= 1.6, the default): a zip archive holding ``<name>/data.pkl`` (the pickled
  object) and one entry ``<name>/data/<key>`` with the raw little-endian bytes of each storage.
* **legacy** (``_use_new_zipfile_serialization=False`` and torch < 1.6): five pickles in a row
  (magic number, protocol version, sys info, the object, the list of storage keys), followed by
  each storage in that key order as an int64 element count and the raw little-endian bytes.

In both formats the object pickle refers to storages through persistent ids and rebuilds each
tensor with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``. This module
unpickles with an allow-list of exactly those globals (plus ``collections.OrderedDict`` and the
``torch.*Storage`` types), so a file that tries to import anything else is rejected instead of
run. Tensors come back as owned, C-contiguous numpy arrays with the torch shape.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from tftune.errors import AssetError

__all__ = ["load_torch_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_BFLOAT16 = "bfloat16"  # numpy has no bfloat16: stored as uint16, widened to float32 on output


@dataclass(frozen=True)
class _StorageType:
    """A ``torch.<Name>Storage`` class as seen by the unpickler: a name and an element type."""

    name: str
    dtype: np.dtype
    bfloat16: bool = False

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize


_STORAGE_TYPES: dict[str, _StorageType] = {
    name: _StorageType(name, np.dtype(dt).newbyteorder("<"), bfloat16=(name == "BFloat16Storage"))
    for name, dt in {
        "FloatStorage": np.float32,
        "DoubleStorage": np.float64,
        "HalfStorage": np.float16,
        "BFloat16Storage": np.uint16,
        "LongStorage": np.int64,
        "IntStorage": np.int32,
        "ShortStorage": np.int16,
        "CharStorage": np.int8,
        "ByteStorage": np.uint8,
        "BoolStorage": np.bool_,
    }.items()
}


@dataclass
class _Storage:
    """One storage: its element type, its size in elements and (once read) its flat data."""

    kind: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None
    # Legacy "storage views": (root storage, element offset into it).
    view_of: tuple[_Storage, int] | None = None

    def array(self) -> np.ndarray:
        """The flat element array, resolving legacy views onto their root storage."""
        flat: np.ndarray | None
        if self.view_of is not None:
            root, offset = self.view_of
            flat = root.array()[offset : offset + self.numel]
        else:
            flat = self.data
        if flat is None:
            raise AssetError(f"torch storage {self.key!r} is referenced but its data is missing")
        if flat.size < self.numel:
            raise AssetError(
                f"torch storage {self.key!r} is truncated: {flat.size} of {self.numel} elements"
            )
        return flat


@dataclass
class _TensorRef:
    """A tensor recorded during unpickling and materialized once the storage bytes are known."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self, key: str) -> np.ndarray:
        """Copy the (possibly strided) view described by this reference into a new array."""
        flat = self.storage.array()
        size, stride, offset = self.size, self.stride, self.offset
        if len(size) != len(stride) or offset < 0 or any(v < 0 for v in (*size, *stride)):
            raise AssetError(
                f"tensor {key!r} has an invalid layout: size={size}, stride={stride}, "
                f"offset={offset}"
            )
        if 0 in size:
            out = np.empty(size, dtype=flat.dtype)
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            if last >= flat.size:
                raise AssetError(
                    f"tensor {key!r} reads element {last} of a storage with only "
                    f"{flat.size} elements (corrupt file?)"
                )
            count = int(np.prod(size, dtype=np.int64))
            if _is_contiguous(size, stride):
                out = flat[offset : offset + count].reshape(size).copy()
            else:
                view = np.lib.stride_tricks.as_strided(
                    flat[offset:],
                    shape=size,
                    strides=tuple(s * flat.itemsize for s in stride),
                    writeable=False,
                )
                out = np.array(view, copy=True, order="C")
        out = out.astype(out.dtype.newbyteorder("="), copy=False)
        if self.storage.kind.bfloat16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _is_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether `stride` is the row-major layout of `size` (dims of length 1 may have any stride)."""
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records the view, ignores autograd."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
        raise AssetError("a tensor in the file is not backed by a storage record")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(
    storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> _TensorRef:
    """Stand-in for the older ``torch._utils._rebuild_tensor``."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _TensorRef, requires_grad: bool, backward_hooks: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is just its data here."""
    del requires_grad, backward_hooks
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): kind for name, kind in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the allow-listed globals and torch storage ids."""

    def __init__(
        self, file: IO[bytes], persistent_load: Callable[[Any], Any] | None = None
    ) -> None:
        super().__init__(file)
        self._persistent_load_fn = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise AssetError(
                f"the file refers to {module}.{name}, which a plain tensor state dict never "
                "does; refusing to load it (only state dicts of tensors are supported, not "
                "pickled models, TorchScript archives or arbitrary objects)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load_fn is None:
            raise AssetError("unexpected storage reference in a torch file header")
        return self._persistent_load_fn(pid)


class _StorageTable:
    """Creates one `_Storage` per key from the persistent ids met while unpickling."""

    def __init__(self) -> None:
        self.by_key: dict[str, _Storage] = {}

    def load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            tag = pid[0] if isinstance(pid, tuple) and pid else pid
            raise AssetError(
                f"unsupported persistent id {tag!r}: only tensor storages are supported "
                "(a 'module' id means a whole pickled model, not a state dict)"
            )
        if len(pid) not in (5, 6):
            raise AssetError(f"malformed storage reference with {len(pid)} fields")
        kind, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(kind, _StorageType):
            raise AssetError(f"storage {key!r} has an unsupported type {kind!r}")
        view_meta = pid[5] if len(pid) == 6 else None
        root = self.by_key.get(key)
        if root is None:
            root = self.by_key[key] = _Storage(kind, key, numel)
        if view_meta is None:
            return root
        view_key, view_offset, view_numel = view_meta
        view_key = str(view_key)
        if view_key not in self.by_key:
            self.by_key[view_key] = _Storage(
                kind, view_key, int(view_numel), view_of=(root, int(view_offset))
            )
        return self.by_key[view_key]


def _collect(obj: Any) -> dict[str, np.ndarray]:
    """Turn the unpickled mapping of names to `_TensorRef`s into a dict of numpy arrays."""
    if not isinstance(obj, Mapping):
        raise AssetError(
            f"the file holds a {type(obj).__name__}, not a state dict (a mapping of names to "
            "tensors)"
        )
    result: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise AssetError(
                f"entry {key!r} is a {type(value).__name__}, not a tensor; only flat "
                "state dicts of tensors are supported"
            )
        result[str(key)] = value.materialize(str(key))
    return result


def _load_legacy(f: IO[bytes]) -> dict[str, np.ndarray]:
    """Read the legacy (pre-zip) torch.save layout from an open binary file."""
    magic = _RestrictedUnpickler(f).load()
    if magic != _LEGACY_MAGIC:
        raise AssetError(
            "it is neither a zip-format nor a legacy-format torch file (bad magic number)"
        )
    protocol = _RestrictedUnpickler(f).load()
    if protocol != _LEGACY_PROTOCOL:
        raise AssetError(f"unsupported legacy torch protocol {protocol!r}")
    _RestrictedUnpickler(f).load()  # sys_info; storages are little-endian in practice
    table = _StorageTable()
    obj = _RestrictedUnpickler(f, table.load).load()
    storage_keys = _RestrictedUnpickler(f).load()
    if not isinstance(storage_keys, list):
        raise AssetError("malformed storage key list")
    for key in map(str, storage_keys):
        header = f.read(8)
        if len(header) != 8:
            raise AssetError(f"the file ends before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        storage = table.by_key.get(key)
        if storage is None:
            raise AssetError(f"the file stores data for an unknown storage {key!r}")
        nbytes = numel * storage.kind.itemsize
        raw = f.read(nbytes)
        if numel < 0 or len(raw) != nbytes:
            raise AssetError(f"the file is truncated inside storage {key!r}")
        storage.data = np.frombuffer(raw, dtype=storage.kind.dtype)
    return _collect(obj)


def _load_zip(archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    """Read the zip torch.save layout (``<name>/data.pkl`` + ``<name>/data/<key>``)."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise AssetError("it is a zip file but not a torch.save archive (no <name>/data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in archive.namelist():
        byteorder = archive.read(prefix + "byteorder").decode("ascii").strip()
    if byteorder not in ("little", "big"):
        raise AssetError(f"unknown byte order {byteorder!r}")
    table = _StorageTable()
    obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), table.load).load()
    for key, storage in table.by_key.items():
        if storage.view_of is not None:
            continue
        name = f"{prefix}data/{key}"
        try:
            raw = archive.read(name)
        except KeyError:
            raise AssetError(f"the archive lacks the data of storage {key!r} ({name})") from None
        dtype = storage.kind.dtype
        if byteorder == "big":
            dtype = dtype.newbyteorder(">")
        nbytes = storage.numel * dtype.itemsize
        if len(raw) < nbytes:
            raise AssetError(f"the file is truncated inside storage {key!r}")
        storage.data = np.frombuffer(raw[:nbytes], dtype=dtype)
    return _collect(obj)


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a ``torch.save``-d state dict as ``{name: numpy array}`` without importing torch.

    Both the zip format and the legacy format are read; float64/32/16, bfloat16 (returned as
    float32), int64/32/16/8, uint8 and bool storages are supported, as are strided views and
    storage offsets. Every returned array is an independent, writable, C-contiguous copy in
    native byte order with the tensor's torch shape (0-d for scalars such as
    ``num_batches_tracked``).

    Only a flat mapping of names to tensors is accepted. The pickle is read with an allow-list
    of globals, so a file that would import or call anything else is rejected, never executed.

    Raises:
        AssetError: the file is missing, unreadable, not a torch state dict, corrupt, or
            references objects outside the allow-list.
    """
    path_str = os.fspath(path)
    try:
        if zipfile.is_zipfile(path_str):
            with zipfile.ZipFile(path_str) as archive:
                return _load_zip(archive)
        with open(path_str, "rb") as f:
            return _load_legacy(f)
    except AssetError as err:
        raise AssetError(f"cannot read torch weights {path_str}: {err}") from err
    except FileNotFoundError:
        raise AssetError(f"torch weights file not found: {path_str}") from None
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        struct.error,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
    ) as err:
        raise AssetError(
            f"cannot read torch weights {path_str}: {type(err).__name__}: {err} "
            "(is it a torch.save-d state dict, and is the file complete?)"
        ) from err
