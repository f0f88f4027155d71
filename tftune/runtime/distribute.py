"""One setting -> a `tf.distribute` strategy: default, mirrored, multi-worker or TPU.

`train.distribute` (or `tftune train --distribute`):

- `auto`: a TPU when one is named (`train.tpu` / `--tpu`, or the `TPU_NAME` environment
  variable), several workers when `TF_CONFIG` describes a cluster of more than one task,
  `MirroredStrategy` when more than one GPU is visible, the default strategy otherwise.
- `default`: TensorFlow's default strategy (one device).
- `mirrored`: `MirroredStrategy` over every GPU, or over every logical CPU device when there
  is no GPU (one CPU unless `tf.config.set_logical_device_configuration` split it).
- `multi_worker`: `MultiWorkerMirroredStrategy`; the cluster and this process's task come
  from `TF_CONFIG`. Task 0 of `chief`, or of `worker` when there is no chief, writes the run
  directory; the others write to a temporary directory that is removed at the end.
- `tpu`: `TPUClusterResolver(tpu=...)` -> connect -> `initialize_tpu_system` ->
  `TPUStrategy`.

The recipe's `train.batch_size` is the global batch: each of the N replicas gets 1/N of it.

Input: one device, `MirroredStrategy` and `TPUStrategy` read one pipeline whose global batches
are split across the replicas (`Distribution.distribute`). Several workers each read only
their own shard of every split (`worker_input`, `tftune.data.shards`): a worker decodes,
tokenises and feature-caches about 1/workers of the examples and batches them per replica;
the steps are padded with weight-0 batches so every worker runs as many as the longest shard.

Everything that creates variables (the backbone, the head, the optimizer, the metrics, the
feature cache's model) runs inside `Distribution.scope()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

from tftune.errors import ConfigError

SETTINGS = ("auto", "default", "mirrored", "multi_worker", "tpu")
TPU_ENV = "TPU_NAME"


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """What `TF_CONFIG` says: the tasks of the cluster and which one this process is."""

    cluster: Mapping[str, list]
    task_type: str
    task_id: int

    @property
    def num_workers(self) -> int:
        return sum(len(v) for k, v in self.cluster.items() if k in ("chief", "worker"))

    @property
    def is_chief(self) -> bool:
        """The task that writes the run directory: chief 0, or worker 0 without a chief."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_id == 0


def read_tf_config(env: Mapping[str, str] = os.environ) -> Optional[ClusterSpec]:
    """The cluster described by `TF_CONFIG`, or None when it is unset or empty."""
    raw = env.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}). Expected e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": '
            '"worker", "index": 0}}'
        ) from None
    cluster = data.get("cluster") if isinstance(data, dict) else None
    task = data.get("task") if isinstance(data, dict) else None
    if not cluster:
        return None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(
            "TF_CONFIG must hold a 'cluster' mapping (task type -> list of host:port) and a "
            f"'task' mapping ({{'type': 'worker', 'index': 0}}). Received: {raw[:200]}"
        )
    task_type, task_id = task.get("type"), task.get("index", 0)
    if task_type not in cluster or not isinstance(task_id, int) or not (
        0 <= task_id < len(cluster[task_type])
    ):
        raise ConfigError(
            f"TF_CONFIG's task {task!r} is not one of its cluster's tasks "
            f"({', '.join(f'{k} 0..{len(v) - 1}' for k, v in cluster.items())})."
        )
    return ClusterSpec(cluster, task_type, task_id)


def resolve(setting: str = "auto", tpu: Optional[str] = None, num_gpus: int = 0,
            env: Mapping[str, str] = os.environ) -> str:
    """Which strategy `setting` means here: 'default', 'mirrored', 'multi_worker' or 'tpu'."""
    if setting not in SETTINGS:
        from tftune.errors import did_you_mean

        raise ConfigError(
            f"Unknown distribute setting {setting!r}.{did_you_mean(setting, SETTINGS)} "
            f"Expected one of: {', '.join(SETTINGS)}. Received: distribute={setting!r}"
        )
    if setting != "auto":
        return setting
    if tpu or env.get(TPU_ENV):
        return "tpu"
    spec = read_tf_config(env)
    if spec is not None and spec.num_workers > 1:
        return "multi_worker"
    return "mirrored" if num_gpus > 1 else "default"


