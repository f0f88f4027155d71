"""Before any stage trains: seeds, data, backbone and dtype policy (`loaded_inputs`), then
the input pipelines, the task, the model with its head and every stage's plan (`prepare_run`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Optional

from tftune.config import RecipeConfig
from tftune.data import DataSplits, load_data, pipeline
from tftune.errors import ConfigError, DataError
from tftune.training.device import choose_precision, describe_device


@contextlib.contextmanager
def loaded_inputs(cfg: RecipeConfig, datasets: Optional[DataSplits] = None, backbone_model=None,
                  device=None):
    """Seeds, loads the data and the backbone, and sets the run's dtype policy for the
    duration: yields (splits, backbone, `device.Precision`). `device` (a
    `device.DeviceDescription`) is this machine as TensorFlow describes it unless given
    (the runner passes the one its distribution sees: a TPU)."""
    import keras

    from tftune.model import backbones
    from tftune.tasks import get_task

    keras.utils.set_random_seed(cfg.train.seed)
    reader = get_task(cfg.task, (), cfg)  # reads the labels; bound to the classes in prepare_run
    reader.check_settings()
    splits = datasets if datasets is not None else load_data(cfg.data, cfg.train.seed, reader)
    previous_policy = keras.mixed_precision.dtype_policy().name
    precision = choose_precision(cfg.train.mixed_precision, cfg.train.jit_compile,
                                 splits.modality, device or describe_device())
    keras.mixed_precision.set_global_policy(precision.policy)
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
        yield splits, backbone, precision
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


@dataclasses.dataclass
class Prepared:
    """A run's model and data, ready for its stages (`prepare_run`)."""

    splits: DataSplits
    task: Any  # tftune.tasks.Task
    model: Any
    head: list
    unused: list
    pipe: pipeline.Pipeline
    train_source: Any  # the cached training examples (pipe.source)
    train_ds: Any
    val_ds: Any
    test_ds: Any
    steps_per_epoch: int
    plans: list  # per stage: its tftune.training.plan.StagePlan
    # per stage: its pipeline (`pipe`, or one with the stage's own augmentation)
    stage_pipes: list = dataclasses.field(default_factory=list)


def static_shapes(cfg: RecipeConfig) -> bool:
    """Whether the run's batches have static shapes (`train.static_shapes`; `auto`: on when
    the strategy `train.distribute` resolves to is a TPU)."""
    from tftune.data.static_shapes import enabled
    from tftune.runtime.distribute import resolve

    if cfg.train.static_shapes != "auto":
        return enabled(cfg.train.static_shapes, "default")
    return enabled("auto", resolve(cfg.train.distribute, cfg.train.tpu))


def _pipeline(cfg: RecipeConfig, splits: DataSplits, backbone, n_train: int, batch: int):
    static = static_shapes(cfg)
    if splits.modality == "text":
        return pipeline.text_pipeline(backbone.preprocessor, n_train, batch, cfg.train.seed,
                                      static, cfg.train.static_min_length)
    return pipeline.image_pipeline(
        n_train, batch, cfg.train.seed, tuple(cfg.data.augment), tuple(cfg.data.image_size),
        num_classes=len(splits.class_names), static=static,
    )


def _stage_pipes(cfg: RecipeConfig, pipe: pipeline.Pipeline, task) -> list:
    """Each stage's pipeline: the run's, or one with the stage's own `augment` (sharing the
    run's decoded sources). Mixing (mixup / cutmix) anywhere makes the task's loss take class
    probabilities."""
    from tftune.data.augment import check_augmentations

    check_augmentations(cfg, pipe.modality, task)
    made = {}
    pipes = []
    for stage in cfg.stages:
        if stage.augment is None or tuple(stage.augment) == tuple(pipe.augment):
            pipes.append(pipe)
            continue
        key = repr(stage.augment)
        if key not in made:
            made[key] = pipe.with_augment(tuple(stage.augment))
        pipes.append(made[key])
    task.soft_labels = any(p.mixes for p in pipes)
    return pipes


