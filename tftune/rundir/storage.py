"""Where a run directory lives: local disk, or any filesystem `tf.io.gfile` reads (`gs://`,
`s3://`, `hdfs://`, `ram://` in tests).

`path(x)` is the one entry point: a local path (no scheme, or `file://`) becomes a
`pathlib.Path` and every caller keeps today's code path exactly (temporary file + `os.replace`,
fsync); a URL becomes a `GPath`, a small `pathlib`-like object whose methods go through
`tf.io.gfile`. Code that only uses `/`, `.name`, `.parent`, `.exists()`, `.is_file()`,
`.read_text()`, `.write_text()`, `.iterdir()`, `.open()` ... works on both.

How writes are published (`publish_mode`), since object stores have no rename:

- `rename` (local disk, the default there): write aside, `os.replace` into place.
- `marker` (every URL; on local disk with `TFTUNE_PUBLISH=marker`): nothing is ever renamed.
  A checkpoint is written into a folder of its own unique name (`ckpt-000012-<8 hex>/`) and
  becomes visible only when its `state.json` (the commit marker: the size and sha256 of every
  other file in the folder) is written, last; readers trust only folders whose marker exists
  and matches (`checkpoint.verify`). Pruning deletes the marker first, so a half-deleted
  folder is never committed. A single file (history.csv, metrics.json, config.yaml, ...) is
  written as one object in one upload: object stores (GCS, S3) make an object visible whole
  or not at all, which is the publish. On local disk under `marker` the single files keep
  their rename (the local equivalent of that whole-object visibility); only checkpoints
  switch protocol, which is what the kill -9 test exercises (tests/test_storage.py).
  `ram://` is per-process memory, so a killed process's `ram://` run dir dies with it: the
  kill test runs the marker protocol on local disk instead. (TensorFlow's own checkpoint
  writer still merges its shards under a temporary prefix, a copy on object stores; that
  happens inside the folder before its marker, so no reader trusts it yet.)

Folders that evaluate and export build (`building_dir`) are built on local disk in both
modes; for a URL destination the finished folder is then uploaded file by file and its
`_MANIFEST.json` (names, sizes, sha256) written last, after removing the folder it replaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

from tftune.errors import TftuneError

PUBLISH_ENV = "TFTUNE_PUBLISH"
PUBLISH_MODES = ("rename", "marker")
MANIFEST = "_MANIFEST.json"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(p) -> bool:
    """True for a non-local path (`gs://...`, `ram://...`); `file://` is local."""
    if isinstance(p, GPath):
        return True
    m = _SCHEME.match(str(p))
    return bool(m) and m.group(1).lower() != "file"


def path(p: Union[str, os.PathLike, "GPath"]) -> Union[Path, "GPath"]:
    """A `pathlib.Path` for a local path (`~` expanded, `file://` dropped), a `GPath` for a URL."""
    if isinstance(p, (GPath, Path)):
        return p.expanduser() if isinstance(p, Path) else p
    s = os.fspath(p)
    if is_url(s):
        return GPath(s)
    if s.lower().startswith("file://"):
        s = s[len("file://"):]
    return Path(s).expanduser()


def is_local(p) -> bool:
    return not is_url(p)


def publish_mode(p) -> str:
    """`rename` or `marker` for writes under `p` (see the module docstring)."""
    if is_url(p):
        return "marker"
    mode = os.environ.get(PUBLISH_ENV, "rename").strip().lower() or "rename"
    if mode not in PUBLISH_MODES:
        raise TftuneError(
            f"Unknown {PUBLISH_ENV} {mode!r}. Expected one of: {', '.join(PUBLISH_MODES)}. "
            f"Received: {PUBLISH_ENV}={mode!r}"
        )
    return mode


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


@contextlib.contextmanager
def storage_errors(where) -> Iterator[None]:
    """Turns TensorFlow's filesystem errors on a URL (no credentials, no bucket, an unknown
    scheme) into one `TftuneError` line naming the path and what to check."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.NotFoundError:
        raise
    except (tf.errors.OpError, NotImplementedError) as e:
        first = (str(getattr(e, "message", "") or e).strip().splitlines() or [type(e).__name__])[0]
        scheme = _SCHEME.match(str(where))
        hint = ""
        if scheme and scheme.group(1) == "gs":
            hint = (" Check the bucket name and the credentials (gcloud auth application-default "
                    "login, or GOOGLE_APPLICATION_CREDENTIALS).")
        elif scheme and scheme.group(1) == "s3":
            hint = " S3 needs the tensorflow-io package and AWS credentials."
        raise TftuneError(f"Cannot use {where}: {first}.{hint}") from None


