"""`train.time_limit` / `--time-limit`: stages' epochs planned from measured costs, the run
stopped cleanly at the limit, and `--resume` given what is left of the budget.

The runs use a clock the test advances by one second per training step, so what the budget
sees (and decides) does not depend on this host's speed."""

from __future__ import annotations

import pytest

from helpers import (
    assert_one_line_error,
    assert_same_run,
    history_rows,
    invoke,
    make_image_folder,
    resume_recipe,
    save_tiny_cnn,
    sigterm_at,
    write_recipe,
)
from tftune.config import config_from_dict
from tftune.errors import ConfigError
from tftune.training import budget as budget_module
from tftune.training.budget import Budget, Cost, StageShape, format_seconds, parse_duration


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    return make_image_folder(root / "images"), save_tiny_cnn(root / "cnn.keras")


class Clock:
    """A clock that only moves when told to."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def install(monkeypatch, c: Clock) -> Clock:
    """Makes `c` the budget's clock, advanced by one second per training step the loop runs."""
    from tftune.training import loop

    monkeypatch.setattr(budget_module, "now", c)
    train_steps = loop.Steps.train_steps

    def timed(self, iterator, n):
        count, logs = train_steps(self, iterator, n)
        c.t += count
        return count, logs

    monkeypatch.setattr(loop.Steps, "train_steps", timed)
    return c


@pytest.fixture
def clock(monkeypatch):
    return install(monkeypatch, Clock())


# -- durations -------------------------------------------------------------------------------


def test_durations():
    assert [parse_duration(v) for v in ("90s", "10m", "1h30m", "2.5h", "600", 45, " 5m ")] == [
        90, 600, 5400, 9000, 600, 45, 300]
    for bad in ("10x", "0", "-5", "m", "", True, "1h-30m"):
        with pytest.raises(ConfigError, match="Invalid value for 'train.time_limit'. Expected a "
                                              "duration > 0"):
            parse_duration(bad)
    assert [format_seconds(s) for s in (4.4, 245, 3725)] == ["4s", "4m05s", "1h02m"]


def test_a_bad_time_limit_is_one_line(tmp_path, data):
    folder, cnn = data
    path = write_recipe(tmp_path / "r.yaml", resume_recipe(folder, cnn, tmp_path))
    assert_one_line_error(invoke("train", path, "--time-limit", "10 minutes"),
                          "Invalid value for 'train.time_limit'", "e.g. 90s, 10m, 1h30m")


# -- the plan --------------------------------------------------------------------------------


STAGES = [StageShape("head", 4, 0.0, True), StageShape("all", 3, 1.0, False)]


def planned(limit: float, spent: float, forward: float, index: int = 0, **measured):
    """(epochs, log lines) of stage `index` with `spent` of `limit` seconds gone and a forward
    pass over the training split costing `forward` seconds (train 1000, val 100, test 200)."""
    clock = Clock()
    b = Budget(limit, clock.t - spent, {"train": 1000, "val": 100, "test": 200}, echo=print,
               clock=clock)
    b.forward, b.forward_from = forward, "a test"
    b.measured.update(measured)
    return b.plan(index, STAGES)


def test_the_configured_epochs_stay_when_they_fit():
    # head: 4 cached epochs of ~2 % of a forward pass; all: 3 epochs of 3 forward passes + val
    epochs, lines = planned(limit=1000, spent=10, forward=10)
    assert epochs == 4
    assert "plan: head 4 epoch(s)" in lines[0] and "all 3 epoch(s)" in lines[0]


def test_a_tight_budget_shares_time_in_proportion_to_need():
    # `all` needs 3 x 31 s = 93 s; 60 s are left, 52 s less the reserve (8 s): 1.67 epochs,
    # in hundredths of an epoch.
    epochs, lines = planned(limit=100, spent=40, forward=10, index=1)
    assert epochs == 1.67
    assert "all 1.67 of 3 epoch(s) (~52s, 31s an epoch)" in lines[0]


