"""The bar for the regression recipe: a plain KerasHub fine-tune on the same split.

What a user of the anchors writes by hand: `BertBackbone.from_preset(<MiniLM folder>)`, its
`pooled_output` into a `Dense(1)`, everything trainable from step one, mean squared error on
the raw target, AdamW 5e-5, batch 32, sequence length 64, trained for a wall-clock budget
(checked after each batch), then scored on the recipe's test split (RMSE, MAE, Pearson,
Spearman, in the target's units). Run on demand:

    python bench/baseline_regression_kerashub.py --budget 600
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def scores(y, p):
    """RMSE, MAE, Pearson r and Spearman rho (ranks without tie correction are enough for a
    continuous target) of predictions `p` against targets `y`."""
    import numpy as np

    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    return {"rmse": float(np.sqrt(np.mean((p - y) ** 2))), "mae": float(np.mean(np.abs(p - y))),
            "pearson": float(np.corrcoef(y, p)[0, 1]),
            "spearman": float(np.corrcoef(rank(y), rank(p))[0, 1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/text_regression_vader_minilm.yaml")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    import keras
    import keras_hub
    import numpy as np

    from budget import budget_callback
    from tftune.assets import asset_path
    from tftune.config import load_recipe
    from tftune.data import load_data
    from tftune.tasks import get_task

    cfg = load_recipe(args.recipe)
    splits = load_data(cfg.data, cfg.train.seed, task=get_task("regression", cfg=cfg))
    preset = str(asset_path("all-minilm-l6-v2"))
    pre = keras_hub.models.BertTextClassifierPreprocessor.from_preset(preset, sequence_length=64)
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    inputs = backbone.input
    outputs = keras.layers.Dense(1)(backbone(inputs)["pooled_output"])
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.AdamW(5e-5), loss="mse", jit_compile=False)

    def packed(ds):
        return ds.batch(32).map(lambda x, y: (pre(x), y), num_parallel_calls=-1).prefetch(2)

    train = packed(splits.train.shuffle(20_000, seed=cfg.train.seed))

    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, callbacks=[budget_callback(args.budget)], verbose=2)
    seconds = time.perf_counter() - start
    y = np.concatenate([np.asarray(b) for _, b in splits.test.batch(256)])
    p = model.predict(packed(splits.test), verbose=0)[:, 0]
    s = scores(y, p)
    print(f"plain KerasHub fine-tune: test rmse {s['rmse']:.4f}, mae {s['mae']:.4f}, pearson "
          f"{s['pearson']:.4f}, spearman {s['spearman']:.4f} after {seconds:.0f}s of training "
          f"({len(y)} test examples)")


if __name__ == "__main__":
    main()
