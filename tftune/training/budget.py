"""`train.time_limit`: plan each stage's epochs so that the whole run ends within a wall-clock
budget, and stop cleanly at the limit.

The budget covers everything `train` does: loading, every stage and the final evaluation.
Costs are measured as the run goes and the plan is made again at every stage start and
checked after every epoch:

- **One unit, `forward`:** the seconds of one forward pass of the whole backbone over the
  training split. A feature-cache fill measures it directly (the fill runs the frozen prefix
  once over the data); a trained epoch measures it through the cost model below. The latest
  measurement wins (this host's speed drifts).
- **Cost model of an epoch that trains a fraction `g` of the backbone's layer groups:**
  uncached, a forward pass plus a backward pass through the trained part, `forward x (1 + 2g)`;
  on cached features only the trained part runs, `forward x 3g` (and the fill before it,
  `forward x (1 - g)` over train and validation). Validation is a forward pass over the
  validation split. A stage's own epochs, once timed, replace its estimate. Every epoch ends
  with a checkpoint and every stage with one more; each costs the slowest checkpoint so far.
- **The final evaluation** (validation and test with the whole model, then saving it) is
  sized from a timed validation pass of the whole model once an uncached stage has run one,
  else from the forward pass over train.
- **The plan:** when the remaining stages' configured epochs do not fit into what is left
  (less a reserve for the final evaluation and saving), each stage gets a share of the time
  left in proportion to what it would need, and as much training as fits into its share, in
  hundredths of an epoch: 2.75 epochs are two whole epochs and three quarters of a third,
  and the stage's learning-rate schedule spans exactly those steps, so it ends decayed. A
  cheap stage (a few % of the time left) keeps its configured epochs. Time a stage leaves
  unused goes to the stages after it. A stage for which less than half an epoch is left is
  skipped.
- **Between epochs:** a stage is planned again from its own timed epochs: lengthened (up to
  its configured epochs) when they took less time than estimated, shortened when more, ended
  when not a tenth of an epoch fits. Its schedule's remaining part is stretched to the new
  length (`optim.WarmupDecay.stretch`), and the stretch is checkpointed with the plan.
- **At the limit:** the loop checks the clock after every step. When only the validation,
  the epoch's and the stage's checkpoints and the final evaluation still fit, the epoch ends
  there: it is validated, early stopping keeps the best weights, and the stages after it
  are skipped. Nothing is written mid-step: the stop goes through the same epoch end and
  checkpoint as any other.

The time spent is stored in every checkpoint, so `--resume` gets what is left of the budget.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable, Optional, Sequence

from tftune.errors import ConfigError

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def now() -> float:
    """The run's clock (`time.perf_counter`); tests replace it with a clock they advance."""
    return time.perf_counter()


def parse_duration(value: Any, where: str = "train.time_limit") -> float:
    """Seconds from a number of seconds or a duration like "10m", "1h30m", "90s", "2.5h"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*(\d+(\.\d+)?\s*[hms]?\s*)+", value or ""):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
            if "".join(n + u for n, u in parts) != re.sub(r"\s", "", text):
                parts = []
            seconds = sum(float(n) * _UNITS[u] for n, u in parts) if parts else -1.0
    else:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"Invalid value for '{where}'. Expected a duration > 0: seconds, or "
                          f"e.g. 90s, 10m, 1h30m. Received: {value!r}")
    return seconds


def format_seconds(seconds: float) -> str:
    """E.g. 45s, 4m05s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _hundredths(epochs: float) -> float:
    """`epochs` rounded down to hundredths of an epoch (the plan's resolution)."""
    return math.floor(epochs * 100 + 1e-6) / 100


def epochs_text(epochs: float) -> str:
    """2 -> "2", 2.75 -> "2.75"."""
    return f"{epochs:.2f}".rstrip("0").rstrip(".")