def test_a_planned_part_of_an_epoch_is_whole_epochs_and_the_steps_of_the_last():
    from tftune.training.budget import epochs_text, stage_steps

    assert stage_steps(2.75, 100) == (3, 75)
    assert stage_steps(1.67, 7) == (2, 4)  # 11.69 steps: 11, the second epoch's first 4
    assert stage_steps(2, 50) == (2, 50)
    assert stage_steps(0.001, 50) == (1, 1)
    assert [epochs_text(e) for e in (2, 2.0, 2.5, 1.67)] == ["2", "2", "2.5", "1.67"]


def test_a_cheap_stage_keeps_its_epochs_in_a_tight_budget():
    """The head on cached features wants 4 x 0.2 s; `all` wants 3 x 31 s of the ~58 s left:
    a proportional share would round the head's epochs away; it keeps them, `all` is cut."""
    epochs, lines = planned(limit=100, spent=40, forward=10)
    assert epochs == 4
    assert "plan: head 4 epoch(s)" in lines[0] and "all 1.64 of 3 epoch(s)" in lines[0]


def test_a_stage_is_not_cut_when_that_buys_the_later_stages_nothing():
    """34 s left: the head's 4 epochs of 0.6 s would be cut to its share, but no whole `all`
    epoch (35 s) fits either way, so it keeps them."""
    clock = Clock()
    b = Budget(100, clock.t - 66, {"train": 1000, "val": 100, "test": 200}, print, clock=clock)
    b.forward = 10
    b.measured[0] = Cost(0.0, 0.3, 0.3)
    b.measured[1] = Cost(0.0, 34.0, 1.0)
    b.RESERVE_FRACTION = 0.0
    assert b.left() - b.reserve() < 35  # less than one `all` epoch
    epochs, _ = b.plan(0, STAGES)
    assert epochs == 4
    assert b.revise(0, STAGES, done=1, planned=4) == 4


def test_less_than_half_an_epoch_skips_the_stage():
    epochs, _ = planned(limit=100, spent=80, forward=10, index=1)
    assert epochs == 0


def test_between_epochs_a_stage_is_planned_again_from_its_timed_epochs():
    """`all` was planned for 1.5 epochs from an estimate; its first epoch took 10 s, not 31:
    it is lengthened (up to its 3 configured epochs); when its epochs then take longer, it is
    shortened; with less than a tenth of an epoch left, it stops."""
    clock = Clock()
    lines = []
    b = Budget(100, clock.t - 40, {"train": 1000, "val": 100, "test": 200}, lines.append,
               clock=clock)
    b.forward = 10
    b.measured[1] = Cost(0.0, 9.0, 1.0)  # 52 s left after the reserve: 5.2 more epochs fit
    assert b.revise(1, STAGES, done=1, planned=1.5) == 3
    assert "stage 'all' planned again after epoch 1: 1.5 -> 3 of 3 epoch(s)" in lines[-1]
    assert b.revise(1, STAGES, done=1, planned=3) == 3  # unchanged: nothing logged
    assert len(lines) == 1
    b.measured[1] = Cost(0.0, 39.0, 1.0)  # 52 s: 1.3 more epochs
    assert b.revise(1, STAGES, done=1, planned=3) == 2.3
    clock.t += 49  # 3 s left: less than a tenth of an epoch
    assert b.revise(1, STAGES, done=2, planned=2.3) == 2
    assert "stopping stage 'all' after epoch 2 of 2.3" in lines[-1]
    assert b.revise(1, STAGES, done=3, planned=3) == 3  # the stage is over


