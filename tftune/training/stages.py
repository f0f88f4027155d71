"""Stages: which layer groups train, for how long, how fast; freezing happens only between
stages, with a fresh optimizer and a recompile each time."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import keras

from tftune.model.backbones import LayerGroup
from tftune.config import StageConfig
from tftune.errors import ConfigError, did_you_mean

BN_CLASSES = ("BatchNormalization", "SyncBatchNormalization")


def selected_groups(train, groups: Sequence[LayerGroup], where: str = "train") -> list[int]:
    """Indices of the groups a stage trains: `head` -> [], `top:N`, `all`, or names."""
    names = [g.name for g in groups]
    if isinstance(train, str):
        if train == "head":
            return []
        if train == "all":
            return list(range(len(groups)))
        if train.startswith("top:"):
            n = train[4:]
            if not n.isdigit() or int(n) < 1:
                raise ConfigError(
                    f"Invalid value for '{where}': {train!r}. Expected top:N with N >= 1."
                )
            if int(n) > len(groups):
                raise ConfigError(
                    f"Invalid value for '{where}': {train!r}, but the backbone has only "
                    f"{len(groups)} layer groups ({', '.join(names)}). Use all or top:{len(groups)}."
                )
            return list(range(len(groups) - int(n), len(groups)))
        train = (train,)
    out = []
    for name in train:
        if name not in names:
            hint = did_you_mean(name, names)
            raise ConfigError(
                f"Invalid value for '{where}': unknown layer group {name!r}.{hint} Expected "
                f"'head', 'top:N', 'all' or group names: {', '.join(names)}."
            )
        out.append(names.index(name))
    return sorted(set(out))


METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def check_monitor(monitor: str, where: str) -> None:
    """Raises ConfigError unless `monitor` is a metric that training reports."""
    if monitor not in METRICS:
        hint = did_you_mean(monitor, METRICS)
        raise ConfigError(
            f"Invalid value for '{where}': {monitor!r} is not reported by training.{hint} "
            f"Expected one of: {', '.join(METRICS)}."
        )


def _all_layers(layer):
    """A layer and its sublayers, depth first."""
    yield layer
    for sub in getattr(layer, "_layers", []) or []:
        yield from _all_layers(sub)


def set_trainable(
    backbone_model,
    groups: Sequence[LayerGroup],
    train_indices: Sequence[int],
    head: Sequence,
    train_bn: bool = False,
    always_frozen: Sequence = (),
) -> None:
    """Freezes the backbone except the selected groups; the head always trains.

    Frozen BatchNormalization layers run in inference mode (Keras 3 semantics of
    `trainable=False`); with `train_bn=False` every BatchNormalization layer stays frozen,
    even inside trained groups, as the Keras fine-tuning guide advises.
    """
    backbone_model.trainable = True
    for layer in backbone_model.layers:
        layer.trainable = False
    for i in train_indices:
        for layer in groups[i].layers:
            layer.trainable = True
    if not train_bn:
        for layer in _all_layers(backbone_model):
            if type(layer).__name__ in BN_CLASSES:
                layer.trainable = False
    for layer in always_frozen:
        layer.trainable = False
    for layer in head:
        layer.trainable = True


def unused_layers(model, backbone_model, sample_inputs) -> list:
    """Backbone layers whose weights get no gradient from the classifier's output.

    (E.g. BERT's pooler when the head mean-pools tokens.) They stay frozen so optimizers do
    not carry state for them and Keras does not warn about missing gradients.
    """
    import tensorflow as tf

    backbone_model.trainable = True
    layers = [l for l in backbone_model.layers if l.trainable_weights]
    variables = [v for l in layers for v in l.trainable_weights]

    def no_gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(sample_inputs, training=False))
        grads = tape.gradient(loss, [v.value if hasattr(v, "value") else v for v in variables])
        return tf.constant([g is None for g in grads] or [False])

    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        # Distributed variables take gradients in a replica (one is enough to look).
        strategy = tf.distribute.get_strategy()
        none = strategy.experimental_local_results(strategy.run(no_gradient))[0]
    else:
        none = no_gradient()
    none = [bool(b) for b in none.numpy()]
    unused = []
    k = 0
    for layer in layers:
        n = len(layer.trainable_weights)
        if all(none[k : k + n]):
            unused.append(layer)
        k += n
    return unused


def prune_groups(groups: Sequence[LayerGroup], unused: Sequence) -> list[LayerGroup]:
    """Groups without the unused layers; groups left empty are dropped (so `top:1` on BERT
    means the last transformer block, not the pooler that a mean-pooling head never uses)."""
    drop = {id(l) for l in unused}
    out = []
    for g in groups:
        kept = [l for l in g.layers if id(l) not in drop]
        if kept:
            out.append(LayerGroup(g.name, kept))
    return out


@dataclasses.dataclass
class StageResult:
    """What one stage did."""

    name: str
    epochs_run: int
    best_epoch: int
    best_value: Optional[float]
    monitor: str
    trainable_params: int
    seconds: float


def count_trainable(model) -> int:
    import numpy as np

    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def stage_banner(index: int, total: int, stage: StageConfig, groups, train_indices, model) -> str:
    trained = "head only" if not train_indices else ", ".join(groups[i].name for i in train_indices)
    if len(train_indices) > 4:
        trained = f"{groups[train_indices[0]].name} .. {groups[train_indices[-1]].name} (+ head)"
    elif train_indices:
        trained += " + head"
    return (
        f"== Stage {index + 1}/{total}: {stage.name} | trains: {trained} | "
        f"{count_trainable(model):,} trainable params | {stage.epochs} epoch(s), "
        f"lr {stage.learning_rate:g} ({stage.optimizer}, {stage.schedule}"
        f"{', warmup ' + format(stage.warmup, 'g') if stage.warmup else ''}) =="
    )


def compile_classifier(model, optimizer, jit_compile) -> None:
    """The loss and metrics every stage reports (`METRICS`)."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def compile_like(model, trained, jit_compile) -> None:
    """Compiles the full `model` with the optimizer that trained `trained` (a model sharing
    its weights, e.g. the feature cache's suffix), so it evaluates and saves with that state."""
    compile_classifier(model, trained.optimizer, jit_compile)


@dataclasses.dataclass
class StageRun:
    """A stage in progress, as a checkpoint of it sees it: the model being fitted (the
    classifier, or the feature cache's suffix sharing its weights), its steps (with the
    epoch's metric sums), its early stopping, the logs of its finished epochs, and the
    seconds it has trained so far (before a resume too)."""

    model: Any
    steps: Any
    stopper: Any
    epoch_logs: list
    seconds_before: float = 0.0
    _started: float = dataclasses.field(default_factory=time.perf_counter, repr=False)

    def early_stopping_state(self) -> dict:
        s = self.stopper
        return {
            "wait": int(s.wait),
            "best": None if s.best is None else float(s.best),
            "best_epoch": int(s.best_epoch),
            "stopped_epoch": int(s.stopped_epoch),
            "seconds": self.seconds_before + time.perf_counter() - self._started,
        }

    def load_early_stopping_state(self, state: dict, best_weights) -> None:
        s = self.stopper
        s.wait, s.best, s.best_epoch = state["wait"], state["best"], state["best_epoch"]
        s.stopped_epoch = state["stopped_epoch"]
        s.best_weights = best_weights
        self.seconds_before = float(state.get("seconds", 0.0))


def run_stage(
    model,
    stage: StageConfig,
    index: int,
    train_ds,
    val_ds,
    steps_per_epoch: int,
    callbacks: list,
    jit_compile,
    verbose: int,
    lr_multipliers: Optional[dict] = None,
    *,
    distribution=None,
    resume: Optional[Callable[[StageRun], Any]] = None,
    hooks: Optional[Callable[[StageRun], Any]] = None,
) -> StageResult:
    """Compiles `model` with a fresh optimizer and trains one stage; the best epoch is restored.

    `train_ds` is a dataset (each epoch is one pass over it) or a function epoch -> dataset
    (so each epoch's order can be fixed, see `pipeline.epoch_seed`). `lr_multipliers`
    ({variable path: multiplier}) scale the learning rate of those variables (see
    `tftune.training.optim.group_multipliers` / `variable_multipliers`).

    Under a `distribution` the caller is in its scope. `resume(stage_run)` loads a
    checkpointed state of this stage into the freshly compiled stage (optimizer, metric sums,
    early stopping) and returns the `loop.Position` to continue from; `hooks(stage_run)` gives
    the `loop.Hooks` (checkpoints, stop requests) the loop calls at step boundaries."""
    from tftune.training import loop
    from tftune.training.optim import build_optimizer

    check_monitor(stage.early_stopping.monitor, f"stages.{index}.early_stopping.monitor")
    compile_classifier(
        model,
        build_optimizer(stage, stage.steps_per_epoch or steps_per_epoch, lr_multipliers),
        jit_compile,
    )
    es = stage.early_stopping
    stopper = keras.callbacks.EarlyStopping(
        monitor=es.monitor,
        patience=es.patience,
        min_delta=es.min_delta,
        mode="min" if "loss" in es.monitor else "max",
        restore_best_weights=True,
        verbose=0,
    )
    steps = loop.Steps(model, distribution)
    steps.build()
    callback_list = keras.callbacks.CallbackList(
        [stopper, *callbacks],
        add_history=False,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=stage.epochs,
        steps=stage.steps_per_epoch or steps_per_epoch,
        model=model,
    )
    run = StageRun(model, steps, stopper, [])
    callback_list.on_train_begin()
    start = resume(run) if resume is not None else loop.Position()
    epoch_data = train_ds if callable(train_ds) else (lambda epoch: train_ds)
    logs = loop.run_epochs(
        steps, stage.epochs, epoch_data, val_ds, callback_list, start,
        steps_per_epoch=stage.steps_per_epoch,
        hooks=hooks(run) if hooks is not None else loop.Hooks(),
        epoch_logs=run.epoch_logs,
    )
    callback_list.on_train_end(logs[-1] if logs else None)
    return StageResult(
        name=stage.name,
        epochs_run=len(logs),
        best_epoch=stopper.best_epoch + 1,
        best_value=float(stopper.best) if stopper.best is not None else None,
        monitor=es.monitor,
        trainable_params=count_trainable(model),
        seconds=round(run.seconds_before + time.perf_counter() - run._started, 1),
    )


def better(monitor: str, a: float, b: Optional[float]) -> bool:
    """Whether metric value `a` beats `b` for `monitor` (losses and errors go down)."""
    if b is None:
        return True
    lower = "loss" in monitor or "error" in monitor
    return a < b if lower else a > b


__all__ = [
    "StageResult",
    "StageRun",
    "better",
    "check_monitor",
    "compile_classifier",
    "compile_like",
    "prune_groups",
    "run_stage",
    "selected_groups",
    "set_trainable",
    "stage_banner",
    "unused_layers",
]
