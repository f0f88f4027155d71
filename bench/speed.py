"""Speed ratios of tftune's training machinery, every one measured paired and interleaved
(`bench/paired.py`: the systems take turns step by step, each ratio is the median of the
per-round ratios with a bootstrap 95 % interval, printed with the load average):

1. stage overhead: tftune's stage step (its own loop and callbacks, GroupLR AdamW with layer
   decay, warmup + cosine, early stopping, history, NaN check) vs `model.fit`'s own train
   function and callbacks (plain AdamW, same schedule and weight decay) on an identical model
   and the same batches. Target <= 1.02 with the interval's upper end <= 1.05. `--profile`
   adds arms that locate any overhead: fit with tftune's optimizer (the multipliers' cost),
   and tftune's step without the per-batch callbacks (the loop's Python);
2. feature cache: a head-only and a `top:2` stage's step on the cached boundary activations
   vs on input batches, next to its FLOP ceiling (`bench/flops.py`: the uncached training
   step's FLOPs / the cached one's, from the traced graphs). Target >= 90 % of the ceiling;
3. input wait: blocks of training steps on the real pipeline vs the same batches, in the
   same order, replayed from memory, alternating; the share of step time spent waiting for
   data (target < 5 %);
4. text only: the frozen part's cache fill and a validation pass, in the split's order vs
   grouped by length (whole passes alternating).

Run on demand (minutes, not CI):

    python bench/speed.py                          # MobileNetV2 / Fashion-MNIST and MiniLM / Rotten Tomatoes
    python bench/speed.py --only image --profile   # or --only text
    python bench/speed.py --parts wait,cache       # some measurements only
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired import interleave, load_average, ratio  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SETUPS = {
    # (recipe file, overrides): subsets, so that every set-up loads in seconds.
    "image": ("recipes/image_fashion_mnist_mobilenetv2.yaml",
              ["data.max_train_examples=3000", "data.max_test_examples=500"]),
    "text": ("recipes/text_sentiment_minilm.yaml",
             ["data.max_train_examples=1500", "data.max_test_examples=200"]),
}
ALL = {"name": "all", "train": "all", "epochs": 3, "learning_rate": 1e-4, "layer_decay": 0.8,
       "warmup": 0.1, "schedule": "cosine"}


def setup(kind, extra=()):
    """The task's subset loaded and prepared: (config, splits, backbone, Prepared, the open
    context of its inputs, for the caller to close)."""
    from tftune.config import load_recipe
    from tftune.training.prepare import loaded_inputs, prepare_run

    recipe, overrides = SETUPS[kind]
    cfg = load_recipe(REPO / recipe, [*overrides, *extra])
    ctx = loaded_inputs(cfg)
    splits, backbone, _ = ctx.__enter__()
    return cfg, splits, backbone, prepare_run(cfg, splits, backbone, echo=lambda _: None), ctx


class Setups:
    """Independent copies of a task's classifier (one per arm), closed together."""

    def __init__(self):
        self._open = []

    def new(self, kind, extra=()):
        cfg, splits, backbone, prep, ctx = setup(kind, extra)
        self._open.append(ctx)
        return cfg, splits, backbone, prep

    def close(self):
        while self._open:
            self._open.pop().__exit__(None, None, None)


def plan_stage(cfg, backbone, prep, **stage):
    """The StagePlan of one stage (given as recipe keys) on the prepared backbone, applied:
    the stage's groups trainable, the rest frozen. Returns (plan, the stage's config)."""
    from tftune.config import config_from_dict, to_dict
    from tftune.training.plan import StagePlan

    stage.setdefault("early_stopping", {"monitor": "val_loss", "patience": stage.get("epochs", 1)})
    one = config_from_dict({**to_dict(cfg), "stages": [stage]})
    plan = StagePlan.build(one, 0, backbone.groups)
    plan.apply(backbone, prep.head, prep.unused)
    return plan, one


def stepper(fn):
    """An arm: `arm(n)` calls `fn(k)` for the next n step numbers k."""
    counter = itertools.count()

    def arm(n):
        for _ in range(n):
            fn(next(counter))

    return arm


