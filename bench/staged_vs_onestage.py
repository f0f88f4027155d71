"""Staged recipe (layer decay, cached frozen stages) vs one-stage full fine-tuning, on the same
split, side by side in one run: the test figures and wall-clock of each.

The one-stage run is what a careful hand-written fine-tune does (everything trainable from the
first step, AdamW, warmup and decay, the same speed-ups of the input pipeline); it gets at least
the staged run's wall-clock. Run on demand (about 20 minutes for the text task here):

    python bench/staged_vs_onestage.py --task text
    python bench/staged_vs_onestage.py --task image
    python bench/staged_vs_onestage.py --task multilabel   # CryptoPunks attributes
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
# task: (recipe, the one-stage run's stages, the test figures to print; the first is compared)
TASKS = {
    "text": (
        "recipes/text_sentiment_minilm.yaml",
        # The spine's measured one-stage fine-tune: the bar's learning rate, 4 epochs.
        "stages=[{name: all, train: all, epochs: 4, learning_rate: 5.0e-5, warmup: 0.1, "
        "schedule: linear, early_stopping: {monitor: val_accuracy, patience: 4}}]",
        ("accuracy",),
    ),
    "image": (
        "recipes/image_fashion_mnist_mobilenetv2.yaml",
        "stages=[{name: all, train: all, epochs: 2, learning_rate: 3.0e-4, warmup: 0.1, "
        "schedule: cosine, early_stopping: {monitor: val_accuracy, patience: 2}}]",
        ("accuracy",),
    ),
    "multilabel": (
        "recipes/image_multilabel_cryptopunks.yaml",
        "stages=[{name: all, train: all, epochs: 3, learning_rate: 3.0e-4, warmup: 0.1, "
        "schedule: cosine, early_stopping: {monitor: val_map, patience: 3}}]",
        ("micro_f1", "map", "macro_f1"),
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--one-stage", default=None, help="override for the one-stage run's stages")
    parser.add_argument("--runs", default="staged,one-stage",
                        help="which runs to make (comma-separated): staged, one-stage")
    args = parser.parse_args()

    from tftune.training.runner import train

    recipe, one_stage, keys = TASKS[args.task]
    one_stage = args.one_stage or one_stage
    results = {}
    with tempfile.TemporaryDirectory() as out:
        # Each run in its own run directory (the same recipe name would refuse the second).
        for label, overrides in (("staged", ("name=staged",)),
                                 ("one-stage", (one_stage, "name=one-stage"))):
            if label not in args.runs.split(","):
                continue
            r = train(REPO / recipe, overrides=overrides, output_dir=out,
                      echo=lambda line, label=label: print(f"  [{label}] {line}", flush=True))
            results[label] = (r.metrics["test"][keys[0]], r.metrics["seconds"])
            figures = ", ".join(f"{k} {r.metrics['test'][k]:.4f}" for k in keys)
            print(f"{args.task}: {label}: test {figures} in {r.metrics['seconds']:.0f}s",
                  flush=True)
    if len(results) < 2:
        return
    (sa, st), (oa, ot) = results["staged"], results["one-stage"]
    print(f"{args.task}: staged recipe test {keys[0]} {sa:.4f} in {st:.0f}s; one-stage full "
          f"fine-tune {oa:.4f} in {ot:.0f}s; difference {100 * (sa - oa):+.2f} points, "
          f"time ratio staged/one-stage {st / ot:.2f}")


if __name__ == "__main__":
    main()
