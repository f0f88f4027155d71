"""Precision and XLA on whatever accelerator this machine has: step times and numerics.

Finds the device as tftune does (`tftune.training.device.describe_device`: a TPU, GPUs with
their compute capabilities, or the CPU), prints what `mixed_precision: auto` /
`jit_compile: auto` pick on it, then for two small, randomly initialised models — a CNN
(`keras.applications.MobileNetV2`, weights=None) and a transformer (a KerasHub `BertBackbone`)
with tftune's kind of head (pooling, a float32 softmax Dense) — trains each "arm" with
tftune's own train step (`loop.Steps`: the stage's loss, the loss-scale optimizer under
float16, XLA where tftune puts it):

- float32, and each mixed policy worth measuring here (TPU: bfloat16; GPU: float16 below
  compute capability 8.0, bfloat16 and float16 from 8.0; CPU: bfloat16), each with XLA off
  and on (on a CPU, XLA only with `--include-xla-on-cpu`; on a TPU, XLA is always on);
- the arms take turns step by step (`paired.interleave`: A B C, C B A, ...), so drift in the
  machine's speed hits all alike; each arm gets a median step time with a bootstrap 95 %
  interval, and a median per-round ratio to float32 with its interval.

Numerics, before any arm trains (same initial weights in every arm): the predicted
probabilities and the loss on a fixed batch against float32 (max |difference|, relative loss
difference), and the gradients (unscaled under float16): all finite, cosine similarity to
float32's. Each check has a tolerance; the script exits 1 when one fails.

    python bench/device_check.py                     # sizes for the device found
    python bench/device_check.py --small             # CPU-sized models on any device
    python bench/device_check.py --tpu local         # a Cloud TPU VM (TPUStrategy)

`bench/device_check.sh` wraps it (device listing first, output kept in a log file).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Tolerances against float32, per compute dtype: max |probability difference|, relative loss
# difference, minimum gradient cosine similarity. XLA in float32: reordered float32 sums.
# max |probability difference|, relative loss difference, minimum gradient cosine similarity
# and the largest factor between the gradient norms (an unscaled float16 gradient would be
# 2**15 off). The cosine is checked on the top 1/TOP_FRACTION of the variables (the head and
# the top block: what a staged fine-tune trains first); the whole model's is printed beside
# it: a randomly initialised deep CNN with BatchNorm on batch statistics amplifies rounding
# on the way down (bfloat16 MobileNetV2 here: ~0.5 over all variables, ~0.87 at the top; the
# small BERT: 0.998); its probabilities differ by 0.043 in bfloat16 at the seed used, 0.083
# in bfloat16 with XLA on a CPU, hence 0.1 there. These are checks for gross errors (an
# unscaled or non-finite gradient, a wrong dtype), not a precision benchmark. XLA in
# float32: reordered float32 sums only.
TOP_FRACTION = 10
TOLERANCES = {"float32": (1e-3, 1e-3, 0.999, 1.01), "bfloat16": (0.1, 0.03, 0.8, 1.25),
              "float16": (0.01, 0.01, 0.95, 1.05)}


@dataclasses.dataclass(frozen=True)
class Sizes:
    image: int
    alpha: float
    image_batch: int
    seq: int
    layers: int
    hidden: int
    heads: int
    text_batch: int
    rounds: int


SMALL = Sizes(image=64, alpha=0.35, image_batch=16, seq=64, layers=2, hidden=128, heads=4,
              text_batch=16, rounds=15)
LARGE = Sizes(image=224, alpha=1.0, image_batch=64, seq=128, layers=4, hidden=256, heads=4,
              text_batch=64, rounds=50)


def policies_for(device) -> list[str]:
    """The mixed policies worth timing on `device` (besides float32)."""
    if device.kind == "tpu":
        return ["mixed_bfloat16"]
    if device.kind == "gpu":
        caps = [c for c in device.gpu_capabilities if c is not None]
        return ["mixed_float16", "mixed_bfloat16"] if caps and min(caps) >= (8, 0) else ["mixed_float16"]
    return ["mixed_bfloat16"]


def build(kind: str, policy: str, sizes: Sizes):
    """The `kind` (cnn | text) model under `policy`, seeded (the same weights in every arm)."""
    import keras

    before = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        if kind == "cnn":
            backbone = keras.applications.MobileNetV2(
                weights=None, include_top=False, alpha=sizes.alpha,
                input_shape=(sizes.image, sizes.image, 3), pooling="avg")
            inputs = backbone.input
            features = backbone.output
        else:
            import keras_hub

            backbone = keras_hub.models.BertBackbone(
                vocabulary_size=1000, num_layers=sizes.layers, num_heads=sizes.heads,
                hidden_dim=sizes.hidden, intermediate_dim=4 * sizes.hidden,
                max_sequence_length=sizes.seq, dropout=0.0)
            inputs = {name: keras.Input((None,), dtype="int32", name=name)
                      for name in ("token_ids", "padding_mask", "segment_ids")}
            sequence = backbone(inputs)["sequence_output"]
            features = keras.layers.GlobalAveragePooling1D()(sequence)
        outputs = keras.layers.Dense(10, activation="softmax", dtype="float32")(features)
        return keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy(before)


def batch(kind: str, sizes: Sizes):
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "cnn":
        n = sizes.image_batch
        x = rng.uniform(-1, 1, size=(n, sizes.image, sizes.image, 3)).astype("float32")
    else:
        n = sizes.text_batch
        x = {"token_ids": rng.integers(1, 1000, size=(n, sizes.seq)).astype("int32"),
             "padding_mask": np.ones((n, sizes.seq), "int32"),
             "segment_ids": np.zeros((n, sizes.seq), "int32")}
    return x, rng.integers(0, 10, size=(n,)).astype("int32")


@dataclasses.dataclass
class Arm:
    name: str
    policy: str
    xla: bool
    steps: object
    iterator: object


def make_arm(kind, policy, xla, sizes, data, weights, distribution):
    import keras
    import tensorflow as tf

    from tftune.tasks import get_task
    from tftune.training import loop
    from tftune.training.stage import compile_model

    scope = distribution.scope() if distribution else tf.distribute.get_strategy().scope()
    with scope:
        model = build(kind, policy, sizes)
        if weights is not None:
            model.set_weights(weights)
        compile_model(model, get_task("classification"), keras.optimizers.SGD(0.01), xla)
        steps = loop.Steps(model, get_task("classification"), distribution)
        steps.build()
    dataset = tf.data.Dataset.from_tensors(data).repeat()
    name = policy.replace("mixed_", "") + (" + XLA" if xla or (distribution and distribution.kind == "tpu") else "")
    return Arm(name, policy, xla, steps, steps.batches(dataset))


def numerics(arm: Arm, reference: Arm, data) -> tuple[str, bool]:
    """Probabilities, loss and gradients of `arm` against the float32 `reference`, at the
    same weights: (a line, whether within tolerance)."""
    import keras
    import numpy as np
    import tensorflow as tf

    x, y = data

    def outputs(a):
        model = a.steps.model
        # tftune's step function (XLA-compiled in an XLA arm): the gradients, the predictions
        # and per-example losses of the training-mode forward pass (BatchNorm on batch
        # statistics: a random network's moving statistics make its inference outputs alike).
        args = (x, y, None, tf.constant(float(len(y))), 1.0)

        def step():
            if a.steps.distribution is not None:  # a TPU: each replica computes the whole batch
                strategy = a.steps.distribution.strategy
                results = tf.function(lambda: strategy.run(a.steps._gradients, args=args))()
                return tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], results)
            return a.steps._gradients_fn(*args)

        # Float16: while the scaled gradients overflow, halve the scale, as the loss-scale
        # optimizer does when it skips such a step.
        optimizer = model.optimizer
        scaled = hasattr(optimizer, "dynamic_scale")
        for _ in range(30 if scaled else 1):
            gradients, probs, per_example, _ = step()
            flat = [np.asarray(tf.convert_to_tensor(g), np.float64).ravel()
                    for g in gradients if g is not None]
            if not scaled or all(np.isfinite(f).all() for f in flat):
                break
            optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 0.5)
        scale = float(optimizer.dynamic_scale) if scaled else 1.0
        if scaled:
            notes.append(f"loss scale 2^{np.log2(scale):.0f}")
        flat = [f / scale for f in flat]
        probs = np.asarray(probs, np.float64)
        loss = float(np.mean(np.asarray(per_example, np.float64)))
        top = len(flat) - max(1, len(flat) // TOP_FRACTION)
        return probs, loss, np.concatenate(flat), np.concatenate(flat[top:])

    def cosine(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))

    notes = []
    p, loss, g, g_top = outputs(arm)
    p0, loss0, g0, g0_top = outputs(reference)
    finite = bool(np.isfinite(g).all() and np.isfinite(p).all())
    dp = float(np.max(np.abs(p - p0)))
    dl = abs(loss - loss0) / max(abs(loss0), 1e-12)
    cos, cos_top = cosine(g, g0), cosine(g_top, g0_top)
    max_dp, max_dl, min_cos, max_norm = TOLERANCES[arm.policy.replace("mixed_", "")]
    norm = float(np.linalg.norm(g) / (np.linalg.norm(g0) + 1e-30))
    ok = (finite and dp <= max_dp and dl <= max_dl and cos_top >= min_cos
          and 1 / max_norm <= norm <= max_norm)
    return (f"probs max|d| {dp:.1e} (<= {max_dp:g}), loss rel {dl:.1e} (<= {max_dl:g}), "
            f"grad cos top {cos_top:.4f} (>= {min_cos:g}) / all {cos:.4f}, grad norm ratio "
            f"{norm:.3f} (within x{max_norm:g}), finite "
            f"{'yes' if finite else 'NO'}{''.join(f', {n}' for n in notes)}: "
            f"{'PASS' if ok else 'FAIL'}"), ok


def median_interval(values, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    import numpy as np

    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(v, size=(resamples, len(v)), replace=True), axis=1)
    return float(np.median(v)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def check_model(kind: str, device, sizes: Sizes, args, distribution, echo) -> bool:
    import paired

    data = batch(kind, sizes)
    what = (f"MobileNetV2 (alpha {sizes.alpha}, weights=None) {sizes.image}px, batch {sizes.image_batch}"
            if kind == "cnn" else
            f"BertBackbone ({sizes.layers} layers, hidden {sizes.hidden}) seq {sizes.seq}, "
            f"batch {sizes.text_batch}")
    echo(f"\n== {kind}: {what}")
    tpu = distribution is not None and distribution.kind == "tpu"
    xla_arms = [False] if tpu else (
        [False, True] if device.kind != "cpu" or args.include_xla_on_cpu else [False])
    policies = ["float32"] + (args.policies or policies_for(device))
    started = time.perf_counter()
    reference = make_arm(kind, "float32", False, sizes, data, None, distribution)
    weights = reference.steps.model.get_weights()
    arms = [reference] + [make_arm(kind, p, x, sizes, data, weights, distribution)
                          for p in policies for x in xla_arms if (p, x) != ("float32", False)]
    echo(f"   built {len(arms)} arms in {time.perf_counter() - started:.1f}s")
    all_ok = True
    checks = {}
    for arm in arms[1:]:
        line, ok = numerics(arm, reference, data)
        checks[arm.name] = line
        all_ok &= ok
    started = time.perf_counter()
    seconds = paired.interleave({a.name: (lambda n, a=a: a.steps.train_steps(a.iterator, n))
                                 for a in arms}, rounds=args.rounds or sizes.rounds,
                                warmup=args.warmup)
    echo(f"   timed {args.rounds or sizes.rounds} interleaved rounds after {args.warmup} warm-up "
         f"in {time.perf_counter() - started:.1f}s ({paired.load_average()})")
    echo(f"   {'arm':<16} {'median step':>12} {'95% interval':>17}   {'vs float32':>30}")
    base = seconds[reference.name]
    for arm in arms:
        med, low, high = median_interval(seconds[arm.name])
        ratio = "" if arm is reference else str(paired.ratio(seconds[arm.name], base))
        echo(f"   {arm.name:<16} {med * 1e3:9.1f} ms  {low * 1e3:7.1f}-{high * 1e3:7.1f} ms   {ratio}")
    for name, line in checks.items():
        echo(f"   numerics {name:<16} {line}")
    return all_ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized models on any device")
    parser.add_argument("--include-xla-on-cpu", action="store_true",
                        help="also time XLA on a CPU (off by default: slower there)")
    parser.add_argument("--policies", nargs="*", default=None,
                        help="mixed policies to time instead of the device's (mixed_float16 ...)")
    parser.add_argument("--models", nargs="*", default=["cnn", "text"], choices=["cnn", "text"])
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default by size)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tpu", default=None, help="a TPU name, 'local' on a TPU VM ($TPU_NAME)")
    args = parser.parse_args(argv)

    import warnings

    import keras
    import tensorflow as tf

    from tftune.runtime import distribute

    tf.get_logger().setLevel("ERROR")  # one tf.function per arm: retracing notes
    warnings.filterwarnings("ignore", message="Gradients do not exist")  # BERT's unused pooler
    from tftune.training.device import choose_precision, describe_device

    distribution = None
    if args.tpu or os.environ.get(distribute.TPU_ENV):
        distribution = distribute.make_distribution("tpu", args.tpu)
    device = describe_device(distribution.kind if distribution else None)
    sizes = SMALL if args.small or device.kind == "cpu" else LARGE
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"device: {device.label()}; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPU cores")
    for modality in ("image", "text"):
        picked = choose_precision("auto", "auto", modality, device)
        print(f"auto for {modality}: {picked.describe()}")
    ok = True
    for kind in args.models:
        ok &= check_model(kind, device, sizes, args, distribution, print)
    print(f"\nnumerics: {'all within tolerance' if ok else 'SOME OUT OF TOLERANCE (see FAIL above)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
