"""Argument checks shared by cells, learners, objectives, streams and configs: each raises a one-line
``ValueError`` naming the argument and what it allows."""

from __future__ import annotations

import math
from typing import Any


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def in_range(name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` in ``[low, high]`` (``(`` / ``)`` where open)."""
    v = number(name, value)
    if (v < low or (low_open and v == low)) or (v > high or (high_open and v == high)):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v
