"""`tftune.runtime.progress.Progress`: a live line on a terminal, plain lines without control
characters in a log, nothing when quiet; the one helper behind every long step's progress."""

from __future__ import annotations

import io
import re
import time

import pytest

from tftune.runtime.progress import Progress, every_seconds, mode_for, ticking

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n: \r, ESC, ...


def assert_plain(text: str) -> None:
    """Log output: no carriage returns, escape sequences or other control characters."""
    assert not CONTROL.search(text), repr(text)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_in_a_log_at_most_every_n_seconds():
    lines: list[str] = []
    with Progress("verifying", 40, "examples", echo=lines.append, stream=io.StringIO(), every=0) as p:
        for n in (10, 20, 40):
            p(n)
    assert [l.split(" (")[0] for l in lines] == [
        "verifying 10 / 40 examples 25%", "verifying 20 / 40 examples 50%",
        "verifying 40 / 40 examples 100%"]
    for line in lines:
        assert_plain(line)
    lines.clear()
    slow = Progress("verifying", 40, echo=lines.append, stream=io.StringIO(), every=3600)
    slow(10)
    slow.close()
    assert lines == []  # nothing before the first interval has passed


def test_a_live_line_on_a_terminal():
    term, lines = Terminal(), []
    p = Progress("cache", 4, "examples", echo=lines.append, stream=term)
    assert p.mode == "bar"
    p(2)
    p(4)  # the total: drawn and ended
    out = term.getvalue()
    assert lines == [] and out.startswith("\rcache [") and out.endswith("\n")
    assert "4/4 examples 100%" in out


def test_unknown_total_counts_and_time_only():
    lines: list[str] = []
    p = Progress("fetch: downloading", unit=None, echo=lines.append, stream=io.StringIO(), every=0)
    p.update()
    q = Progress("fill", None, "examples", echo=lines.append, stream=io.StringIO(), every=0)
    q.advance(3)
    q.advance(2)
    assert re.fullmatch(r"fetch: downloading \(\d+s\)", lines[0])
    assert [l.split(" (")[0] for l in lines[1:]] == ["fill 3 examples", "fill 5 examples"]


def test_quiet_shows_nothing_and_modes_follow_train_verbose():
    term, lines = Terminal(), []
    p = Progress("x", 3, echo=lines.append, stream=term, mode="quiet")
    p(1)
    p(3)
    p.close()
    assert lines == [] and term.getvalue() == ""
    assert [mode_for(v) for v in ("auto", "bar", "epoch", "quiet")] == ["auto", "bar", "lines", "quiet"]
    with pytest.raises(ValueError, match="Unknown progress mode 'loud'"):
        Progress("x", mode="loud")


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TFTUNE_PROGRESS_SECONDS", "2.5")
    assert every_seconds() == 2.5
    monkeypatch.setenv("TFTUNE_PROGRESS_SECONDS", "soon")
    from tftune.errors import ConfigError

    with pytest.raises(ConfigError, match="Expected a number of seconds >= 0. Received: "
                                          "TFTUNE_PROGRESS_SECONDS='soon'"):
        every_seconds()


def test_ticking_reports_time_passing_from_a_thread():
    lines: list[str] = []
    with ticking(Progress("waiting", unit=None, echo=lines.append, stream=io.StringIO(), every=0),
                 seconds=0.05):
        time.sleep(0.3)
    assert lines and all(l.startswith("waiting (") for l in lines)
