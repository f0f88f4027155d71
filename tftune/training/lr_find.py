"""The learning-rate range test (Smith 2017; fastai's `lr_find`): train one stage's trainable
part for a few steps while the learning rate grows exponentially, record the loss, and suggest
the learning rate where the loss falls fastest. The weights are put back afterwards."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tftune import rundir
from tftune.errors import ConfigError, TftuneError


@dataclasses.dataclass
class LRFindResult:
    """The sweep: learning rates, raw and smoothed losses, and the suggestion."""

    learning_rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: Optional[float]
    min_loss_lr: Optional[float]
    csv_path: Optional[Path] = None
    png_path: Optional[Path] = None


def smooth(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest(lrs: Sequence[float], smoothed: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """(steepest-descent lr, min-loss lr / 10): the steepest fall of the smoothed loss against
    log(lr), looked for before the minimum and past the first tenth of the sweep."""
    if len(lrs) < 5:
        return None, None
    lo = np.log10(np.asarray(lrs))
    s = np.asarray(smoothed)
    best = int(np.argmin(s))
    start = max(1, len(s) // 10)
    if best <= start:
        return None, float(lrs[best]) / 10
    slope = np.gradient(s[: best + 1], lo[: best + 1])
    steepest = start + int(np.argmin(slope[start:]))
    return float(lrs[steepest]), float(lrs[best]) / 10


def sweep(model, train_ds, optimizer, loss_fn=None, *, steps: int = 100, min_lr: float = 1e-7,
          max_lr: float = 1.0, diverge: float = 4.0, echo: Callable[[str], None] = print,
          progress: Optional[Callable[..., None]] = None) -> LRFindResult:
    """Runs the range test on `model`'s trainable weights with `optimizer` (whose learning
    rate is set each step) and `loss_fn` (the task's loss; default: sparse categorical
    cross-entropy); every weight of `model` is restored afterwards. `progress(step, note)`
    (a `tftune.runtime.progress.Progress`) is called after each step. A model computing in
    float16 gets dynamic loss scaling, as in training (`stage.compile_model`)."""
    import keras
    import tensorflow as tf

    from tftune.training.stage import uses_float16

    if not 0 < min_lr < max_lr:
        raise ConfigError(f"Expected 0 < min_lr < max_lr. Received: min_lr={min_lr}, max_lr={max_lr}")
    saved = [np.array(v.numpy()) for v in model.weights]
    loss_fn = loss_fn or keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_variables
    if uses_float16(model) and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    lrs, losses = [], []
    factor = (max_lr / min_lr) ** (1.0 / max(steps - 1, 1))
    best = math.inf
    try:
        batches = iter(train_ds.repeat())
        for i in range(steps):
            lr = min_lr * factor**i
            optimizer.learning_rate = lr
            x, y = next(batches)
            loss = float(step(x, y))
            lrs.append(lr)
            losses.append(loss)
            sm = smooth(losses)[-1]
            best = min(best, sm)
            if progress is not None:
                progress(i + 1, f"lr {lr:.2e}, smoothed loss {sm:.4g}")
            if not math.isfinite(loss) or (i > steps // 10 and sm > diverge * best):
                if progress is not None:
                    progress.close()
                echo(f"   loss diverged at lr {lr:.2e} (step {i + 1}/{steps}): stopping the sweep")
                break
    finally:
        if progress is not None:
            progress.close()
        for v, w in zip(model.weights, saved):
            v.assign(w)
    smoothed = smooth(losses)
    steep, min_lr_10 = suggest(lrs, smoothed)
    return LRFindResult(lrs, losses, smoothed, steep, min_lr_10)


def write(result: LRFindResult, out_dir: Path, stem: str, title: str) -> LRFindResult:
    """`<stem>.csv` (lr, loss, smoothed) and `<stem>.png` (the curve, suggestion marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.png"

    def write_csv(p: Path):
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["learning_rate", "loss", "smoothed_loss"])
            for row in zip(result.learning_rates, result.losses, result.smoothed):
                w.writerow([f"{v:.6g}" for v in row])

    rundir.atomic_write(csv_path, write_csv)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.learning_rates, result.losses, color="0.75", lw=1, label="loss")
    ax.plot(result.learning_rates, result.smoothed, color="C0", lw=2, label="smoothed")
    if result.suggestion:
        ax.axvline(result.suggestion, color="C3", ls="--",
                   label=f"suggested {result.suggestion:.2e} (steepest)")
    if result.min_loss_lr:
        ax.axvline(result.min_loss_lr, color="C2", ls=":",
                   label=f"min-loss lr / 10 = {result.min_loss_lr:.2e}")
    ax.set_xscale("log")
    finite = [l for l in result.smoothed if math.isfinite(l)]
    if finite:
        ax.set_ylim(min(finite) * 0.95, min(max(finite), 3 * min(finite)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    rundir.atomic_write(png_path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return dataclasses.replace(result, csv_path=csv_path, png_path=png_path)


def lr_find(config, stage: int = 1, *, overrides: tuple[str, ...] = (), steps: int = 100,
            min_lr: float = 1e-7, max_lr: float = 1.0, output: Optional[str] = None,
            echo: Callable[[str], None] = print) -> LRFindResult:
    """Runs the range test for recipe `config`'s stage `stage` (1-based): the stage's groups
    trainable, its optimizer and layer decay, on the frozen-prefix cache when exact. Writes
    `<output>/<name>-lr-find/stage<N>-<stage>.{csv,png}` (default output: the recipe's
    output_dir) and returns the sweep."""
    from tftune.config import RecipeConfig, load_recipe
    from tftune.runtime.progress import Progress, mode_for
    from tftune.training.prepare import describe, loaded_inputs, prepare_run
    from tftune.training.stage_data import stage_data

    cfg = config if isinstance(config, RecipeConfig) else load_recipe(config, overrides)
    if not 1 <= stage <= len(cfg.stages):
        raise ConfigError(
            f"Invalid --stage {stage}: the recipe has {len(cfg.stages)} stage(s) "
            f"({', '.join(s.name for s in cfg.stages)}). Expected 1..{len(cfg.stages)}."
        )
    st = cfg.stages[stage - 1]
    with loaded_inputs(cfg) as (splits, backbone, policy):
        describe(splits, backbone, policy, echo)
        prep = prepare_run(cfg, splits, backbone, echo)
        plan = prep.plans[stage - 1]
        plan.apply(backbone, prep.head, prep.unused)
        # lr-find does not validate: the cache (where exact) is filled for one batch of val.
        data = stage_data(cfg, prep.model, backbone, prep, stage - 1, echo=echo,
                          val_split=splits.val.take(1))
        if data.cached:
            echo(f"   feature cache: sweeping on the stored {data.boundary}")
        # A constant learning rate variable the sweep sets each step; the stage's optimizer kind,
        # weight decay and group multipliers.
        opt = plan.optimizer(prep.steps_per_epoch, dataclasses.replace(
            st, schedule="constant", warmup=0.0, learning_rate=min_lr))
        echo(f"LR range test, stage {stage} ({st.name}): {steps} steps from {min_lr:g} to {max_lr:g}")
        progress = Progress("   lr-find:", steps, "steps", echo=echo,
                            mode=mode_for(cfg.train.verbose))
        try:
            result = sweep(data.model, data.train(0), opt, prep.task.loss(), steps=steps,
                           min_lr=min_lr, max_lr=max_lr, echo=echo, progress=progress)
        finally:
            data.close()
    if len(result.losses) < 5:
        raise TftuneError(
            f"The loss diverged after {len(result.losses)} steps, at lr {result.learning_rates[-1]:.2e}: "
            f"lower --min-lr (now {min_lr:g})."
        )
    out_dir = Path(output or cfg.output_dir).expanduser() / f"{cfg.name}-lr-find"
    result = write(result, out_dir, f"stage{stage}-{st.name}",
                   f"{cfg.name}: stage {stage} ({st.name}), {len(result.losses)} steps")
    return result