# -- 1. stage overhead -----------------------------------------------------------------------


def fit_arm(setups, kind, group_lr: bool):
    """`model.fit`'s per-step work: its train function between its callbacks' batch hooks
    (a History, as fit adds; verbose=0), on fit's distributed iterator; the optimizer is
    Keras' AdamW with the recipe's schedule, weight decay and moving average (`use_ema`,
    when the recipe averages with `ema`), or (`group_lr`) tftune's own."""
    import keras

    from tftune.training.optim import NO_WEIGHT_DECAY, WarmupDecay, warmup_steps
    from tftune.training.stage import compile_model

    cfg, _, backbone, prep = setups.new(kind)
    plan, _ = plan_stage(cfg, backbone, prep, **ALL)
    stage, model = plan.stage, prep.model
    if group_lr:
        optimizer = plan.optimizer(prep.steps_per_epoch)
    else:
        total = stage.epochs * prep.steps_per_epoch
        # The recipe's weight averaging as Keras' own (`train.average: ema` is `use_ema`).
        ema = {} if plan.ema_momentum is None else {"use_ema": True,
                                                    "ema_momentum": plan.ema_momentum}
        optimizer = keras.optimizers.AdamW(
            WarmupDecay(stage.learning_rate, total, warmup_steps(stage, total), stage.schedule),
            weight_decay=stage.weight_decay, **ema)
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    compile_model(model, prep.task, optimizer, False)
    model.make_train_function()
    callbacks = keras.callbacks.CallbackList(None, add_history=True, add_progbar=False,
                                             verbose=0, epochs=1, steps=prep.steps_per_epoch,
                                             model=model)
    callbacks.on_train_begin()
    iterator = iter(model.distribute_strategy.experimental_distribute_dataset(
        prep.train_ds.repeat()))

    def step(k):
        callbacks.on_train_batch_begin(k)
        logs = model.train_function(iterator)
        callbacks.on_train_batch_end(k, logs)

    return stepper(step)


def tftune_arm(setups, kind, callbacks: bool = True):
    """tftune's per-step work in a stage: `loop.one_step` with the stage's callbacks
    (`stage.open_stage`: early stopping, plus the runner's history and NaN check)."""
    from tftune.training import loop
    from tftune.training.callbacks import HistoryCSV, StopOnNaN
    from tftune.training.stage import open_stage

    cfg, _, backbone, prep = setups.new(kind)
    plan, _ = plan_stage(cfg, backbone, prep, **ALL)
    history = Path(tempfile.mkdtemp(prefix="tftune-bench-")) / "history.csv"
    steps, _, callback_list = open_stage(
        prep.model, plan, prep.task, prep.steps_per_epoch,
        [HistoryCSV(history, 0, "all", []), StopOnNaN("all", "stages.0.learning_rate")], False, 0)
    callback_list.on_train_begin()
    iterator = steps.batches(prep.train_ds.repeat())
    if callbacks:
        return stepper(lambda k: loop.one_step(steps, callback_list, iterator, k))
    return stepper(lambda k: steps.train_batch(iterator))


def stage_overhead(kind, rounds, profile):
    setups = Setups()
    try:
        arms = {"fit": fit_arm(setups, kind, False), "tftune": tftune_arm(setups, kind)}
        if profile:
            arms["fit + tftune optimizer"] = fit_arm(setups, kind, True)
            arms["tftune without callbacks"] = tftune_arm(setups, kind, callbacks=False)
        seconds = interleave(arms, rounds, warmup=5)
    finally:
        setups.close()
    r = ratio(seconds["tftune"], seconds["fit"])
    print(f"[{kind}] stage overhead, tftune step / fit step: {r} -> {r.at_most(1.02, 1.05)}; "
          f"median step {_ms(seconds['tftune'])} vs {_ms(seconds['fit'])}; {load_average()}",
          flush=True)
    if profile:
        for name in ("fit + tftune optimizer", "tftune without callbacks"):
            print(f"[{kind}]   profile: {name} / fit: {ratio(seconds[name], seconds['fit'])}; "
                  f"median step {_ms(seconds[name])}", flush=True)
        print(f"[{kind}]   profile: tftune / tftune without callbacks: "
              f"{ratio(seconds['tftune'], seconds['tftune without callbacks'])}", flush=True)


