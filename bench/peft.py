"""Parameter-efficient fine-tuning modes side by side, one process per mode (for its peak RSS):

MobileNetV2 on Fashion-MNIST and MiniLM on Rotten Tomatoes (the subsets of `speed.py`), one
stage `train: all` per mode (`full` = `peft: none`, then `lora`, `lora_bias`, `bitfit`,
`norm`), each trained for the same wall-clock budget (feature cache filling included), then
scored on the test split. For each it prints the trainable parameters (and their share), the
adapter file's size (and its share of model.keras), the steady step time (median batch after
the first few), the peak RSS and the test accuracy at the budget.

Run on demand (minutes per mode, not CI):

    python bench/peft.py --budget 300                 # both tasks, every mode
    python bench/peft.py --only text --modes full,lora_bias --budget 120
    python bench/peft.py --only image --budget 20 --set data.max_train_examples=300   # smoke
    python bench/peft.py --adapter-share top:2 --modes lora,lora_bias   # file sizes only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("full", "lora", "lora_bias", "bitfit", "norm", "int8_lora")
LEARNING_RATES = {"full": {"image": 1e-3, "text": 5e-5}, "peft": {"image": 1e-2, "text": 1e-3}}


def one_mode(kind: str, mode: str, budget: float, lr: float, rank: int, extra: list) -> dict:
    """Trains one mode for `budget` seconds in this process and returns its figures."""
    from speed import plan_stage, setup
    from tftune.model import adapters, peft
    from tftune.rundir import save_model
    from tftune.runtime.preemption import Preempted
    from tftune.training import loop
    from tftune.training.stage import run_stage
    from tftune.training.stage_data import stage_data
    from tftune.training.trainable import count_trainable

    cfg, splits, backbone, prep, ctx = setup(kind, extra)
    try:
        model = prep.model
        stage = {"name": mode, "train": "all", "epochs": 1000, "learning_rate": lr}
        if mode == "int8_lora":  # the frozen base's Dense / EinsumDense kernels int8
            stage.update(peft="lora", peft_base="int8", lora={"rank": rank, "alpha": 2 * rank})
        elif mode != "full":
            stage.update(peft=mode, lora={"rank": rank, "alpha": 2 * rank})
        plan, one = plan_stage(cfg, backbone, prep, **stage)
        if mode == "int8_lora" and not adapters.has_int8(model):
            return {"kind": kind, "mode": mode, "skipped": "no Dense / EinsumDense layer to "
                    "quantize (Keras has no int8 convolution)"}
        trainable = count_trainable(model)
        total = int(sum(v.numpy().size for v in model.weights))
        started = time.perf_counter()
        deadline = started + budget
        stamps = []  # after each step (and epoch end): the loop asks whether to stop

        def stop_requested():
            stamps.append(time.perf_counter())
            return stamps[-1] > deadline

        with tempfile.TemporaryDirectory() as tmp:
            data = stage_data(one, model, backbone, prep, 0, Path(tmp), echo=lambda _: None)
            try:
                run_stage(data.model, plan, prep.task, data.train, data.val, prep.steps_per_epoch,
                          [], False, 0,
                          hooks=lambda srun: loop.Hooks(stop_requested=stop_requested))
            except Preempted:
                pass
            finally:
                data.close()
            trained_s = time.perf_counter() - started
            accuracy = loop.Steps(model, prep.task).evaluate(prep.test_ds).get("accuracy")
            run = Path(tmp)
            model_bytes = save_model(adapters.saved_form(model), run).stat().st_size
            adapter_bytes = None
            if mode != "full":
                adapter_bytes = adapters.save_adapters(model, backbone.model, run, backbone.spec,
                                                       cfg.backbone.weights).stat().st_size
        times = [b - a for a, b in zip(stamps, stamps[1:])]
        times = times[3:] or times or [float("nan")]
        return {
            "kind": kind, "mode": mode, "lr": lr, "trainable": trainable, "total": total,
            "adapter_mb": adapter_bytes / 2**20 if adapter_bytes else None,
            "model_mb": model_bytes / 2**20, "step_s": statistics.median(times),
            "steps": len(stamps), "cached": data.cached, "trained_s": trained_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "test_accuracy": accuracy,
        }
    finally:
        ctx.__exit__(None, None, None)


def adapter_share(train: str, rank: int, mode: str = "lora") -> str:
    """The adapters file's share of model.keras for the image recipe's MobileNetV2 (its real
    asset weights, 96 px, 10 classes) with one `peft` stage on `train` at the default
    targets, without training (the file's size does not depend on the values)."""
    from speed import REPO
    from tftune.config import config_from_dict, load_recipe, to_dict
    from tftune.model import adapters, peft
    from tftune.model.backbones import load_backbone
    from tftune.model.heads import build_classifier, head_layers
    from tftune.rundir import save_model
    from tftune.training.plan import StagePlan

    cfg = load_recipe(REPO / "recipes/image_fashion_mnist_mobilenetv2.yaml")
    size = tuple(cfg.data.image_size)
    backbone = load_backbone(cfg.backbone, size)
    model = build_classifier(backbone, 10, cfg.head, size)
    stage = {"train": train, "peft": mode, "lora": {"rank": rank, "alpha": 2 * rank}}
    plan = StagePlan.all(config_from_dict({**to_dict(cfg), "stages": [stage]}), backbone.groups)[0]
    plan.apply(backbone, head_layers(model))
    with tempfile.TemporaryDirectory() as tmp:
        whole = save_model(adapters.saved_form(model), Path(tmp)).stat().st_size
        part = adapters.save_adapters(model, backbone.model, Path(tmp), backbone.spec,
                                      cfg.backbone.weights).stat().st_size
    return (f"MobileNetV2 {size[0]} px, peft: {mode}, train: {train}, rank {rank}: "
            f"{len(plan.targets)} layers adapted; adapters {part / 1e6:.3f} MB / model.keras "
            f"{whole / 1e6:.3f} MB = {100 * part / whole:.2f} %")


def row(r: dict) -> str:
    if r.get("skipped"):
        return f"{r['kind']:5} {r['mode']:9} n/a: {r['skipped']}"
    adapter = (f"{r['adapter_mb']:7.2f} MB ({100 * r['adapter_mb'] / r['model_mb']:.1f}%)"
               if r["adapter_mb"] is not None else f"{'-':>7} (model.keras {r['model_mb']:.1f} MB)")
    return (f"{r['kind']:5} {r['mode']:9} lr {r['lr']:<7g} trainable {r['trainable']:>10,} "
            f"({100 * r['trainable'] / r['total']:5.2f}%) | adapters {adapter} | step "
            f"{1000 * r['step_s']:7.1f} ms{' (cached prefix)' if r['cached'] else ''} | peak RSS "
            f"{r['peak_rss_mb']:6.0f} MB | {r['steps']} steps in {r['trained_s']:.0f}s | test "
            f"accuracy {r['test_accuracy']:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("image", "text"))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per mode")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr-full", type=float)
    parser.add_argument("--lr-peft", type=float)
    parser.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE")
    parser.add_argument("--adapter-share", metavar="TRAIN",
                        help="only print the adapters file's share of model.keras for the image "
                             "recipe's MobileNetV2 with a stage on TRAIN (e.g. top:2), untrained")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.adapter_share:
        for mode in args.modes.split(","):
            if mode in ("lora", "lora_bias", "lora_norm", "bitfit", "norm"):
                print(adapter_share(args.adapter_share, args.rank, mode))
        return
    if args.child:
        kind, mode = args.child
        print(json.dumps(one_mode(kind, mode, args.budget, args.lr, args.rank, args.set)))
        return
    import platform

    print(f"PEFT modes, {args.budget:g} s of training each, {os.cpu_count()} CPU cores, "
          f"{platform.processor() or platform.machine()}")
    for kind in ([args.only] if args.only else ["image", "text"]):
        for mode in args.modes.split(","):
            full = mode == "full"
            lr = (args.lr_full if full else args.lr_peft) or LEARNING_RATES[
                "full" if full else "peft"][kind]
            cmd = [sys.executable, __file__, "--child", kind, mode, "--budget", str(args.budget),
                   "--lr", str(lr), "--rank", str(args.rank)] + [f"--set={s}" for s in args.set]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{kind} {mode}: failed\n{out.stderr[-2000:]}")
                continue
            print(row(json.loads(out.stdout.strip().splitlines()[-1])), flush=True)


if __name__ == "__main__":
    main()
