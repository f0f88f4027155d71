"""Run checkpoints: everything a run needs to continue, written so a crash never leaves one
half-written where a resume would read it.

`runs/<name>/checkpoint/` holds numbered folders `ckpt-000012/`, each complete:

- `variables.index`, `variables.data-*`: a `tf.train.Checkpoint` of the variables, in named
  groups: `model` (every variable of the classifier: weights, BatchNorm statistics and the
  dropout layers' seed-generator states), `optimizer` (the stage's optimizer: its step count,
  which is where its schedule is, and its slots) and `metrics` (the running sums of the
  epoch's training loss and accuracy, for a checkpoint taken mid-epoch);
- `<name>.npz`: arrays held outside variables (early stopping's best weights, the best
  stage's weights);
- `state.json`: where the run is (stage, epoch, step within the epoch, whether early stopping
  ended the stage), early stopping's counters, the finished stages' results, the history
  rows, which variables the stage trains, the variables' paths and shapes, and the size and
  sha256 of every other file in the folder.

How a checkpoint is published depends on where the run directory is
(`tftune.rundir.storage.publish_mode`):

- `rename` (local disk): written into a temporary folder (`.tmp-ckpt-*`), synced, renamed
  into place, and only then named in `checkpoint/latest` (replaced atomically).
- `marker` (any URL: `gs://`, `ram://`; local disk with `TFTUNE_PUBLISH=marker`): nothing is
  renamed. The files are written straight into a folder of a fresh unique name
  (`ckpt-000012-<8 hex>/`) and `state.json`, the manifest, is written last: it is the commit
  marker. `latest` is then overwritten in place; it is a hint only.

Either way, reading takes `latest`, or the newest folder whose files match its manifest; a
folder without `state.json`, or whose files do not match it, is never used. The two newest
checkpoints are kept; an old one is removed marker first (or renamed away first), so a kill
during the removal never leaves a committed folder with files missing. Leftovers of writes a
kill interrupted are removed by the next checkpoint, best effort: correctness never needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from tftune.runtime import faults
from tftune.errors import TftuneError
from tftune.rundir import storage

DIR = "checkpoint"
LATEST = "latest"
STATE = "state.json"
VARIABLES = "variables"
FORMAT = 1
KEEP = 2
_NAME = re.compile(r"^ckpt-(\d{6,})(?:-[0-9a-f]{8})?$")  # the suffix: `marker` publishing


@dataclasses.dataclass
class RunState:
    """Where a run is and what it has done so far (the JSON part of a checkpoint).

    `stage`, `epoch`, `step`: the next batch to train is batch `step` of epoch `epoch` of
    stage `stage` (all 0-based); `stage == len(stages)` means every stage is done.
    `stopped`: early stopping ended stage `stage` after its epoch `epoch - 1`.
    """

    stage: int = 0
    epoch: int = 0
    step: int = 0
    stopped: bool = False
    history: list = dataclasses.field(default_factory=list)
    results: list = dataclasses.field(default_factory=list)
    epoch_logs: list = dataclasses.field(default_factory=list)
    early_stopping: Optional[dict] = None
    overall_best: Optional[dict] = None
    trainable: list = dataclasses.field(default_factory=list)
    config_digest: str = ""
    variables: dict = dataclasses.field(default_factory=dict)  # group -> [[path, shape], ...]
    # `train.time_limit`: the run's seconds so far (all its processes), and the epochs the
    # budget planned for each stage that started ({stage index as str: epochs}).
    seconds: float = 0.0
    planned_epochs: dict = dataclasses.field(default_factory=dict)
    # {stage index as str: [[at step, old total, new total], ...]}: the stretches of a
    # stage's schedule when the budget planned it again (`optim.WarmupDecay.stretch`)
    stretches: dict = dataclasses.field(default_factory=dict)

    def describe(self, stages: Sequence = ()) -> str:
        """E.g. "stage 2/3 'top', epoch 1, step 4"; `stages` are the run's StageConfigs."""
        if stages and self.stage >= len(stages):
            return "after the last stage"
        stage = f"stage {self.stage + 1}"
        if stages:
            stage += f"/{len(stages)} {stages[self.stage].name!r}"
        if self.stopped:
            return f"{stage}, after early stopping"
        if stages and self.epoch >= stages[self.stage].epochs:
            return f"{stage}, after its last epoch"
        return f"{stage}, epoch {self.epoch + 1}, " + (f"step {self.step}" if self.step else "start")