@dataclasses.dataclass
class Distribution:
    """A strategy and what the run needs to know about it."""

    strategy: Any
    kind: str  # default | mirrored | multi_worker | tpu
    devices: tuple[str, ...] = ()
    cluster: Optional[ClusterSpec] = None

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run directory."""
        return self.cluster is None or self.kind != "multi_worker" or self.cluster.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.kind == "multi_worker"

    def scope(self):
        return self.strategy.scope()

    @property
    def worker_index(self) -> int:
        """This worker's input pipeline among the cluster's: the chief first, then the
        workers in order (as `tf.distribute.InputContext.input_pipeline_id` numbers them)."""
        spec = self.cluster
        if spec is None:
            return 0
        first = 1 if "chief" in spec.cluster and spec.task_type == "worker" else 0
        return first + spec.task_id

    @property
    def batches_per_step(self) -> int:
        """Batches of an input dataset one step takes: this worker's replicas' under several
        workers (each takes its own batch), else 1 (one global batch)."""
        if not self.multi_worker:
            return 1
        return max(1, self.replicas // self.cluster.num_workers)

    def worker_input(self, global_batch: int):
        """This worker's shard of the input (`tftune.data.shards.WorkerInput`) under several
        workers; None otherwise (every replica's batch is cut from one global batch)."""
        if not self.multi_worker:
            return None
        from tftune.data.shards import WorkerInput

        return WorkerInput.for_workers(self.cluster.num_workers, self.worker_index,
                                       global_batch, self.replicas)

    def describe(self, global_batch: int) -> str:
        names = {"default": "default strategy (one device)", "mirrored": "MirroredStrategy",
                 "multi_worker": "MultiWorkerMirroredStrategy", "tpu": "TPUStrategy"}
        text = names[self.kind]
        if self.kind != "default":
            text += f", {self.replicas} replica(s)"
            if self.devices:
                text += f" ({', '.join(self.devices)})"
            if self.cluster is not None:
                text += (f"; this is {self.cluster.task_type} {self.cluster.task_id} of "
                         f"{self.cluster.num_workers} workers"
                         + (" (writes the run directory)" if self.is_chief else ""))
            per = global_batch / self.replicas
            text += f"; global batch {global_batch} = {per:g} per replica"
        return text

    def distribute(self, dataset, skip: int = 0):
        """`dataset` split across the replicas, from its step `skip` on.

        One pipeline (default, mirrored, TPU): `dataset` holds global batches, each cut into
        the replicas' parts. With several replicas each (x, y) batch becomes (x, y, weight):
        a batch whose size is not a multiple of the replicas (the last one) is padded with
        copies of its first example at weight 0, so no replica gets an empty batch (some ops
        fail on those) and the steps' weighted sums count the real examples only.

        Several workers: `dataset` is this worker's shard in per-replica batches
        (`worker_input`); its replicas take one batch each per step
        (`distribute_datasets_from_function`). The workers agree on the number of steps (the
        longest shard's; one all-gather), and a shorter shard is followed by weight-0 copies
        of its batches, so no worker waits in a collective another never joins and the sums
        count every real example of the split once."""
        if self.kind == "default":
            return dataset.skip(skip) if skip else dataset
        if self.multi_worker:
            return self._per_worker(dataset, skip)
        if skip:
            dataset = dataset.skip(skip)
        if self.replicas > 1:
            dataset = dataset.map(_padder(self.replicas))
        return self.strategy.experimental_distribute_dataset(dataset)

    def _per_worker(self, dataset, skip: int):
        import math

        import numpy as np
        import tensorflow as tf

        local_replicas = self.batches_per_step
        batches = int(dataset.cardinality())
        if batches == tf.data.INFINITE_CARDINALITY:
            raise ValueError("A multi-worker epoch must be finite; take(n) its batches first.")
        if batches < 0:  # e.g. length buckets: one pass over the (cached) examples counts them
            batches = int(dataset.reduce(np.int64(0), lambda n, _: n + 1))
        steps = int(self.agree_max(float(math.ceil(batches / local_replicas))))
        count, index = self.cluster.num_workers, self.worker_index
        padded = dataset.map(_weighted(1.0))
        if steps * local_replicas > batches:
            padded = padded.concatenate(
                dataset.map(_weighted(0.0)).repeat().take(steps * local_replicas - batches))
        if skip:
            padded = padded.skip(skip * local_replicas)

        def dataset_fn(context: tf.distribute.InputContext):
            if (context.num_input_pipelines, context.input_pipeline_id) != (count, index):
                raise RuntimeError(
                    f"The strategy reads input pipeline {context.input_pipeline_id} of "
                    f"{context.num_input_pipelines} on this worker, but its shard is "
                    f"{index} of {count} (TF_CONFIG's task order).")
            return padded

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def agree(self, flag: bool) -> bool:
        """True when `flag` is true on any worker (one all-reduce across workers; local
        otherwise). Workers must call it at the same points."""
        if not self.multi_worker:
            return bool(flag)
        import tensorflow as tf

        value = self.strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
        return float(self.strategy.reduce("SUM", value, axis=None)) > 0.0

    def agree_max(self, value: float) -> float:
        """The largest of every worker's `value` (one all-gather; local otherwise)."""
        return -self.agree_min(-value)

    def agree_min(self, value: float) -> float:
        """The smallest of every worker's `value` (one all-gather; local otherwise)."""
        if not self.multi_worker:
            return value
        import numpy as np
        import tensorflow as tf

        values = self.strategy.run(lambda: tf.constant([float(value)]))
        return float(np.min(np.asarray(self.strategy.gather(values, axis=0))))


def _weighted(weight: float):
    """(x, y) -> (x, y, that weight for every example)."""
    import tensorflow as tf

    def add(x, y):
        return x, y, tf.fill(tf.shape(y)[:1], weight)

    return add


def _padder(replicas: int):
    """(x, y) -> (x, y, weight) with the batch padded to a multiple of `replicas`; an
    (x, y, weight) batch (static shapes' filled evaluation batches) keeps its weights."""
    import tensorflow as tf

    def pad(x, y, weight=None):
        n = tf.shape(y)[0]
        extra = (replicas - n % replicas) % replicas
        index = tf.concat([tf.range(n), tf.zeros([extra], tf.int32)], axis=0)
        real = tf.ones([n]) if weight is None else tf.cast(weight, tf.float32)
        weight = tf.concat([real, tf.zeros([extra])], axis=0)
        take = lambda t: tf.gather(t, index)  # noqa: E731
        return tf.nest.map_structure(take, x), take(y), weight

    return pad


def _tpu_strategy(tpu: Optional[str]):
    import tensorflow as tf

    name = tpu or os.environ.get(TPU_ENV)
    how = ("Name one with --tpu NAME (or train.tpu, or the TPU_NAME environment variable): "
           "'local' on a Cloud TPU VM, the TPU's name from a Cloud VM in its zone, or "
           "grpc://HOST:8470; or use --distribute default")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
    except ValueError as e:
        raise ConfigError(f"distribute: tpu found no TPU to connect to ({e}). {how}.") from None
    except Exception as e:  # the Cloud TPU API lookup of a name (network, credentials)
        raise ConfigError(
            f"distribute: tpu could not resolve TPU {name!r}: {type(e).__name__}: {e}. {how}."
        ) from None
    try:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0][:200]
        raise ConfigError(
            f"distribute: tpu could not initialise TPU {name!r} ({first}). {how}."
        ) from None
    strategy = tf.distribute.TPUStrategy(resolver)
    return strategy, tuple(d.name for d in tf.config.list_logical_devices("TPU"))


