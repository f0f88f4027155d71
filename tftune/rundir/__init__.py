"""The run directory `runs/<name>/`: its layout, atomic writes, history, checkpoints,
resume planning, and the reader behind `tftune.load` / evaluate / predict / export.

`tftune.rundir` re-exports the pieces most callers use (`rundir.write_json(...)`,
`rundir.MODEL_FILE`, ...); `checkpoint`, `plan` and `reader` are imported as submodules.
"""

from tftune.rundir.artifacts import save_model, save_preprocessor
from tftune.rundir.history import read_rows, write_rows
from tftune.rundir.io import atomic_write, building_dir, write_json, write_text
from tftune.rundir.layout import CLASSES_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE
from tftune.rundir.layout import MODEL_FILE, PREPROCESSOR_DIR, TASK_FILE, TENSORBOARD_DIR
from tftune.rundir.layout import SKIPPED_FILE, VERSIONS_FILE
from tftune.rundir.layout import prepare, versions

__all__ = [
    "CLASSES_FILE", "CONFIG_FILE", "HISTORY_FILE", "METRICS_FILE", "MODEL_FILE", "TENSORBOARD_DIR",
    "PREPROCESSOR_DIR", "SKIPPED_FILE", "TASK_FILE", "VERSIONS_FILE", "atomic_write", "building_dir",
    "prepare", "read_rows", "save_model", "save_preprocessor", "versions", "write_json",
    "write_rows", "write_text",
]
