"""`train`: recipe config -> data -> backbone -> head -> stages -> run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from tftune import pipeline, plots, rundir
from tftune.config import RecipeConfig, dump_config, load_recipe
from tftune.data import DataSplits, load_data
from tftune.errors import ConfigError, DataError



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
    the frozen prefix's cached outputs."""

    model: Any
    train: Any
    val: Any
    caches: tuple = ()

    def close(self):
        for c in self.caches:
            c.close()


def _stage_data(cfg: RecipeConfig, model, backbone, pipe, splits, train_ds, val_ds, run, echo):
    from tftune import cache

    uncached = _StageData(model, train_ds, val_ds)
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
    train_b, val_b, caches = cache.cached_datasets(
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
    return _StageData(plan.suffix, train_b, val_b, tuple(caches))


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
        echo: where progress lines go.
    """
    if not isinstance(config, RecipeConfig):
        config = load_recipe(config, overrides)
    elif overrides:
        from tftune.config import config_from_dict, to_dict

        config = config_from_dict(to_dict(config), overrides)

    cfg = config
    started = time.perf_counter()
    with loaded_inputs(cfg, datasets, backbone_model) as (splits, backbone, policy):
        # Only now, with data and backbone loaded, does the run directory get created.
        run = rundir.prepare(output_dir or cfg.output_dir, cfg.name, overwrite)
        rundir.write_text(run / rundir.CONFIG_FILE, dump_config(cfg))
        rundir.write_json(run / rundir.VERSIONS_FILE, rundir.versions())
        return _train(cfg, splits, backbone, run, started, echo, policy)


@contextlib.contextmanager
def loaded_inputs(cfg: RecipeConfig, datasets: Optional[DataSplits] = None, backbone_model=None):
    """Seeds, loads the data and the backbone, and sets the run's dtype policy for the
    duration: yields (splits, backbone, policy name)."""
    import keras

    from tftune import backbones

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


def prepare_run(cfg: RecipeConfig, splits: DataSplits, backbone, echo=print) -> Prepared:
    """Input pipelines, the classifier and its layer groups; every stage's group selection and
    monitor are checked here, before anything trains (a typo in stage 3 must not cost stage 1)."""
    from tftune import heads, stages as stages_mod

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
    train_ds = pipe.prepare(splits.train, training=True)
    val_ds = pipe.prepare(splits.val, training=False)
    test_ds = pipe.prepare(splits.test, training=False) if splits.test is not None else None
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
                    selections)


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
           echo, policy: str) -> RunResult:
    from tftune import optim, stages as stages_mod
    from tftune.callbacks import EpochLine, HistoryCSV, StopOnNaN

    describe(splits, backbone, policy, echo)
    rundir.write_json(run / rundir.CLASSES_FILE, splits.class_names)
    if splits.modality == "text":
        rundir.save_preprocessor(backbone.preprocessor, backbone.model, run)
    prep = prepare_run(cfg, splits, backbone, echo)
    model, head, unused, pipe = prep.model, prep.head, prep.unused, prep.pipe
    train_ds, val_ds, test_ds = prep.train_ds, prep.val_ds, prep.test_ds
    steps_per_epoch, selections = prep.steps_per_epoch, prep.selections

    jit = _jit(cfg.train.jit_compile)
    verbose, epoch_lines = _verbosity(cfg.train.verbose)
    history_path = run / rundir.HISTORY_FILE
    results = []
    overall_best = None  # (monitor, value, weights, stage index)
    group_names = [g.name for g in backbone.groups]
    for i, stage in enumerate(cfg.stages):
        train_idx = selections[i]
        stages_mod.set_trainable(
            backbone.model, backbone.groups, train_idx, head, cfg.backbone.train_bn, unused
        )
        multipliers = optim.group_multipliers(
            group_names, train_idx, stage.layer_decay, stage.lr_multipliers, f"stages.{i}"
        )
        echo(stages_mod.stage_banner(i, len(cfg.stages), stage, backbone.groups, train_idx, model))
        if any(m != 1.0 for m in multipliers.values()):
            echo("   lr multipliers: " + ", ".join(
                f"{n} x{multipliers[n]:.3g}" for n in group_names if n in multipliers
            ) + ", head x1")
        callbacks = [
            HistoryCSV(history_path, i, stage.name),
            StopOnNaN(stage.name, f"stages.{i}.learning_rate"),
        ]
        if epoch_lines:
            callbacks.append(EpochLine(stage.name, stage.epochs, echo))
        data = _stage_data(cfg, model, backbone, pipe, splits, train_ds, val_ds, run, echo)
        try:
            result = stages_mod.run_stage(
                data.model, stage, i, data.train, data.val, steps_per_epoch, callbacks, jit,
                verbose, optim.variable_multipliers(backbone.groups, multipliers),
            )
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
            if overall_best is None or overall_best[0] != result.monitor or stages_mod.better(
                result.monitor, result.best_value, overall_best[1]
            ):
                overall_best = (result.monitor, result.best_value, model.get_weights(), i)
    if overall_best is not None and overall_best[3] != len(cfg.stages) - 1:
        echo(
            f"The last stage did not beat stage {overall_best[3] + 1} "
            f"({cfg.stages[overall_best[3]].name!r}) on {overall_best[0]}; keeping that stage's "
            f"weights."
        )
        model.set_weights(overall_best[2])

    metrics: dict[str, Any] = {}
    for split, ds in (("val", val_ds), ("test", test_ds)):
        if ds is not None:
            values = model.evaluate(ds, verbose=0, return_dict=True)
            metrics[split] = {k: float(v) for k, v in values.items()}
    metrics["stages"] = [dataclasses.asdict(r) for r in results]
    metrics["sizes"] = splits.sizes
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    rundir.save_model(model, run)
    rundir.write_json(run / rundir.METRICS_FILE, metrics)
    plots.training_curves(history_path, run / plots.TRAINING_CURVES_FILE, [s.early_stopping.monitor for s in cfg.stages])
    summary = ", ".join(
        f"{split} accuracy {metrics[split]['accuracy']:.4f}" for split in ("val", "test") if split in metrics
    )
    echo(f"Done in {metrics['seconds']:.0f}s: {summary}. Run directory: {run}")
    return RunResult(run_dir=run, metrics=metrics, model=model, class_names=splits.class_names)
