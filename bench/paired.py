"""Paired, interleaved timing for the benchmarks.

This host's speed drifts by 2x over minutes, so two systems timed one after the other
compare the host's moods, not the code. Here every system ("arm") is built once and the arms
take turns, a block of steps each, in alternating order (A B, B A, A B ...): drift hits every
arm alike, and each round gives one ratio per pair of arms. A figure is the median of those
per-round ratios with a bootstrap 95 % interval of the median, printed with the machine's
load average; a target is judged on the interval, and an interval too wide to decide says so.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Mapping, Sequence


def load_average() -> str:
    """The 1, 5 and 15 minute load averages and the number of cores, for every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


def interleave(arms: Mapping[str, Callable[[int], object]], rounds: int, warmup: int = 3,
               block: int = 1) -> dict[str, list[float]]:
    """Runs `warmup + rounds` rounds; in each, every arm runs `block` steps (`arm(block)`),
    the arms in their order in even rounds and reversed in odd ones. Returns each arm's
    seconds per step in every round after the warm-up (tracing, first buffers)."""
    names = list(arms)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            arms[name](block)
            took = (time.perf_counter() - start) / block
            if i >= warmup:
                seconds[name].append(took)
    return seconds


@dataclasses.dataclass
class Ratio:
    """The median of per-round ratios, with a bootstrap 95 % interval of that median."""

    median: float
    low: float
    high: float
    rounds: int

    def __str__(self) -> str:
        return f"{self.median:.3f} (95% interval {self.low:.3f}-{self.high:.3f}, {self.rounds} rounds)"

    def at_most(self, target: float, upper: float | None = None) -> str:
        """Judges 'ratio <= target' (and the interval's upper end <= `upper`, when given)."""
        upper = target if upper is None else upper
        if self.median <= target and self.high <= upper:
            return f"meets <= {target:g}" + (f" (upper end <= {upper:g})" if upper != target else "")
        if self.low > target:
            return f"MISSES <= {target:g}: even the interval's lower end is above it"
        return (f"interval too wide to judge <= {target:g}"
                + (f" with upper end <= {upper:g}" if upper != target else ""))

    def at_least(self, target: float) -> str:
        """Judges 'ratio >= target' on the interval."""
        if self.low >= target:
            return f"meets >= {target:g}"
        if self.high < target:
            return f"MISSES >= {target:g}: even the interval's upper end is below it"
        return f"interval too wide to judge >= {target:g}"


def ratio(numerator: Sequence[float], denominator: Sequence[float], resamples: int = 2000,
          seed: int = 0) -> Ratio:
    """numerator[i] / denominator[i] per round: their median and its bootstrap interval."""
    import numpy as np

    r = np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(r, size=(resamples, len(r)), replace=True), axis=1)
    return Ratio(float(np.median(r)), float(np.percentile(medians, 2.5)),
                 float(np.percentile(medians, 97.5)), len(r))