def _ms(values):
    import statistics

    return f"{1000 * statistics.median(values):.2f} ms"


# -- 2. feature cache ------------------------------------------------------------------------


def feature_cache(kind, train, rounds, block):
    """A `train` stage's step on input batches vs on the cached boundary activations, one step
    per call and as a run takes them (`train.steps_per_execution: auto`, 32 steps a call for a
    head on the cache: per step, the call's seconds / 32), and for a head the floor under it
    (`bare_steps`)."""
    import tensorflow as tf

    from flops import function_flops
    from tftune.training import cache, loop
    from tftune.training.device import steps_per_execution
    from tftune.training.stage import compile_model
    from tftune.training.stage_data import stage_data

    setups = Setups()
    try:
        cfg, _, backbone, prep = setups.new(kind)
        plan, one = plan_stage(cfg, backbone, prep, name=train, train=train, epochs=1,
                               learning_rate=1e-3)
        data = stage_data(one, prep.model, backbone, prep, 0, echo=lambda _: None)
        assert data.cached, f"the {train} stage was not cached"
        per_call = steps_per_execution("auto", plan, data)
        sides = {}
        for name, model, batches in (("uncached", prep.model, prep.train_ds),
                                     ("cached", data.model, data.train(0))):
            compile_model(model, prep.task, plan.optimizer(prep.steps_per_epoch), False)
            steps = loop.Steps(model, prep.task, steps_per_execution=per_call)
            steps.build()
            sides[name] = steps, steps.batches(batches.repeat())
        # FLOPs of both training steps on the same batch (fixed shapes).
        x, y = next(iter(prep.train_ds))
        cut, _ = cache.plan_cache(prep.model, backbone.model)
        features = cut.prefix(x)
        flops_uncached = function_flops(
            lambda a, b: sides["uncached"][0]._replica_train(a, b), x, y)
        flops_cached = function_flops(
            lambda a, b: sides["cached"][0]._replica_train(a, b), features, y)
        arms = {name: stepper(lambda k, s=s, it=it: s.train_batch(it))
                for name, (s, it) in sides.items()}
        if per_call > 1:  # arm(n) runs n calls of `per_call` steps: seconds / per_call a step
            s, it = sides["cached"]
            arms["cached, calls"] = stepper(lambda k: s.train_steps(it, per_call))
            # The floor under a cached head step (see `bare_steps`), as many steps a call.
            xb, yb = next(iter(data.train(0)))
            for training in (False, True):
                bare = bare_steps(data.model, prep.task, training)
                arms[f"bare {training}"] = stepper(
                    lambda k, b=bare: b(xb, yb, tf.constant(per_call)))
        seconds = interleave(arms, rounds, warmup=3, block=block)
        if per_call > 1:  # per step: each call's seconds / per_call
            seconds["cached, 1 a call"] = seconds.pop("cached")
            seconds["cached"] = seconds.pop("cached, calls")
            for name in ("cached", "bare False", "bare True"):
                seconds[name] = [t / per_call for t in seconds[name]]
        serving = _serving_seconds(data.train(0))
        data.close()
    finally:
        setups.close()
    r = ratio(seconds["uncached"], seconds["cached"])
    ceiling = flops_uncached / max(flops_cached, 1)
    share = ratio([s / ceiling for s in seconds["uncached"]], seconds["cached"])
    print(f"[{kind}] feature cache, {train} stage (cut at the {data.boundary}; {per_call} "
          f"step(s) a call): uncached / cached step {r}; FLOP ceiling {ceiling:,.1f}x "
          f"({flops_uncached / 1e9:.2f} vs {flops_cached / 1e9:.4f} GFLOP a step) -> "
          f"{100 * share.median:.1f}% of the ceiling "
          f"(95% interval {100 * share.low:.1f}-{100 * share.high:.1f}%), "
          f"{share.at_least(0.9)}; median step {_ms(seconds['uncached'])} vs "
          f"{_ms(seconds['cached'])}; {load_average()}", flush=True)
    print(f"[{kind}]   the cached batches alone (one in-graph pass, no training): "
          f"{_ms([serving])} a batch (median of 7 passes)", flush=True)
    if per_call > 1:
        for training, what in (
                (False, "forward pass, gradient and a plain update"),
                (True, "forward pass with dropout (training=True), gradient and a plain update")):
            bare = seconds[f"bare {training}"]
            cap = ratio(seconds["uncached"], bare)
            print(f"[{kind}]   floor: the head's {what}, {per_call} a call on one in-memory "
                  f"batch (no input pipeline, optimizer, metrics or callbacks): median step "
                  f"{_ms(bare)}; cached step / this {ratio(seconds['cached'], bare)}; "
                  f"uncached / this {cap} = {100 * cap.median / ceiling:.1f}% of the FLOP "
                  f"ceiling", flush=True)
        one = seconds["cached, 1 a call"]
        print(f"[{kind}]   one step a call instead: uncached / cached "
              f"{ratio(seconds['uncached'], one)}; {per_call} a call / 1 a call "
              f"{ratio(seconds['cached'], one)}; median step {_ms(one)}", flush=True)


