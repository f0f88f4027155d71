"""Step time of a PEFT stage vs a full fine-tune, interleaved step by step in one process.

Two copies of the same model (the subsets of `speed.py`: MobileNetV2 on Fashion-MNIST, MiniLM
on Rotten Tomatoes), one set up as a full `train: all` stage, the other as a PEFT stage of
the same groups, each with tftune's own train step and its stage optimizer. The steps
alternate (A B, then B A, ...) on batches of the same pipeline, so drift in the host's speed
hits both alike. After the warm-up steps (tracing), each pair gives a ratio PEFT / full; the
figure is the median ratio with a bootstrap 95 % interval of that median. Run on demand:

    python bench/peft_step_time.py --only text --mode lora_bias --pairs 60
    python bench/peft_step_time.py --only image --mode lora --pairs 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def side(kind: str, mode: str, rank: int, targets=None):
    """One model set up for a `mode` stage: (Steps, an endless batch iterator, trainable)."""
    from speed import plan_stage, setup
    from tftune.training import loop
    from tftune.training.stage import compile_model
    from tftune.training.trainable import count_trainable

    cfg, splits, backbone, prep, ctx = setup(kind)
    stage = {"name": mode, "train": "all", "epochs": 1, "learning_rate": 1e-4}
    if mode != "full":
        stage.update(peft=mode, lora={"rank": rank, "alpha": 2 * rank,
                                      **({"targets": targets} if targets else {})})
    plan, one = plan_stage(cfg, backbone, prep, **stage)
    compile_model(prep.model, prep.task, plan.optimizer(prep.steps_per_epoch), False)
    steps = loop.Steps(prep.model, prep.task)
    steps.build()
    return steps, steps.batches(prep.train_ds.repeat()), count_trainable(prep.model), ctx


def measure(kind: str, mode: str, pairs: int, warmup: int, rank: int, targets=None) -> None:
    from paired import interleave, load_average, ratio
    from speed import stepper

    full_steps, full_it, full_n, ctx_a = side(kind, "full", rank)
    peft_steps, peft_it, peft_n, ctx_b = side(kind, mode, rank, targets)
    try:
        seconds = interleave({
            "full": stepper(lambda k: full_steps.train_batch(full_it)),
            mode: stepper(lambda k: peft_steps.train_batch(peft_it)),
        }, pairs, warmup=warmup)
        full_t, peft_t = seconds["full"], seconds[mode]
        r = ratio(peft_t, full_t)
        print(f"{kind}: {mode} (trainable {peft_n:,}) vs full (trainable {full_n:,}), {pairs} "
              f"interleaved pairs after {warmup} warm-up: median step {1000 * statistics.median(peft_t):.1f} "
              f"ms vs {1000 * statistics.median(full_t):.1f} ms; ratio {r} -> {r.at_most(0.8)}; "
              f"{load_average()}", flush=True)
    finally:
        ctx_b.__exit__(None, None, None)
        ctx_a.__exit__(None, None, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("image", "text"))
    parser.add_argument("--mode", default="lora_bias")
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=None,
                        help="LoRA target layer names (regexes; default: the backbone's)")
    args = parser.parse_args()
    for kind in [args.only] if args.only else ["image", "text"]:
        measure(kind, args.mode, args.pairs, args.warmup, args.rank, args.targets)


if __name__ == "__main__":
    main()
