"""Named points in training and checkpointing where the kill test (tests/test_resume.py) can
see, and stop, a run.

Both are off unless their environment variable is set:

- `TFTUNE_TRACE=FILE`: every point appends its name, how many times it was reached and the
  time to FILE, so a test can tell where a `kill -9` landed.
- `TFTUNE_PAUSE_AT=NAME#N`: at the N-th time point NAME is reached the process stops itself
  with SIGSTOP, for the test to `kill -9` it exactly there (e.g. between writing a
  checkpoint's files and renaming its folder into place).
"""

from __future__ import annotations

import os
import signal
import time

TRACE_ENV = "TFTUNE_TRACE"
PAUSE_ENV = "TFTUNE_PAUSE_AT"

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
