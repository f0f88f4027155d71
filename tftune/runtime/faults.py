"""Named points in training and checkpointing where the kill test (tests/test_resume.py) can
see, and stop, a run.

Both are off unless their environment variable is set:

- `TFTUNE_TRACE=FILE`: every point appends its name, how many times it was reached and the
  time to FILE, so a test can tell where a `kill -9` landed.
- `TFTUNE_PAUSE_AT=NAME#N`: at the N-th time point NAME is reached the process stops itself
  with SIGSTOP, for the test to `kill -9` it exactly there (e.g. between writing a
  checkpoint's files and renaming its folder into place).
- `TFTUNE_DECODE_TRACE=FILE`: every example a source decodes appends its name (an image's
  path) to FILE, so a test can count what each worker of a multi-worker run decoded
  (tests/test_distribute.py). Off, the input pipeline has no trace op at all.
"""

from __future__ import annotations

import os
import signal
import time

TRACE_ENV = "TFTUNE_TRACE"
PAUSE_ENV = "TFTUNE_PAUSE_AT"
DECODE_ENV = "TFTUNE_DECODE_TRACE"

_counts: dict[str, int] = {}


def point(name: str, detail: str = "") -> None:
    """Marks that the run reached `name` (a no-op unless the variables above are set);
    `detail` (e.g. "epoch 2 step 3") goes into the trace."""
    trace, pause = os.environ.get(TRACE_ENV), os.environ.get(PAUSE_ENV)
    if not trace and not pause:
        return
    n = _counts.get(name, 0) + 1
    _counts[name] = n
    if trace:
        with open(trace, "a") as f:
            f.write(f"{name}#{n} {time.time():.3f} {detail}".rstrip() + "\n")
            f.flush()
            os.fsync(f.fileno())
    if pause and pause == f"{name}#{n}":
        os.kill(os.getpid(), signal.SIGSTOP)


def trace_decodes(ds, name_fn):
    """`ds` (whose elements a decode map follows) with each element's `name_fn(*element)` (a
    string tensor) appended to `TFTUNE_DECODE_TRACE`'s file as it is pulled; `ds` itself
    when the variable is unset (read when the pipeline is built)."""
    trace = os.environ.get(DECODE_ENV)
    if not trace:
        return ds
    import threading

    import tensorflow as tf

    lock = threading.Lock()

    def write(name):
        with lock, open(trace, "a") as f:
            f.write(f"{os.getpid()} {name.numpy().decode()}\n")
        return name

    def traced(*element):
        name = tf.py_function(write, [name_fn(*element)], tf.string)
        with tf.control_dependencies([name]):
            return tf.nest.map_structure(tf.identity, element)

    return ds.map(traced)
