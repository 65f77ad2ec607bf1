"""What the machine offers this process (kept free of JAX, so that the command line can ask before JAX starts)."""

from __future__ import annotations

import os


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
