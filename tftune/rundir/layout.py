"""The run directory's layout: the file names in `runs/<name>/`, creating it, versions."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from tftune.errors import TftuneError
from tftune.rundir import storage

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CLASSES_FILE = "classes.json"
VERSIONS_FILE = "versions.json"
PREPROCESSOR_DIR = "preprocessor"
TENSORBOARD_DIR = "tensorboard"  # train.tensorboard's event files

TASK_FILE = "task.json"
SKIPPED_FILE = "skipped_files.txt"  # data.skip_bad_files: the files left out, one a line


def prepare(output_dir: str | Path, name: str, overwrite: bool) -> Path:
    """Creates `output_dir/name` (a local path or a URL, see `storage`); an existing non-empty
    one is an error unless `overwrite`."""
    run = storage.path(output_dir) / name
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
            storage.rmtree(run) if storage.is_url(run) else shutil.rmtree(run)
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