def make_distribution(setting: str = "auto", tpu: Optional[str] = None) -> Distribution:
    """The strategy for `setting` (see the module docstring). Create it before TensorFlow
    runs anything else in the process: MultiWorkerMirroredStrategy and logical devices are
    fixed when TensorFlow initialises."""
    import tensorflow as tf

    # Physical devices: listing logical ones would initialise TensorFlow, after which
    # MultiWorkerMirroredStrategy can no longer configure its collective ops.
    kind = resolve(setting, tpu, len(tf.config.list_physical_devices("GPU")))
    if kind == "default":
        return Distribution(tf.distribute.get_strategy(), "default")
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
        return Distribution(tf.distribute.MirroredStrategy(list(devices)), "mirrored", devices)
    if kind == "multi_worker":
        spec = read_tf_config()
        if spec is None:
            raise ConfigError(
                "distribute: multi_worker reads the cluster from the TF_CONFIG environment "
                "variable, which is not set. Set it on every worker, e.g. TF_CONFIG="
                '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": '
                '"worker", "index": 0}}\', or use --distribute auto.'
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Distribution(strategy, "multi_worker", cluster=spec)
    strategy, devices = _tpu_strategy(tpu)
    return Distribution(strategy, "tpu", devices)


def agree_to_start(dist, error, loaded) -> None:
    """Every worker starts, from the same checkpoint, or none does (one all-gather)."""
    import numpy as np
    import tensorflow as tf

    from tftune.errors import TftuneError

    number = -2 if error is not None else (int(loaded.path.name.split("-")[1]) if loaded else -1)
    values = dist.strategy.run(lambda: tf.constant([float(number)]))
    seen = np.asarray(dist.strategy.gather(values, axis=0)).ravel()
    if error is not None:
        raise error
    if (seen == -2).any():
        raise TftuneError("Another worker could not start the run (see its output); stopped.")
    if len(set(seen.tolist())) > 1:
        raise TftuneError(
            f"The workers found different checkpoints to resume from ({sorted(set(seen.tolist()))}"
            f", -1 = none): the run directory must be on storage every worker reads."
        )
