"""The recipe schema: typed, frozen dataclasses whose fields mirror a recipe file's keys.

Defaults live in the signatures and each numeric field's allowed range in its type
(`Annotated[int, Range(">= 1")]`); `tftune.config.coerce` builds these from YAML mappings
(unknown keys are errors with a suggestion) and checks every value's type and range, then a
dataclass's cross-field rules (its `check` method). The checks run when a recipe is loaded;
configs built directly in Python are taken as given.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Optional, Union

from tftune.config.ranges import Range
from tftune.errors import ConfigError

# The ranges most fields share.
Positive = Annotated[float, Range("> 0")]
NonNegative = Annotated[float, Range(">= 0")]
Fraction = Annotated[float, Range("[0, 1)")]
Count = Annotated[int, Range(">= 1")]
NonNegativeInt = Annotated[int, Range(">= 0")]
# A parameter of an augmentation layer (`data.augment`), and the list of augmentations.
AugmentValue = Union[bool, float, str, tuple[float, ...]]
Augmentations = tuple[Union[str, dict[str, Union[AugmentValue, dict[str, AugmentValue]]]], ...]


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
      - `image_csv`: images listed in the CSV file `path` (`image_column`: file paths relative
        to the CSV's folder), labelled by its `label_column` (a class, a number, or a list
        `a|b` / JSON list for `task: multilabel`) or by 0/1 `label_columns`.
      - `fashion_mnist`: the Fashion-MNIST arrays (offline asset, else `keras.datasets`).
      - `tfds`: the prepared TensorFlow Datasets dataset `name` (`mnist`, `my_dataset:1.0.0`)
        in `data_dir` (default: TFDS's own), read offline; `download: true` lets TFDS download
        and prepare it. `splits` maps `train` / `val` / `test` to TFDS splits (`train[:90%]`);
        default: `train`, and `validation` / `test` where the dataset has them.
      - `tfrecord`: TFRecord files of `tf.train.Example`s, `path` a glob (`data/train-*.tfrecord`,
        any `tf.io.gfile` path) or `splits` one glob per part; `compression`: none, gzip, zlib.
        The label (`label_key`) is an int64 class index (into `classes` when given), a bytes
        class name or a float (regression).
      For both, the input is the feature `image_key` (encoded image bytes / a TFDS Image) or
      `text_key` (text); unset, `image` if the data has it, else `text`. A part (`val`, `test`)
      `splits` does not map is drawn from the training part by the fractions below.
      - `python`: datasets passed to `tftune.train(..., datasets=...)` from Python.
    Paths may name an offline asset as `asset:<name>[/<file>]`.

    `val_fraction`, `test_fraction`: the shares of the examples held out for validation and
    testing (stratified by class), each in [0, 1) and together < 1, the rest trains.
    `val_fraction` must be > 0 for `csv`, `jsonl` and `fashion_mnist`, whose validation split
    (which early stopping watches) is always drawn from the data; a `folder` with a `val/`
    subfolder and `python` datasets bring their own.
    `max_train_examples`, `max_test_examples`: null (all) or >= 1, a stratified subsample.
    `split_seed`: seeds the split and the subsamples, in [0, 2**32 - 1]; null: `train.seed`.
    Set it to vary `train.seed` (a sweep over seeds, several seeds of one recipe) while every
    run validates and tests on the same examples.
    `image_size`: [height, width] the images are resized to, each >= 1 (a `keras_applications`
    backbone needs at least its own minimum, 32 for most, 75 for InceptionV3).
    """

    source: Literal["folder", "csv", "jsonl", "image_csv", "fashion_mnist", "tfds", "tfrecord", "python"] = "folder"
    path: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    classes: Optional[tuple[str, ...]] = None
    skip_unlisted_labels: bool = False
    deduplicate: bool = False
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    max_train_examples: Optional[Count] = None
    max_test_examples: Optional[Count] = None
    split_seed: Optional[Annotated[int, Range("[0, 4294967295]")]] = None
    image_size: tuple[Count, Count] = (224, 224)
    # Image augmentation (training batches only), in order: names (`flip`, `rotation`, `zoom`,
    # `translation`, `resized_crop`, `contrast`, `brightness`, `color_jitter`, `randaugment`,
    # `augmix`, `mixup`, `cutmix`) or {name: {parameter: value}}; see `tftune.data.augment`.
    # A stage's own `augment` replaces this list for that stage.
    augment: Augmentations = ()
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
    # `csv` and `image_csv` files: the field separator (one character; "\t" for a TSV).
    delimiter: str = ","
    # `image_csv`: the column naming each image file (relative to the CSV's folder).
    image_column: str = "file"
    # `tfds` and `tfrecord` (see above): the dataset, its parts and the features read.
    name: Optional[str] = None
    data_dir: Optional[str] = None
    download: bool = False
    splits: Optional[dict[str, str]] = None
    image_key: Optional[str] = None
    text_key: Optional[str] = None
    label_key: str = "label"
    compression: Literal["none", "gzip", "zlib"] = "none"
    # `csv`, `jsonl` and `image_csv` files: their text encoding, any Python codec name
    # (`utf-8` also reads a byte-order mark; `latin-1`, `cp1252`, `utf-16`, ...).
    encoding: str = "utf-8"
    # `folder` and `image_csv`: leave out images that cannot be decoded (named in the run's
    # log and in skipped_files.txt in the run directory) instead of stopping with an error.
    skip_bad_files: bool = False

    def split_seed_for(self, run_seed: int) -> int:
        """The seed of the split and the subsamples: `split_seed`, else the run's `train.seed`."""
        return run_seed if self.split_seed is None else self.split_seed

    def check(self, where: str = "data") -> None:
        """The rules between fields, run when a recipe is loaded (after each field's range)."""
        key = f"{where}." if where else ""
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"Invalid values for '{key}val_fraction' and '{key}test_fraction'. "
                f"Expected a sum < 1 (the rest of the examples is the training split). "
                f"Received: {self.val_fraction} + {self.test_fraction}"
            )
        if self.augment:
            from tftune.data.augment import parse

            parse(self.augment, f"{key}augment")
        _check_encoding(self.encoding, f"{key}encoding")
        if len(self.delimiter) != 1:
            raise ConfigError(
                f"Invalid value for '{key}delimiter'. Expected one character (\",\", \";\", "
                f"\"\\t\" ...). Received: {self.delimiter!r}"
            )
        self._check_records(key)
        if self.val_fraction == 0 and self.source in ("csv", "jsonl", "image_csv", "fashion_mnist"):
            raise ConfigError(
                f"Invalid value for '{key}val_fraction'. Expected a number in (0, 1) with "
                f"{key}source {self.source!r}: training draws its validation split from the "
                f"data. Received: {self.val_fraction}"
            )

    def _check_records(self, key: str) -> None:
        """The `tfds` / `tfrecord` keys: set where they apply, and only there."""
        records = self.source in ("tfds", "tfrecord")
        if self.source == "tfds" and not self.name:
            raise ConfigError(
                f"Invalid value for '{key}name'. Expected the TFDS dataset's name (e.g. mnist, "
                f"my_dataset:1.0.0) with {key}source 'tfds'. Received: {self.name!r}"
            )
        if self.splits is not None:
            unknown = sorted(set(self.splits) - {"train", "val", "test"})
            if unknown or "train" not in self.splits:
                raise ConfigError(
                    f"Invalid value for '{key}splits'. Expected a mapping with 'train' and "
                    f"optionally 'val' and 'test'. Received keys: {sorted(self.splits)}"
                )
            empty = sorted(k for k, v in self.splits.items() if not str(v).strip())
            if empty:
                raise ConfigError(f"Invalid value for '{key}splits.{empty[0]}'. Expected a "
                                  f"{'glob' if self.source == 'tfrecord' else 'split'}. Received: ''")
        if self.source == "tfrecord" and self.splits and self.path:
            raise ConfigError(
                f"Invalid values for '{key}path' and '{key}splits'. Expected one of them with "
                f"{key}source 'tfrecord' (a glob of all records, or one glob per part). "
                f"Received: path={self.path!r}, splits={dict(self.splits)}"
            )
        if self.image_key and self.text_key:
            raise ConfigError(
                f"Invalid values for '{key}image_key' and '{key}text_key'. Expected one input "
                f"feature. Received: image_key={self.image_key!r}, text_key={self.text_key!r}"
            )
        set_keys = [k for k, on in (("name", self.name), ("data_dir", self.data_dir),
                                    ("download", self.download), ("splits", self.splits),
                                    ("image_key", self.image_key), ("text_key", self.text_key),
                                    ("compression", self.compression != "none")) if on]
        for option in set_keys:
            allowed = ({"name": ("tfds",), "data_dir": ("tfds",), "download": ("tfds",),
                        "compression": ("tfrecord",)}.get(option, ("tfds", "tfrecord")))
            if self.source not in allowed:
                raise ConfigError(
                    f"'{key}{option}' applies to {key}source {' or '.join(map(repr, allowed))}. "
                    f"Remove it, or change the source. Received: source={self.source!r}"
                )
        if records and (self.text_columns or self.label_columns):
            option = "text_columns" if self.text_columns else "label_columns"
            raise ConfigError(
                f"'{key}{option}' applies to CSV / JSONL sources. With {key}source "
                f"{self.source!r}, name the features with {key}text_key / {key}label_key. "
                f"Received: {option}={getattr(self, option)}"
            )


