"""Writes Fashion-MNIST (tftune's offline asset: README command 1 fetched it) in the two
formats TensorFlow shops keep their data in, so the `my_tfds` and `my_tfrecord` recipes can
be tried on real data without the network:

- a prepared TensorFlow Datasets dataset `fashion_mnist_local` (built with TFDS's own
  `GeneratorBasedBuilder`, as a team would for its own data) under DIR/tfds;
- sharded TFRecord files of `tf.train.Example`s (PNG bytes + int64 label) under DIR/tfrecord.

    python examples/fashion_mnist_as_tfds_and_tfrecord.py DIR [--per-class 600]
    tftune train my_tfds --set data.name=fashion_mnist_local --set data.data_dir=DIR/tfds ...
    tftune train my_tfrecord --set "data.splits={train: 'DIR/tfrecord/train-*', test: 'DIR/tfrecord/test-*'}" ...
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle_boot"]


def subset(x, y, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(10)])
    keep = rng.permutation(keep)
    return x[keep], y[keep]


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def write_tfrecords(folder: Path, split: str, x, y, shards: int = 4) -> None:
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        path = folder / f"{split}-{s:05d}-of-{shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for pixels, label in zip(x[s::shards], y[s::shards]):
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png(pixels)])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                }))
                writer.write(example.SerializeToString())


def write_tfds(folder: Path, train, test) -> None:
    import tensorflow_datasets as tfds

    class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
        """Fashion-MNIST from tftune's offline asset (28x28 grey images, 10 classes)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                }),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(*train), "test": self._generate_examples(*test)}

        def _generate_examples(self, x, y):
            for i, (pixels, label) in enumerate(zip(x, y)):
                yield i, {"image": pixels[..., None], "label": int(label)}

    FashionMnistLocal(data_dir=str(folder)).download_and_prepare()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--per-class", type=int, default=600, help="training images per class")
    args = parser.parse_args()

    from tftune.data.images import fashion_mnist_arrays

    (x_train, y_train), (x_test, y_test) = fashion_mnist_arrays()
    train = subset(x_train, y_train, args.per_class, 0)
    test = subset(x_test, y_test, max(args.per_class // 4, 1), 1)
    write_tfds(args.dir / "tfds", train, test)
    write_tfrecords(args.dir / "tfrecord", "train", *train)
    write_tfrecords(args.dir / "tfrecord", "test", *test)
    print(f"{len(train[1])} train + {len(test[1])} test images written to {args.dir}/tfds "
          f"(TFDS fashion_mnist_local) and {args.dir}/tfrecord (4 shards each)")


if __name__ == "__main__":
    main()