def test_checkpoints_are_part_of_an_epochs_cost():
    """Each epoch ends with a checkpoint and each stage with one more: with checkpoints of
    5 s, `all` (31 s an epoch of training and validation) costs 36 s an epoch and 5 s more
    at its end. 60 s left, less an 8 s reserve that now holds the model's save (5 s):
    (60 - 10 - 5) / 36 = 1.25 epochs, not the 1.67 the same budget gives without them."""
    clock = Clock()
    b = Budget(100, clock.t - 40, {"train": 1000, "val": 100, "test": 200}, print, clock=clock)
    b.forward, b.save_seconds = 10.0, 5.0
    cost = b.estimate(1, STAGES[1])
    assert (cost.epoch, cost.need(2)) == (36.0, 77.0)
    assert b.reserve() == pytest.approx(3 + 5 + 2)  # final evaluation, model save, 2 %
    epochs, lines = b.plan(1, STAGES)
    assert epochs == 1.25
    assert "all 1.25 of 3 epoch(s) (~50s, 36s an epoch)" in lines[0]


def test_the_final_evaluation_is_sized_from_a_timed_validation_pass():
    """Until a stage has validated the whole model, the final evaluation (validation and
    test) is estimated from the forward pass over train (10 s x 300/1000); once an uncached
    stage's validation pass is timed (4 s over val), from that: 4 s x (100 + 200)/100. A
    cached stage's validation runs only the trained part and does not count."""
    clock = Clock()
    b = Budget(100, clock.t, {"train": 1000, "val": 100, "test": 200}, print, clock=clock)
    b.forward, b.RESERVE_FRACTION = 10.0, 0.0
    assert b.reserve() == pytest.approx(3 + b.MIN_SAVE_SECONDS)
    b.epoch_measured(0, STAGES[0], cached=True, train=0.5, val=0.1)
    assert b.reserve() == pytest.approx(3 + b.MIN_SAVE_SECONDS)
    b.epoch_measured(1, STAGES[1], cached=False, train=30.0, val=4.0)
    assert b.reserve() == pytest.approx(12 + b.MIN_SAVE_SECONDS)


def test_at_a_step_the_stage_stops_while_its_ending_still_fits():
    """Ending a stage at a step takes its validation, the epoch's checkpoint and the stage's
    checkpoint; the step check keeps room for all three before the final evaluation."""
    clock = Clock()
    b = Budget(100, clock.t, {"train": 1000, "val": 100, "test": 200}, print, clock=clock)
    b.forward, b.save_seconds = 10.0, 4.0
    room = b.reserve() + 2.0 + 2 * 4.0  # validation 2 s, two checkpoints
    clock.t += 100 - room - 0.5
    assert not b.out_of_time(2.0)
    clock.t += 1.0
    assert b.out_of_time(2.0)


def test_an_epoch_cut_short_is_timed_from_its_steps_after_the_first_call():
    """The epoch timer extends an epoch that ran part of its 100 steps to a whole one: the
    first call (tracing, the input's start) counted once, the later steps at their rate. An
    epoch the limit ended after its first call, which took 40 s (a retrace, a slow host),
    tells nothing about the rest: the stage keeps its earlier timing instead of planning
    with 40 s x 100 steps."""
    import types

    clock = Clock()
    b = Budget(10_000, clock.t, {"train": 1000, "val": 100, "test": 200}, print, clock=clock)
    timer = budget_module.epoch_timer(b, 1, STAGES, cached=False, steps_per_epoch=100,
                                      planned=lambda: 3.0, revised=lambda epochs, model: None)
    timer.set_model(types.SimpleNamespace(stop_training=True))  # no replanning here

    def epoch(calls, val=2.0):
        """One epoch of `calls`: (steps, seconds) each."""
        timer.on_epoch_begin(0)
        step = 0
        for steps, seconds in calls:
            timer.on_train_batch_begin(step)
            clock.t += seconds
            step += steps
            timer.on_train_batch_end(step - 1)
        clock.t += val
        timer.on_epoch_end(0)

    epoch([(2, 3.0)])  # nothing timed before (a resumed stage): its one call, scaled
    assert b.measured[1].train == pytest.approx(150.0)
    epoch([(10, 15.0)] + [(10, 5.0)] * 9)  # whole: its own time
    assert (b.measured[1].train, b.measured[1].val, b.eval_seconds) == (60.0, 2.0, 2.0)
    epoch([(10, 12.0)] + [(10, 4.0)] * 2)  # 30 steps: 12 s, then 0.4 s a step for 90 more
    assert b.measured[1].train == pytest.approx(12.0 + 0.4 * 90)
    epoch([(1, 40.0)], val=3.0)  # one call: the training time is not extrapolated
    assert b.measured[1].train == pytest.approx(48.0) and b.eval_seconds == 3.0


