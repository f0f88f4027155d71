"""Preemption: SIGTERM (how Cloud TPU and spot VMs announce it) asks the run to stop.

`watch()` installs a handler that only sets a flag; the training loop looks at the flag after
every step, writes a checkpoint there and raises `Preempted`. The CLI prints how to resume and
exits with `EXIT_CODE` (75, EX_TEMPFAIL: "try again later"), so job schedulers see an
unfinished run and restart it, and `tftune train ... --resume` continues from that step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_CODE = 75


class Preempted(Exception):
    """The run stopped at a checkpoint because the process was asked to terminate."""

    def __init__(self, message: str, run_dir=None, where: str = ""):
        super().__init__(message)
        self.run_dir = run_dir
        self.where = where


class StopRequest:
    """A flag the signal handler sets; `signal_name` says which signal set it."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""

    def set(self, signum: int) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return self.requested


@contextlib.contextmanager
def watch(signals=(signal.SIGTERM,)) -> Iterator[StopRequest]:
    """Yields a `StopRequest` that the given signals set, for the duration (the previous
    handlers come back afterwards). Outside the main thread no handler can be installed and
    the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {}
    for sig in signals:
        previous[sig] = signal.signal(sig, lambda signum, frame: request.set(signum))
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resume_command(recipe: str, overrides=(), flags=None) -> str:
    """The `tftune train ... --resume` command line that continues a stopped run: the same
    recipe, `--set` overrides and options (`flags`: {option: value or None})."""
    import shlex

    words = ["tftune", "train", recipe]
    for o in overrides:
        words += ["--set", o]
    for flag, value in (flags or {}).items():
        if value is True:  # an on/off option such as --no-test
            words.append(flag)
        elif value:
            words += [flag, value]
    return shlex.join(words + ["--resume"])
