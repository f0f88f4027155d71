"""Training: stage plans, the optimizer, the loop, the feature cache, callbacks and the run."""