def test_nothing_measured_keeps_the_configured_epochs():
    clock = Clock()
    b = Budget(100, clock.t, {"train": 10, "val": 2}, print, clock=clock)
    epochs, lines = b.plan(0, STAGES)
    assert epochs is None and "nothing timed yet" in lines[0]


# -- runs ------------------------------------------------------------------------------------


def run(cfg_dict, clock, out=None, **kwargs):
    from tftune.training.runner import train

    lines = []
    try:
        result = train(config_from_dict(cfg_dict), echo=lines.append, **kwargs)
    finally:
        print("\n".join(lines))  # pytest shows it when a test fails
    return result, lines


def limited(folder, cnn, out, limit, top_epochs=4):
    recipe = resume_recipe(folder, cnn, out, time_limit=limit, steps_per_execution=1)
    recipe["stages"][1]["epochs"] = top_epochs
    return recipe


@pytest.mark.usefixtures("eager")
def test_a_run_ends_within_its_limit(tmp_path, data, clock):
    """Head: 2 epochs of 4 one-second steps; top: 4 such epochs would overrun 21 s. The
    budget times the top stage's first epoch, plans the stage again (2.19 epochs: 8 of its
    steps), and the run (final evaluation included) ends within the limit."""
    folder, cnn = data
    result, lines = run(limited(folder, cnn, tmp_path, 21), clock)
    log = "\n".join(lines)
    assert "Time limit: 21s" in log
    assert "stage 'top' planned again after epoch 1: 4 -> 2.19 of 4 epoch(s)" in log
    assert [s["epochs_run"] for s in result.metrics["stages"]] == [2, 2]
    limit = result.metrics["time_limit"]
    assert limit["seconds"] <= 21 and limit["planned_epochs"] == {"0": 2, "1": 2.19}
    assert not limit["stopped_at_limit"] and limit["skipped_stages"] == []
    assert (result.run_dir / "model.keras").exists()


def test_a_greedy_soup_stage_pays_for_its_trials():
    """Each epoch of a stage that ends in a greedy soup costs a second validation pass (the
    soup tries its weights once at the stage's end); at a step boundary the soup's remaining
    trials are counted beside the epoch's own validation."""
    clock = Clock()
    b = Budget(100, clock.t, {"train": 1000, "val": 100}, print, clock=clock)
    b.forward = 10.0
    plain, greedy = StageShape("all", 3, 1.0, False), StageShape("all", 3, 1.0, False, 2.0)
    one, soup = b.estimate(1, plain), b.estimate(1, greedy)
    assert soup.train == one.train and soup.val == one.val  # the same pass, paid twice
    assert soup.epoch == pytest.approx(one.epoch + one.val)
    b.measured[1] = Cost(0.0, 50.0, 4.0)
    one, soup = b.estimate(1, plain), b.estimate(1, greedy)
    assert (one.val, soup.val) == (4.0, 4.0) and (one.epoch, soup.epoch) == (54.0, 58.0)
    assert budget_module.val_estimate(b, 1, plain) == 4.0
    assert budget_module.val_estimate(b, 1, greedy, soup_trials=2) == 12.0