def bare_steps(model, task, training: bool):
    """`fn(x, y, n)`: n steps of `model` on the one batch (x, y) in one traced `tf.while_loop`,
    each only the forward pass (`training`: with dropout), the task's mean loss, its gradient
    and `variable -= 1e-6 * gradient`. No input pipeline, optimizer state, loss scaling,
    metrics or callbacks: the least a step of this model can cost in TensorFlow's graph
    executor, which a head on cached features cannot go below."""
    import tensorflow as tf

    loss_fn = task.loss(reduction=None)
    variables = model.trainable_variables

    @tf.function
    def fn(x, y, n):
        def body(i):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.cast(loss_fn(y, model(x, training=training)), "float32"))
            for v, g in zip(variables, tape.gradient(loss, variables)):
                v.assign_sub(1e-6 * tf.cast(g, v.dtype))
            return (i + 1,)

        return tf.while_loop(lambda i: i < n, body, [tf.constant(0)])

    return fn


def _serving_seconds(dataset, passes: int = 7) -> float:
    """Seconds a batch to serve `dataset` (an epoch of cached batches) in one traced pass
    that only counts them: the input pipeline's share of a cached step."""
    import statistics
    import time

    import tensorflow as tf

    count = tf.function(lambda: dataset.reduce(tf.constant(0), lambda n, _: n + 1))
    n = int(count())
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        count()
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


# -- 3. input wait ---------------------------------------------------------------------------


def input_wait(kind, rounds, block):
    import tensorflow as tf

    from tftune.data import pipeline
    from tftune.training import loop
    from tftune.training.stage import compile_model

    setups = Setups()
    try:
        cfg, _, backbone, prep = setups.new(kind)
        plan, _ = plan_stage(cfg, backbone, prep, **ALL)
        compile_model(prep.model, prep.task, plan.optimizer(prep.steps_per_epoch), False)
        steps = loop.Steps(prep.model, prep.task)
        steps.build()
        seed = pipeline.epoch_seed(cfg.train.seed, 0, 0)

        def epoch():  # one epoch of the real pipeline, in the order a run's first epoch has
            return prep.pipe.batches(prep.train_source, True, seed)

        # The same batches in the same order, held in memory by tf.data: no decoding,
        # tokenising, shuffling, bucketing or casting left to do.
        replay = epoch().cache()
        for _ in replay:
            pass
        iterators = {"real": steps.batches(epoch()),
                     "replay": steps.batches(replay.repeat().prefetch(tf.data.AUTOTUNE))}

        def real(k):  # a new epoch (the same order) when one ends, as a run starts one
            if steps.train_batch(iterators["real"]) is None:
                iterators["real"] = steps.batches(epoch())
                steps.train_batch(iterators["real"])

        arms = {"real": stepper(real),
                "replay": stepper(lambda k: steps.train_batch(iterators["replay"]))}
        seconds = interleave(arms, rounds, warmup=2, block=block)
    finally:
        setups.close()
    r = ratio(seconds["real"], seconds["replay"])
    wait = [1 - 1 / v for v in (r.median, r.low, r.high)]
    verdict = ("meets < 5%" if wait[2] < 0.05 else
               "MISSES < 5%" if wait[1] >= 0.05 else "interval too wide to judge < 5%")
    print(f"[{kind}] input wait: real pipeline / the same batches replayed from memory, blocks "
          f"of {block} steps: {r} -> {100 * wait[0]:.1f}% of step time waiting for data (95% "
          f"interval {100 * wait[1]:.1f}-{100 * wait[2]:.1f}%), {verdict}; {load_average()}",
          flush=True)