def prepare_run(cfg: RecipeConfig, splits: DataSplits, backbone, echo=print, worker=None,
                agree_max=None, whole: Optional[DataSplits] = None) -> Prepared:
    """Input pipelines, the task, the classifier and its layer groups; every stage's plan and
    monitor are checked here, before anything trains (a typo in stage 3 must not cost stage 1).

    `worker` (a `tftune.data.shards.WorkerInput`): `splits` are this worker's shard, batched
    per replica; the steps per epoch are the longest shard's (`agree_max` over the workers);
    the task learns from the labels of the `whole` training split (a standardised target's
    mean and std, class weights: the same on every worker), balanced sampling draws from the
    worker's shard."""
    from tftune.model import heads
    from tftune.tasks import get_task
    from tftune.training.plan import StagePlan
    from tftune.training.trainable import prune_groups, unused_layers

    n_train = splits.sizes.get("train") or int(splits.train.cardinality())
    if n_train <= 0:
        raise DataError("The training split is empty or of unknown size; pass a finite dataset.")
    task = get_task(cfg.task, splits.class_names, cfg)
    if len(splits.class_names) < task.min_classes:
        raise DataError(f"Task {task.name!r} needs at least {task.min_classes} classes. "
                        f"Received: {splits.class_names}")
    labels = train_labels(splits) if task.needs_train_labels or cfg.data.sampling != "shuffle" else None
    if task.needs_train_labels:
        task.fit(labels if whole is None else train_labels(whole))
    batch = worker.batch_size if worker is not None else cfg.train.batch_size
    pipe = _pipeline(cfg, splits, backbone, n_train, batch)
    if cfg.data.sampling == "balanced":  # Task.check_settings allowed it
        pipe.resample = pipeline.balanced_counts(labels, len(splits.class_names))
    stage_pipes = _stage_pipes(cfg, pipe, task)
    train_source = pipe.source(splits.train)
    train_ds = pipe.batches(train_source, training=True)
    # Validation and test only sum losses and hits: their batches need not keep the split's order.
    val_ds = pipe.eval_batches(pipe.source(splits.val))
    test_ds = pipe.eval_batches(pipe.source(splits.test)) if splits.test is not None else None
    if splits.modality == "text":
        # Length buckets make more (partly filled) batches than n / batch: count them once
        # (this also fills the tokenised cache), so schedules span the steps really run.
        steps_per_epoch = int(train_ds.reduce(0, lambda n, _: n + 1))
    elif pipe.static is not None:  # the last partial batch is dropped
        steps_per_epoch = n_train // batch
    else:
        steps_per_epoch = math.ceil(n_train / batch)
    if steps_per_epoch == 0:
        raise DataError(
            f"train.static_shapes drops each epoch's partial batches (per text length bucket), "
            f"and the {n_train} training examples make no full batch of "
            f"{cfg.train.batch_size}. Use a smaller train.batch_size (or a larger "
            f"train.static_min_length), or train.static_shapes: off.")
    if worker is not None:
        steps_per_epoch = int(agree_max(float(worker.steps(steps_per_epoch))))

    model = heads.build_classifier(backbone, task, cfg.head, tuple(cfg.data.image_size))
    head = heads.head_layers(model)
    sample_x = next(iter(train_ds.take(1)))[0]
    unused = unused_layers(model, backbone.model, sample_x)
    if unused:
        echo(f"Frozen throughout (no gradient reaches them): {', '.join(l.name for l in unused)}")
        backbone.groups = prune_groups(backbone.groups, unused)
    echo(
        "Layer groups, bottom to top: "
        + ", ".join(f"{g.name} ({g.num_params / 1e6:.2f}M)" for g in backbone.groups)
    )
    plans = StagePlan.all(cfg, backbone.groups)
    for plan in plans:
        monitor = plan.stage.early_stopping.monitor
        task.check_monitor(monitor, f"stages.{plan.index}.early_stopping.monitor")
        if plan.soup != "none" and not monitor.startswith("val_"):
            raise ConfigError(
                f"Invalid value for 'stages.{plan.index}.early_stopping.monitor' with "
                f"train.average {plan.soup!r}: a soup is chosen on the validation split, so the "
                f"monitor must be a validation metric (val_...). Received: {monitor!r}")
    return Prepared(splits, task, model, head, unused, pipe, train_source, train_ds, val_ds,
                    test_ds, steps_per_epoch, plans, stage_pipes)


def train_labels(splits: DataSplits):
    """The training split's labels as numpy (from the source, else one pass over the split)."""
    import numpy as np

    if "train" in splits.labels:
        return splits.labels["train"]
    return np.concatenate([np.asarray(y) for y in splits.train.map(lambda x, y: y).batch(4096)])


def describe(splits: DataSplits, backbone, precision, echo) -> None:
    """The run log's first lines: the data, the backbone and the precision (dtype policy,
    loss scaling, XLA, and why: a `device.Precision`)."""
    names = splits.class_names
    labels = (f"{len(names)} classes ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})"
              if names else "a numeric target")
    echo(f"Data: {splits.modality}, {labels}; " + ", ".join(f"{k} {v}" for k, v in splits.sizes.items()))
    echo(
        f"Backbone: {backbone.spec}"
        + (f"; {'; '.join(backbone.notes)}" if backbone.notes else "")
    )
    echo(precision.describe())
