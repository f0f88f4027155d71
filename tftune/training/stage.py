"""One stage: a freshly compiled optimizer, tftune's loop over its epochs, early stopping on
the task's monitor, and the best epoch's weights restored."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import keras

from tftune.training.trainable import count_trainable


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
    # `train.average: uniform | greedy`: the soup tried at the stage's end ({epochs, value,
    # best_single, kept}); when kept, `best_value` is the soup's.
    soup: Optional[dict] = None


def compile_model(model, task, optimizer, jit_compile) -> None:
    """Compiles `model` with `optimizer` and the task's loss and metrics (what `model.fit` /
    `model.evaluate` and a saved model's compile config then use). A model that computes in
    float16 gets the optimizer wrapped in Keras's `LossScaleOptimizer` (dynamic loss
    scaling, which tftune's loop applies): Keras wraps it only when the model's own policy
    is `mixed_float16`, and a functional model built around layers of that policy need not be."""
    if uses_float16(model) and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.get(optimizer))
    model.compile(
        optimizer=optimizer,
        loss=task.loss(),
        metrics=list(task.metrics().values()),
        jit_compile=jit_compile,
    )


def uses_float16(model) -> bool:
    """Whether a layer of `model` computes in float16 (under `mixed_float16`)."""
    return any(getattr(layer.dtype_policy, "compute_dtype", None) == "float16"
               for layer in model._flatten_layers())


def compile_like(model, trained, task, jit_compile) -> None:
    """Compiles the full `model` with the optimizer that trained `trained` (a model sharing
    its weights, e.g. the feature cache's suffix), so it evaluates and saves with that state."""
    compile_model(model, task, trained.optimizer, jit_compile)


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
    snapshots: Any = None  # the epochs' weights for a soup (`tftune.training.average.Snapshots`)
    _started: float = dataclasses.field(default_factory=time.perf_counter, repr=False)

    def early_stopping_state(self) -> dict:
        s = self.stopper
        return {
            "wait": int(s.wait),
            "best": None if s.best is None else float(s.best),
            "best_epoch": int(s.best_epoch),
            "stopped_epoch": int(s.stopped_epoch),
            "seconds": self.seconds_before + time.perf_counter() - self._started,
            **({"snapshots": self.snapshots.state()} if self.snapshots is not None else {}),
        }

    def load_early_stopping_state(self, state: dict, best_weights) -> None:
        s = self.stopper
        s.wait, s.best, s.best_epoch = state["wait"], state["best"], state["best_epoch"]
        s.stopped_epoch = state["stopped_epoch"]
        s.best_weights = best_weights
        self.seconds_before = float(state.get("seconds", 0.0))

    def load_snapshots(self, state: dict, arrays) -> None:
        """The soup's epochs from a checkpoint: `arrays(k)` gives epoch snapshot k's weights."""
        if self.snapshots is not None and "snapshots" in state:
            held = state["snapshots"]
            self.snapshots.load(held, [arrays(k) for k in range(len(held["epochs"]))])


def open_stage(model, plan, task, steps_per_epoch: int, callbacks: list, jit_compile,
               verbose: int, distribution=None, steps_per_execution: int = 1):
    """What a stage trains with, before its first step: `model` compiled with the stage's
    fresh optimizer, its `loop.Steps` (optimizer variables built; `steps_per_execution` steps
    per call), its early stopping and the `CallbackList` around them. Returns (steps, early
    stopping, callback list)."""
    from tftune.training import loop

    stage = plan.stage
    es = stage.early_stopping
    task.check_monitor(es.monitor, f"stages.{plan.index}.early_stopping.monitor")
    compile_model(model, task, plan.optimizer(steps_per_epoch), jit_compile)
    stopper = keras.callbacks.EarlyStopping(
        monitor=es.monitor,
        patience=es.patience,
        min_delta=es.min_delta,
        mode=task.mode(es.monitor),
        restore_best_weights=True,
        verbose=0,
    )
    steps = loop.Steps(model, task, distribution, steps_per_execution)
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
    return steps, stopper, callback_list


def run_stage(
    model,
    plan,
    task,
    train_ds,
    val_ds,
    steps_per_epoch: int,
    callbacks: list,
    jit_compile,
    verbose: int,
    *,
    distribution=None,
    steps_per_execution: int = 1,
    resume: Optional[Callable[[StageRun], Any]] = None,
    hooks: Optional[Callable[[StageRun], Any]] = None,
) -> StageResult:
    """Compiles `model` with the stage's fresh optimizer and trains one stage; the best epoch
    is restored.

    `plan` is the stage's `tftune.training.plan.StagePlan` (its optimizer, with the groups'
    learning-rate multipliers); `model` is the classifier, or the feature cache's suffix
    sharing its weights; `steps_per_execution` steps run in one call (see `loop`). `train_ds` is a dataset (each epoch is one pass over it) or a
    function epoch -> dataset (so each epoch's order can be fixed, see
    `pipeline.epoch_seed`). `task` (a `tftune.tasks.Task`) gives the loss, the metrics and
    the monitor's direction.

    Under a `distribution` the caller is in its scope. `resume(stage_run)` loads a
    checkpointed state of this stage into the freshly compiled stage (optimizer, metric sums,
    early stopping) and returns the `loop.Position` to continue from; `hooks(stage_run)` gives
    the `loop.Hooks` (checkpoints, stop requests) the loop calls at step boundaries."""
    from tftune.training import loop

    from tftune.training import average

    stage = plan.stage
    snapshots = None
    if plan.soup in average.KINDS:
        snapshots = average.Snapshots(stage.early_stopping.monitor)
        callbacks = [*callbacks, snapshots]
    steps, stopper, callback_list = open_stage(
        model, plan, task, steps_per_epoch, callbacks, jit_compile, verbose, distribution,
        steps_per_execution)
    run = StageRun(model, steps, stopper, [], snapshots=snapshots)
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
    best_value = float(stopper.best) if stopper.best is not None else None
    soup = None
    if snapshots is not None and val_ds is not None:
        key = stage.early_stopping.monitor[len("val_"):]
        made = average.make_soup(plan.soup, model, lambda: steps.evaluate(val_ds)[key],
                                 snapshots, task, plan.soup_epochs)
        if made is not None:
            soup = dataclasses.asdict(made)
            if made.kept:
                best_value = made.value
    return StageResult(
        name=stage.name,
        epochs_run=len(logs),
        best_epoch=stopper.best_epoch + 1,
        best_value=best_value,
        monitor=stage.early_stopping.monitor,
        trainable_params=count_trainable(model),
        seconds=round(run.seconds_before + time.perf_counter() - run._started, 1),
        soup=soup,
    )
