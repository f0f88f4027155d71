"""The loop a stage runs: Keras callbacks around tftune's train and test steps, batch by batch,
under any `tf.distribute` strategy, able to stop at any step and start again from there.

Why not `model.fit`: it fails under MultiWorkerMirroredStrategy in Keras 3 (keras#20585: its
per-step metric reduction), its train step averages each replica's loss separately (a replica
that gets an empty part of a short last batch makes the loss NaN), and it cannot start an
epoch part-way or stop at a step with its state intact. This loop keeps what fit gives:
`keras.callbacks.CallbackList` (progress bar, EarlyStopping, the history and NaN callbacks),
the model's compiled optimizer (`apply_gradients`, loss scaling, `tf.distribute` updates),
Keras metrics, and `strategy.run` inside one `tf.function` per step.

One step: every replica computes its examples' weighted losses, the loss is their sum divided
by the sum of the weights in the whole global batch (an all-reduce), plus the model's
regularisation losses / replicas; the optimizer sums the replicas' gradients. That is the
gradient of the global batch's weighted mean loss whatever the replica split, the same as on
one device. With several replicas a short batch arrives padded to a multiple of them with
weight-0 copies (`Distribution.distribute`); the weights keep the copies out of the loss and
the metrics. Training multiplies them by the task's per-example weights
(`Task.example_weights`: `train.class_weight`), computed from the labels in the step, so
they are the same on cached features; validation is unweighted, as in Keras.

`train.average: ema`: the optimizer keeps a moving average of the trained weights (Keras'
`use_ema`); at each epoch's end the averaged weights are swapped in for validation and the
epoch-end callbacks (so early stopping keeps, and restores, the best averaged weights), then
swapped back before the checkpoint, so training and resume continue from the raw weights.

`steps_per_execution` > 1 runs that many steps in one `tf.function` call (a `tf.while_loop`
over the iterator's optionals, as Keras's own multi-step function does): the callbacks see one
batch per call, and stop requests and checkpoints fall on call boundaries. It pays where a
step is so cheap that Python's per-call work dominates it: a head trained on cached features.

XLA (`jit_compile`, see `tftune.training.device`): what is compiled is each replica's
forward and backward pass (`_gradients`) and its forward pass in evaluation, as Keras's own
trainer compiles its one-step function inside `strategy.run`; the iterator, the
`tf.while_loop` over batches, the cross-replica sums and the optimizer's update stay
ordinary graph ops (XLA cannot compile an iterator, and the optimizer's merge calls belong to
the strategy). Under TPUStrategy nothing is added: `strategy.run` in a `tf.function`
compiles the whole replica step with XLA anyway.

Float16 (`mixed_float16`): the model's compiled optimizer is a `LossScaleOptimizer`
(`stage.compile_model`): the loss is multiplied by its dynamic scale before the gradients,
which it divides by the scale before the update; a step with non-finite gradients is
skipped and the scale halved, and after 2000 finite steps it doubles.

Not supported here: a `sample_weight` column in the data, models whose `train_step` is
customised (it is not called).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras

from tftune.runtime import faults


@dataclasses.dataclass
class Position:
    """Where a stage is: `step` batches of epoch `epoch` done (0-based); `stopped`: early
    stopping ended the stage after epoch `epoch - 1`."""

    epoch: int = 0
    step: int = 0
    stopped: bool = False


class Steps:
    """Train and test steps of `model` (compiled: its optimizer is used) on `distribution`'s
    strategy, with the `task`'s per-example loss and its own metrics (the loss's mean and the
    task's metrics, created in the strategy's scope)."""

    def __init__(self, model, task, distribution=None, steps_per_execution: int = 1):
        import tensorflow as tf

        self.model = model
        self.task = task
        self.distribution = distribution
        self.strategy = distribution.strategy if distribution else tf.distribute.get_strategy()
        with self.strategy.scope():
            self.loss_fn = task.loss(reduction=None)
            self.train_metrics = self._metrics()
            self.test_metrics = self._metrics()
        kind = distribution.kind if distribution else "default"
        eager = bool(getattr(model, "run_eagerly", False))
        # TPUStrategy compiles the replica step with XLA itself (see the module docstring).
        self.jit = bool(getattr(model, "jit_compile", False)) and kind != "tpu" and not eager
        self._gradients_fn = tf.function(
            self._gradients, jit_compile=True, reduce_retracing=True) if self.jit else self._gradients
        self._forward_fn = tf.function(
            self._forward, jit_compile=True, reduce_retracing=True) if self.jit else self._forward
        self._train_fn = self._train_many if eager else tf.function(
            self._train_many, reduce_retracing=True)
        self._test_fn = self._test_batch if eager else tf.function(
            self._test_batch, reduce_retracing=True)
        self.steps_per_execution = max(1, int(steps_per_execution))

    @property
    def metric_variables(self) -> list:
        """The running sums of the epoch's training metrics (checkpointed mid-epoch)."""
        return [v for m in self.train_metrics.values() for v in m.variables]

    def build(self) -> None:
        """Creates the optimizer's variables now (not inside the first traced step), so a
        checkpoint can be restored into them before training starts."""
        with self.strategy.scope():
            self.model.optimizer.build(self.model.trainable_variables)

    @property
    def averaged(self) -> bool:
        """Whether the optimizer keeps a moving average of the weights (`train.average: ema`)."""
        return bool(getattr(self._inner_optimizer(), "use_ema", False))

    def _inner_optimizer(self):
        """The optimizer that holds the variables (inside a float16 loss-scale wrapper)."""
        optimizer = self.model.optimizer
        return getattr(optimizer, "inner_optimizer", optimizer)

    def swap_average(self) -> None:
        """Exchanges the trained variables' values with the optimizer's moving averages of
        them: called twice, everything is as before. (What `keras.callbacks.SwapEMAWeights`
        does around evaluation, here at points of tftune's loop that a checkpoint never sees
        in between.)"""
        import tensorflow as tf

        optimizer = self._inner_optimizer()
        with self.strategy.scope():
            for var, average in zip(optimizer._trainable_variables,
                                    optimizer._model_variables_moving_average):
                held = tf.identity(var.value)
                var.assign(average.value)
                average.assign(held)

    @property
    def batches_per_step(self) -> int:
        """Batches of an epoch's dataset one step takes (a multi-worker worker's replicas
        take one each; otherwise one global batch)."""
        return self.distribution.batches_per_step if self.distribution is not None else 1

    def distribute(self, dataset, skip: int = 0):
        if self.distribution is None:
            return dataset.skip(skip) if skip else dataset
        return self.distribution.distribute(dataset, skip)

    # -- one replica -------------------------------------------------------------------

    def _regularization(self):
        import tensorflow as tf

        losses = self.model.losses
        return tf.add_n([tf.cast(l, "float32") for l in losses]) if losses else None

    def _replica_train(self, x, y, weight=None):
        import tensorflow as tf

        weight = self._example_weights(y, weight)
        ctx = tf.distribute.get_replica_context()
        count = tf.cast(tf.shape(y)[0], tf.float32) if weight is None else tf.reduce_sum(weight)
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
        grads, y_pred, per_example, reg = self._gradients_fn(
            x, y, weight, total, float(ctx.num_replicas_in_sync))
        self.model.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        self._update(self.train_metrics, self.task.metric_labels(y), y_pred, per_example, reg,
                     weight)

    def _gradients(self, x, y, weight, total, replicas):
        """One replica's forward and backward pass (what XLA compiles): the gradients of its
        share of the global batch's mean loss (scaled by the optimizer's loss scale under
        float16), its predictions, per-example losses and regularisation loss."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            per_example = tf.cast(self.loss_fn(y, y_pred), tf.float32)
            summed = tf.reduce_sum(per_example if weight is None else per_example * weight)
            loss = summed / tf.maximum(total, 1.0)
            reg = self._regularization()
            if reg is not None:
                loss += reg / replicas
            scaled = self.model.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        return grads, y_pred, per_example, reg

    def _example_weights(self, y, weight):
        """The padding weights times the task's per-example weights (class weights), or
        whichever of them there is (None: every example weighs 1)."""
        import tensorflow as tf

        task_weights = self.task.example_weights(y)
        if task_weights is None:
            return weight
        return task_weights if weight is None else tf.cast(weight, tf.float32) * task_weights

    def _replica_test(self, x, y, weight=None):
        y_pred, per_example, reg = self._forward_fn(x, y)
        self._update(self.test_metrics, y, y_pred, per_example, reg, weight)

    def _forward(self, x, y):
        """One replica's evaluation forward pass (what XLA compiles): predictions,
        per-example losses and the regularisation loss."""
        import tensorflow as tf

        y_pred = self.model(x, training=False)
        return y_pred, tf.cast(self.loss_fn(y, y_pred), tf.float32), self._regularization()

    def _metrics(self) -> dict:
        return {"loss": keras.metrics.Mean(name="loss"), **self.task.metrics()}

    @staticmethod
    def _update(metrics, y, y_pred, per_example, reg, weight):
        for name, metric in metrics.items():
            if name == "loss":
                metric.update_state(per_example if reg is None else per_example + reg,
                                    sample_weight=weight)
            else:
                metric.update_state(y, y_pred, sample_weight=weight)

    # -- all replicas ------------------------------------------------------------------

    # The step functions take the iterator, as Keras' own do: traced once for the dataset's
    # element spec (None batch and length dimensions), not once per batch shape.

    def _train_many(self, iterator, n):
        """Up to `n` training steps on `iterator`'s next batches; returns how many ran (fewer
        than `n` when the iterator ran out) and the epoch's running metrics.

        The batches are taken as optionals, never with `get_next()` past the end: a step
        traced on `get_next()` that fails at the end of the data has by then run the
        optimizer's `iterations += 1` (it does not depend on the batch), so each epoch would
        move the step count, the schedule and Adam's bias correction one step on."""
        import tensorflow as tf

        def more(i, batch):
            return tf.logical_and(i < n, batch.has_value())

        def step(i, batch):
            self.strategy.run(self._replica_train, args=tuple(batch.get_value()))
            # The next batch is taken only while there are steps left to run on it.
            return i + 1, tf.cond(i + 1 < n, iterator.get_next_as_optional, lambda: batch)

        count, _ = tf.while_loop(more, step, [tf.constant(0), iterator.get_next_as_optional()])
        return count, {k: m.result() for k, m in self.train_metrics.items()}

    def _test_batch(self, iterator):
        self.strategy.run(self._replica_test, args=tuple(iterator.get_next()))

    def batches(self, dataset, skip: int = 0):
        """An iterator over `dataset` split across the replicas, from its step `skip` on, for
        `train_batch`."""
        return iter(self.distribute(dataset, skip))

    def train_batch(self, iterator) -> Optional[dict]:
        """One step on the next batch of `iterator`; returns the epoch's running loss and
        metrics, or None when the iterator is exhausted."""
        return self.train_steps(iterator, 1)[1]

    def train_steps(self, iterator, n: int) -> tuple[int, Optional[dict]]:
        """Up to `n` steps on the next batches of `iterator` in one call: (steps run, the
        epoch's running loss and metrics); (0, None) when the iterator is exhausted."""
        import tensorflow as tf

        count, logs = self._train_fn(iterator, tf.constant(n, tf.int32))
        count = int(count)
        return (count, {k: float(v) for k, v in logs.items()}) if count else (0, None)

    def train_results(self) -> dict:
        return {k: float(m.result()) for k, m in self.train_metrics.items()}

    def reset_train(self) -> None:
        for m in self.train_metrics.values():
            m.reset_state()

    def evaluate(self, dataset) -> dict:
        """Loss and metrics over `dataset` (batched with the global batch): exact sums over
        every replica's examples."""
        import tensorflow as tf

        for m in self.test_metrics.values():
            m.reset_state()
        iterator = self.batches(dataset)
        while True:
            try:
                self._test_fn(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                break
        return {k: float(m.result()) for k, m in self.test_metrics.items()}


@dataclasses.dataclass
class Length:
    """How long a stage runs (`train.time_limit` plans it, and may plan it again between
    epochs): `epochs` begun, the last of them ending after `last_steps` steps (None: whole)."""

    epochs: int
    last_steps: Optional[int] = None

    @classmethod
    def planned(cls, epochs: float, steps_per_epoch: int) -> "Length":
        """The length of a stage planned for `epochs` (maybe fractional) epochs."""
        from tftune.training.budget import stage_steps

        whole, last = stage_steps(epochs, steps_per_epoch)
        return cls(whole, last if last < steps_per_epoch else None)

    def total_steps(self, steps_per_epoch: int) -> int:
        return (self.epochs - 1) * steps_per_epoch + (self.last_steps or steps_per_epoch)


@dataclasses.dataclass
class Hooks:
    """What the loop asks of its caller at step boundaries.

    `checkpoint(position)` writes a checkpoint of the stage at `position`;
    `stop_requested()` says whether to stop at this step boundary: the loop checkpoints there
    and raises `tftune.runtime.preemption.Preempted` (callbacks' `on_train_end` is not called: early
    stopping must not restore its best weights over a stage that is not over);
    `every_steps` > 0 checkpoints every that many training steps as well as at epoch ends;
    `out_of_time()` ends the epoch at this step boundary and the stage after it."""

    checkpoint: Optional[Callable[[Position], None]] = None
    stop_requested: Callable[[], bool] = lambda: False
    every_steps: int = 0
    # `train.time_limit`: true when the epoch must end at this step boundary (it is then
    # validated and the stage ends, as if early stopping had ended it).
    out_of_time: Callable[[], bool] = lambda: False
    # `train.time_limit`'s plan of the stage, read at every epoch: it replaces `epochs`, and
    # its last epoch ends after `last_steps` steps, is validated, and the stage ends there.
    length: Optional[Length] = None


def one_step(steps: Steps, callbacks: keras.callbacks.CallbackList, iterator,
             batch_index: int) -> bool:
    """One training step with its callbacks (`bench/speed.py` times it against `model.fit`'s);
    False when the iterator is exhausted."""
    return one_call(steps, callbacks, iterator, batch_index, 1) == 1


def one_call(steps: Steps, callbacks: keras.callbacks.CallbackList, iterator,
             batch_index: int, n: int) -> int:
    """Up to `n` training steps in one call, with the callbacks around them (as `model.fit`
    calls them with steps_per_execution: begin at the first batch, end at the last), as
    `run_epochs` takes them; returns the number of steps run (0: the iterator is exhausted)."""
    callbacks.on_train_batch_begin(batch_index)
    count, logs = steps.train_steps(iterator, n)
    if count:
        callbacks.on_train_batch_end(batch_index + count - 1, logs)
    return count


def run_epochs(
    steps: Steps,
    epochs: int,
    epoch_data: Callable[[int], object],
    val_data,
    callbacks: keras.callbacks.CallbackList,
    start: Position = Position(),
    steps_per_epoch: Optional[int] = None,
    hooks: Hooks = Hooks(),
    epoch_logs: Optional[list] = None,
) -> list[dict]:
    """Trains epochs `start.epoch .. epochs - 1` (the first from batch `start.step`, its
    metric sums already restored), validating after each; returns every epoch's logs (those
    in `epoch_logs` first; that list is appended to as epochs end, so a checkpoint taken
    meanwhile sees them). Stops early when a callback sets `model.stop_training`."""
    model = steps.model
    logs_per_epoch = epoch_logs if epoch_logs is not None else []
    model.stop_training = start.stopped
    global_step = 0
    every = hooks.every_steps if hooks.checkpoint is not None else 0
    epoch = start.epoch - 1
    while True:
        epoch += 1
        length = hooks.length
        if epoch >= (length.epochs if length is not None else epochs) or model.stop_training:
            break
        first = start.step if epoch == start.epoch else 0
        if first == 0:
            steps.reset_train()
        callbacks.on_epoch_begin(epoch)
        dataset = epoch_data(epoch)
        if steps_per_epoch:
            dataset = dataset.repeat().take(steps_per_epoch * steps.batches_per_step)
        iterator = steps.batches(dataset, skip=first)
        batch_index = first
        stop_at = length.last_steps if length is not None and epoch == length.epochs - 1 \
            else None
        while True:
            if stop_at is not None and batch_index >= stop_at:  # the planned part ran
                model.stop_training = True
                break
            n = steps.steps_per_execution
            if every:  # a call ends where a step checkpoint falls
                n = min(n, every - global_step % every)
            if stop_at is not None:
                n = min(n, stop_at - batch_index)
            count = one_call(steps, callbacks, iterator, batch_index, n)
            for i in range(batch_index, batch_index + count):
                faults.point("step", f"epoch {epoch + 1} step {i + 1}")
            global_step += count
            batch_index += count
            if count:
                here = Position(epoch, batch_index)
                if hooks.stop_requested():
                    _stop(hooks, here)
                if every and global_step % every == 0:
                    hooks.checkpoint(here)
                if hooks.out_of_time():
                    model.stop_training = True
                    break
            if count < n:  # the epoch's batches ran out
                break
        logs = steps.train_results()
        if steps.averaged:  # validated, compared and kept (early stopping) as averaged
            steps.swap_average()
        if val_data is not None:
            logs.update({f"val_{k}": v for k, v in steps.evaluate(val_data).items()})
        logs_per_epoch.append(dict(logs))
        callbacks.on_epoch_end(epoch, logs)
        if steps.averaged:  # training goes on from the raw weights (and checkpoints so)
            steps.swap_average()
        here = Position(epoch + 1, 0, bool(model.stop_training))
        faults.point("epoch_end", f"epoch {epoch + 1}")
        if hooks.stop_requested():
            _stop(hooks, here)
        if hooks.checkpoint is not None:
            hooks.checkpoint(here)
    return logs_per_epoch


def _stop(hooks: Hooks, here: Position):
    from tftune.runtime.preemption import Preempted

    if hooks.checkpoint is not None:
        hooks.checkpoint(here)
    raise Preempted("stopped on request", where=here)
