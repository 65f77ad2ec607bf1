"""Argument checks shared by cells, learners, objectives, streams and configs: each raises a one-line
``ValueError`` naming the argument and what it allows."""

from __future__ import annotations

import math
from typing import Any, NamedTuple


def integer(name: str, value: Any, minimum: int = 0) -> int:
    """A Python int >= ``minimum`` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {'a positive int' if minimum == 1 else f'an int >= {minimum}'}, "
                         f"got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    return integer(name, value, 1)


def number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def in_range(name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` in ``[low, high]`` (``(`` / ``)`` where open)."""
    v = number(name, value)
    if (v < low or (low_open and v == low)) or (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be in {Range(low, high, low_open, high_open).describe()}, got {value!r}")
    return v


class Range(NamedTuple):
    """A valid interval for a number, e.g. ``Range(0, 1, high_open=True)`` for a discount."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def check(self, name: str, value: Any) -> float:
        return in_range(name, value, self.low, self.high, self.low_open, self.high_open)

    def describe(self) -> str:
        high = "inf" if math.isinf(self.high) else f"{self.high:g}"
        closed = self.high_open or math.isinf(self.high)
        return f"{'(' if self.low_open else '['}{self.low:g}, {high}{')' if closed else ']'}"
