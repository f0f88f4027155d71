"""Before a run starts: what happens to its run directory (new, resumed, refused), and
which settings a resume may change."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tftune.config import RecipeConfig, dump_config, load_recipe, to_dict
from tftune.errors import TftuneError
from tftune.rundir import checkpoint as ckpt
from tftune.rundir import io, layout, storage

# Settings that say where and how a run computes, not what: a resume may change them.
RESUME_FREE = ("output_dir", "train.distribute", "train.tpu", "train.verbose",
               "train.checkpoint_steps", "train.steps_per_execution", "train.tensorboard",
               "train.callbacks", "train.time_limit")


def comparable(cfg: RecipeConfig) -> dict:
    flat = _flatten(to_dict(cfg))
    out = {k: v for k, v in flat.items() if not k.startswith(RESUME_FREE)}
    # `train.static_shapes: auto` makes other batches on a TPU: a checkpoint's position in an
    # epoch means other examples there, so the digest a checkpoint keeps tells them apart
    # (only when on: the digests of runs without static shapes stay as they were).
    if cfg.train.static_shapes == "auto" and _auto_static(cfg):
        out[STATIC_AUTO_ON] = True
    return out


STATIC_AUTO_ON = "train.static_shapes (auto: on, a TPU)"


def _auto_static(cfg: RecipeConfig) -> bool:
    from tftune.data.static_shapes import enabled
    from tftune.runtime.distribute import resolve

    return enabled("auto", resolve(cfg.train.distribute, cfg.train.tpu))


def _flatten(data: Any, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    if isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        out = {}
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data}


def plan_run_dir(cfg: RecipeConfig, run: Path, resume: bool, overwrite: bool):
    """Decides, before anything loads, what happens to the run directory `run`: returns the
    checkpoint to resume from (with `resume`), `RESTART` to resume a run that stopped before
    its first checkpoint (from the beginning, in its directory), or None to start a new run
    there; raises a `TftuneError` that says what to do when none fits."""
    exists = run.exists() and (not run.is_dir() or any(run.iterdir()))
    if not resume:
        if exists and not overwrite and run.is_dir() and not (run / layout.METRICS_FILE).is_file():
            loaded = ckpt.latest(run)
            if loaded is not None:
                raise TftuneError(
                    f"Run directory {run} already exists and holds an unfinished run with a "
                    f"checkpoint ({loaded.state.describe(cfg.stages)}). Pass "
                    f"--resume to continue it, --overwrite to start it again, or pick another "
                    f"name (--set name=...) or --output directory."
                )
        return None  # rundir.prepare refuses other existing directories without --overwrite
    if not exists:
        raise TftuneError(
            f"Nothing to resume: {run} does not exist or is empty. Run without --resume to "
            f"start the run."
        )
    if (run / layout.METRICS_FILE).is_file():
        raise TftuneError(
            f"Run directory {run} holds a finished run (it has metrics.json): there is nothing "
            f"to resume. Pass --overwrite to train it again, or pick another name "
            f"(--set name=...) or --output directory."
        )
    loaded = ckpt.latest(run)
    if loaded is None and ckpt.published(run):
        bad = "; ".join(f"{p.name}: {ckpt.verify(p)[1]}" for p in ckpt.published(run))
        raise TftuneError(
            f"Run directory {run} holds an unfinished run whose checkpoints are all unusable "
            f"({bad}). Pass --overwrite to start it again."
        )
    try:
        saved = load_recipe(run / layout.CONFIG_FILE)
    except TftuneError as e:
        raise TftuneError(f"Cannot resume {run}: its {layout.CONFIG_FILE} is not usable ({e}).") from None
    now, then = comparable(cfg), comparable(saved)
    diff = sorted(k for k in set(now) | set(then) if now.get(k, "<unset>") != then.get(k, "<unset>"))
    if diff:
        shown = "; ".join(f"{k}: run {then.get(k, '<unset>')!r}, now {now.get(k, '<unset>')!r}"
                          for k in diff[:5])
        raise TftuneError(
            f"Cannot resume {run}: the recipe and --set options differ from the run's "
            f"{layout.CONFIG_FILE} in {len(diff)} setting(s) ({shown}{' ...' if len(diff) > 5 else ''}). "
            f"Resume with the same recipe and --set options, or pass --overwrite to start again."
        )
    if loaded is None:
        return RESTART  # stopped before its first checkpoint: nothing trained yet
    if loaded.state.config_digest and loaded.state.config_digest != ckpt.digest(now):
        raise TftuneError(
            f"Cannot resume {run}: its checkpoint was written for another config than its "
            f"{layout.CONFIG_FILE}{_static_hint(cfg)}. Pass --overwrite to start again."
        )
    return loaded


def _static_hint(cfg: RecipeConfig) -> str:
    if cfg.train.static_shapes != "auto":
        return ""
    return (" (or with train.static_shapes: auto it was written with static-shape batches on a "
            "TPU and is resumed without one, or the other way round: resume where it ran, or "
            "set train.static_shapes: on / off in the recipe from the start)")


RESTART = "restart"  # plan_run_dir: resume a run that stopped before its first checkpoint


_PARTIAL = re.compile(r"^\.(config\.yaml|versions\.json|history\.csv|metrics\.json|classes\.json|task\.json|"
                      r"model\.keras)\..+")


def open_run_dir(cfg: RecipeConfig, run_path: Path, output_dir, overwrite: bool, resume: bool,
                  dist) -> tuple[Path, bool]:
    """(where this process writes, whether that is a scratch folder to delete at the end).
    Only the chief writes the run directory; other workers write to a temporary folder."""
    if not dist.is_chief:
        task = dist.cluster
        return Path(tempfile.mkdtemp(prefix=f"tftune-{task.task_type}{task.task_id}-")), True
    if resume:
        # Temporary files of writes a kill interrupted (never read: they were not renamed).
        for p in run_path.iterdir():
            if _PARTIAL.match(p.name) or p.name == ".feature_cache":
                if storage.is_url(p):
                    storage.rmtree(p)
                else:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        return run_path, False
    run = layout.prepare(output_dir or cfg.output_dir, cfg.name, overwrite)
    io.write_text(run / layout.CONFIG_FILE, dump_config(cfg))
    io.write_json(run / layout.VERSIONS_FILE, layout.versions())
    return run, False
