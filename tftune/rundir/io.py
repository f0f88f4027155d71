"""Atomic writes: a reader (or a crash) never sees a half-written file or folder.

On local disk by temporary name + `os.replace`; on a URL (`gs://`, `ram://`; see
`tftune.rundir.storage`) without renames: a file is one whole-object upload, and a folder is
built on local disk, uploaded, and published by its `_MANIFEST.json`, written last."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from tftune.rundir import storage


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(tmp)` on a temporary path beside `path`, then renames it into place, so a
    reader (or a crash) never sees a half-written file. On a URL, `write(path)` writes the
    object itself: one upload, which the store makes visible whole or not at all."""
    path = storage.path(path)
    if storage.is_url(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        tmp_path.unlink()
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            if tmp_path.is_dir():
                shutil.rmtree(tmp_path, ignore_errors=True)
            else:
                tmp_path.unlink()


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def building_dir(dest: Path):
    """Yields an empty temporary directory beside `dest` to build into. When the block
    finishes, it replaces `dest` (the old one is moved aside first and removed only once the
    new one is in place); when the block raises, it is removed and `dest` stays as it was.

    For a URL `dest` the folder is built on local disk all the same; when the block finishes,
    the old `dest` is removed, the new one uploaded file by file and `_MANIFEST.json` (every
    file's size and sha256) written last: a folder without it is incomplete."""
    dest = storage.path(dest)
    if storage.is_url(dest):
        with _building_remote(dest) as tmp:
            yield tmp
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old, dest)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _building_remote(dest):
    tmp = Path(tempfile.mkdtemp(prefix=f"tftune-{dest.name}.building-"))
    try:
        yield tmp
        storage.rmtree(dest)
        manifest = storage.upload_tree(tmp, dest)
        (dest / storage.MANIFEST).write_text(json.dumps({"files": manifest}, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
