"""`train`: recipe config -> data -> backbone -> head -> stages -> run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from tftune.rundir import checkpoint as ckpt
from tftune.runtime import distribute, faults
from tftune.data import pipeline
from tftune.evaluation import plots
from tftune import rundir
from tftune.config import RecipeConfig, dump_config, load_recipe, to_dict
from tftune.data import DataSplits, load_data
from tftune.errors import ConfigError, DataError, TftuneError
from tftune.runtime.preemption import Preempted, StopRequest, watch


@dataclasses.dataclass
class RunResult:
    """What `train` returns: the run directory, the final metrics and the trained model."""

    run_dir: Path
    metrics: dict
    model: Any
    class_names: list[str]


def _has_accelerator() -> bool:
    """Whether TensorFlow sees a GPU or a TPU."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _jit(setting: str):
    if setting == "on":
        return True
    if setting == "off":
        return False
    # XLA measured 1.1-9x slower than graph mode on CPU for every model tried: off there.
    return "auto" if _has_accelerator() else False


@dataclasses.dataclass
class _StageData:
    """What one stage fits: the full model on the input batches, or the trained suffix on
    the frozen prefix's cached outputs. `train(epoch)` is that epoch's batches, in an order
    fixed by (seed, stage, epoch)."""

    model: Any
    train: Callable[[int], Any]
    val: Any
    caches: tuple = ()

    def close(self):
        for c in self.caches:
            c.close()


def _stage_data(cfg: RecipeConfig, model, backbone, pipe, splits, prep, stage_index: int, run,
                echo):
    from tftune.training import cache

    seed = cfg.train.seed

    def inputs(epoch):
        return pipe.batches(prep.train_source, True, pipeline.epoch_seed(seed, stage_index, epoch))

    uncached = _StageData(model, inputs, prep.val_ds)
    if cfg.train.feature_cache == "off":
        return uncached
    if pipe.random:
        echo(f"   feature cache: off (random augmentation {list(pipe.augment)} changes the "
             f"frozen part's outputs every epoch)")
        return uncached
    plan, why = cache.plan_cache(model, backbone.model)
    if plan is None:
        if why:
            echo(f"   feature cache: not used ({why})")
        return uncached
    _, val_b, caches = cache.cached_datasets(
        plan, pipe, splits.train, splits.val, cfg.train.cache_memory_mb * 2**20,
        run / ".feature_cache",
    )
    total = sum(c.bytes_total for c in caches)
    where = "spilled to disk" if any(c.spilled for c in caches) else "in memory"
    echo(
        f"   feature cache: frozen part run once over {caches[0].count:,} train + "
        f"{caches[1].count:,} val examples in {sum(c.seconds for c in caches):.0f}s "
        f"({total / 2**20:.0f} MiB {where}); steps run only from the {plan.boundary}"
    )
    features = caches[0].dataset()
    buffer = caches[0].shuffle_limit(pipe.shuffle_buffer(caches[0].count))
    pad = any(a is not None for a in plan.sequence_axes)

    def cached(epoch):  # served like `cached_datasets` serves them, with the epoch's seed
        return cache.batched(
            features, pipe.batch_size, shuffle_buffer=buffer,
            seed=pipeline.epoch_seed(seed, stage_index, epoch),
            bucket_boundaries=pipe.bucket_boundaries, pad=pad,
        )

    return _StageData(plan.suffix, cached, val_b, tuple(caches))


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision_policy(setting: str, modality: str) -> str:
    """The Keras dtype policy for `train.mixed_precision`.

    `auto` picks `mixed_bfloat16` for transformers on a CPU with native bfloat16 (MiniLM
    steps measured 0.49 -> 0.38 s here; no gain for CNNs), and float32 otherwise.
    """
    if setting == "off":
        return "float32"
    if setting in ("bfloat16", "float16"):
        return f"mixed_{setting}"
    if _has_accelerator():
        return "float32"
    return "mixed_bfloat16" if modality == "text" and _cpu_has_native_bf16() else "float32"


def _verbosity(setting: str) -> tuple[int, bool]:
    """(keras fit verbose, whether to print our one-line-per-epoch summary)."""
    if setting == "bar" or (setting == "auto" and sys.stdout.isatty()):
        return 1, False
    if setting == "quiet":
        return 0, False
    return 0, True


