"""tftune from a plain Python script: train a bundled recipe (smaller, with overrides) with a
Keras callback of your own, read the metrics, then load the run directory and predict.

Run it after README command 1 (which fetched the offline assets):

    python examples/train_from_python.py

It writes runs/rt-python/ (replacing an earlier one) in about two minutes on 2 CPU cores.
"""

import keras

import tftune


class ValAccuracy(keras.callbacks.Callback):
    """Any Keras callback: tftune calls it in every stage, like model.fit would."""

    def on_epoch_end(self, epoch, logs=None):
        print(f"  (callback) epoch {epoch + 1}: val_accuracy {logs['val_accuracy']:.4f}")


result = tftune.train(
    "text_sentiment_minilm",  # a bundled recipe by name, or a recipe file's path
    overrides=[  # --set style: a quick, smaller version of the recipe
        "name=rt-python",
        "data.max_train_examples=1500",
        "stages.0.epochs=2",
        "stages.1.epochs=1",
        "train.verbose=epoch",
    ],
    callbacks=[ValAccuracy()],
    overwrite=True,
)
print("run directory:", result.run_dir)
print("test accuracy:", round(result.metrics["test"]["accuracy"], 4))
print("model:", type(result.model).__name__, "with", result.model.count_params(), "weights")

predictor = tftune.load(result.run_dir)  # the same run, as a later process would load it
texts = ["A warm, funny and beautifully acted film.", "Dull, overlong and utterly pointless."]
for text, label, probs in zip(texts, predictor.predict_labels(texts), predictor.predict(texts)):
    print(f"{label:>7} ({probs.max():.2f})  {text}")
