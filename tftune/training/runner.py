"""`train`: recipe config -> data -> task -> model -> stages -> run directory.

`train()` plans the run directory, starts the strategy and loads the inputs; a `Run` then
holds the run's state (model, history, finished stages, the best stage, the last checkpoint)
and trains its stages one by one, checkpointing as it goes.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tftune.config import RecipeConfig, config_from_dict, load_recipe, to_dict
from tftune.config.loading import resolve_monitors
from tftune.data import DataSplits
from tftune.errors import ConfigError, TftuneError
from tftune.evaluation import plots
from tftune.model import adapters, peft
from tftune import rundir
from tftune.rundir import checkpoint as ckpt
from tftune.rundir import plan as run_plan
from tftune.rundir import storage
from tftune.runtime import distribute, faults
from tftune.runtime.preemption import Preempted, StopRequest, watch
from tftune.training.device import (choose_precision, describe_device, resume_conflict,
                                    run_jit, steps_per_execution, verbosity)
from tftune.training.prepare import describe, loaded_inputs, prepare_run


@dataclasses.dataclass
class RunResult:
    """What `train` returns: the run directory, the final metrics and the trained model."""

    run_dir: Path
    metrics: dict
    model: Any
    class_names: list[str]


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
    callbacks: Sequence = (),
) -> RunResult:
    """Trains a recipe and writes its run directory.

    Args:
        config: a `RecipeConfig` or the path of a recipe YAML file.
        datasets: your own `DataSplits` (e.g. `DataSplits.from_datasets(train, val, test, ...)`);
            replaces `config.data`.
        backbone_model: your own `keras.Model`, replacing `config.backbone.spec`: an image
            feature extractor, or a text backbone taking KerasHub's token dict (its tokenizer
            from `config.backbone.preprocessor`, or a KerasHub `TextClassifier`'s own).
        overrides: `KEY=VALUE` strings applied to the recipe.
        output_dir: where run directories go (default `config.output_dir`).
        overwrite: replace an existing run directory of the same name.
        resume: continue the unfinished run in the run directory from its checkpoint (the
            config must be the one it started with, up to `rundir.plan.RESUME_FREE` settings).
        echo: where progress lines go.
        callbacks: `keras.callbacks.Callback`s added to every stage, after the recipe's
            `train.callbacks`. Their `self.model` is the model the stage fits: the classifier,
            or in a stage on cached features the part that trains (sharing the classifier's
            weights); setting `self.model.stop_training` ends the stage after the epoch.

    Raises `tftune.runtime.preemption.Preempted` when SIGTERM stopped the run at a checkpoint.
    """
    if not isinstance(config, RecipeConfig):
        config = load_recipe(config, overrides)
    else:  # built in Python: checked like a recipe file (types, ranges, the task)
        config = config_from_dict(to_dict(config), overrides)
    config = resolve_monitors(config)  # a RecipeConfig built in Python may say monitor: auto
    if overwrite and resume:
        raise ConfigError(
            "Pass either --resume (continue the run from its checkpoint) or --overwrite (start "
            "it again), not both."
        )
    cfg = config
    from tftune.training.callbacks import user_callbacks as made_callbacks

    user_callbacks = made_callbacks(cfg.train.callbacks, callbacks)  # before anything loads
    from tftune.training.budget import now

    started = now()
    run_path = storage.path(output_dir or cfg.output_dir) / cfg.name  # a local path or a URL
    # The strategy first: MultiWorkerMirroredStrategy must exist before TensorFlow runs ops.
    dist = distribute.make_distribution(cfg.train.distribute, cfg.train.tpu)
    with watch() as stop, dist.scope():
        loaded, error = _plan(cfg, run_path, resume, overwrite, dist, echo)
        device = describe_device(dist.kind)  # a TPU is known from the strategy
        with loaded_inputs(cfg, datasets, backbone_model, device) as (splits, backbone, precision):
            conflict = loaded and resume_conflict(precision, loaded.state.variables.get("optimizer"))
            if conflict:
                raise ConfigError(f"Cannot resume {run_path}: {conflict}")
            run, scratch = None, False
            if error is None:
                try:
                    # Only now, with data and backbone loaded, does the run directory get created.
                    run, scratch = run_plan.open_run_dir(cfg, run_path, output_dir, overwrite,
                                                         resume, dist)
                except TftuneError as e:
                    if not dist.multi_worker:
                        raise
                    error = e
            if dist.multi_worker:
                distribute.agree_to_start(dist, error, loaded)
            try:
                describe(splits, backbone, precision, echo)
                return Run(cfg, splits, backbone, run, dist, stop, echo, loaded,
                           user_callbacks, precision).train(started, run_path)
            except Preempted as e:
                raise Preempted(
                    f"{stop.signal_name or 'A stop request'} received: stopped at {e.where} with a "
                    f"checkpoint in {run_path / ckpt.DIR}.", run_dir=run_path, where=e.where,
                ) from None
            finally:
                if scratch:
                    shutil.rmtree(run, ignore_errors=True)


def _plan(cfg, run_path: Path, resume: bool, overwrite: bool, dist, echo):
    """(checkpoint to resume from or None, error to share with the other workers or None)."""
    loaded, error = None, None
    try:
        if dist.is_chief:
            loaded = run_plan.plan_run_dir(cfg, run_path, resume, overwrite)
        elif resume:
            loaded = ckpt.latest(run_path)
        if loaded is run_plan.RESTART:
            loaded = None
            echo(f"{run_path} has no checkpoint yet (it stopped before its first one): "
                 f"starting the run from the beginning.")
    except TftuneError as e:
        if not dist.multi_worker:
            raise
        error = e
    return loaded, error


class Run:
    """One run in progress: its model and data, and the state a checkpoint carries (history
    rows, finished stages' results, the best stage and its weights, the last checkpoint's
    state). With `loaded` (a checkpoint) it continues where that checkpoint is: the model's
    variables come back before any stage data (the feature cache is rebuilt from them),
    finished stages are skipped, and the current stage gets its trainability from its own
    plan and its optimizer, epoch metric sums and early stopping from the checkpoint."""

    def __init__(self, cfg: RecipeConfig, splits: DataSplits, backbone, run: Path, dist,
                 stop: Optional[StopRequest], echo, loaded=None, user_callbacks=(),
                 precision=None):
        self.cfg, self.splits, self.backbone, self.run = cfg, splits, backbone, run
        self.dist, self.echo, self.loaded = dist, echo, loaded
        self.user_callbacks = list(user_callbacks)
        self.stop = stop if stop is not None else StopRequest()
        if dist.kind != "default":
            echo(f"Distribution: {dist.describe(cfg.train.batch_size)}")
        rundir.write_json(run / rundir.CLASSES_FILE, splits.class_names)
        if splits.skipped:  # data.skip_bad_files
            rundir.write_text(run / rundir.SKIPPED_FILE, "".join(f"{p}\n" for p in splits.skipped))
            shown = ", ".join(splits.skipped[:3]) + (" ..." if len(splits.skipped) > 3 else "")
            echo(f"Data: left out {len(splits.skipped)} image file(s) that cannot be decoded "
                 f"(data.skip_bad_files): {shown}; listed in {run / rundir.SKIPPED_FILE}")
        if splits.modality == "text":
            rundir.save_preprocessor(backbone.preprocessor, backbone.model, run)
        # Several workers: each reads, decodes and caches only its shard (`data.shards`).
        self.worker = dist.worker_input(cfg.train.batch_size)
        if self.worker is None:
            self.prep = prepare_run(cfg, splits, backbone, echo)
        else:
            from tftune.data.shards import shard_splits

            shard = shard_splits(splits, self.worker)
            echo(self.worker.describe(splits, shard))
            self.prep = prepare_run(cfg, shard, backbone, echo, self.worker, dist.agree_max,
                                    whole=splits)
        self.task, self.model = self.prep.task, self.prep.model
        # XLA per `device.choose_precision` (the dtype policy is already in force), off
        # for a model with a layer XLA cannot compile.
        if precision is None:
            precision = choose_precision(cfg.train.mixed_precision, cfg.train.jit_compile,
                                         splits.modality, describe_device(dist.kind))
        self.precision = precision
        self.jit = run_jit(precision, self.model, echo)
        self.verbose, self.epoch_lines = verbosity(cfg.train.verbose)
        self.history_path = run / rundir.HISTORY_FILE
        self.state = loaded.state if loaded is not None else ckpt.RunState()
        self.digest = ckpt.digest(run_plan.comparable(cfg))
        self.history = list(self.state.history)
        self.results = [_stage_result(r) for r in self.state.results]
        self.best = dict(self.state.overall_best) if self.state.overall_best else None
        self.best_weights = loaded.arrays("overall_best") if loaded is not None and self.best else None
        self.saved = self.state  # the state of the last checkpoint written
        self.started = 0.0  # train()'s start (`budget.now()`), set by `train`
        self.budget = None  # `train.time_limit` (see `tftune.training.budget`)
        # {stage index as str: epochs} the budget gave each stage that began (0: skipped)
        self.planned = dict(self.state.planned_epochs)
        self.stretches = {k: [list(r) for r in v] for k, v in self.state.stretches.items()}
        self.lengths = {}  # {stage index: loop.Length} of the stages the budget planned
        self.shapes = None  # the budget's view of the stages (`budget.stage_shapes`)

    # -- checkpoints and stop requests ---------------------------------------------------

    def save(self, stage_index: int, at=None, srun=None) -> None:
        """Writes a checkpoint: at the start of stage `stage_index`, or at position `at` of
        the stage `srun` is running."""
        st = ckpt.RunState(
            stage=stage_index, epoch=at.epoch if at else 0, step=at.step if at else 0,
            stopped=at.stopped if at else False, history=list(self.history),
            results=[dataclasses.asdict(r) for r in self.results], overall_best=self.best,
            config_digest=self.digest, seconds=round(self.spent(), 3),
            planned_epochs=dict(self.planned),
            stretches={k: [list(r) for r in v] for k, v in self.stretches.items()},
        )
        variables: dict = {"model": self.model.variables}
        arrays: dict = {"overall_best": self.best_weights} if self.best_weights is not None else {}
        if srun is not None:
            variables["optimizer"] = srun.model.optimizer.variables
            variables["metrics"] = srun.steps.metric_variables
            st.early_stopping = srun.early_stopping_state()
            st.epoch_logs = [dict(l) for l in srun.epoch_logs]
            st.trainable = [v.path for v in srun.model.trainable_variables]
            if srun.stopper.best_weights is not None:
                arrays["early_stopping"] = srun.stopper.best_weights
            if srun.snapshots is not None:  # a soup's epochs so far
                for k, weights in enumerate(srun.snapshots.weights):
                    arrays[f"snapshot_{k}"] = weights
        began = self.budget.clock() if self.budget is not None else 0.0
        ckpt.write(self.run, st, variables, arrays, writer=self.dist.is_chief)
        if self.budget is not None:
            self.budget.save_seconds = max(self.budget.save_seconds, self.budget.clock() - began)
        self.saved = st

    def spent(self) -> float:
        """The run's seconds so far: this process's since `train` began, and those of the
        processes before a resume."""
        from tftune.training.budget import now

        return self.state.seconds + now() - self.started

    def stop_requested(self) -> bool:
        return self.dist.agree(bool(self.stop))

    def stopped_here(self) -> Preempted:
        return Preempted("stopped", where=self.saved.describe(self.cfg.stages))

    # -- the run -------------------------------------------------------------------------

    def train(self, started: float, run_path: Optional[Path] = None) -> RunResult:
        """Every stage not finished yet, then the final evaluation and the run's files."""
        self.started = started
        self.budget = self._budget()
        if self.loaded is not None:
            for plan in self.prep.plans:  # LoRA stages before the checkpoint added variables
                if plan.index < self.state.stage or (plan.index == self.state.stage
                                                     and self.state.trainable):
                    plan.create_adapters()
            self.loaded.restore({"model": self.model.variables})
            rundir.write_rows(self.history_path, self.history)  # drop epochs it does not have
            self.echo(f"Resuming from {self.loaded.path.parent.name}/{self.loaded.path.name}: "
                      f"{self.state.describe(self.cfg.stages)}"
                      + (f" (not usable: {'; '.join(self.loaded.skipped)})"
                         if self.loaded.skipped else ""))
        else:
            self.save(0)  # the starting point: a run killed from here on can be resumed
        for plan in self.prep.plans:
            if plan.index >= self.state.stage:  # earlier ones finished before the checkpoint
                self.run_stage(plan)
        self.keep_best_stage()
        return self.finish(started, run_path or self.run)

    def run_stage(self, plan) -> None:
        """Trains one stage (resumed from the checkpoint when it is the checkpoint's stage),
        records its result and checkpoints the stage boundary."""
        from tftune.training.stage import compile_like, run_stage
        from tftune.training.stage_data import stage_data

        i, stage = plan.index, plan.stage
        plan.apply(self.backbone, self.prep.head, self.prep.unused)
        plan.announce(self.model, self.echo)
        faults.point("stage_begin", f"stage {i + 1}")
        if self.stop_requested():  # e.g. SIGTERM while loading: stop before the cache is built
            raise self.stopped_here()
        data = stage_data(self.cfg, self.model, self.backbone, self.prep, i,
                          self._feature_cache_dir(), self.echo)
        st = self.state
        resuming = self.loaded is not None and st.stage == i and (st.epoch or st.step or st.stopped)
        if self.budget is not None:
            plan = self._budgeted(plan, data, resuming)
            if plan is None:  # no time left for it
                data.close()
                self.planned[str(i)] = 0
                self.save(i + 1)
                return
        try:
            result = run_stage(
                data.model, plan, self.task, data.train, data.val, self.prep.steps_per_epoch,
                self._callbacks(plan, data), self.jit, self.verbose, distribution=self.dist,
                steps_per_execution=steps_per_execution(
                    self.cfg.train.steps_per_execution, plan, data,
                    static=self.prep.pipe.static is not None),
                resume=self._resume_stage if resuming else None, hooks=self._hooks(plan),
            )
        except Preempted:
            raise self.stopped_here() from None
        finally:
            data.close()
        if data.model is not self.model:  # trained through the cache: the full model shares its weights
            compile_like(self.model, data.model, self.task, self.jit)
        self.results.append(result)
        soup = result.soup
        if soup is not None:
            epochs = ", ".join(map(str, soup["epochs"]))
            self.echo(
                f"   stage {stage.name}: {plan.soup} soup of epochs {epochs}: {result.monitor}="
                f"{soup['value']:.4f}, best epoch alone {soup['best_single']:.4f}; "
                + ("keeping the soup" if soup["kept"] else "keeping the best epoch"))
        what = "soup kept" if soup is not None and soup["kept"] else "best weights restored"
        self.echo(
            f"   stage {stage.name}: best {result.monitor}={result.best_value:.4f} at epoch "
            f"{result.best_epoch}/{result.epochs_run} ({result.seconds:.0f}s); {what}"
        )
        if result.best_value is not None and (
            self.best is None or self.best["monitor"] != result.monitor
            or self.task.better(result.monitor, result.best_value, self.best["value"])
        ):
            self.best = {"monitor": result.monitor, "value": result.best_value, "stage": i,
                         "adapted": adapters.adapted_layers(self.model)}
            self.best_weights = self.model.get_weights()
        self.save(i + 1)  # the stage boundary
        faults.point("stage_end", f"stage {i + 1}")
        if self.stop_requested():
            raise self.stopped_here()

    def _feature_cache_dir(self):
        """Where the feature cache spills: in the run directory on local disk; for a run
        directory on a URL (`gs://`), the local temporary folder (None: the cache's default)."""
        return None if storage.is_url(self.run) else self.run / ".feature_cache"

    # -- the time budget ----------------------------------------------------------------

    def _budget(self):
        """The run's `Budget` under `train.time_limit` (with the time spent before a resume)."""
        from tftune.training.budget import Budget, format_seconds, stage_shapes

        limit = self.cfg.train.time_limit_seconds
        if limit is None:
            return None
        pipes = self.prep.stage_pipes or [self.prep.pipe] * len(self.prep.plans)
        self.shapes = stage_shapes(self.cfg, self.prep.plans, pipes)
        sizes = dict(self.splits.sizes)
        if not self.cfg.train.evaluate_test:
            sizes.pop("test", None)  # nothing of the limit is kept for a split not scored
        budget = Budget(limit, self.started - self.state.seconds, sizes, self.echo,
                        agree=self.dist.agree, agree_min=self.dist.agree_min)
        before = (f", {format_seconds(self.state.seconds)} of it spent before this resume"
                  if self.state.seconds else "")
        self.echo(f"Time limit: {format_seconds(limit)}{before}; "
                  f"{format_seconds(budget.left())} left after loading.")
        return budget

    def skipped(self) -> list[int]:
        """The stages the time limit skipped (this process's and before a resume)."""
        return sorted(int(i) for i, epochs in self.planned.items() if epochs == 0)

    def _budgeted(self, plan, data, resuming: bool):
        """`plan` with the epochs the budget gives it (None: skip the stage): whole epochs,
        and the steps of a last part of one. A resumed stage keeps the epochs planned when it
        began (its schedule spans them)."""
        i, budget, shapes = plan.index, self.budget, self.shapes
        if data.cached:
            budget.fill_measured(shapes[i], data.caches[0].seconds)
        if budget.stopped_at_limit:
            self.echo(f"   time budget: skipping stage {plan.stage.name!r}: the time limit "
                      f"ended the stage before it")
            return None
        if resuming and str(i) in self.planned:
            epochs = float(self.planned[str(i)])
        else:
            epochs = budget.stage_begins(i, shapes)
            if epochs is None:
                epochs = plan.stage.epochs
            self._record_plan(i, epochs)
        if epochs == 0:
            return None
        from tftune.training import loop

        length = self.lengths[i] = loop.Length.planned(
            epochs, plan.stage.steps_per_epoch or self.prep.steps_per_epoch)
        stretches = tuple(tuple(r) for r in self.stretches.get(str(i), ())) if resuming else ()
        return dataclasses.replace(
            plan, stage=dataclasses.replace(plan.stage, epochs=length.epochs),
            last_epoch_steps=length.last_steps, stretches=stretches, stretchable=True)

    def _record_plan(self, i: int, epochs: float) -> None:
        """Keeps stage `i`'s planned epochs for the checkpoints (2, not 2.0)."""
        self.planned[str(i)] = int(epochs) if float(epochs).is_integer() else float(epochs)

    def _revised(self, plan):
        """What `budget.epoch_timer` calls when the budget plans stage `plan` again: the
        stage's length, its schedule stretched to the new length, both kept for a resume."""
        from tftune.training import loop
        from tftune.training.optim import WarmupDecay

        i = plan.index
        per_epoch = plan.stage.steps_per_epoch or self.prep.steps_per_epoch

        def revised(epochs: float, model) -> None:
            new = loop.Length.planned(epochs, per_epoch)
            optimizer = model.optimizer
            optimizer = getattr(optimizer, "inner_optimizer", optimizer)
            schedule = getattr(optimizer, "_learning_rate", None)
            if isinstance(schedule, WarmupDecay):
                if not schedule.stretch(int(optimizer.iterations), new.total_steps(per_epoch)):
                    return  # its schedule cannot follow: the stage keeps its length
                self.stretches[str(i)] = [list(r) for r in schedule.stretches]
            self._record_plan(i, epochs)
            length = self.lengths[i]
            length.epochs, length.last_steps = new.epochs, new.last_steps

        return revised

    def _out_of_time(self, plan, srun):
        from tftune.training import average
        from tftune.training.budget import val_estimate

        budget, shape = self.budget, self.shapes[plan.index]

        def soup_trials() -> int:
            """The validation passes of the stage's soup at its end, this epoch's weights included."""
            held = len(srun.snapshots.weights) + 1 if srun.snapshots is not None else 0
            return average.trials(plan.soup, held)

        def out_of_time() -> bool:
            if not budget.out_of_time(val_estimate(budget, plan.index, shape, soup_trials())):
                return False
            if not budget.stopped_at_limit:
                budget.stopped_at_limit = True
                self.echo(f"   time budget: the time limit is near; stage {plan.stage.name!r} "
                          f"ends with this epoch (validated, best weights kept)")
            return True

        return out_of_time

    # -- callbacks and hooks -------------------------------------------------------------

    def _callbacks(self, plan, data=None) -> list:
        from tftune.training.callbacks import EpochLine, HistoryCSV, StopOnNaN, TensorBoardLog

        i, stage = plan.index, plan.stage
        callbacks = [HistoryCSV(self.history_path, i, stage.name, self.history),
                     StopOnNaN(stage.name, f"stages.{i}.learning_rate")]
        if self.epoch_lines:
            callbacks.append(EpochLine(stage.name, self.lengths.get(i, stage.epochs), self.echo))
        if self.cfg.train.tensorboard:
            callbacks.append(TensorBoardLog(
                self.run / rundir.TENSORBOARD_DIR, i, plan.banner(self.model).strip("= "),
                plan.multipliers, self.history))
        if self.budget is not None:
            from tftune.training.budget import epoch_timer

            callbacks.append(epoch_timer(
                self.budget, i, self.shapes, bool(data is not None and data.cached),
                stage.steps_per_epoch or self.prep.steps_per_epoch,
                lambda: float(self.planned.get(str(i), stage.epochs)), self._revised(plan)))
        return callbacks + self.user_callbacks

    def _resume_stage(self, srun):
        """Loads the checkpointed state of the stage into the freshly compiled `srun`."""
        from tftune.training import loop

        st, i = self.state, self.state.stage
        self.loaded.restore({"optimizer": srun.model.optimizer.variables,
                             "metrics": srun.steps.metric_variables})
        trainable = [v.path for v in srun.model.trainable_variables]
        if trainable != st.trainable:
            raise TftuneError(
                f"Cannot resume stage {i + 1}: it trains {len(trainable)} variables, the "
                f"checkpoint's stage trained {len(st.trainable)} (the backbone or its "
                f"groups changed). Pass --overwrite to start again."
            )
        srun.load_early_stopping_state(st.early_stopping, self.loaded.arrays("early_stopping"))
        srun.load_snapshots(st.early_stopping, lambda k: self.loaded.arrays(f"snapshot_{k}"))
        srun.epoch_logs[:] = [dict(l) for l in st.epoch_logs]
        return loop.Position(st.epoch, st.step, st.stopped)

    def _hooks(self, plan):
        from tftune.training import loop

        i = plan.index

        def hooks(srun):
            return loop.Hooks(checkpoint=lambda at: self.save(i, at, srun),
                              stop_requested=self.stop_requested,
                              every_steps=self.cfg.train.checkpoint_steps,
                              length=self.lengths.get(i),
                              **({"out_of_time": self._out_of_time(self.prep.plans[i], srun)}
                                 if self.budget is not None else {}))

        return hooks

    def keep_best_stage(self) -> None:
        """Puts back the best stage's weights when a later stage did worse on its monitor;
        after a resume past the last stage, compiles the model with that stage's optimizer."""
        from tftune.training.stage import compile_model

        if getattr(self.model, "optimizer", None) is None:
            # First, so the stage's apply (which may merge adapters) sees the last weights.
            last = self.prep.plans[-1]
            last.apply(self.backbone, self.prep.head, self.prep.unused)
            compile_model(self.model, self.task, last.optimizer(self.prep.steps_per_epoch), self.jit)
        stages, best = self.cfg.stages, self.best
        last = max(set(range(len(stages))) - set(self.skipped()), default=len(stages) - 1)
        if best is not None and best["stage"] != last:
            self.echo(
                f"The last stage did not beat stage {best['stage'] + 1} "
                f"({stages[best['stage']].name!r}) on {best['monitor']}; keeping that stage's "
                f"weights."
            )
            adapters.set_weights(self.model, self.best_weights, best.get("adapted", []))

    def save_adapters(self) -> None:
        """`adapters.weights.npz` + `adapters.json` beside model.keras when the run is its base
        plus a few weights: some stage was PEFT and none trained whole backbone groups."""
        plans = self.prep.plans
        if not any(p.peft != "none" for p in plans) or any(
                p.peft == "none" and p.train_indices for p in plans):
            return
        b = self.cfg.backbone
        path = adapters.save_adapters(self.model, self.backbone.model, self.run, self.backbone.spec,
                                  b.weights)
        self.echo(f"   adapters: {path.name} ({path.stat().st_size / 2**20:.2f} MiB), base "
                  f"{self.backbone.spec}")

    def finish(self, started: float, run_path: Path) -> RunResult:
        """Scores validation and test, writes model.keras, metrics.json and the curves, and
        removes the checkpoints (the run is finished)."""
        from tftune.training import loop

        cfg, run = self.cfg, self.run
        evaluation = loop.Steps(self.model, self.task, self.dist)
        metrics: dict[str, Any] = {}
        trained = self.spent()  # the final evaluation's share of a time limit is logged
        test_ds = self.prep.test_ds if cfg.train.evaluate_test else None
        for split, ds in (("val", self.prep.val_ds), ("test", test_ds)):
            if ds is not None:
                metrics[split] = evaluation.evaluate(ds)
        metrics["stages"] = [dataclasses.asdict(r) for r in self.results]
        metrics["sizes"] = self.splits.sizes
        from tftune.training.budget import now

        metrics["seconds"] = round(now() - started, 1)
        if self.budget is not None:
            spent = self.spent()
            metrics["time_limit"] = {
                "limit": self.budget.limit, "planned_epochs": dict(self.planned),
                "seconds": round(spent, 1),
                # where an overrun came from: the final evaluation against what was kept for it
                "final_evaluation_seconds": round(spent - trained, 1),
                "kept_for_final_evaluation": round(self.budget.reserve(), 1),
                "skipped_stages": [cfg.stages[i].name for i in self.skipped()],
                "stopped_at_limit": self.budget.stopped_at_limit}
        faults.point("final:evaluated")
        for line in self.tune_on_validation():
            self.echo(line)
        rundir.write_json(run / rundir.TASK_FILE, {"task": self.task.name, **self.task.state()})
        rundir.save_model(adapters.saved_form(self.model), run)  # an int8 base: saved float
        faults.point("final:model_saved")
        self.save_adapters()
        rundir.write_json(run / rundir.METRICS_FILE, metrics)
        plots.training_curves(self.history_path, run / plots.TRAINING_CURVES_FILE,
                              [s.early_stopping.monitor for s in cfg.stages], self.task.minimised)
        faults.point("final:metrics_written")
        ckpt.remove(run)  # finished: metrics.json and model.keras are the run's result
        summary = self.task.summary(metrics)
        if self.budget is not None:
            limit = metrics["time_limit"]
            self.echo(f"   time budget: {limit['seconds']:.0f}s used of {limit['limit']:.0f}s; the final "
                      f"evaluation took {limit['final_evaluation_seconds']:.0f}s, "
                      f"{limit['kept_for_final_evaluation']:.0f}s were kept for it")
        if not cfg.train.evaluate_test and self.prep.test_ds is not None:
            self.echo(f"   test split not scored (train.evaluate_test: false); score it once "
                      f"with: tftune evaluate {run_path} --split test")
        if self.dist.is_chief:
            self.echo(f"Done in {metrics['seconds']:.0f}s: {summary}. Run directory: {run_path}")
        else:
            self.echo(f"Done in {metrics['seconds']:.0f}s: {summary}. The chief worker wrote the "
                      f"run directory ({run_path} on its machine).")
        return RunResult(run_dir=run_path, metrics=metrics, model=self.model,
                         class_names=self.splits.class_names)


    def tune_on_validation(self) -> list[str]:
        """Lets the task decide what it tunes on the validation split (e.g. multi-label
        decision thresholds) from the final model's outputs; returns its log lines."""
        import numpy as np

        if not self.task.tunes_on_validation:
            return []
        ys, outputs = [], []
        val_ds = self.prep.val_ds
        if self.worker is not None:  # a worker's shard: tune on the whole split, as one device
            pipe = self.prep.pipe
            val_ds = pipe.eval_batches(pipe.source(self.splits.val))
        for x, y, *weight in val_ds:  # static shapes: weight-0 filling left out
            keep = np.asarray(weight[0]) > 0 if weight else slice(None)
            outputs.append(np.asarray(self.model(x, training=False), np.float32)[keep])
            ys.append(np.asarray(y)[keep])
        return self.task.after_training(np.concatenate(ys), np.concatenate(outputs))


def _stage_result(data: dict):
    from tftune.training.stage import StageResult

    return StageResult(**data)