def stage_steps(epochs: float, steps_per_epoch: int) -> tuple[int, int]:
    """A stage planned for `epochs` (maybe fractional) of `steps_per_epoch` steps: (whole
    epochs it runs, steps of its last epoch); 2.75 epochs of 100 steps -> (3, 75)."""
    total = max(1, int(math.floor(epochs * steps_per_epoch + 1e-6)))
    whole = -(-total // steps_per_epoch)
    return whole, total - (whole - 1) * steps_per_epoch


@dataclasses.dataclass
class StageShape:
    """What the cost model needs to know of a stage: its name, configured epochs, the
    fraction of layer groups it trains, whether its frozen part can be cached."""

    name: str
    epochs: int
    trained: float
    cacheable: bool
    val_passes: float = 1.0
    """Validation passes an epoch costs: 2 with a greedy soup (each epoch's weights are tried
    once more in the soup at the stage's end), 1 otherwise."""


@dataclasses.dataclass
class Cost:
    fill: float  # seconds before the first epoch (a feature-cache fill)
    train: float  # seconds of one epoch's training steps
    val: float  # seconds of one validation pass
    save: float = 0.0  # seconds of a checkpoint: one after each epoch, one at the stage's end
    val_passes: float = 1.0  # validation passes an epoch costs (`StageShape.val_passes`)

    @property
    def epoch(self) -> float:
        return self.train + self.val * self.val_passes + self.save

    def need(self, epochs: float) -> float:
        """Seconds of the stage with `epochs` epochs (its fill and its closing checkpoint)."""
        return self.fill + epochs * self.epoch + self.save


class Budget:
    """The run's time budget: `limit` seconds from `started` (a `now()` value,
    already moved back by the seconds spent before a resume). `sizes` are the splits' example
    counts ({"train", "val", "test"}). `agree_min(x)` makes a value the same on every worker
    (the smallest), `agree(flag)` a flag (true on any)."""

    RESERVE_FRACTION = 0.02  # of the limit, on top of the final evaluation's estimate
    CHEAP_FRACTION = 0.1  # a stage needing at most this share of the time left is not cut
    MIN_SAVE_SECONDS = 3.0

    def __init__(self, limit: float, started: float, sizes: dict, echo: Callable[[str], None],
                 agree: Callable[[bool], bool] = bool, agree_min: Callable[[float], float] = float,
                 clock: Optional[Callable[[], float]] = None):
        self.limit, self.started, self.echo = limit, started, echo
        self.clock = clock or (lambda: now())
        self.agree, self.agree_min = agree, agree_min
        n_train = max(int(sizes.get("train") or 1), 1)
        self.val_ratio = (sizes.get("val") or 0) / n_train
        self.test_ratio = (sizes.get("test") or 0) / n_train
        self.forward: Optional[float] = None  # seconds of one forward pass over train
        self.forward_from = ""
        self.measured: dict[int, Cost] = {}  # a stage's own epochs, once timed
        self.save_seconds = 0.0  # the slowest checkpoint so far
        self.eval_seconds: Optional[float] = None  # a validation pass of the whole model
        self.stopped_at_limit = False

    # -- the clock -----------------------------------------------------------------------

    def spent(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.limit - self.spent()

    def reserve(self) -> float:
        """Seconds kept for the final evaluation (validation and test with the whole model)
        and for saving the model: the evaluation from a timed validation pass of the whole
        model when a stage has run one, else from the forward pass over train."""
        if self.eval_seconds is not None and self.val_ratio > 0:
            final = self.eval_seconds * (self.val_ratio + self.test_ratio) / self.val_ratio
        else:
            final = (self.forward or 0.05 * self.limit) * (self.val_ratio + self.test_ratio)
        save = max(self.save_seconds, self.MIN_SAVE_SECONDS)
        return final + save + self.RESERVE_FRACTION * self.limit

    # -- measurements --------------------------------------------------------------------

    def fill_measured(self, stage: StageShape, seconds: float) -> None:
        """A cache fill of `stage` ran its frozen part over the training split in `seconds`."""
        frozen = 1.0 - stage.trained
        if frozen > 0 and seconds > 0:
            self.forward = seconds / frozen
            self.forward_from = f"the cache fill of stage {stage.name!r}"

    def epoch_measured(self, index: int, stage: StageShape, cached: bool,
                       train: Optional[float], val: float) -> None:
        """Stage `index` trained an epoch in `train` seconds (None: it ran too little of one
        to tell) and validated in `val`."""
        if not cached:  # the whole model ran over the validation split
            self.eval_seconds = val
        if train is None:
            return
        self.measured[index] = Cost(0.0, train, val)
        units = 3 * stage.trained if cached else 1 + 2 * stage.trained
        if units > 0.05:
            self.forward = train / units
            self.forward_from = f"stage {stage.name!r}'s epochs"

    # -- estimates -----------------------------------------------------------------------

    def estimate(self, index: int, stage: StageShape, filled: bool = False) -> Optional[Cost]:
        """Stage `index`'s costs: its own timed epochs when it has any, else the cost model's
        (None when nothing has been measured yet). `filled`: its cache is already filled."""
        f, save = self.forward, self.save_seconds
        cached = stage.cacheable and stage.trained < 1
        fill = 0.0 if filled or not cached or f is None else f * (1 - stage.trained) * (1 + self.val_ratio)
        if index in self.measured:
            measured = self.measured[index]
            return Cost(fill, measured.train, measured.val, save, stage.val_passes)
        if f is None:
            return None
        if cached:
            val = f * self.val_ratio * max(stage.trained, 0.02)
            return Cost(fill, f * max(3 * stage.trained, 0.02), val, save, stage.val_passes)
        return Cost(fill, f * (1 + 2 * stage.trained), f * self.val_ratio, save, stage.val_passes)

    # -- the plan ------------------------------------------------------------------------

    def plan(self, index: int, stages: Sequence[StageShape], done: int = 0,
             filled: bool = True) -> tuple[Optional[float], list[str]]:
        """Epochs for stage `index` (of `stages`, configured epochs; `done` of them trained
        already): a number in [0, configured] in hundredths of an epoch (0 = skip), or None
        when no cost is known yet (keep the configured epochs). Also the log lines that say
        why."""
        left = self.left() - self.reserve()
        costs = [self.estimate(j, stages[j], filled=(j == index and filled))
                 for j in range(index, len(stages))]
        if costs[0] is None:
            return None, [f"   time budget: {format_seconds(self.left())} left of "
                          f"{format_seconds(self.limit)}; nothing timed yet, so stage "
                          f"{stages[index].name!r} keeps its {stages[index].epochs} epoch(s) "
                          f"until its first epoch is timed"]
        wanted = [stages[index].epochs - done] + [s.epochs for s in stages[index + 1:]]
        needs = [c.need(e) if c is not None else 0.0 for c, e in zip(costs, wanted)]
        cost = costs[0]
        # A cheap stage (all it wants is a few % of the time left) keeps its epochs whole:
        # a proportional share of it would be rounded away for nothing.
        cheap = [k for k, need in enumerate(needs) if need <= self.CHEAP_FRACTION * left]
        if sum(needs) <= left or 0 in cheap:
            epochs = float(wanted[0])
        else:
            rest = left - sum(needs[k] for k in cheap)
            share = rest * needs[0] / max(sum(n for k, n in enumerate(needs) if k not in cheap), 1e-9)
            epochs = min(float(wanted[0]), _hundredths((share - cost.need(0)) / max(cost.epoch, 1e-9)))
            # A stage that begins needs half an epoch to fit (the limit may end it early).
            if epochs < 0.5 and done == 0:
                epochs = 0.0
        epochs = max(epochs, 0.0)
        epochs = float(self.agree_min(epochs))
        return epochs, self._plan_lines(index, stages, costs, wanted, epochs, left)

    @staticmethod
    def _fit_in_order(seconds: float, wanted, costs) -> list[Optional[float]]:
        """Epochs (in hundredths) each of these stages gets in `seconds`, taken in order
        (None: its cost is unknown)."""
        counts: list[Optional[float]] = []
        for want, cost in zip(wanted, costs):
            if cost is None:
                counts.append(None)
                continue
            n = min(float(want), max(0.0, _hundredths((seconds - cost.need(0)) / max(cost.epoch, 1e-9))))
            n = n if n >= 0.5 else 0.0
            seconds -= cost.need(n) if n else 0.0
            counts.append(n)
        return counts

    def _plan_lines(self, index, stages, costs, wanted, epochs, left) -> list[str]:
        counts = [epochs] + self._fit_in_order(left - costs[0].need(epochs), wanted[1:], costs[1:])
        parts = []
        for stage, cost, want, n in zip(stages[index:], costs, wanted, counts):
            if cost is None:
                parts.append(f"{stage.name} {want} epoch(s), cost unknown")
                continue
            parts.append(f"{stage.name} {epochs_text(n)}" + (f" of {want}" if n != want else "")
                         + f" epoch(s) (~{format_seconds(cost.need(n) if n else 0)}, "
                         f"{format_seconds(cost.epoch)} an epoch)")
        where = f" (forward pass ~{format_seconds(self.forward)}, from {self.forward_from})" \
            if self.forward is not None else ""
        return [f"   time budget: {format_seconds(self.left())} left of "
                f"{format_seconds(self.limit)} ({format_seconds(self.reserve())} kept for the "
                f"final evaluation); plan: " + ", ".join(parts) + where]

    def stage_begins(self, index: int, stages: Sequence[StageShape]) -> Optional[float]:
        """The epochs stage `index` trains (logged); 0 skips it; None keeps the configured."""
        epochs, lines = self.plan(index, stages)
        for line in lines:
            self.echo(line)
        if epochs == 0:
            self.echo(f"   time budget: skipping stage {stages[index].name!r}: "
                      f"{format_seconds(max(self.left() - self.reserve(), 0))} left before the "
                      f"final evaluation, less than half an epoch")
        return epochs

    REVISE_EPOCHS = 0.1  # a plan changes between epochs by at least this much, or not at all

    def revise(self, index: int, stages: Sequence[StageShape], done: int,
               planned: float) -> float:
        """After epoch `done` of stage `index` (planned for `planned` epochs; `stages` hold the
        configured ones): the epochs the stage should end at now, planned again with its own
        timed epochs. More than `planned` (up to the configured epochs) when its epochs took
        less time than estimated, less when they took more, `done` to end it now (less than
        a tenth of an epoch fits). Changes are logged, with why."""
        if done >= planned:
            return planned
        epochs, _ = self.plan(index, stages, done=done)
        if epochs is None:
            return planned
        revised = min(float(stages[index].epochs), _hundredths(done + epochs))
        if revised - done < self.REVISE_EPOCHS:
            self.echo(f"   time budget: stopping stage {stages[index].name!r} after epoch {done} "
                      f"of {epochs_text(planned)}: {format_seconds(max(self.left(), 0))} left, "
                      f"and the next epoch and the stages after it do not fit")
            return float(done)
        if abs(revised - planned) < self.REVISE_EPOCHS:
            return planned
        cost = self.measured.get(index)
        took = f"its epochs take {format_seconds(cost.epoch)}" if cost is not None else ""
        self.echo(f"   time budget: stage {stages[index].name!r} planned again after epoch "
                  f"{done}: {epochs_text(planned)} -> {epochs_text(revised)} of "
                  f"{stages[index].epochs} epoch(s) ({took}; {format_seconds(max(self.left(), 0))}"
                  f" left); the rest of its schedule spans the new length")
        return revised

    def out_of_time(self, val_seconds: float) -> bool:
        """At a step boundary: whether only what ending the stage here takes still fits
        before the final evaluation: validation (`val_seconds`), the epoch's checkpoint and
        the stage's (the same answer on every worker)."""
        return self.agree(self.left() < self.reserve() + val_seconds + 2 * self.save_seconds)


def stage_shapes(cfg, plans, pipes) -> list[StageShape]:
    """The cost model's view of every stage of the run."""
    shapes = []
    for plan, pipe in zip(plans, pipes):
        groups = max(len(plan.group_names), 1)
        shapes.append(StageShape(plan.stage.name, plan.stage.epochs,
                                 len(plan.train_indices) / groups,
                                 cfg.train.feature_cache != "off" and not pipe.random,
                                 2.0 if plan.soup == "greedy" else 1.0))
    return shapes


def epoch_timer(budget: Budget, index: int, stages: Sequence[StageShape], cached: bool,
                steps_per_epoch: int, planned: Callable[[], float],
                revised: Callable[[float, Any], None]):
    """A Keras callback timing stage `index`'s epochs for the budget: training (from the
    epoch's start to its last step) and validation (from the last step to the epoch's end).
    An epoch that resumed part-way or ended early is extended to a whole one: its first call
    (which holds any tracing and the input's start) once, the steps after it at their rate.
    From a single call the stage keeps its earlier timing (one slow step times 300 would plan
    the budget away); with none (a resumed stage), that call is scaled to a whole epoch,
    which errs on the side of ending early. Then it asks the
    budget to plan the stage again (`planned()`: its epochs now): it ends the stage when
    nothing more fits, and calls `revised(epochs, model)` when the stage's length changes."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.begin = self.last = budget.clock()
            self.first = self.final = self.first_end = None

        def on_train_batch_begin(self, batch, logs=None):
            if self.first is None:
                self.first = batch

        def on_train_batch_end(self, batch, logs=None):
            self.last, self.final = budget.clock(), batch
            if self.first_end is None:  # the first call: `first_steps` steps
                self.first_end, self.first_steps = self.last, batch + 1 - self.first

        def on_epoch_end(self, epoch, logs=None):
            end = budget.clock()
            if self.final is not None:
                ran = self.final + 1 - self.first
                after = ran - self.first_steps  # steps after the first call
                train = None
                if after > 0:
                    rate = (self.last - self.first_end) / after
                    train = self.first_end - self.begin + rate * (steps_per_epoch - self.first_steps)
                elif ran >= steps_per_epoch or index not in budget.measured:
                    train = (self.last - self.begin) * steps_per_epoch / ran
                budget.epoch_measured(index, stages[index], cached, train, end - self.last)
            if self.model.stop_training:
                return
            now_planned = planned()
            epochs = budget.revise(index, stages, epoch + 1, now_planned)
            if epochs <= epoch + 1 < now_planned:
                self.model.stop_training = True
            elif epochs != now_planned:
                revised(epochs, self.model)

    return EpochTimer()


def val_estimate(budget: Budget, index: int, stage: StageShape, soup_trials: int = 0) -> float:
    """Seconds of stage `index`'s validation pass, and of the `soup_trials` validation passes
    its soup still needs at the stage's end (0 while nothing is timed)."""
    cost = budget.estimate(index, stage, filled=True)
    return cost.val * (1 + soup_trials) if cost is not None else 0.0