def _sha256(path) -> str:
    return storage.sha256(path)


def _fsync(path) -> None:
    if storage.is_url(path):
        return  # an object store's write is durable when its upload returns
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _layout(variables: Mapping[str, Sequence]) -> dict:
    return {g: [[v.path, list(v.shape)] for v in vs] for g, vs in variables.items()}


_COUNTER = re.compile(r"_\d+(?=/|$)")


def _same_layout(saved: list, current: list) -> bool:
    """Same variables in the same order: shapes equal, paths equal up to the `_N` counters
    Keras appends to auto-generated names (they depend on what the process built before)."""
    if len(saved) != len(current):
        return False
    return all(
        list(a[1]) == list(b[1]) and _COUNTER.sub("", a[0]) == _COUNTER.sub("", b[0])
        for a, b in zip(saved, current)
    )


def _listing(root) -> list[tuple[int, str]]:
    """(number, folder name) of every checkpoint folder under `root` (complete or not; never
    the temporary ones), oldest first."""
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p.name))
    return sorted(out)


def _numbers(root) -> list[int]:
    return [n for n, _ in _listing(root)]


def write(run_dir: Path, state: RunState, variables: Mapping[str, Sequence],
          arrays: Mapping[str, Sequence] = (), *, writer: bool = True) -> Optional[Path]:
    """Writes a checkpoint of `state`, the `variables` groups ({group: [variables]}) and the
    `arrays` ({name: [numpy arrays]}) under `run_dir/checkpoint/`; returns its folder.

    Under MultiWorkerMirroredStrategy every worker must call this at the same point (saving
    can involve collectives); only the one with `writer=True` keeps what it wrote."""
    import numpy as np
    import tensorflow as tf

    root = storage.path(run_dir) / DIR
    faults.point("checkpoint:begin")
    if not writer:
        scratch = Path(tempfile.mkdtemp(prefix="tftune-ckpt-"))
        try:
            tf.train.Checkpoint(**{g: list(v) for g, v in variables.items()}).write(
                str(scratch / VARIABLES))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None
    root.mkdir(parents=True, exist_ok=True)
    number = (_numbers(root) or [0])[-1] + 1
    if storage.publish_mode(root) == "marker":
        final = _write_marked(root, number, state, variables, arrays)
        _prune(root, keep=number)
        return final
    name = f"ckpt-{number:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        tf.train.Checkpoint(**{g: list(v) for g, v in variables.items()}).write(
            str(tmp / VARIABLES))
        faults.point("checkpoint:variables_written")
        for key, values in dict(arrays).items():
            with open(tmp / f"{key}.npz", "wb") as f:
                np.savez(f, *[np.asarray(a) for a in values])
        faults.point("checkpoint:arrays_written")
        manifest = {}
        for p in sorted(tmp.iterdir()):
            _fsync(p)
            manifest[p.name] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        state.variables = _layout(variables)
        payload = {"format": FORMAT, "state": dataclasses.asdict(state), "files": manifest}
        with open(tmp / STATE, "w") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        faults.point("checkpoint:state_written")
        final = root / name
        os.rename(tmp, final)
        _fsync(root)
        faults.point("checkpoint:renamed")
        from tftune.rundir import write_text

        write_text(root / LATEST, name + "\n")
        _fsync(root)
        faults.point("checkpoint:latest_updated")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep=number)
    return final


def _npz_bytes(values) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(a) for a in values])
    return buffer.getvalue()


