"""The run directory `runs/<name>/`: everything a run produced, written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from tftune.errors import TftuneError

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CLASSES_FILE = "classes.json"
VERSIONS_FILE = "versions.json"
PREPROCESSOR_DIR = "preprocessor"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(tmp)` on a temporary path beside `path`, then renames it into place, so a
    reader (or a crash) never sees a half-written file."""
    path = Path(path)
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


def prepare(output_dir: str | Path, name: str, overwrite: bool) -> Path:
    """Creates `output_dir/name`; an existing non-empty one is an error unless `overwrite`."""
    run = Path(output_dir).expanduser() / name
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        if not overwrite:
            state = (
                "a finished run" if (run / METRICS_FILE).is_file()
                else "an unfinished run (no metrics.json: it stopped or failed before the end)"
            )
            raise TftuneError(
                f"Run directory {run} already exists and holds {state}. Pass --overwrite to "
                f"replace it, or pick another name (--set name=...) or --output directory."
            )
        if run.is_dir():
            shutil.rmtree(run)
        else:
            run.unlink()
    run.mkdir(parents=True, exist_ok=True)
    return run


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("tftune", "tensorflow", "keras", "keras-hub", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def save_model(model, run: Path) -> Path:
    """Saves the model as `.keras`, atomically."""
    path = run / MODEL_FILE
    atomic_write(path, lambda p: model.save(str(p)))
    return path


def save_preprocessor(preprocessor, backbone_model, run: Path) -> Path:
    """Saves the KerasHub text preprocessor as a preset folder that loads on its own with
    `TextClassifierPreprocessor.from_preset(run / "preprocessor")`: KerasHub finds the model
    family through the backbone's `config.json`, written here without weights."""
    import keras

    path = run / PREPROCESSOR_DIR
    preprocessor.save_to_preset(str(path))
    config = keras.saving.serialize_keras_object(backbone_model)
    write_text(path / "config.json", json.dumps(config, indent=2) + "\n")
    return path


@contextlib.contextmanager
def building_dir(dest: Path):
    """Yields an empty temporary directory beside `dest` to build into. When the block
    finishes, it replaces `dest` (the old one is moved aside first and removed only once the
    new one is in place); when the block raises, it is removed and `dest` stays as it was."""
    dest = Path(dest)
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