@pytest.mark.usefixtures("eager")
def test_a_run_with_a_greedy_soup_ends_within_its_limit(tmp_path, data, clock, monkeypatch):
    """Every validation pass costs 2 fake seconds here, and the greedy soup at the end of the
    top stage validates once for each epoch it tries: the budget counts those passes, so the
    run still ends within its limit (46 s of 40 when it did not)."""
    from tftune.training import loop

    folder, cnn = data
    evaluate = loop.Steps.evaluate

    def slow(self, dataset):
        clock.t += 2
        return evaluate(self, dataset)

    monkeypatch.setattr(loop.Steps, "evaluate", slow)
    recipe = limited(folder, cnn, tmp_path, 40, top_epochs=6)
    recipe["train"]["average"] = "greedy"
    result, lines = run(recipe, clock)
    log = "\n".join(lines)
    assert "greedy soup of epochs" in log
    limit = result.metrics["time_limit"]
    assert limit["seconds"] <= 40, log
    assert limit["final_evaluation_seconds"] == 4  # validation and test, 2 fake seconds each
    assert "the final evaluation took 4s" in log


@pytest.mark.usefixtures("eager")
def test_a_run_with_slow_checkpoints_and_evaluation_ends_within_its_limit(tmp_path, data,
                                                                         clock, monkeypatch):
    """Every checkpoint costs 2 fake seconds and every validation pass 1 (the final
    evaluation's two passes included): the budget counts each epoch's checkpoint and the
    stage's, and sizes the final evaluation from a timed validation pass, so the run ends
    within its limit."""
    from tftune.rundir import checkpoint
    from tftune.training import loop

    folder, cnn = data
    write, evaluate = checkpoint.write, loop.Steps.evaluate

    def slow_write(*args, **kwargs):
        clock.t += 2
        return write(*args, **kwargs)

    def slow_evaluate(self, dataset):
        clock.t += 1
        return evaluate(self, dataset)

    monkeypatch.setattr(checkpoint, "write", slow_write)
    monkeypatch.setattr(loop.Steps, "evaluate", slow_evaluate)
    result, lines = run(limited(folder, cnn, tmp_path, 40, top_epochs=6), clock)
    log = "\n".join(lines)
    limit = result.metrics["time_limit"]
    assert limit["seconds"] <= 40, log
    assert 1 < limit["planned_epochs"]["1"] < 6, log  # the limit did shorten the top stage
    assert limit["final_evaluation_seconds"] == 2


@pytest.mark.usefixtures("eager")
def test_at_the_limit_the_epoch_ends_and_later_stages_are_skipped(tmp_path, data, clock):
    """The top stage's costs are underestimated (nothing has timed it): the clock reaches the
    limit inside its first epoch, which ends there, is validated, and keeps the best weights;
    with a third stage configured, it is skipped."""
    folder, cnn = data
    recipe = limited(folder, cnn, tmp_path, 13.5)
    recipe["stages"].append(dict(recipe["stages"][1], name="again"))
    result, lines = run(recipe, clock)
    log = "\n".join(lines)
    assert "the time limit is near; stage 'top' ends with this epoch" in log
    assert "skipping stage 'again'" in log
    stages = result.metrics["stages"]
    assert [s["name"] for s in stages] == ["head", "top"] and stages[1]["epochs_run"] == 1
    rows = [dict(r) for r in history_rows(result.run_dir) if dict(r)["stage_name"] == "top"]
    assert len(rows) == 1 and rows[0]["val_accuracy"] != ""
    limit = result.metrics["time_limit"]
    assert limit["stopped_at_limit"] and limit["skipped_stages"] == ["again"]
    assert limit["seconds"] <= 13.5
    assert "test" in result.metrics


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("step", [11, 14])
def test_resume_gets_what_is_left_and_the_planned_epochs(tmp_path, data, clock, monkeypatch,
                                                         step):
    """SIGTERM in the top stage's first epoch (step 11: before the budget plans it again) or
    its second (14: after, its schedule stretched): the resumed run counts the seconds spent
    before it, keeps the stage's plan and its schedule's stretches, and ends as the
    uninterrupted run does."""
    from tftune.runtime.preemption import Preempted

    folder, cnn = data
    reference, _ = run(limited(folder, cnn, tmp_path / "ref", 21), clock)
    sigterm_at(monkeypatch, "step", step)  # head: steps 1-8; top: epoch 1 steps 9-12
    with pytest.raises(Preempted):
        run(limited(folder, cnn, tmp_path / "cut", 21), clock)
    monkeypatch.undo()
    install(monkeypatch, clock)
    clock.t += 5000  # the time between the two processes is not the run's
    resumed, lines = run(limited(folder, cnn, tmp_path / "cut", 21), clock, resume=True)
    log = "\n".join(lines)
    assert f"Time limit: 21s, {step}s of it spent before this resume" in log
    assert resumed.metrics["time_limit"]["planned_epochs"] == {"0": 2, "1": 2.19}
    assert resumed.metrics["time_limit"]["seconds"] <= 21
    assert_same_run(resumed, reference)


