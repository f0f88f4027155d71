"""Per-worker input: under MultiWorkerMirroredStrategy each worker reads, decodes, tokenises
and caches only its shard of every split.

`WorkerInput` says which shard this worker takes and how big its replicas' batches are;
`shard_splits` cuts the splits before any decode: worker i of N takes the examples at
positions i, i + N, i + 2N, ... of each split (`DataSplits.subsets` builds a dataset of just
those, so the files of the others are never opened; a source without `subsets` -- the
`python` source -- is sharded after its own maps, before tftune's). The shards are disjoint
and cover every split, whatever the seed; each worker shuffles its own shard per epoch with
the epoch's seed (`pipeline.epoch_seed`) and batches it with the per-replica batch, so a global
batch is the union of one batch from each replica. The workers' shards may differ in size
by one example: `tftune.runtime.distribute.Distribution.distribute` pads the shorter ones
with weight-0 batches so every worker runs the same number of steps.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tftune.data.splits import DataSplits
from tftune.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class WorkerInput:
    """This worker's part of the input: shard `index` of `count` (one input pipeline per
    worker), batched `batch_size` examples per replica, `local_replicas` replicas here."""

    count: int
    index: int
    batch_size: int  # per replica
    local_replicas: int = 1

    @classmethod
    def for_workers(cls, count: int, index: int, global_batch: int, replicas: int
                    ) -> "WorkerInput":
        """Shard `index` of `count` workers with `replicas` replicas in all (the same number
        on every worker) and the global batch `global_batch`."""
        if global_batch % replicas:
            raise ConfigError(
                f"train.batch_size must split evenly over the {replicas} replicas of a "
                f"multi-worker run (each worker batches its own examples). Received: "
                f"train.batch_size={global_batch}; use a multiple of {replicas}."
            )
        return cls(count, index, global_batch // replicas, max(1, replicas // count))

    def positions(self, n: int) -> np.ndarray:
        """This worker's positions among `n` examples."""
        return np.arange(self.index, n, self.count)

    def steps(self, local_batches: int) -> int:
        """Steps of this worker's `local_batches` (its replicas take one batch each per step)."""
        return math.ceil(local_batches / self.local_replicas)

    def describe(self, whole: DataSplits, shard: DataSplits) -> str:
        sizes = ", ".join(f"{s} {shard.sizes[s]} of {whole.sizes[s]}" for s in SPLITS
                          if s in shard.sizes and s in whole.sizes)
        return (f"Input: worker {self.index} of {self.count} reads and decodes only its shard "
                f"({sizes}); {self.batch_size} per replica")


def shard_splits(splits: DataSplits, shard: WorkerInput) -> DataSplits:
    """`splits` cut to `shard`'s examples (see the module docstring): datasets, sizes, ids and
    labels of the shard, in the splits' order."""
    datasets, sizes, ids, labels = {}, {}, {}, {}
    for name in SPLITS:
        ds = getattr(splits, name)
        if ds is None:
            continue
        n = splits.sizes.get(name)
        if n is None:
            n = int(ds.cardinality())
            if n < 0:
                raise DataError(
                    f"A multi-worker run shards each split by position: the {name} split must "
                    f"have a known size. Received a dataset of unknown cardinality; apply "
                    f"tf.data.experimental.assert_cardinality(n) to it.")
        idx = shard.positions(n)
        if len(idx) == 0:
            raise DataError(
                f"The {name} split has {n} example(s), fewer than the {shard.count} workers: "
                f"each worker needs at least one of every split.")
        make = splits.subsets.get(name)
        datasets[name] = make(idx) if make is not None else _sharded(ds, shard, len(idx))
        sizes[name] = len(idx)
        if name in splits.ids:
            ids[name] = [splits.ids[name][i] for i in idx]
        if name in splits.labels:
            labels[name] = np.asarray(splits.labels[name])[idx]
    return dataclasses.replace(
        splits, train=datasets["train"], val=datasets["val"], test=datasets.get("test"),
        sizes=sizes, ids=ids, labels=labels, subsets={})


def _sharded(ds, shard: WorkerInput, n: int):
    import tensorflow as tf

    return ds.shard(shard.count, shard.index).apply(tf.data.experimental.assert_cardinality(n))