class _Stat:
    def __init__(self, size: int, mtime: float = 0.0):
        self.st_size, self.st_mtime = size, mtime


class GPath:
    """A `pathlib`-like path on a `tf.io.gfile` filesystem (`scheme://bucket/a/b`)."""

    __slots__ = ("_s",)

    def __init__(self, s: str):
        m = _SCHEME.match(s)
        if not m:
            raise ValueError(f"not a URL: {s!r}")
        head, rest = s[: m.end()], s[m.end():]
        rest = re.sub(r"/+", "/", rest).rstrip("/")
        self._s = head + rest

    # -- names ---------------------------------------------------------------------------

    def __str__(self) -> str:
        return self._s

    def __repr__(self) -> str:
        return f"GPath({self._s!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, GPath) and other._s == self._s

    def __hash__(self) -> int:
        return hash(self._s)

    def __lt__(self, other) -> bool:
        return str(self) < str(other)

    def __truediv__(self, other) -> "GPath":
        other = os.fspath(other) if not isinstance(other, str) else other
        return GPath(f"{self._s}/{other}")

    @property
    def _rest(self) -> str:
        return self._s[_SCHEME.match(self._s).end():]

    @property
    def name(self) -> str:
        rest = self._rest
        return rest.rsplit("/", 1)[-1] if "/" in rest else ""

    @property
    def parent(self) -> "GPath":
        rest = self._rest
        if "/" not in rest:
            return self
        return GPath(self._s[: len(self._s) - len(self.name) - 1])

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def suffixes(self) -> list[str]:
        return PurePosixPath(self.name).suffixes

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    def with_name(self, name: str) -> "GPath":
        return self.parent / name

    def expanduser(self) -> "GPath":
        return self

    def resolve(self) -> "GPath":
        return self

    def relative_to(self, other) -> PurePosixPath:
        base = str(other).rstrip("/") + "/"
        if not self._s.startswith(base):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self._s[len(base):])

    # -- queries -------------------------------------------------------------------------

    def exists(self) -> bool:
        with storage_errors(self):
            return _gfile().exists(self._s)

    def is_dir(self) -> bool:
        with storage_errors(self):
            return _gfile().isdir(self._s)

    def is_file(self) -> bool:
        with storage_errors(self):
            g = _gfile()
            return g.exists(self._s) and not g.isdir(self._s)

    def stat(self) -> _Stat:
        with storage_errors(self):
            s = _gfile().stat(self._s)
        return _Stat(int(s.length), float(s.mtime_nsec) / 1e9)

    def iterdir(self) -> Iterator["GPath"]:
        with storage_errors(self):
            names = _gfile().listdir(self._s)
        for n in sorted(names):
            n = n.rstrip("/")
            if n:
                yield self / n

    def glob(self, pattern: str) -> list["GPath"]:
        with storage_errors(self):
            return [GPath(p) for p in sorted(_gfile().glob(f"{self._s}/{pattern}"))]

    def walk_files(self) -> Iterator["GPath"]:
        """Every file under this folder (one listing per folder, no stat per file)."""
        with storage_errors(self):
            walked = list(_gfile().walk(self._s))
        for top, _, files in walked:
            for n in sorted(files):
                yield GPath(f"{top.rstrip('/')}/{n}")

    def rglob(self, pattern: str = "*") -> Iterator["GPath"]:
        import fnmatch

        with storage_errors(self):
            walked = list(_gfile().walk(self._s))
        for top, dirs, files in walked:
            for n in sorted(dirs) + sorted(files):
                n = n.rstrip("/")
                if fnmatch.fnmatch(n, pattern):
                    yield GPath(f"{top.rstrip('/')}/{n}")

    # -- reading and writing -------------------------------------------------------------

    def open(self, mode: str = "r", newline=None, encoding=None):
        """A `tf.io.gfile.GFile` (writing one makes the parent folder first)."""
        if any(c in mode for c in "wa"):
            self.parent.mkdir(parents=True, exist_ok=True)
        if "w" in mode and self._s.startswith("ram://") and self.exists():
            # TensorFlow's ram:// filesystem appends to an existing file opened with "w"
            # (TF 2.21); the object stores replace it whole, as "w" says.
            self.unlink(missing_ok=True)
        with storage_errors(self):
            return _gfile().GFile(self._s, mode.replace("t", ""))

    def read_bytes(self) -> bytes:
        import tensorflow as tf

        try:
            with self.open("rb") as f:
                return f.read()
        except tf.errors.NotFoundError:
            raise FileNotFoundError(2, "No such file or directory", self._s) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        with self.open("wb") as f:
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        with storage_errors(self):
            if self.is_dir():
                if not exist_ok:
                    raise FileExistsError(self._s)
                return
            _gfile().makedirs(self._s) if parents else _gfile().mkdir(self._s)

    def unlink(self, missing_ok: bool = False) -> None:
        import tensorflow as tf

        try:
            with storage_errors(self):
                _gfile().remove(self._s)
        except tf.errors.NotFoundError:
            if not missing_ok:
                raise FileNotFoundError(self._s) from None


