"""Where a run computes: tf.distribute strategies, preemption (SIGTERM) and fault points."""
