"""`Range`: the interval a numeric config value must lie in, declared on the field's type.

A field says `epochs: Annotated[int, Range(">= 1")] = 1`; `tftune.config.coerce` checks the
value against it when a recipe is loaded and quotes the range in its message:
`Invalid value for 'stages.0.epochs'. Expected an integer >= 1. Received: 0`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])$")


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval written as the error message shows it: `"> 0"`, `">= 1"`, `"<= 10"`,
    `"[0, 1)"`, `"(0, 1]"`, `"[0, 4294967295]"`. Values must also be finite (no nan, no inf).

    `low`/`high` are the bounds (None: unbounded) and `low_open`/`high_open` say whether the
    bound itself is excluded.
    """

    text: str
    low: Optional[float] = dataclasses.field(init=False, default=None)
    high: Optional[float] = dataclasses.field(init=False, default=None)
    low_open: bool = dataclasses.field(init=False, default=False)
    high_open: bool = dataclasses.field(init=False, default=False)

    def __post_init__(self) -> None:
        text = self.text.strip()
        bound, interval = _BOUND.match(text), _INTERVAL.match(text)
        if bound:
            op, value = bound.group(1), float(bound.group(2))
            side = "low" if op.startswith(">") else "high"
            parts = {side: value, f"{side}_open": len(op) == 1}
        elif interval:
            opening, low, high, closing = interval.groups()
            parts = {"low": float(low), "high": float(high), "low_open": opening == "(",
                     "high_open": closing == ")"}
        else:
            raise ValueError(
                f"Unknown range {self.text!r}. Expected '> a', '>= a', '< b', '<= b' or an "
                f"interval such as '[a, b)'."
            )
        for name, value in parts.items():
            object.__setattr__(self, name, value)

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self, kind: str) -> str:
        """`kind` ("a number", "an integer") with the range: 'a number in [0, 1)', 'an integer >= 1'."""
        text = self.text.strip()
        return f"{kind} {text}" if _BOUND.match(text) else f"{kind} in {text}"
