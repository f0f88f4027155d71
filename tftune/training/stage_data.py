"""What a stage trains on: the classifier on input batches, or, when the stage's bottom is
frozen and that is exact, the trained suffix on the frozen prefix's cached outputs.

This is the one place that decides whether a stage uses the feature cache
(`train.feature_cache`, random augmentation, what `cache.plan_cache` can cut) and wires it
up: train, lr-find and the benchmarks all call `stage_data`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from tftune.data import pipeline


@dataclasses.dataclass
class StageData:
    """What one stage fits: `model` (the classifier, or the cached suffix sharing its
    weights) on `train(epoch)` (that epoch's batches, in an order fixed by (seed, stage,
    epoch)), validated on `val`. `close()` frees the caches."""

    model: Any
    train: Callable[[int], Any]
    val: Any
    caches: tuple = ()
    boundary: str = ""  # where the cached prefix ends ("" when uncached)

    @property
    def cached(self) -> bool:
        return bool(self.caches)

    def close(self):
        for c in self.caches:
            c.close()


def fill_progress(verbose: str, split: str, total: Optional[int], echo: Callable[[str], None],
                  every: Optional[float] = None) -> Optional[Callable[[int], None]]:
    """The cache fill's progress for one split, as `train.verbose` shows training: a live
    progress line (`bar`, or `auto` on a terminal), a line at most every `every` seconds
    (`epoch`, or `auto` in a log; default `tftune.runtime.progress.every_seconds()`),
    nothing when `quiet`."""
    from tftune.runtime.progress import Progress, mode_for

    if verbose == "quiet":
        return None
    return Progress(f"   feature cache: {split}", total, "examples through the frozen part",
                    echo=echo, mode=mode_for(verbose), every=every)


def stage_data(cfg, model, backbone, prep, stage_index: int, spill_dir: Optional[Path] = None,
               echo: Callable[[str], None] = print, *, val_split=None) -> StageData:
    """The stage's data, with trainability already set for the stage (see `StagePlan.apply`).

    `prep` is the run's `Prepared` (pipeline, cached sources, validation batches);
    `val_split` replaces the validation split the cache is filled with (lr-find fills one
    batch's worth: it does not validate)."""
    from tftune.training import cache

    pipe = prep.stage_pipes[stage_index] if prep.stage_pipes else prep.pipe
    seed = cfg.train.seed

    def inputs(epoch):
        return pipe.batches(prep.train_source, True, pipeline.epoch_seed(seed, stage_index, epoch))

    uncached = StageData(model, inputs, prep.val_ds)
    if cfg.train.feature_cache == "off":
        return uncached
    if pipe.random:
        from tftune.data.augment import parse

        names = ", ".join(name for name, _ in parse(pipe.augment))
        echo(f"   feature cache: off (random augmentation [{names}] changes the frozen part's "
             f"outputs every epoch)")
        return uncached
    plan, why = cache.plan_cache(model, backbone.model)
    if plan is None:
        if why:
            echo(f"   feature cache: not used ({why})")
        return uncached
    splits = prep.splits
    totals = {"train": splits.sizes.get("train"),
              "val": splits.sizes.get("val") if val_split is None else None}
    _, val_b, caches = cache.cached_datasets(
        plan, pipe, splits.train, val_split if val_split is not None else splits.val,
        cfg.train.cache_memory_mb * 2**20, spill_dir,
        progress=lambda split: fill_progress(cfg.train.verbose, split, totals[split], echo),
    )
    total = sum(c.bytes_total for c in caches)
    where = "spilled to disk" if any(c.spilled for c in caches) else "in memory"
    echo(
        f"   feature cache: frozen part run once over {caches[0].count:,} train + "
        f"{caches[1].count:,} val examples in {sum(c.seconds for c in caches):.0f}s "
        f"({total / 2**20:.0f} MiB {where}); steps run only from the {plan.boundary}"
    )
    features = caches[0].dataset()
    buffer = caches[0].shuffle_limit(pipe.shuffle_buffer(caches[0].count))
    pad = any(a is not None for a in plan.sequence_axes)

    def cached(epoch):  # served like `cached_datasets` serves them, with the epoch's seed
        epoch_seed = pipeline.epoch_seed(seed, stage_index, epoch)
        return cache.batched(
            pipe.resampled(features, epoch_seed), pipe.batch_size, shuffle_buffer=buffer,
            seed=epoch_seed,
            bucket_boundaries=pipe.bucket_boundaries, pad=pad, static=pipe.static,
        )

    return StageData(plan.suffix, cached, val_b, tuple(caches), plan.boundary)
