"""Per-worker input (`tftune.data.shards`): which examples a worker of a multi-worker run
takes, before anything is decoded. The 2-process runs are in tests/test_distribute.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import make_image_folder
from tftune.data.shards import WorkerInput, shard_splits
from tftune.data.splits import DataSplits
from tftune.errors import ConfigError, DataError
from tftune.runtime.distribute import ClusterSpec, Distribution


def _labels(ds) -> list[int]:
    return [int(y) for _, y in ds.as_numpy_iterator()]


@pytest.mark.parametrize("count", [2, 3])
def test_shards_are_disjoint_and_cover_every_split(count):
    import tensorflow as tf

    def split(n, offset):
        return tf.data.Dataset.from_tensor_slices(
            (tf.zeros([n, 4, 4, 3]), tf.range(offset, offset + n)))

    splits = DataSplits.from_datasets(split(11, 0), split(5, 100), split(4, 200),
                                      class_names=["a", "b"], modality="image")
    seen = {"train": [], "val": [], "test": []}
    for index in range(count):
        shard = shard_splits(splits, WorkerInput.for_workers(count, index, 6, count))
        for name in seen:
            got = _labels(getattr(shard, name))
            assert got == _labels(getattr(splits, name))[index::count]  # in the split's order
            assert shard.sizes[name] == len(got) == int(getattr(shard, name).cardinality())
            seen[name] += got
    for name, got in seen.items():
        assert sorted(got) == _labels(getattr(splits, name))


def test_a_folder_source_builds_only_its_shard(tmp_path, monkeypatch):
    """The folder source's shard is a dataset of its own files: the others are never read
    (the decode trace lists what was decoded)."""
    from tftune.config import load_recipe
    from tftune.data import load_data

    folder = make_image_folder(tmp_path / "images", per_class=5)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({
        "recipe": "image_classification", "name": "s", "output_dir": str(tmp_path / "runs"),
        "data": {"source": "folder", "path": str(folder), "image_size": [32, 32]},
        "backbone": {"spec": "keras_applications:MobileNetV2", "weights": "none"}}))
    cfg = load_recipe(path)
    trace = tmp_path / "decoded.txt"
    monkeypatch.setenv("TFTUNE_DECODE_TRACE", str(trace))
    splits = load_data(cfg.data, cfg.train.seed)
    shard = shard_splits(splits, WorkerInput.for_workers(2, 1, 8, 2))
    assert shard.ids["train"] == splits.ids["train"][1::2]
    assert shard.sizes["train"] == len(splits.ids["train"]) // 2
    np.testing.assert_array_equal(shard.labels["train"], splits.labels["train"][1::2])
    assert _labels(shard.train) == list(splits.labels["train"][1::2])
    decoded = [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]
    assert sorted(decoded) == sorted(shard.ids["train"])


def test_a_split_smaller_than_the_workers_is_a_clear_error():
    import tensorflow as tf

    one = tf.data.Dataset.from_tensor_slices((tf.zeros([1, 4, 4, 3]), tf.zeros([1], tf.int32)))
    splits = DataSplits.from_datasets(one.repeat(4), one, class_names=["a", "b"],
                                      modality="image")
    with pytest.raises(DataError, match="val split has 1 example.*fewer than the 2 workers"):
        shard_splits(splits, WorkerInput.for_workers(2, 1, 4, 2))


def test_the_global_batch_must_split_over_the_replicas():
    with pytest.raises(ConfigError, match="train.batch_size must split evenly over the 4 "
                                          "replicas.*Received: train.batch_size=10"):
        WorkerInput.for_workers(2, 0, 10, 4)
    assert WorkerInput.for_workers(2, 1, 16, 4) == WorkerInput(2, 1, 4, 2)
    assert WorkerInput(2, 0, 4, 2).steps(5) == 3


@pytest.mark.parametrize("cluster, task, index", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 1), 1),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("chief", 0), 0),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("worker", 1), 2),
])
def test_worker_index_follows_the_input_pipeline_order(cluster, task, index):
    dist = Distribution(strategy=None, kind="multi_worker",
                        cluster=ClusterSpec(cluster, task[0], task[1]))
    assert dist.worker_index == index


def _same_examples(shard_ds, whole_ds, index: int, count: int):
    whole = list(whole_ds.as_numpy_iterator())[index::count]
    got = list(shard_ds.as_numpy_iterator())
    assert len(got) == len(whole)
    for (x, y), (wx, wy) in zip(got, whole):
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)


def test_text_and_record_sources_build_their_shards(tmp_path):
    """The CSV and TFRecord sources' `subsets`: worker i's split is the whole split's
    examples i, i + N, ..., in order."""
    from helpers import write_sentiment_csv
    from test_tfrecord_source import colour_records, write_shards
    from tftune.config import config_from_dict
    from tftune.data import load_data

    csv = write_sentiment_csv(tmp_path / "texts.csv", per_class=10)
    records = write_shards(tmp_path / "records", "train", colour_records(5, 0), 2)
    for data in ({"source": "csv", "path": str(csv), "val_fraction": 0.2, "test_fraction": 0.2},
                 {"source": "tfrecord", "path": records, "image_size": [32, 32],
                  "val_fraction": 0.2, "test_fraction": 0.2}):
        splits = load_data(config_from_dict({"data": data}).data, 0)
        assert set(splits.subsets) == {"train", "val", "test"}, data["source"]
        for index in range(2):
            shard = shard_splits(splits, WorkerInput.for_workers(2, index, 4, 2))
            for name in ("train", "val", "test"):
                _same_examples(getattr(shard, name), getattr(splits, name), index, 2)


class _FakeStrategy:
    """`distribute_datasets_from_function` as worker `index` of 2 sees it (one replica each)."""

    num_replicas_in_sync = 2

    def __init__(self, index):
        self.index = index

    def distribute_datasets_from_function(self, fn):
        import tensorflow as tf

        return fn(tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=self.index))


@pytest.mark.parametrize("bucketed", [False, True])
def test_a_short_shard_is_padded_with_weight_0_batches_to_the_longest(monkeypatch, bucketed):
    """Worker 1 has 3 batches, worker 0 five: worker 1 runs five steps, the last two on
    weight-0 copies of its batches; a resumed epoch skips the same steps on both. Unknown
    cardinality (length buckets) is counted with a pass over the dataset."""
    import tensorflow as tf

    dist = Distribution(_FakeStrategy(1), "multi_worker",
                        cluster=ClusterSpec({"worker": ["a:1", "b:1"]}, "worker", 1))
    monkeypatch.setattr(Distribution, "agree_max", lambda self, v: max(v, 5.0))
    ds = tf.data.Dataset.from_tensor_slices((tf.range(10.0), tf.range(10))).batch(4)  # 4, 4, 2
    if bucketed:
        ds = ds.filter(lambda x, y: True)
        assert int(ds.cardinality()) < 0
    out = [(y.tolist(), w.tolist()) for _, y, w in dist.distribute(ds).as_numpy_iterator()]
    assert [len(y) for y, _ in out] == [4, 4, 2, 4, 4]
    assert [sum(w) for _, w in out] == [4, 4, 2, 0, 0]
    assert [y for y, _ in out[:3]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    resumed = [w.tolist() for _, _, w in dist.distribute(ds, skip=2).as_numpy_iterator()]
    assert [sum(w) for w in resumed] == [2, 0, 0]
    with pytest.raises(RuntimeError, match="input pipeline 1 of 2.*its shard is 0 of 2"):
        Distribution(_FakeStrategy(1), "multi_worker", cluster=ClusterSpec(
            {"worker": ["a:1", "b:1"]}, "worker", 0)).distribute(ds)


def test_a_worker_learns_the_task_from_the_whole_training_split(tmp_path):
    """`train.class_weight: balanced` on a worker's shard: the class weights come from every
    training label (the same on each worker, and the chief's task.json is one device's)."""
    from helpers import save_tiny_cnn
    from tftune.config import load_recipe
    from tftune.training.prepare import loaded_inputs, prepare_run

    folder = tmp_path / "images"
    for name, n in (("red", 9), ("green", 4), ("blue", 6)):  # uneven classes
        make_image_folder(folder, per_class=n, classes={name: (200, 10, 10)})
    path = tmp_path / "r.json"
    path.write_text(json.dumps({
        "recipe": "image_classification", "name": "w", "output_dir": str(tmp_path / "runs"),
        "data": {"source": "folder", "path": str(folder), "image_size": [32, 32]},
        "backbone": {"spec": f"keras:{save_tiny_cnn(tmp_path / 'cnn.keras')}"},
        "train": {"batch_size": 4, "class_weight": "balanced"}}))
    cfg = load_recipe(path)
    with loaded_inputs(cfg) as (splits, backbone, _):
        one = prepare_run(cfg, splits, backbone, echo=lambda _: None).task.state()
        shard = shard_splits(splits, WorkerInput.for_workers(2, 1, 4, 2))
        worker = prepare_run(cfg, shard, backbone, lambda _: None,
                             WorkerInput.for_workers(2, 1, 4, 2), lambda v: v, whole=splits)
        from_shard = prepare_run(cfg, shard, backbone, lambda _: None,
                                 WorkerInput.for_workers(2, 1, 4, 2), lambda v: v)
    assert worker.task.state() == one and one["class_weights"]
    assert from_shard.task.state() != one  # what the shard alone would give
    assert worker.pipe.batch_size == 2
