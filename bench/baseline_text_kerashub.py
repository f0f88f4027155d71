"""The bar: a plain KerasHub fine-tune on the same Rotten Tomatoes split as the tftune recipe.

`BertTextClassifier.from_preset(<MiniLM folder>)`, everything trainable from step one, AdamW
5e-5, batch 32, sequence length 64, trained for a wall-clock budget (checked at each batch),
then evaluated on the recipe's test split. Run on demand:

    python bench/baseline_text_kerashub.py --budget 480
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/text_sentiment_minilm.yaml")
    parser.add_argument("--budget", type=float, default=480.0, help="training seconds")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="recipe overrides (e.g. data.* for another set)")
    args = parser.parse_args()

    import keras
    import keras_hub

    from budget import budget_callback
    from tftune.assets import asset_path
    from tftune.config import load_recipe
    from tftune.data import load_data

    cfg = load_recipe(args.recipe, tuple(args.overrides))
    splits = load_data(cfg.data, cfg.train.seed)
    preset = str(asset_path("all-minilm-l6-v2"))
    pre = keras_hub.models.BertTextClassifierPreprocessor.from_preset(preset, sequence_length=64)
    model = keras_hub.models.BertTextClassifier.from_preset(
        preset, num_classes=len(splits.class_names), preprocessor=pre)
    model.compile(
        optimizer=keras.optimizers.AdamW(5e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    train = splits.train.shuffle(20_000, seed=cfg.train.seed).batch(32)
    test = splits.test.batch(32)

    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, callbacks=[budget_callback(args.budget)], verbose=2)
    seconds = time.perf_counter() - start
    acc = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    print(f"plain KerasHub fine-tune: test accuracy {acc:.4f} after {seconds:.0f}s of training")


if __name__ == "__main__":
    main()