def _check_encoding(encoding: str, key: str) -> None:
    """`data.encoding` must name a Python text codec."""
    import codecs

    try:
        text = codecs.lookup(encoding)._is_text_encoding
    except LookupError:
        text = None
    if not text:
        what = "a codec that is not a text encoding" if text is False else "an unknown codec"
        raise ConfigError(
            f"Invalid value for '{key}': {what}. Expected the name of a Python text encoding "
            f"(utf-8, latin-1, cp1252, utf-16, shift_jis, ...). Received: {encoding!r}"
        )


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Which pretrained network, and how its layers are grouped.

    `spec` is one string: `keras_hub:<preset or local preset dir>`, `hf:<local Hugging Face
    checkpoint dir>`, `keras_applications:<Name>`, or `keras:<file.keras>`.
    `weights` applies to `keras_applications` specs: `imagenet`, a local weights file, an
    `asset:` name, or `none` for random initialisation. `sequence_length` (text): null (the
    backbone's maximum, at most 128 tokens) or >= 2 (room for the start and end tokens).
    `generic_groups` (>= 1): how many layer groups a backbone without known groups is split into.
    `preprocessor` (text): a KerasHub preset folder (or `asset:` name) holding the tokenizer,
    written by `preprocessor.save_to_preset(folder)`; needed for a user's text model
    (`keras:<file.keras>` or `backbone_model=`) unless it is a KerasHub task saved with its
    preprocessor, and replaces a `keras_hub:` preset's own when set.
    """

    spec: str = "keras_applications:MobileNetV2"
    weights: Optional[str] = "imagenet"
    sequence_length: Optional[Annotated[int, Range(">= 2")]] = None
    allow_download: bool = False
    train_bn: bool = False
    groups: tuple[GroupPattern, ...] = ()
    generic_groups: Count = 4
    preprocessor: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The new classification head: pooling -> dropout -> Dense.

    `dropout` in [0, 1); `hidden_units` >= 0 (0: no hidden layer before the output).
    """

    pooling: Literal["auto", "mean", "cls", "avg", "max"] = "auto"
    dropout: Fraction = 0.1
    hidden_units: NonNegativeInt = 0


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
    """Early stopping within one stage; the best epoch's weights are always restored.

    `patience` >= 0 epochs without improvement; `min_delta` >= 0, the least change that counts.
    `monitor: auto` is the task's default monitor (`val_accuracy` for classification,
    `val_rmse` for regression, ...; see `tftune.tasks`).
    """

    monitor: str = "val_loss"
    patience: NonNegativeInt = 2
    min_delta: NonNegative = 0.0


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """A stage's `peft` mode trains a few weights of its selected groups instead of all of
    them (the head always trains fully): `lora` (LoRA adapters of the targeted layers),
    `lora_bias` (+ every bias), `lora_norm` (+ normalization layers' scale and shift),
    `bitfit` (biases only), `norm` (normalization layers only); see `tftune.model.peft`.
    `peft_base: int8` quantizes the frozen base.

    This is the stage's `lora` mapping: `rank` >= 1, `alpha` > 0 (the update is scaled by
    alpha / rank), and `targets`: regexes matched against each Dense / EinsumDense / Conv /
    Embedding layer's name (full match) or path (search); None = the backbone's defaults
    (attention query and value projections in a transformer, else the top-most conv / dense
    layer of each selected group). `peft_base: int8` needs a PEFT mode and a backbone with
    Dense / EinsumDense layers (Keras has no int8 convolution); see `tftune.model.peft`.
    """

    rank: Count = 8
    alpha: Positive = 16.0
    targets: Optional[tuple[str, ...]] = None


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One training stage.

    `train` names what trains: `head`, `top:N` (the head and the top N layer groups),
    `all`, or a list of group names (the head always trains).

    `epochs` >= 1; `learning_rate` > 0 (the head's); `weight_decay` >= 0.
    `layer_decay` in (0, 1] (e.g. 0.8, as in ELECTRA/BEiT; 1/2.6 = 0.385 is ULMFiT's) gives the
    trained group k places below the head `learning_rate * layer_decay**k`; `lr_multipliers`
    ({group name: multiplier > 0}) sets groups' multipliers explicitly and wins over the decay.
    `warmup` in [0, 1) is a fraction of the stage's steps, an integer >= 1 a number of steps.
    `steps_per_epoch`: null (one pass over the training split) or >= 1.
    """

    name: str = "stage"
    train: Union[str, tuple[str, ...]] = "head"
    epochs: Count = 1
    learning_rate: Positive = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: NonNegative = 0.01
    warmup: Union[Fraction, Count] = 0.0
    schedule: Literal["constant", "cosine", "linear", "slanted_triangular", "one_cycle"] = "constant"
    layer_decay: Optional[Annotated[float, Range("(0, 1]")]] = None
    lr_multipliers: Optional[dict[str, Positive]] = None
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    steps_per_epoch: Optional[Count] = None
    peft: Literal["none", "lora", "lora_bias", "lora_norm", "bitfit", "norm"] = "none"
    lora: LoraConfig = LoraConfig()
    peft_base: Literal["none", "int8"] = "none"
    # The stage's image augmentation, replacing `data.augment` for this stage (null: that
    # list; `[]`: none, so a head-only stage can train on cached features while a later stage
    # augments).
    augment: Optional[Augmentations] = None

    def check(self, where: str = "stage") -> None:
        if self.augment:
            from tftune.data.augment import parse

            parse(self.augment, f"{where}.augment" if where else "augment")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings shared by all stages.

    `batch_size` (>= 1) is the global batch. `seed` in [0, 2**32 - 1] (NumPy's seed range).

    `feature_cache: auto` runs a stage's frozen bottom (its lowest frozen layer groups, or the
    whole backbone in a head-only stage) once over the data and trains the rest on the stored
    outputs, when that is exact: no random augmentation in the input pipeline. The outputs are
    kept in memory up to `cache_memory_mb` (>= 0) and spill to disk beyond it.

    `distribute` picks the `tf.distribute` strategy (see `tftune.runtime.distribute`): `auto` (a TPU
    when `tpu` or TPU_NAME names one, several workers when TF_CONFIG describes a cluster,
    MirroredStrategy on more than one GPU, else the default strategy), `default`, `mirrored`,
    `multi_worker` (cluster from TF_CONFIG) or `tpu`.
    A checkpoint is written at every epoch end, and every `checkpoint_steps` (>= 0) training
    steps when > 0 (see `tftune.rundir.checkpoint`).
    """

    batch_size: Count = 32
    seed: Annotated[int, Range("[0, 4294967295]")] = 42
    # XLA and the dtype policy per device (`tftune.training.device.choose_precision`): auto
    # is XLA on GPU / TPU, off on CPU; mixed precision auto is bfloat16 on TPU and on GPUs of
    # compute capability >= 8.0, float16 with loss scaling on 7.x, float32 below, and on CPU
    # bfloat16 for text with native bfloat16, else float32.
    jit_compile: Literal["auto", "on", "off"] = "auto"
    mixed_precision: Literal["auto", "off", "bfloat16", "float16"] = "off"
    verbose: Literal["auto", "bar", "epoch", "quiet"] = "auto"
    feature_cache: Literal["auto", "off"] = "auto"
    cache_memory_mb: NonNegativeInt = 2048
    distribute: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    tpu: Optional[str] = None
    checkpoint_steps: NonNegativeInt = 0
    # Training steps per `tf.function` call: `auto` runs 32 in one call in a stage that trains
    # only the head on cached features (a step there costs less than Python's per-call work),
    # and 1 elsewhere. Callbacks, stop requests (SIGTERM) and step checkpoints act per call.
    steps_per_execution: Union[Literal["auto"], Count] = "auto"
    # Static-shape batches (see `tftune.data.static_shapes`): texts padded to one of a few
    # lengths (`static_min_length` (>= 1) and its doublings below the backbone's
    # sequence_length, then the sequence_length; >= sequence_length: that length only),
    # full training batches (the remainder dropped, other examples each epoch), evaluation
    # batches filled with weight-0 rows (every example counted once), several steps a call.
    # `auto` is on when the strategy is a TPU (a new shape is a new compilation there).
    static_shapes: Literal["auto", "on", "off"] = "auto"
    static_min_length: Count = 16
    # TensorBoard event files in runs/<name>/tensorboard: per-epoch metrics, each trained
    # group's learning rate, the stage boundaries (`tensorboard --logdir runs/<name>/tensorboard`).
    tensorboard: bool = False
    # Extra Keras callbacks in every stage: "package.module:factory" entries, each called with
    # no arguments to make a keras.callbacks.Callback.
    callbacks: tuple[str, ...] = ()
    # What the task optimises (see `tftune.tasks`): `auto` is the task's own (cross-entropy;
    # MSE for regression); `focal` (classification, multilabel); `mse` / `huber` (regression).
    loss: Literal["auto", "crossentropy", "focal", "mse", "huber"] = "auto"
    huber_delta: Positive = 1.0
    label_smoothing: Fraction = 0.0
    # Per-example loss weights by class (classification): `balanced` (n / (classes * count))
    # or {class name: weight}; classes left out weigh 1.
    class_weight: Optional[Union[Literal["balanced"], dict[str, Positive]]] = None
    # Weight averaging in every stage: `ema` keeps an exponential moving average of the
    # trained weights (the optimizer's, Keras' `use_ema`, updated every step with
    # `ema_momentum` in [0, 1)); validation, early stopping and the restored best epoch use
    # the averaged weights, training continues from the raw ones. `uniform` / `greedy` make a
    # soup of the stage's epochs when it ends: the mean of the best `average_epochs` (>= 2)
    # epochs, or the greedy soup chosen on validation; see `tftune.training.average`.
    average: Literal["none", "ema", "uniform", "greedy"] = "none"
    ema_momentum: Annotated[float, Range("[0, 1)")] = 0.99
    average_epochs: Annotated[int, Range(">= 2")] = 3
    # A wall-clock budget for the whole run (loading, every stage, the final evaluation):
    # seconds, or a duration such as "10m", "1h30m", "90s". The run measures what its cache
    # fills and epochs cost, plans each stage's epochs to end within it, and stops at the
    # limit with the best weights (see `tftune.training.budget`). `--resume` gets what is left.
    time_limit: Optional[Union[Positive, str]] = None
    # Score the test split when training ends (metrics.json, the closing line). false keeps it
    # unseen and its time out of a time limit, for runs that tune on validation (a sweep's
    # trials set it); `tftune evaluate RUN --split test` scores it later, once.
    evaluate_test: bool = True

    def check(self, where: str = "train") -> None:
        if self.time_limit is not None:
            from tftune.training.budget import parse_duration

            parse_duration(self.time_limit, f"{where}.time_limit" if where else "time_limit")

    @property
    def time_limit_seconds(self) -> Optional[float]:
        if self.time_limit is None:
            return None
        from tftune.training.budget import parse_duration

        return parse_duration(self.time_limit)


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
