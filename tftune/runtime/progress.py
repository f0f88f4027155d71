"""Progress of the steps that take long (the feature-cache fill, `tftune assets fetch`, an
export's verification, lr-find), shown one way everywhere:

- on a terminal, one live line redrawn in place (`\\r`): label, a bar when the total is
  known, the count, the time so far;
- in a log (output is not a terminal), a plain line at most every `every` seconds (15 by
  default; `TFTUNE_PROGRESS_SECONDS` sets it, 0 writes a line per update), through the
  caller's `echo`, with no control characters;
- nothing when `quiet`.

`Progress` is the one helper: make one per long step, call it (or `update`) with the count
so far, and `close` it (or use it as a context manager).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable, Iterator, Optional, TextIO

EVERY_SECONDS = 15.0
"""Seconds between two plain progress lines in a log (unless `TFTUNE_PROGRESS_SECONDS`)."""
ENV_EVERY = "TFTUNE_PROGRESS_SECONDS"
MODES = ("auto", "bar", "lines", "quiet")
_REDRAW_SECONDS = 0.1  # the live line is redrawn at most this often
_BAR_WIDTH = 24


def every_seconds(default: float = EVERY_SECONDS) -> float:
    """The seconds between plain lines: `TFTUNE_PROGRESS_SECONDS` if set, else `default`."""
    value = os.environ.get(ENV_EVERY, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        from tftune.errors import ConfigError

        raise ConfigError(f"Invalid {ENV_EVERY}. Expected a number of seconds >= 0. "
                          f"Received: {ENV_EVERY}={value!r}")
    return seconds


def mode_for(verbose: str) -> str:
    """The progress mode for a `train.verbose` setting: `bar` and `quiet` as they are,
    `epoch` (a line per epoch) -> `lines`, `auto` -> `auto`."""
    return {"epoch": "lines"}.get(verbose, verbose)


class Progress:
    """Progress of one long step over `total` items (None: unknown) of `unit` (a plural noun,
    e.g. "examples"; None: show only the time so far).

    `mode`: `auto` (a live line when `stream` is a terminal, else plain lines), `bar`,
    `lines` or `quiet`. Plain lines go to `echo`; the live line to `stream` (stdout).
    `fmt` turns a count into text (default: with thousands separators).
    """

    def __init__(self, label: str, total: Optional[int] = None, unit: Optional[str] = "examples", *,
                 echo: Callable[[str], object] = print, mode: str = "auto",
                 stream: Optional[TextIO] = None, every: Optional[float] = None,
                 fmt: Callable[[int], str] = "{:,}".format):
        if mode not in MODES:
            raise ValueError(f"Unknown progress mode {mode!r}. Expected one of: "
                             f"{', '.join(MODES)}. Received: mode={mode!r}")
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode, self.label, self.total, self.unit = mode, label, total, unit
        self.echo, self.fmt = echo, fmt
        self.every = every_seconds() if every is None else float(every)
        self.count: Optional[int] = None
        self.start = time.perf_counter()
        self._last_line = self.start
        self._last_draw = 0.0
        self._width = 0
        self._closed = False

    def __call__(self, n: Optional[int] = None, note: str = "") -> None:
        self.update(n, note)

    def update(self, n: Optional[int] = None, note: str = "") -> None:
        """`n` items done so far (None: only time passes); `note` is shown after the count."""
        if self._closed or self.mode == "quiet":
            return
        if n is not None:
            self.count = n
        now = time.perf_counter()
        done = self.total is not None and n is not None and n >= self.total
        if self.mode == "bar":
            if done or now - self._last_draw >= _REDRAW_SECONDS:
                self._last_draw = now
                self._draw(self._text(now, note, bar=True))
            if done:
                self.close()
        elif now - self._last_line >= self.every:
            self._last_line = now
            self.echo(self._text(now, note, bar=False))

    def advance(self, k: int = 1, note: str = "") -> None:
        """`k` more items done."""
        self.update((self.count or 0) + k, note)

    def close(self) -> None:
        """Ends the live line (a newline after it); plain lines need no ending."""
        if not self._closed and self.mode == "bar" and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _text(self, now: float, note: str, bar: bool) -> str:
        parts = [self.label]
        if self.count is not None and self.unit is not None:
            if self.total:
                share = min(self.count / self.total, 1.0)
                if bar:
                    filled = int(round(share * _BAR_WIDTH))
                    parts.append("[" + "=" * filled + "." * (_BAR_WIDTH - filled) + "]")
                    parts.append(f"{self.fmt(self.count)}/{self.fmt(self.total)} {self.unit}".rstrip())
                else:
                    parts.append(f"{self.fmt(self.count)} / {self.fmt(self.total)} {self.unit}".rstrip())
                parts.append(f"{100 * share:.0f}%")
            else:
                parts.append(f"{self.fmt(self.count)} {self.unit}".rstrip())
        if note:
            parts.append(note)
        text = " ".join(parts)
        return f"{text} ({now - self.start:.0f}s)"

    def _draw(self, text: str) -> None:
        pad = max(self._width - len(text), 0)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)


def silent(label: str = "", total: Optional[int] = None, unit: Optional[str] = "examples",
           **_) -> Progress:
    """A `Progress` that shows nothing (the default where a caller passes none)."""
    return Progress(label, total, unit, mode="quiet")


@contextlib.contextmanager
def ticking(progress: Progress, seconds: float = 1.0) -> Iterator[Progress]:
    """Updates `progress` with the time passing (no count) from a background thread while
    the body runs: for a step that reports nothing itself (a registry client downloading)."""
    stop = threading.Event()
    tick = max(0.05, min(seconds, progress.every))

    def run():
        while not stop.wait(tick):
            progress.update()

    thread = threading.Thread(target=run, name="tftune-progress", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        progress.close()
