"""The recipe schema: typed, frozen dataclasses whose fields mirror a recipe file's keys.

Defaults live in the signatures; `tftune.config.coerce` builds these from YAML mappings
(unknown keys are errors with a suggestion) and checks every value's type and range.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, Union



@dataclasses.dataclass(frozen=True)
class GroupPattern:
    """A user-defined layer group: every backbone layer whose name matches `pattern`."""

    name: str
    pattern: str


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are split.

    `source`:
      - `folder`: images in `path/<class>/*`, or `path/{train,val,test}/<class>/*`.
      - `csv` / `jsonl`: texts with a label column (`text_column`, `label_column`).
      - `fashion_mnist`: the Fashion-MNIST arrays (offline asset, else `keras.datasets`).
      - `python`: datasets passed to `tftune.train(..., datasets=...)` from Python.
    Paths may name an offline asset as `asset:<name>[/<file>]`.
    """

    source: Literal["folder", "csv", "jsonl", "fashion_mnist", "python"] = "folder"
    path: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    classes: Optional[tuple[str, ...]] = None
    skip_unlisted_labels: bool = False
    deduplicate: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_train_examples: Optional[int] = None
    max_test_examples: Optional[int] = None
    image_size: tuple[int, int] = (224, 224)
    augment: tuple[str, ...] = ()
    # Multi-label (`task: multilabel`): several 0/1 columns, one per label (else the labels
    # are a list in `label_column`: `a|b` split on `label_separator`, or a JSON list).
    label_columns: Optional[tuple[str, ...]] = None
    label_separator: str = "|"
    # `balanced` (classification): each epoch draws as many training examples as the split
    # holds, every class equally likely, seeded by the epoch (the same draw on resume).
    sampling: Literal["shuffle", "balanced"] = "shuffle"
    # Text pairs: two text columns `[first, second]`, packed `[CLS] first [SEP] second [SEP]`
    # by the KerasHub preprocessor (replaces `text_column`).
    text_columns: Optional[tuple[str, str]] = None


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Which pretrained network, and how its layers are grouped.

    `spec` is one string: `keras_hub:<preset or local preset dir>`, `hf:<local Hugging Face
    checkpoint dir>`, `keras_applications:<Name>`, or `keras:<file.keras>`.
    `weights` applies to `keras_applications` specs: `imagenet`, a local weights file, an
    `asset:` name, or `none` for random initialisation. `sequence_length` (text) defaults to
    the backbone's maximum, at most 128 tokens.
    """

    spec: str = "keras_applications:MobileNetV2"
    weights: Optional[str] = "imagenet"
    sequence_length: Optional[int] = None
    allow_download: bool = False
    train_bn: bool = False
    groups: tuple[GroupPattern, ...] = ()
    generic_groups: int = 4


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The new classification head: pooling -> dropout -> Dense."""

    pooling: Literal["auto", "mean", "cls", "avg", "max"] = "auto"
    dropout: float = 0.1
    hidden_units: int = 0


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
    """Early stopping within one stage; the best epoch's weights are always restored.
    `monitor: auto` is the task's default monitor (`val_accuracy` for classification,
    `val_rmse` for regression, ...; see `tftune.tasks`)."""

    monitor: str = "val_loss"
    patience: int = 2
    min_delta: float = 0.0


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One training stage.

    `train` names what trains: `head`, `top:N` (the head and the top N layer groups),
    `all`, or a list of group names (the head always trains).

    `layer_decay` (e.g. 0.8, as in ELECTRA/BEiT; 1/2.6 = 0.385 is ULMFiT's) gives the trained
    group k places below the head `learning_rate * layer_decay**k`; `lr_multipliers`
    ({group name: multiplier}) sets groups' multipliers explicitly and wins over the decay.
    `warmup` < 1 is a fraction of the stage's steps, >= 1 a number of steps.
    """

    name: str = "stage"
    train: Union[str, tuple[str, ...]] = "head"
    epochs: int = 1
    learning_rate: float = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = 0.01
    warmup: float = 0.0
    schedule: Literal["constant", "cosine", "linear", "slanted_triangular", "one_cycle"] = "constant"
    layer_decay: Optional[float] = None
    lr_multipliers: Optional[dict[str, float]] = None
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    steps_per_epoch: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings shared by all stages.

    `feature_cache: auto` runs a stage's frozen bottom (its lowest frozen layer groups, or the
    whole backbone in a head-only stage) once over the data and trains the rest on the stored
    outputs, when that is exact: no random augmentation in the input pipeline. The outputs are
    kept in memory up to `cache_memory_mb` and spill to disk beyond it.

    `distribute` picks the `tf.distribute` strategy (see `tftune.runtime.distribute`): `auto` (a TPU
    when `tpu` or TPU_NAME names one, several workers when TF_CONFIG describes a cluster,
    MirroredStrategy on more than one GPU, else the default strategy), `default`, `mirrored`,
    `multi_worker` (cluster from TF_CONFIG) or `tpu`. `batch_size` is the global batch.
    A checkpoint is written at every epoch end, and every `checkpoint_steps` training steps
    when > 0 (see `tftune.rundir.checkpoint`).
    """

    batch_size: int = 32
    seed: int = 42
    jit_compile: Literal["auto", "on", "off"] = "auto"
    mixed_precision: Literal["auto", "off", "bfloat16", "float16"] = "off"
    verbose: Literal["auto", "bar", "epoch", "quiet"] = "auto"
    feature_cache: Literal["auto", "off"] = "auto"
    cache_memory_mb: int = 2048
    distribute: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    tpu: Optional[str] = None
    checkpoint_steps: int = 0
    # What the task optimises (see `tftune.tasks`): `auto` is the task's own (cross-entropy;
    # MSE for regression); `focal` (classification, multilabel); `mse` / `huber` (regression).
    loss: Literal["auto", "crossentropy", "focal", "mse", "huber"] = "auto"
    huber_delta: float = 1.0
    label_smoothing: float = 0.0
    # Per-example loss weights by class (classification): `balanced` (n / (classes * count))
    # or {class name: weight}; classes left out weigh 1.
    class_weight: Optional[Union[Literal["balanced"], dict[str, float]]] = None


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """A whole recipe: the base recipe it extends (`recipe`, see `tftune.config.defaults`),
    the problem type (`task`, see `tftune.tasks`), the data, the backbone, the head and the
    stages."""

    recipe: str = "image_classification"
    task: str = "classification"
    name: str = "run"
    description: str = ""
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    head: HeadConfig = HeadConfig()
    stages: tuple[StageConfig, ...] = (StageConfig(),)
    train: TrainConfig = TrainConfig()
