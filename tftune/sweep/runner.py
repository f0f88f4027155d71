"""The sweep loop: an Optuna study over recipe keys, each trial an ordinary tftune run.

- **Trials.** Trial N trains the recipe with the sweep's `--set` overrides and its own
  parameter values into `<sweep>/trials/<name>-tNNN/`, a run directory like any other
  (`tftune evaluate`, `export`, `train --resume` all work on it). Its value is the run's final
  validation metric (best weights kept), so the test split plays no part in the search:
  trials leave it unscored (`train.evaluate_test: false`, unless `--set` says otherwise).
  Every trial, and the best recipe written at the end, keeps the base recipe's data split
  (`data.split_seed`), so a sweep over `train.seed` compares its trials on the same examples.
- **Pruning.** After every epoch the trial reports the metric to the study; Optuna's median
  pruner stops a trial whose value is worse than the median of earlier trials at the same
  epoch of the same stage (after two finished trials, never at the run's first epoch).
- **Budgets.** `trials` counts finished, pruned and running trials; `time_limit` stops
  starting trials when less than half a mean trial's time is left; `trial_time_limit` is each
  trial's `train.time_limit` (never more than what is left of the sweep's).
- **Resume.** The study is in `sweep.db` (or a shared `storage` URL). Each trial records its
  owner (host and process); a trial left running by a process of this host that no longer
  exists (killed, preempted) is taken over: its run directory resumes from its checkpoint,
  and its stored parameters are kept. Trials of live processes (other machines joining
  the same study) are left alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from tftune.errors import ConfigError, TftuneError, did_you_mean
from tftune.sweep.space import Param, check_params, parse_params, yaml_value

RESULTS_FILE = "results.csv"
PLOT_FILE = "results.png"
BEST_FILE = "best.yaml"
DB_FILE = "sweep.db"
TRIALS_DIR = "trials"
STEP = 1000  # a reported step is stage * STEP + epoch of the stage (0-based)


@dataclasses.dataclass
class SweepSettings:
    """What a sweep searches and for how long (a sweep file's keys, or the CLI's options)."""

    recipe: str
    params: list
    name: Optional[str] = None  # default: the recipe's name + "-sweep"
    trials: int = 10
    time_limit: Optional[float] = None  # seconds for the whole sweep
    trial_time_limit: Optional[float] = None  # each trial's train.time_limit
    metric: str = "auto"  # a validation metric; auto: the last stage's monitor
    overrides: tuple = ()
    storage: Optional[str] = None  # an Optuna storage URL; default: sqlite in the sweep dir
    output_dir: Optional[str] = None
    sampler: str = "tpe"
    pruner: str = "median"


@dataclasses.dataclass
class SweepResult:
    sweep_dir: Path
    metric: str
    best_value: Optional[float]
    best_trial: Optional[int]
    best_params: dict
    trials: list  # rows of results.csv


_FILE_KEYS = ("recipe", "name", "trials", "time_limit", "trial_time_limit", "metric", "set",
              "params", "storage", "output_dir", "sampler", "pruner")


def is_sweep_file(path: Path) -> bool:
    """Whether `path` is a sweep file (a YAML mapping with `params`) rather than a recipe."""
    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        return False
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "params" in data and "stages" not in data


def load_sweep_file(path: Path, **cli: Any) -> SweepSettings:
    """A sweep file's settings, with the command line's (`cli`, None = not given) on top."""
    from tftune.training.budget import parse_duration

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Cannot read sweep file {path}: {e}") from None
    for key in data:
        if key not in _FILE_KEYS:
            raise ConfigError(f"Unknown sweep file key {key!r} in {path}.{did_you_mean(key, _FILE_KEYS)}"
                              f" Expected: {', '.join(_FILE_KEYS)}.")
    if "recipe" not in data:
        raise ConfigError(f"Sweep file {path} names no recipe. Add recipe: <recipe file or name>.")
    recipe = str(data["recipe"])
    beside = (path.parent / recipe).expanduser()
    if beside.is_file():  # a recipe file named relative to the sweep file
        recipe = str(beside)
    sets = data.get("set") or ()
    if isinstance(sets, dict):
        sets = [f"{k}={yaml_value(v)}" for k, v in sets.items()]
    if not isinstance(data.get("params"), dict):
        raise ConfigError(f"Invalid 'params' in {path}. Expected a mapping of recipe keys to "
                          f"distributions, e.g. stages.1.learning_rate: loguniform(1e-5, 3e-4).")
    settings = SweepSettings(
        recipe=recipe, params=parse_params(cli.get("params") or (), data["params"]),
        name=data.get("name"), trials=_count(data.get("trials", 10), "trials"),
        time_limit=parse_duration(data["time_limit"], "time_limit") if data.get("time_limit") else None,
        trial_time_limit=(parse_duration(data["trial_time_limit"], "trial_time_limit")
                          if data.get("trial_time_limit") else None),
        metric=str(data.get("metric", "auto")), overrides=tuple(str(s) for s in sets),
        storage=data.get("storage"), output_dir=data.get("output_dir"),
        sampler=str(data.get("sampler", "tpe")), pruner=str(data.get("pruner", "median")))
    return with_cli(settings, **{k: v for k, v in cli.items() if k != "params"})


def with_cli(settings: SweepSettings, **cli: Any) -> SweepSettings:
    """`settings` with the options given on the command line (None: not given)."""
    from tftune.training.budget import parse_duration

    changes = {}
    for key, value in cli.items():
        if value is None or value == ():
            continue
        if key == "overrides":
            value = tuple(settings.overrides) + tuple(value)
        elif key in ("time_limit", "trial_time_limit"):
            value = parse_duration(value, f"--{key.replace('_', '-')}")
        elif key == "trials":
            value = _count(value, "--trials")
        changes[key] = value
    return dataclasses.replace(settings, **changes)


def _count(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Invalid value for '{where}'. Expected an integer >= 1. Received: {value!r}")
    return value


def _check_choice(value: str, choices: Sequence[str], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"Invalid value for '{where}'. Expected one of: "
                          f"{', '.join(map(repr, choices))}. Received: {value!r}")
    return value


# -- the sweep ------------------------------------------------------------------------------


def sweep(settings: SweepSettings, *, resume: bool = False, overwrite: bool = False,
          echo: Callable[[str], None] = print) -> SweepResult:
    """Runs (or resumes) the sweep; returns the best trial and the results table."""
    from tftune.config import load_recipe
    from tftune.config.recipes import find_recipe
    from tftune.config.loading import resolve_monitors
    from tftune.tasks import get_task

    if resume and overwrite:
        raise ConfigError("Pass either --resume (continue the sweep) or --overwrite (start it "
                          "again), not both.")
    _check_choice(settings.sampler, ("tpe", "random"), "sampler")
    _check_choice(settings.pruner, ("median", "none"), "pruner")
    recipe_path = find_recipe(settings.recipe)
    base = resolve_monitors(load_recipe(recipe_path, settings.overrides))
    metric = base.stages[-1].early_stopping.monitor if settings.metric == "auto" else settings.metric
    task = get_task(base.task, (), base)
    if not metric.startswith("val_") or metric not in task.monitors:
        val = [m for m in task.monitors if m.startswith("val_")]
        raise ConfigError(f"Invalid sweep metric {metric!r}: a sweep ranks trials on a validation "
                          f"metric (never the test split).{did_you_mean(metric, val)} Expected one "
                          f"of: {', '.join(val)}.")
    check_params(recipe_path, settings.overrides, settings.params)
    name = settings.name or f"{base.name}-sweep"
    sweep_dir = Path(settings.output_dir or base.output_dir).expanduser() / name
    _prepare_dir(sweep_dir, resume, overwrite, settings.storage is not None)
    study = _study(settings, sweep_dir, name, metric, task.mode(metric), base.train.seed, resume)
    loop = _Loop(settings, study, recipe_path, base, metric, sweep_dir, name, echo)
    return loop.run()


def _prepare_dir(sweep_dir: Path, resume: bool, overwrite: bool, shared: bool) -> None:
    exists = sweep_dir.is_dir() and any(sweep_dir.iterdir())
    if exists and overwrite:
        if not ((sweep_dir / DB_FILE).exists() or (sweep_dir / TRIALS_DIR).exists()):
            raise TftuneError(f"{sweep_dir} exists and is not a sweep directory (no {DB_FILE} or "
                              f"{TRIALS_DIR}/): not replacing it. Pick another --name or --output.")
        shutil.rmtree(sweep_dir)
    elif exists and not resume:
        raise TftuneError(f"Sweep directory {sweep_dir} already exists. Pass --resume to continue "
                          f"the sweep, --overwrite to start it again, or another --name.")
    elif resume and not exists and not shared:
        raise TftuneError(f"Nothing to resume: {sweep_dir} does not exist. Run without --resume "
                          f"to start the sweep.")
    sweep_dir.mkdir(parents=True, exist_ok=True)


def _study(settings: SweepSettings, sweep_dir: Path, name: str, metric: str, mode: str,
           seed: int, resume: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = settings.storage or f"sqlite:///{(sweep_dir / DB_FILE).resolve()}"
    sampler = _sampler(settings, seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
              if settings.pruner == "median" else optuna.pruners.NopPruner())
    space = {p.key: p.describe() for p in settings.params}
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                    pruner=pruner, load_if_exists=resume,
                                    direction="maximize" if mode == "max" else "minimize")
    except optuna.exceptions.DuplicatedStudyError:
        raise TftuneError(f"Study {name!r} already exists in {storage}. Pass --resume to continue "
                          f"or join it, or another --name.") from None
    except Exception as e:  # a storage URL that cannot be opened (driver, host, path)
        raise TftuneError(f"Cannot open the sweep's storage {storage}: {e}") from None
    # A resumed (or joined) study's sampler must not replay the random draws of the trials
    # it already has: its seed moves on with their number.
    made = len(study.get_trials(deepcopy=False))
    if made:
        study.sampler = _sampler(settings, seed + made)
    held = study.user_attrs
    if held.get("space") is None:
        study.set_user_attr("space", space)
        study.set_user_attr("metric", metric)
        study.set_user_attr("overrides", list(settings.overrides))
    elif held.get("space") != space or held.get("metric") != metric or \
            held.get("overrides") != list(settings.overrides):
        raise TftuneError(
            f"Sweep {name!r} was started with another search space, metric or --set overrides "
            f"({held.get('metric')}; {', '.join(held.get('space', {}).values())}; set "
            f"{held.get('overrides')}). Resume it with the same ones, or start another --name.")
    return study


def _sampler(settings: SweepSettings, seed: int):
    import optuna

    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, settings.trials))


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _orphaned(owner: Optional[str]) -> bool:
    """A trial owned by a process of this host that no longer runs."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _Loop:
    def __init__(self, settings, study, recipe_path, base, metric, sweep_dir, name, echo):
        self.s, self.study, self.recipe_path, self.base = settings, study, recipe_path, base
        self.metric, self.dir, self.name, self.echo = metric, sweep_dir, name, echo
        self.started = time.perf_counter()
        self.before = float(study.user_attrs.get("seconds", 0.0))

    def spent(self) -> float:
        return self.before + time.perf_counter() - self.started

    def counted(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))

    def run(self) -> SweepResult:
        import optuna
        from optuna.trial import TrialState

        s = self.s
        self.echo(f"Sweep {self.name}: {s.trials} trials of {self.recipe_path.name} on "
                  f"{self.metric} ({self.study.direction.name.lower()}), sampler {s.sampler}, "
                  f"pruner {s.pruner}; study in {s.storage or self.dir / DB_FILE}")
        for p in s.params:
            self.echo(f"   {p.describe()}")
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _orphaned(frozen.user_attrs.get("owner")):
                self.echo(f"Trial {frozen.number} was left running by {frozen.user_attrs['owner']}"
                          f" (no longer running): taking it over.")
                trial = optuna.trial.Trial(self.study, frozen._trial_id)  # noqa: SLF001
                trial.set_user_attr("owner", _owner())
                self._run_trial(trial)
        while self.counted() < s.trials:
            limit = self._trial_limit()
            if limit is not None and limit <= 0:
                break
            trial = self.study.ask()
            trial.set_user_attr("owner", _owner())
            self._run_trial(trial, limit)
        return self._write_results(final=True)

    def _trial_limit(self) -> Optional[float]:
        """Seconds the next trial may take (None: no limit; <= 0: start no more trials)."""
        s = self.s
        if s.time_limit is None:
            return s.trial_time_limit
        left = s.time_limit - self.spent()
        done = [t.duration.total_seconds() for t in self.study.get_trials(deepcopy=False)
                if t.duration is not None]
        mean = sum(done) / len(done) if done else 0.0
        if left <= 0 or (done and left < 0.5 * mean):
            from tftune.training.budget import format_seconds

            self.echo(f"Sweep time limit: {format_seconds(max(left, 0))} left of "
                      f"{format_seconds(s.time_limit)}, less than half a trial "
                      f"(~{format_seconds(mean)}): no more trials started.")
            return 0.0
        return left if s.trial_time_limit is None else min(left, s.trial_time_limit)

    def _split_pin(self) -> str:
        """The base recipe's split seed as an override: a trial's own train.seed (swept or not)
        then leaves its data split alone."""
        return f"data.split_seed={self.base.data.split_seed_for(self.base.train.seed)}"

    def _overrides(self, trial, limit: Optional[float]) -> tuple[tuple, dict, Path]:
        values = {p.key: p.suggest(trial) for p in self.s.params}
        run_name = f"{self.name}-t{trial.number:03d}"
        trials_dir = self.dir / TRIALS_DIR
        extra = [f"{k}={yaml_value(v)}" for k, v in values.items()]
        extra += [f"name={run_name}", f"output_dir={trials_dir}"]
        if limit is not None:
            held = trial.user_attrs.get("time_limit")  # a resumed trial keeps its budget
            extra.append(f"train.time_limit={round(held if held is not None else limit, 1)}")
        # trials are judged on validation: their test split stays unscored (and out of their
        # time limit) unless the sweep's own --set asks for it; every trial validates on the
        # same examples, a swept train.seed included
        unseen = ("train.evaluate_test=false", self._split_pin())
        return unseen + tuple(self.s.overrides) + tuple(extra), values, trials_dir / run_name

    def _run_trial(self, trial, limit: Optional[float] = None) -> None:
        import optuna

        from tftune.config import load_recipe
        from tftune.runtime.preemption import Preempted
        from tftune.training.budget import format_seconds
        from tftune.training.runner import train

        overrides, values, run_dir = self._overrides(trial, limit)
        if limit is not None and "time_limit" not in trial.user_attrs:
            trial.set_user_attr("time_limit", round(limit, 1))
        trial.set_user_attr("run_dir", str(run_dir))
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        self.echo(f"== Trial {trial.number} ({self.counted()}/{self.s.trials}): {shown}"
                  + (f" | time limit {format_seconds(trial.user_attrs['time_limit'])}"
                     if "time_limit" in trial.user_attrs else "") + " ==")
        began = time.perf_counter()
        key = self.metric[len("val_"):]
        try:
            metrics_file = run_dir / "metrics.json"
            if metrics_file.is_file():  # finished before the sweep could record it
                import json

                value = json.loads(metrics_file.read_text())["val"][key]
            else:
                cfg = load_recipe(self.recipe_path, overrides)
                resume = run_dir.is_dir() and any(run_dir.iterdir())
                result = train(cfg, resume=resume, callbacks=[_reporter(trial, self.metric, run_dir)],
                               echo=lambda line: self.echo(f"   {line}"))
                value = result.metrics["val"][key]
        except optuna.TrialPruned as e:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.echo(f"   trial {trial.number} pruned: {e}")
        except Preempted:
            raise  # the trial stays running; --resume takes it over
        except TftuneError as e:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            trial_error = str(e).splitlines()[0]
            self.echo(f"   trial {trial.number} failed: {trial_error}")
        else:
            self.study.tell(trial, float(value))
            self.echo(f"   trial {trial.number}: {self.metric}={value:.4f} "
                      f"({time.perf_counter() - began:.0f}s)")
        finally:
            self._clear()
        self.study.set_user_attr("seconds", round(self.spent(), 1))
        self._write_results()

    @staticmethod
    def _clear() -> None:
        import keras

        keras.backend.clear_session()

    # -- results -------------------------------------------------------------------------

    def _write_results(self, final: bool = False) -> SweepResult:
        from tftune import rundir

        trials = self.study.get_trials(deepcopy=False)
        keys = [p.key for p in self.s.params]
        rows = []
        for t in sorted(trials, key=lambda t: t.number):
            rows.append({
                "trial": t.number, "state": t.state.name.lower(),
                # a pruned trial's Optuna value is its last report: that goes in its own column
                self.metric: round(t.value, 6) if t.state.name == "COMPLETE" else "",
                "last_reported": (round(t.intermediate_values[max(t.intermediate_values)], 6)
                                  if t.intermediate_values else ""),
                "seconds": "" if t.duration is None else round(t.duration.total_seconds(), 1),
                **{k: t.params.get(k, "") for k in keys},
                "epochs_reported": len(t.intermediate_values),
                "run_dir": t.user_attrs.get("run_dir", ""),
            })
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["trial", "state", self.metric, "last_reported",
                                                 "seconds", *keys, "epochs_reported", "run_dir"])
        writer.writeheader()
        writer.writerows(rows)
        rundir.write_text(self.dir / RESULTS_FILE, out.getvalue())
        best = self._best()
        if best is not None:
            self._write_best(best)
        if rows:
            _plot(self.dir / PLOT_FILE, trials, self.s.params, self.metric,
                  self.study.direction.name == "MAXIMIZE")
        if final:
            if best is None:
                self.echo(f"Sweep {self.name}: no trial finished. Results: {self.dir / RESULTS_FILE}")
            else:
                shown = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
                self.echo(f"Sweep {self.name}: best trial {best.number}, {self.metric}="
                          f"{best.value:.4f} ({shown}). Results: {self.dir / RESULTS_FILE}, "
                          f"{self.dir / PLOT_FILE}; its recipe: {self.dir / BEST_FILE}; "
                          f"score it on test once: tftune evaluate "
                          f"{best.user_attrs.get('run_dir', '<its run directory>')} --split test")
        return SweepResult(self.dir, self.metric, best.value if best else None,
                           best.number if best else None, dict(best.params) if best else {}, rows)

    def _best(self):
        from optuna.trial import TrialState

        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return None
        pick = max if self.study.direction.name == "MAXIMIZE" else min
        return pick(done, key=lambda t: t.value)

    def _write_best(self, best) -> None:
        from tftune import rundir
        from tftune.config import load_recipe
        from tftune.config.loading import dump_config

        sets = [f"{k}={yaml_value(v)}" for k, v in best.params.items()]
        if best.user_attrs.get("time_limit") is not None:
            sets.append(f"train.time_limit={best.user_attrs['time_limit']}")
        cfg = load_recipe(self.recipe_path, (self._split_pin(),) + tuple(self.s.overrides) + tuple(sets))
        cfg = dataclasses.replace(cfg, name=f"{self.base.name}-best")
        header = (f"# Written by tftune sweep {self.name}: trial {best.number}, "
                  f"{self.metric}={best.value:.4f}\n"
                  f"# recipe {self.recipe_path}, with: {' '.join(sets)}\n"
                  f"# Train it with: tftune train {self.dir / BEST_FILE}\n")
        rundir.write_text(self.dir / BEST_FILE, header + dump_config(cfg))


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _reporter(trial, metric: str, run_dir: Path):
    """A Keras callback reporting `metric` to the study after every epoch and pruning the
    trial when the study's pruner says so. The step is (stage, epoch of the stage), read
    from the epoch's row in the run's history.csv, as `stage * 1000 + epoch`: trials are
    compared at the same epoch of the same stage, also when a time limit gave their stages
    different numbers of epochs."""
    import keras
    import optuna

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(metric)
            if value is None:
                return
            with open(run_dir / "history.csv", newline="") as f:
                last = list(csv.DictReader(f))[-1]  # this epoch's row (written before us)
            stage, in_stage = int(last["stage"]), int(last["epoch"])
            trial.report(float(value), STEP * stage + in_stage - 1)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"{metric}={float(value):.4f} after epoch {in_stage} of stage {stage + 1} is "
                    f"worse than the median of earlier trials there")

    return Report()