def train(
    config: RecipeConfig | str | Path,
    *,
    datasets: Optional[DataSplits] = None,
    backbone_model=None,
    overrides: tuple[str, ...] = (),
    output_dir: Optional[str] = None,
    overwrite: bool = False,
    resume: bool = False,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Trains a recipe and writes its run directory.

    Args:
        config: a `RecipeConfig` or the path of a recipe YAML file.
        datasets: your own `DataSplits` (e.g. `DataSplits.from_datasets(train, val, test, ...)`);
            replaces `config.data`.
        backbone_model: your own `keras.Model` image feature extractor; replaces
            `config.backbone.spec`.
        overrides: `KEY=VALUE` strings applied to a recipe file.
        output_dir: where run directories go (default `config.output_dir`).
        overwrite: replace an existing run directory of the same name.
        resume: continue the unfinished run in the run directory from its checkpoint (the
            config must be the one it started with, up to `RESUME_FREE` settings).
        echo: where progress lines go.

    Raises `tftune.runtime.preemption.Preempted` when SIGTERM stopped the run at a checkpoint.
    """
    if not isinstance(config, RecipeConfig):
        config = load_recipe(config, overrides)
    elif overrides:
        from tftune.config import config_from_dict

        config = config_from_dict(to_dict(config), overrides)
    if config.train.checkpoint_steps < 0:
        raise ConfigError(
            f"Invalid value for 'train.checkpoint_steps'. Expected an integer >= 0 (0: checkpoints "
            f"at epoch ends only). Received: {config.train.checkpoint_steps}"
        )
    if overwrite and resume:
        raise ConfigError(
            "Pass either --resume (continue the run from its checkpoint) or --overwrite (start "
            "it again), not both."
        )

    cfg = config
    started = time.perf_counter()
    run_path = Path(output_dir or cfg.output_dir).expanduser() / cfg.name
    # The strategy first: MultiWorkerMirroredStrategy must exist before TensorFlow runs ops.
    dist = distribute.make_distribution(cfg.train.distribute, cfg.train.tpu)
    with watch() as stop, dist.scope():
        loaded, error = None, None
        try:
            if dist.is_chief:
                loaded = plan_run_dir(cfg, run_path, resume, overwrite)
            elif resume:
                loaded = ckpt.latest(run_path)
            if loaded is RESTART:
                loaded = None
                echo(f"{run_path} has no checkpoint yet (it stopped before its first one): "
                     f"starting the run from the beginning.")
        except TftuneError as e:
            if not dist.multi_worker:
                raise
            error = e
        with loaded_inputs(cfg, datasets, backbone_model) as (splits, backbone, policy):
            run, scratch = None, False
            if error is None:
                try:
                    # Only now, with data and backbone loaded, does the run directory get created.
                    run, scratch = _open_run_dir(cfg, run_path, output_dir, overwrite, resume,
                                                 dist)
                except TftuneError as e:
                    if not dist.multi_worker:
                        raise
                    error = e
            if dist.multi_worker:
                _agree_to_start(dist, error, loaded)
            try:
                return _train(cfg, splits, backbone, run, started, echo, policy, dist=dist,
                              loaded=loaded, stop=stop, run_path=run_path)
            except Preempted as e:
                raise Preempted(
                    f"{stop.signal_name or 'A stop request'} received: stopped at {e.where} with a "
                    f"checkpoint in {run_path / ckpt.DIR}.", run_dir=run_path, where=e.where,
                ) from None
            finally:
                if scratch:
                    shutil.rmtree(run, ignore_errors=True)


# Settings that say where and how a run computes, not what: a resume may change them.
RESUME_FREE = ("output_dir", "train.distribute", "train.tpu", "train.verbose",
               "train.checkpoint_steps")


def _comparable(cfg: RecipeConfig) -> dict:
    flat = _flatten(to_dict(cfg))
    return {k: v for k, v in flat.items() if not k.startswith(RESUME_FREE)}


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
        if exists and not overwrite and run.is_dir() and not (run / rundir.METRICS_FILE).is_file():
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
    if (run / rundir.METRICS_FILE).is_file():
        raise TftuneError(
            f"Run directory {run} holds a finished run (it has metrics.json): there is nothing "
            f"to resume. Pass --overwrite to train it again, or pick another name "
            f"(--set name=...) or --output directory."
        )
    loaded = ckpt.latest(run)
    if loaded is None and ckpt.folders(run):
        bad = "; ".join(f"{p.name}: {ckpt.verify(p)[1]}" for p in ckpt.folders(run))
        raise TftuneError(
            f"Run directory {run} holds an unfinished run whose checkpoints are all unusable "
            f"({bad}). Pass --overwrite to start it again."
        )
    try:
        saved = load_recipe(run / rundir.CONFIG_FILE)
    except TftuneError as e:
        raise TftuneError(f"Cannot resume {run}: its {rundir.CONFIG_FILE} is not usable ({e}).") from None
    now, then = _comparable(cfg), _comparable(saved)
    diff = sorted(k for k in set(now) | set(then) if now.get(k, "<unset>") != then.get(k, "<unset>"))
    if diff:
        shown = "; ".join(f"{k}: run {then.get(k, '<unset>')!r}, now {now.get(k, '<unset>')!r}"
                          for k in diff[:5])
        raise TftuneError(
            f"Cannot resume {run}: the recipe and --set options differ from the run's "
            f"{rundir.CONFIG_FILE} in {len(diff)} setting(s) ({shown}{' ...' if len(diff) > 5 else ''}). "
            f"Resume with the same recipe and --set options, or pass --overwrite to start again."
        )
    if loaded is None:
        return RESTART  # stopped before its first checkpoint: nothing trained yet
    if loaded.state.config_digest and loaded.state.config_digest != ckpt.digest(now):
        raise TftuneError(
            f"Cannot resume {run}: its checkpoint was written for another config than its "
            f"{rundir.CONFIG_FILE}. Pass --overwrite to start again."
        )
    return loaded


RESTART = "restart"  # plan_run_dir: resume a run that stopped before its first checkpoint


_PARTIAL = re.compile(r"^\.(config\.yaml|versions\.json|history\.csv|metrics\.json|classes\.json|"
                      r"model\.keras)\..+")


def _open_run_dir(cfg: RecipeConfig, run_path: Path, output_dir, overwrite: bool, resume: bool,
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
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        return run_path, False
    run = rundir.prepare(output_dir or cfg.output_dir, cfg.name, overwrite)
    rundir.write_text(run / rundir.CONFIG_FILE, dump_config(cfg))
    rundir.write_json(run / rundir.VERSIONS_FILE, rundir.versions())
    return run, False


def _agree_to_start(dist, error: Optional[TftuneError], loaded) -> None:
    """Every worker starts, from the same checkpoint, or none does (one all-gather)."""
    import numpy as np
    import tensorflow as tf

    number = -2 if error is not None else (int(loaded.path.name.split("-")[1]) if loaded else -1)
    values = dist.strategy.run(lambda: tf.constant([float(number)]))
    seen = np.asarray(dist.strategy.gather(values, axis=0)).ravel()
    if error is not None:
        raise error
    if (seen == -2).any():
        raise TftuneError("Another worker could not start the run (see its output); stopped.")
    if len(set(seen.tolist())) > 1:
        raise TftuneError(
            f"The workers found different checkpoints to resume from ({sorted(set(seen.tolist()))}"
            f", -1 = none): the run directory must be on storage every worker reads."
        )


@contextlib.contextmanager
def loaded_inputs(cfg: RecipeConfig, datasets: Optional[DataSplits] = None, backbone_model=None):
    """Seeds, loads the data and the backbone, and sets the run's dtype policy for the
    duration: yields (splits, backbone, policy name)."""
    import keras

    from tftune.model import backbones

    keras.utils.set_random_seed(cfg.train.seed)
    splits = datasets if datasets is not None else load_data(cfg.data, cfg.train.seed)
    previous_policy = keras.mixed_precision.dtype_policy().name
    policy = mixed_precision_policy(cfg.train.mixed_precision, splits.modality)
    keras.mixed_precision.set_global_policy(policy)
    try:
        if backbone_model is not None:
            backbone = backbones.from_keras_model(backbone_model, cfg.backbone)
        else:
            backbone = backbones.load_backbone(cfg.backbone, tuple(cfg.data.image_size))
        if backbone.modality != splits.modality:
            raise ConfigError(
                f"Backbone {backbone.spec!r} takes {backbone.modality} inputs but the data is "
                f"{splits.modality}. Use a {splits.modality} backbone (see `tftune recipes`)."
            )
        yield splits, backbone, policy
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


@dataclasses.dataclass
class Prepared:
    """A run's model and data, ready for its stages (`prepare_run`)."""

    model: Any
    head: list
    unused: list
    pipe: pipeline.Pipeline
    train_ds: Any
    val_ds: Any
    test_ds: Any
    steps_per_epoch: int
    selections: list[list[int]]  # per stage: the indices of the groups it trains
    train_source: Any = None  # the cached training examples `train_ds` batches (pipe.source)


def prepare_run(cfg: RecipeConfig, splits: DataSplits, backbone, echo=print) -> Prepared:
    """Input pipelines, the classifier and its layer groups; every stage's group selection and
    monitor are checked here, before anything trains (a typo in stage 3 must not cost stage 1)."""
    from tftune.model import heads
    from tftune.training import stages as stages_mod

    batch = cfg.train.batch_size
    n_train = splits.sizes.get("train") or int(splits.train.cardinality())
    if n_train <= 0:
        raise DataError("The training split is empty or of unknown size; pass a finite dataset.")
    if splits.modality == "text":
        pipe = pipeline.text_pipeline(backbone.preprocessor, n_train, batch, cfg.train.seed)
    else:
        pipe = pipeline.image_pipeline(
            n_train, batch, cfg.train.seed, tuple(cfg.data.augment), tuple(cfg.data.image_size)
        )
    train_source = pipe.source(splits.train)
    train_ds = pipe.batches(train_source, training=True)
    # Validation and test only sum losses and hits: their batches need not keep the split's order.
    val_ds = pipe.eval_batches(pipe.source(splits.val))
    test_ds = pipe.eval_batches(pipe.source(splits.test)) if splits.test is not None else None
    if splits.modality == "text":
        # Length buckets make more (partly filled) batches than n / batch: count them once
        # (this also fills the tokenised cache), so schedules span the steps really run.
        steps_per_epoch = int(train_ds.reduce(0, lambda n, _: n + 1))
    else:
        steps_per_epoch = math.ceil(n_train / batch)

    model = heads.build_classifier(
        backbone, len(splits.class_names), cfg.head, tuple(cfg.data.image_size)
    )
    head = heads.head_layers(model)
    sample_x = next(iter(train_ds.take(1)))[0]
    unused = stages_mod.unused_layers(model, backbone.model, sample_x)
    if unused:
        echo(f"Frozen throughout (no gradient reaches them): {', '.join(l.name for l in unused)}")
        backbone.groups = stages_mod.prune_groups(backbone.groups, unused)
    echo(
        f"Layer groups, bottom to top: "
        + ", ".join(f"{g.name} ({g.num_params / 1e6:.2f}M)" for g in backbone.groups)
    )
    selections = []
    for i, stage in enumerate(cfg.stages):
        selections.append(
            stages_mod.selected_groups(stage.train, backbone.groups, f"stages.{i}.train")
        )
        stages_mod.check_monitor(stage.early_stopping.monitor, f"stages.{i}.early_stopping.monitor")
    return Prepared(model, head, unused, pipe, train_ds, val_ds, test_ds, steps_per_epoch,
                    selections, train_source)


def describe(splits: DataSplits, backbone, policy: str, echo) -> None:
    echo(
        f"Data: {splits.modality}, {len(splits.class_names)} classes "
        f"({', '.join(splits.class_names[:6])}{' ...' if len(splits.class_names) > 6 else ''}); "
        + ", ".join(f"{k} {v}" for k, v in splits.sizes.items())
    )
    echo(
        f"Backbone: {backbone.spec}"
        + (f"; {'; '.join(backbone.notes)}" if backbone.notes else "")
        + (f"; dtype policy {policy}" if policy != "float32" else "")
    )


def _train(cfg: RecipeConfig, splits: DataSplits, backbone, run: Path, started: float,
           echo, policy: str, *, dist=None, loaded=None, stop=None,
           run_path: Optional[Path] = None) -> RunResult:
    """The stages, the final evaluation and the run directory's files. With `loaded` (a
    checkpoint) the run continues where the checkpoint is: the model's variables come back
    before any stage data (the feature cache is rebuilt from them), finished stages are
    skipped, and the current stage gets its trainability from its own config, its optimizer,
    epoch metric sums and early stopping back from the checkpoint."""
    from tftune.training import loop, optim, stages as stages_mod
    from tftune.training.callbacks import EpochLine, HistoryCSV, StopOnNaN, write_rows

    if dist is None:
        import tensorflow as tf

        dist = distribute.Distribution(tf.distribute.get_strategy(), "default")
    stop = stop if stop is not None else StopRequest()
    describe(splits, backbone, policy, echo)
    if dist.kind != "default":
        echo(f"Distribution: {dist.describe(cfg.train.batch_size)}")
    rundir.write_json(run / rundir.CLASSES_FILE, splits.class_names)
    if splits.modality == "text":
        rundir.save_preprocessor(backbone.preprocessor, backbone.model, run)
    prep = prepare_run(cfg, splits, backbone, echo)
    model, head, unused, pipe = prep.model, prep.head, prep.unused, prep.pipe
    val_ds, test_ds = prep.val_ds, prep.test_ds
    steps_per_epoch, selections = prep.steps_per_epoch, prep.selections

    jit = _jit(cfg.train.jit_compile)
    verbose, epoch_lines = _verbosity(cfg.train.verbose)
    history_path = run / rundir.HISTORY_FILE
    state = loaded.state if loaded is not None else ckpt.RunState()
    digest = ckpt.digest(_comparable(cfg))
    history = list(state.history)
    results = [stages_mod.StageResult(**r) for r in state.results]
    best = dict(state.overall_best) if state.overall_best else None  # monitor, value, stage
    best_weights = loaded.arrays("overall_best") if loaded is not None and best else None
    if loaded is not None:
        loaded.restore({"model": model.variables})
        write_rows(history_path, history)  # drop rows of epochs the checkpoint does not have
        echo(f"Resuming from {loaded.path.parent.name}/{loaded.path.name}: "
             f"{state.describe(cfg.stages)}"
             + (f" (not usable: {'; '.join(loaded.skipped)})" if loaded.skipped else ""))

    def save(stage_index: int, at: Optional["loop.Position"] = None, srun=None) -> None:
        st = ckpt.RunState(
            stage=stage_index, epoch=at.epoch if at else 0, step=at.step if at else 0,
            stopped=at.stopped if at else False, history=list(history),
            results=[dataclasses.asdict(r) for r in results], overall_best=best,
            config_digest=digest,
        )
        variables: dict = {"model": model.variables}
        arrays: dict = {"overall_best": best_weights} if best_weights is not None else {}
        if srun is not None:
            variables["optimizer"] = srun.model.optimizer.variables
            variables["metrics"] = srun.steps.metric_variables
            st.early_stopping = srun.early_stopping_state()
            st.epoch_logs = [dict(l) for l in srun.epoch_logs]
            st.trainable = [v.path for v in srun.model.trainable_variables]
            if srun.stopper.best_weights is not None:
                arrays["early_stopping"] = srun.stopper.best_weights
        ckpt.write(run, st, variables, arrays, writer=dist.is_chief)
        saved[0] = st

    saved = [state]
    if loaded is None:
        save(0)  # the starting point: a run killed from here on can be resumed

    def stop_requested() -> bool:
        return dist.agree(bool(stop))

    def stopped_here() -> Preempted:
        return Preempted("stopped", where=saved[0].describe(cfg.stages))

    for i, stage in enumerate(cfg.stages):
        if i < state.stage:
            continue  # finished before the checkpoint
        train_idx = selections[i]
        stages_mod.set_trainable(
            backbone.model, backbone.groups, train_idx, head, cfg.backbone.train_bn, unused
        )
        multipliers = optim.group_multipliers(
            [g.name for g in backbone.groups], train_idx, stage.layer_decay,
            stage.lr_multipliers, f"stages.{i}"
        )
        echo(stages_mod.stage_banner(i, len(cfg.stages), stage, backbone.groups, train_idx, model))
        if any(m != 1.0 for m in multipliers.values()):
            echo("   lr multipliers: " + ", ".join(
                f"{g.name} x{multipliers[g.name]:.3g}" for g in backbone.groups
                if g.name in multipliers
            ) + ", head x1")
        callbacks = [
            HistoryCSV(history_path, i, stage.name, history),
            StopOnNaN(stage.name, f"stages.{i}.learning_rate"),
        ]
        if epoch_lines:
            callbacks.append(EpochLine(stage.name, stage.epochs, echo))
        faults.point("stage_begin", f"stage {i + 1}")
        if stop_requested():  # e.g. SIGTERM while loading: stop before the cache is built
            raise stopped_here()
        data = _stage_data(cfg, model, backbone, pipe, splits, prep, i, run, echo)
        resuming = loaded is not None and state.stage == i and (
            state.epoch or state.step or state.stopped
        )

        def resume_stage(srun, i=i):
            loaded.restore({"optimizer": srun.model.optimizer.variables,
                            "metrics": srun.steps.metric_variables})
            trainable = [v.path for v in srun.model.trainable_variables]
            if trainable != state.trainable:
                raise TftuneError(
                    f"Cannot resume stage {i + 1}: it trains {len(trainable)} variables, the "
                    f"checkpoint's stage trained {len(state.trainable)} (the backbone or its "
                    f"groups changed). Pass --overwrite to start again."
                )
            srun.load_early_stopping_state(state.early_stopping, loaded.arrays("early_stopping"))
            srun.epoch_logs[:] = [dict(l) for l in state.epoch_logs]
            return loop.Position(state.epoch, state.step, state.stopped)

        def hooks(srun, i=i):
            return loop.Hooks(checkpoint=lambda at: save(i, at, srun),
                              stop_requested=stop_requested,
                              every_steps=cfg.train.checkpoint_steps)

        try:
            result = stages_mod.run_stage(
                data.model, stage, i, data.train, data.val, steps_per_epoch, callbacks, jit,
                verbose, optim.variable_multipliers(backbone.groups, multipliers),
                distribution=dist, resume=resume_stage if resuming else None, hooks=hooks,
            )
        except Preempted:
            raise stopped_here() from None
        finally:
            data.close()
        if data.model is not model:  # trained through the cache: the full model shares its weights
            stages_mod.compile_like(model, data.model, jit)
        results.append(result)
        echo(
            f"   stage {stage.name}: best {result.monitor}={result.best_value:.4f} at epoch "
            f"{result.best_epoch}/{result.epochs_run} ({result.seconds:.0f}s); best weights restored"
        )
        if result.best_value is not None:
            if best is None or best["monitor"] != result.monitor or stages_mod.better(
                result.monitor, result.best_value, best["value"]
            ):
                best = {"monitor": result.monitor, "value": result.best_value, "stage": i}
                best_weights = model.get_weights()
        save(i + 1)  # the stage boundary
        faults.point("stage_end", f"stage {i + 1}")
        if stop_requested():
            raise stopped_here()
    if best is not None and best["stage"] != len(cfg.stages) - 1:
        echo(
            f"The last stage did not beat stage {best['stage'] + 1} "
            f"({cfg.stages[best['stage']].name!r}) on {best['monitor']}; keeping that stage's "
            f"weights."
        )
        model.set_weights(best_weights)
    if getattr(model, "optimizer", None) is None:
        # Resumed after the last stage: the saved model gets that stage's optimizer (fresh).
        last = len(cfg.stages) - 1
        stages_mod.set_trainable(backbone.model, backbone.groups, selections[last], head,
                                 cfg.backbone.train_bn, unused)
        mult = optim.group_multipliers([g.name for g in backbone.groups], selections[last],
                                       cfg.stages[last].layer_decay,
                                       cfg.stages[last].lr_multipliers, f"stages.{last}")
        stages_mod.compile_classifier(model, optim.build_optimizer(
            cfg.stages[last], cfg.stages[last].steps_per_epoch or steps_per_epoch,
            optim.variable_multipliers(backbone.groups, mult)), jit)

    evaluation = loop.Steps(model, dist)
    metrics: dict[str, Any] = {}
    for split, ds in (("val", val_ds), ("test", test_ds)):
        if ds is not None:
            metrics[split] = evaluation.evaluate(ds)
    metrics["stages"] = [dataclasses.asdict(r) for r in results]
    metrics["sizes"] = splits.sizes
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    faults.point("final:evaluated")
    rundir.save_model(model, run)
    faults.point("final:model_saved")
    rundir.write_json(run / rundir.METRICS_FILE, metrics)
    plots.training_curves(history_path, run / plots.TRAINING_CURVES_FILE, [s.early_stopping.monitor for s in cfg.stages])
    faults.point("final:metrics_written")
    ckpt.remove(run)  # finished: metrics.json and model.keras are the run's result
    summary = ", ".join(
        f"{split} accuracy {metrics[split]['accuracy']:.4f}" for split in ("val", "test") if split in metrics
    )
    run_path = run_path or run
    if dist.is_chief:
        echo(f"Done in {metrics['seconds']:.0f}s: {summary}. Run directory: {run_path}")
    else:
        echo(f"Done in {metrics['seconds']:.0f}s: {summary}. The chief worker wrote the run "
             f"directory ({run_path} on its machine).")
    return RunResult(run_dir=run_path, metrics=metrics, model=model,
                     class_names=splits.class_names)