def _write_marked(root, number: int, state: RunState, variables, arrays):
    """`marker` publishing: the files straight into `ckpt-NNNNNN-<8 hex>/`, then `state.json`
    (the manifest, the commit marker) last, then the `latest` hint. No rename anywhere."""
    import tensorflow as tf

    name = f"ckpt-{number:06d}-{uuid.uuid4().hex[:8]}"
    folder = root / name
    marked = False
    try:
        folder.mkdir(parents=True, exist_ok=False)
        with storage.storage_errors(folder):
            tf.train.Checkpoint(**{g: list(v) for g, v in variables.items()}).write(
                str(folder / VARIABLES))
        faults.point("checkpoint:variables_written")
        for key, values in dict(arrays).items():
            _write_durably(folder / f"{key}.npz", _npz_bytes(values))
        faults.point("checkpoint:arrays_written")
        manifest = {}
        for p in sorted(folder.iterdir(), key=lambda q: q.name):
            if p.name == STATE:
                continue
            _fsync(p)
            manifest[p.name] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        state.variables = _layout(variables)
        payload = {"format": FORMAT, "state": dataclasses.asdict(state), "files": manifest}
        faults.point("checkpoint:marker_begin")
        marked = True  # from here on the folder may be committed: never deleted on error
        _write_durably(folder / STATE, json.dumps(payload, indent=1).encode())
        _fsync(folder)
        faults.point("checkpoint:state_written")
        _write_durably(root / LATEST, (name + "\n").encode())  # a hint: readers verify
        _fsync(root)
        faults.point("checkpoint:latest_updated")
    except BaseException:
        if not marked:
            storage.rmtree(folder)
        raise
    return folder


