"""The text recipe under `--time-limit` against the plain KerasHub bar, side by side in one run.

The bar (`baseline_text_kerashub.py`) trains for `--budget` seconds (its loading and its test
evaluation are not counted); the recipe gets `--fraction` of that as its whole `time_limit`,
loading, cache fill and final evaluation included. Both score the same Rotten Tomatoes test
split. Each runs in its own process, one after the other, in the order given by `--order`
(this host's speed drifts over minutes: say which went first). Run on demand:

    python bench/time_limit_text.py --budget 480 --fraction 0.5     # about 15 minutes here
    python bench/time_limit_text.py --budget 480 --fraction 1.0

Data overrides (`--set data.path=...`) run the same comparison on another text set: the bar
reads the same recipe (so the same split) through `--recipe`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def run_baseline(recipe: str, budget: float, overrides) -> tuple[float, float]:
    cmd = [sys.executable, str(REPO / "bench" / "baseline_text_kerashub.py"), "--recipe", recipe,
           "--budget", str(budget), *[a for o in overrides for a in ("--set", o)]]
    began = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - began
    match = re.search(r"test accuracy ([0-9.]+) after ([0-9.]+)s", out.stdout)
    if out.returncode or not match:
        sys.exit(f"baseline failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    print(out.stdout.strip().splitlines()[-1], f"({wall:.0f}s wall-clock in all)", flush=True)
    return float(match.group(1)), wall


def run_recipe(recipe: str, limit: float, overrides, out_dir: Path) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "tftune.cli", "train", recipe, "--time-limit", f"{limit:.0f}",
           "--output", str(out_dir), "--set", "name=bench-limit", "--set", "train.verbose=epoch",
           *[a for o in overrides for a in ("--set", o)]]
    began = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    wall = time.perf_counter() - began
    if out.returncode:
        sys.exit(f"recipe failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    for line in out.stdout.splitlines():
        if "time budget" in line or "Time limit" in line or line.startswith("Done") or \
                "epoch " in line and "]" in line:
            print("   " + line.strip(), flush=True)
    metrics = json.loads((out_dir / "bench-limit" / "metrics.json").read_text())
    return metrics, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/text_sentiment_minilm.yaml")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="the bar's training seconds")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="the recipe's whole time limit as a fraction of --budget")
    parser.add_argument("--order", choices=["recipe-first", "baseline-first"],
                        default="recipe-first")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="recipe overrides for both (data.*)")
    args = parser.parse_args()

    limit = args.budget * args.fraction
    print(f"bar: {args.budget:.0f}s of training; recipe: time limit {limit:.0f}s in all; "
          f"{args.order}; {load()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        order = ["recipe", "baseline"] if args.order == "recipe-first" else ["baseline", "recipe"]
        for which in order:
            print(f"-- {which} ({load()})", flush=True)
            if which == "baseline":
                results["baseline"] = run_baseline(args.recipe, args.budget, args.overrides)
            else:
                metrics, wall = run_recipe(args.recipe, limit, args.overrides, Path(tmp))
                results["recipe"] = (metrics["test"]["accuracy"], wall, metrics)
    (base_acc, base_wall), (acc, wall, metrics) = results["baseline"], results["recipe"]
    n = metrics["sizes"].get("test") or 0
    se = (acc * (1 - acc) / n) ** 0.5 if n else float("nan")
    print(f"\nplain KerasHub, {args.budget:.0f}s of training ({base_wall:.0f}s wall-clock): "
          f"test accuracy {base_acc:.4f}")
    print(f"tftune recipe, --time-limit {limit:.0f}s ({wall:.0f}s wall-clock, "
          f"{metrics['time_limit']['seconds']:.0f}s by the run's own clock): test accuracy "
          f"{acc:.4f} (val {metrics['val']['accuracy']:.4f}); planned epochs "
          f"{metrics['time_limit']['planned_epochs']}")
    print(f"difference {100 * (acc - base_acc):+.2f} points; one standard error of a test "
          f"accuracy here ~{100 * se:.2f} points ({n} test examples); {load()}")


if __name__ == "__main__":
    main()
