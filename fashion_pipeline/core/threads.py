"""How many threads training uses by default: the cores this process may run on."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and `taskset` set), else
    the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None) -> int:
    """A configured thread count, or the cores available when none is configured."""
    return int(threads) if threads else available_cores()