def _plot(path: Path, trials, params: Sequence[Param], metric: str, maximize: bool) -> None:
    """The metric of every finished trial by trial number (with the best so far), and against
    each parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tftune import rundir

    done = [t for t in sorted(trials, key=lambda t: t.number) if t.state.name == "COMPLETE"]
    panels = 1 + len(params)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.4), squeeze=False)
    ax = axes[0][0]
    if done:
        xs, ys = [t.number for t in done], [t.value for t in done]
        ax.plot(xs, ys, "o", label="trial")
        best, line = None, []
        for y in ys:
            best = y if best is None or (y > best if maximize else y < best) else best
            line.append(best)
        ax.step(xs, line, where="post", label="best so far")
        ax.legend(fontsize=7)
    pruned = [t.number for t in trials if t.state.name == "PRUNED"]
    for n in pruned:
        ax.axvline(n, color="0.8", lw=0.8)
    ax.set_xlabel("trial (grey: pruned)")
    ax.set_ylabel(metric)
    for ax, p in zip(axes[0][1:], params):
        pts = [(t.params.get(p.key), t.value) for t in done if p.key in t.params]
        if p.kind == "choice":
            labels = [str(c) for c in p.values]
            ax.plot([labels.index(str(x)) for x, _ in pts], [y for _, y in pts], "o")
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o")
            if p.kind == "loguniform":
                ax.set_xscale("log")
        ax.set_xlabel(p.key)
    fig.tight_layout()
    rundir.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