AnyPath = Union[Path, GPath]


def rmtree(p: AnyPath) -> None:
    """Removes a folder and everything under it (best effort; missing is fine)."""
    if isinstance(p, GPath):
        import tensorflow as tf

        try:
            if p.is_dir():
                _gfile().rmtree(str(p))
            elif p.exists():
                p.unlink()
        except (tf.errors.OpError, TftuneError):
            pass
    else:
        shutil.rmtree(p, ignore_errors=True)


def sha256(p: AnyPath) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_under(folder: AnyPath) -> list[str]:
    """The files under `folder` as '/'-separated relative names, sorted."""
    if isinstance(folder, GPath):
        return sorted(str(p.relative_to(folder)) for p in folder.walk_files())
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def upload_tree(local: Path, dest: GPath) -> dict:
    """Copies the local folder `local` to `dest` (made first), file by file; returns the
    manifest {relative name: {size, sha256}}."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for rel in files_under(local):
        src = local / rel
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage_errors(target):
            _gfile().copy(str(src), str(target), overwrite=True)
        manifest[rel] = {"size": src.stat().st_size, "sha256": sha256(src)}
    return manifest


def download_tree(src: GPath, local: Path) -> Path:
    """Copies the folder `src` under the local folder `local`; returns `local`."""
    local.mkdir(parents=True, exist_ok=True)
    for rel in files_under(src):
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage_errors(src / rel):
            _gfile().copy(str(src / rel), str(target), overwrite=True)
    return local


@contextlib.contextmanager
def local_copy(p: AnyPath) -> Iterator[Path]:
    """`p` itself when local; else a local temporary copy of the file or folder (removed after)."""
    if not isinstance(p, GPath):
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="tftune-copy-"))
    try:
        if p.is_dir():
            yield download_tree(p, tmp / p.name)
        else:
            with storage_errors(p):
                _gfile().copy(str(p), str(tmp / p.name), overwrite=True)
            yield tmp / p.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_file(p, mode: str = "r", **kwargs):
    """`open()` for a local path, a `GFile` for a URL."""
    p = path(p)
    if isinstance(p, GPath):
        return p.open(mode)
    return open(p, mode, **kwargs)


def copy_file(src, dst: Path) -> None:
    """`shutil.copy2` for a local `src`; a download for a URL."""
    src = path(src)
    if isinstance(src, GPath):
        with storage_errors(src):
            _gfile().copy(str(src), str(dst), overwrite=True)
    else:
        shutil.copy2(src, dst)


def copy_tree(src, dst: Path) -> None:
    """`shutil.copytree` for a local `src`; a download of every file for a URL."""
    src = path(src)
    if isinstance(src, GPath):
        download_tree(src, Path(dst))
    else:
        shutil.copytree(src, dst)