def _write_durably(path, data: bytes) -> None:
    """Writes `data` into `path` in place (no rename): synced on local disk; one upload on a URL."""
    if storage.is_url(path):
        path.write_bytes(data)
        return
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _prune(root, keep: int) -> None:
    """Removes all but the KEEP newest checkpoints (up to `keep`), and leftover temporary
    folders of checkpoints that were being written when a process died."""
    if storage.publish_mode(root) == "marker":
        _prune_marked(root, keep)
        return
    listing = [(n, name) for n, name in _listing(root) if n <= keep]
    # A run that changed TFTUNE_PUBLISH: its marker folders without a marker are leftovers.
    unmarked = [(n, name) for n, name in listing if "-" in name[5:]
                and not (root / name / STATE).is_file()]
    for n, name in unmarked:
        shutil.rmtree(root / name, ignore_errors=True)
    listing = [entry for entry in listing if entry not in unmarked]
    for n, name in listing[:-KEEP]:  # `name`: a marker run's folders too, should the mode change
        # Renamed away first: a kill during the deletion then leaves a temporary folder
        # (removed below by the next prune), never a checkpoint folder with files missing.
        doomed = root / f".tmp-removed-{name}"
        os.rename(root / name, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith(".tmp-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(f".{LATEST}.") and p.is_file():
            p.unlink()  # rundir.atomic_write's temporary file, left by a kill
    faults.point("checkpoint:pruned")


def _prune_marked(root, keep: int) -> None:
    """`marker` pruning: all but the KEEP newest committed folders (up to `keep`) lose their
    marker first, then their files; uncommitted folders older than `keep` (writes a kill
    interrupted) are removed too. Best effort: a leftover is never read."""
    listing = [(n, name) for n, name in _listing(root) if n <= keep]
    committed = [(n, name) for n, name in listing if (root / name / STATE).is_file()]
    doomed = committed[:-KEEP]
    for n, name in doomed:
        (root / name / STATE).unlink(missing_ok=True)
        faults.point("checkpoint:unmarked")
        storage.rmtree(root / name)
    for n, name in listing:
        if n < keep and (n, name) not in committed:
            storage.rmtree(root / name)
    for p in root.iterdir():  # the `rename` protocol's leftovers, should the mode have changed
        if p.name.startswith(".tmp-") or p.name.startswith(f".{LATEST}."):
            storage.rmtree(p)
    faults.point("checkpoint:pruned")


@dataclasses.dataclass
class Loaded:
    """A checkpoint that passed its manifest check."""

    path: Path
    state: RunState
    skipped: list[str]  # newer folders that were not usable, with why

    def arrays(self, key: str) -> Optional[list]:
        import numpy as np

        p = self.path / f"{key}.npz"
        if not p.is_file():
            return None
        if storage.is_url(p):
            import io

            p = io.BytesIO(p.read_bytes())
        with np.load(p, allow_pickle=False) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]

    def restore(self, variables: Mapping[str, Sequence]) -> None:
        """Loads the `variables` groups (only those named) after checking that they are the
        variables the checkpoint holds, in the same order and shapes."""
        import tensorflow as tf

        layout = _layout(variables)
        for group, current in layout.items():
            saved = self.state.variables.get(group)
            if saved is None:
                raise TftuneError(f"The checkpoint {self.path} has no {group!r} variables.")
            if not _same_layout(saved, current):
                diff = next(
                    (f"#{i}: saved {a} vs now {b}" for i, (a, b) in enumerate(zip(saved, current))
                     if not _same_layout([a], [b])),
                    f"saved {len(saved)} variables vs now {len(current)}",
                )
                raise TftuneError(
                    f"The checkpoint {self.path} does not fit this run's {group} ({diff}): the "
                    f"backbone or the recipe changed since it was written. Pass --overwrite to "
                    f"start the run again."
                )
        with storage.storage_errors(self.path):
            status = tf.train.Checkpoint(**{g: list(v) for g, v in variables.items()}).read(
                str(self.path / VARIABLES))
        status.expect_partial()
        status.assert_existing_objects_matched()


def verify(folder: Path) -> tuple[Optional[RunState], str]:
    """(state, "") when `folder` is a complete checkpoint whose files match its manifest,
    else (None, why not)."""
    folder = storage.path(folder)
    try:
        payload = json.loads((folder / STATE).read_text())
    except FileNotFoundError:
        return None, f"no {STATE}"
    except (OSError, ValueError) as e:
        return None, f"unreadable {STATE} ({e})"
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None, f"unknown checkpoint format {payload.get('format') if isinstance(payload, dict) else payload!r}"
    files = payload.get("files") or {}
    if not any(name.startswith(VARIABLES + ".index") for name in files):
        return None, "no variables in the manifest"
    for name, meta in files.items():
        p = folder / name
        if not p.is_file():
            return None, f"{name} is missing"
        if p.stat().st_size != meta.get("size"):
            return None, f"{name} has {p.stat().st_size} bytes, the manifest says {meta.get('size')}"
        if _sha256(p) != meta.get("sha256"):
            return None, f"{name} does not match its sha256"
    try:
        state = RunState(**payload["state"])
    except (KeyError, TypeError) as e:
        return None, f"unreadable state ({e})"
    return state, ""


def folders(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders (complete or not; never the temporary ones), newest first."""
    root = storage.path(run_dir) / DIR
    return [root / name for _, name in reversed(_listing(root))]


def published(run_dir: Path) -> list[Path]:
    """The folders that were published as checkpoints (usable or damaged since), newest first:
    every `ckpt-NNNNNN/` of the `rename` protocol (renamed into place whole), and the
    `marker` protocol's `ckpt-NNNNNN-<hex>/` that have their marker. A marker folder without
    one is a write a kill interrupted, like the rename protocol's `.tmp-` folders: not a
    checkpoint at all."""
    return [f for f in folders(run_dir)
            if f.name.count("-") == 1 or (f / STATE).is_file()]


def latest(run_dir: Path) -> Optional[Loaded]:
    """The checkpoint to resume from: the one `latest` names if it verifies, else the newest
    one that does; None when there is none."""
    root = storage.path(run_dir) / DIR
    if not root.is_dir():
        return None
    order = [name for _, name in reversed(_listing(root))]
    try:
        named = (root / LATEST).read_text().strip()
    except OSError:
        named = ""
    if named in order:
        order.remove(named)
        order.insert(0, named)
    skipped = []
    for name in order:
        state, why = verify(root / name)
        if state is not None:
            return Loaded(root / name, state, skipped)
        skipped.append(f"{name}: {why}")
    return None


def remove(run_dir: Path) -> None:
    """Deletes the run's checkpoints (after the run finished): renamed away first, so a kill
    during the deletion leaves a temporary folder, not a damaged `checkpoint/`."""
    root = storage.path(run_dir) / DIR
    if not root.exists():
        return
    if storage.publish_mode(root) == "marker":  # no rename: every marker first, then the files
        (root / LATEST).unlink(missing_ok=True)
        for _, name in _listing(root):
            (root / name / STATE).unlink(missing_ok=True)
        storage.rmtree(root)
        return
    doomed = Path(run_dir) / f".{DIR}-removed-{os.getpid()}"
    os.rename(root, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def digest(config_dict: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:16]