# -- 4. text: inference passes in length order -----------------------------------------------


def text_inference_batching(rounds):
    """The frozen part's cache fill and a validation pass, each in the split's order (batches
    padded to their longest text) and grouped by length; whole passes alternating."""
    from tftune.training import cache
    from tftune.training.loop import Steps
    from tftune.training.stage import compile_model

    setups = Setups()
    try:
        cfg, splits, backbone, prep = setups.new("text", ["data.max_train_examples=3000"])
        model, pipe = prep.model, prep.pipe
        plan_stage(cfg, backbone, prep, name="head", train="head")
        compile_model(model, prep.task, "adam", False)
        cut, why = cache.plan_cache(model, backbone.model)
        assert cut is not None, why
        steps = Steps(model, prep.task)
        in_order = pipe.batches(pipe.source(splits.val), False)
        arms = {
            "fill_order": lambda n: cache.FeatureCache(2**31).fill(
                cut, pipe.prepare(splits.train, False), pipe.length_fn),
            "fill_length": lambda n: cache.FeatureCache(2**31).fill(
                cut, pipe.blocks(pipe.source(splits.train), cache.FILL_BLOCK * pipe.batch_size),
                pipe.length_fn, sub_batch=pipe.batch_size),
            "val_order": lambda n: steps.evaluate(in_order),
            "val_length": lambda n: steps.evaluate(prep.val_ds),
        }
        seconds = interleave(arms, rounds, warmup=1)
    finally:
        setups.close()
    print(f"[text] frozen-part cache fill over {splits.sizes['train']:,} reviews, split's order "
          f"/ by length: {ratio(seconds['fill_order'], seconds['fill_length'])}; validation pass "
          f"over {splits.sizes['val']:,}: {ratio(seconds['val_order'], seconds['val_length'])}; "
          f"{load_average()}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["image", "text"], default=None)
    parser.add_argument("--rounds", type=int, default=150,
                        help="interleaved rounds of the stage-overhead steps (others scale from it)")
    parser.add_argument("--profile", action="store_true",
                        help="add arms that locate the stage overhead")
    parser.add_argument("--parts", default="overhead,cache,wait,batching",
                        help="comma-separated measurements to run (default: all)")
    args = parser.parse_args()

    import tensorflow as tf

    kinds = [args.only] if args.only else ["image", "text"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"TF {tf.__version__}, commit {commit}; subsets: "
          + "; ".join(f"{k}: {' '.join(SETUPS[k][1])}" for k in kinds), flush=True)
    parts = set(args.parts.split(","))
    for kind in kinds:
        if "overhead" in parts:
            stage_overhead(kind, args.rounds, args.profile)
        if "cache" in parts:
            for train in ("head", "top:2"):
                feature_cache(kind, train, max(20, args.rounds // 3), block=4)
        if "wait" in parts:
            input_wait(kind, max(10, args.rounds // 6), block=8)
        if kind == "text" and "batching" in parts:
            text_inference_batching(max(4, args.rounds // 30))


if __name__ == "__main__":
    main()
