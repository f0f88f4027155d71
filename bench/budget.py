"""A Keras callback shared by the hand-written baselines: stop `fit` once a wall-clock budget
(seconds since training began, checked after every batch) is spent."""

from __future__ import annotations

import time


def budget_callback(seconds: float):
    import keras

    class Budget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() - self.start > seconds:
                self.model.stop_training = True

    return Budget()