def _steps_by_stage(trace) -> list[int]:
    """Training steps per stage, from a `TFTUNE_TRACE` file."""
    counts: list[int] = []
    for line in trace.read_text().splitlines():
        if line.startswith("stage_begin#"):
            counts.append(0)
        elif line.startswith("step#"):
            counts[-1] += 1
    return counts


@pytest.mark.usefixtures("eager")
def test_a_planned_part_of_an_epoch_ends_the_stage_with_its_schedule(tmp_path, data, clock,
                                                                     monkeypatch):
    """Head, `top` (one timed epoch of 4 one-second steps), then `again` (all, 4 epochs)
    with too little time left for them: `again` gets a fractional plan, runs its whole epochs
    and the planned steps of the last one, and its cosine schedule ends there at 0. SIGTERM
    inside that last part, then --resume, ends as the uninterrupted run did."""
    import math

    from tftune.training.budget import stage_steps

    folder, cnn = data

    def recipe(out):
        r = limited(folder, cnn, out, 24, top_epochs=1)
        # `train: all` (nothing to cache): its cost comes from `top`'s timed epoch
        r["stages"].append(dict(r["stages"][1], name="again", train="all", epochs=4, warmup=0))
        return r

    trace = tmp_path / "trace"
    monkeypatch.setenv("TFTUNE_TRACE", str(trace))
    reference, lines = run(recipe(tmp_path / "ref"), clock)
    planned = reference.metrics["time_limit"]["planned_epochs"]["2"]
    assert 0.5 <= planned < 4 and not float(planned).is_integer()
    whole, last = stage_steps(planned, 4)
    assert f"again {planned:g} of 4 epoch(s)" in "\n".join(lines)
    assert reference.metrics["stages"][2]["epochs_run"] == whole
    assert _steps_by_stage(trace)[2] == (whole - 1) * 4 + last
    assert reference.metrics["time_limit"]["seconds"] <= 24
    # The schedule spans exactly the planned steps: cosine at its end is 0.
    optimizer = reference.model.optimizer
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else None
    if schedule is None:
        schedule = optimizer._learning_rate
    assert math.isclose(float(schedule(int(optimizer.iterations))), 0.0, abs_tol=1e-9)

    monkeypatch.delenv("TFTUNE_TRACE")
    sigterm_at(monkeypatch, "step", 8 + 4 + (whole - 1) * 4 + 1)  # in the last part
    from tftune.runtime.preemption import Preempted

    with pytest.raises(Preempted):
        run(recipe(tmp_path / "cut"), clock)
    monkeypatch.undo()
    install(monkeypatch, clock)
    resumed, _ = run(recipe(tmp_path / "cut"), clock, resume=True)
    assert resumed.metrics["time_limit"]["planned_epochs"]["2"] == planned
    assert_same_run(resumed, reference)
