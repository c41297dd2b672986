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


def map_processes(fn, jobs: list[tuple], processes: int) -> list:
    """``[fn(*job) for job in jobs]``, run in up to ``processes`` worker processes (joblib's loky backend)
    when there is more than one of each. For single-threaded solvers that cannot share a process's
    threads: liblinear (LinearSVC) draws its coordinate order from a process-global generator, so two
    fits on threads would change each other's result; in processes each fit is what it would be alone.
    Results come back in job order; large arrays travel memory-mapped (joblib's default)."""
    n = min(int(processes), len(jobs))
    if n <= 1:
        return [fn(*job) for job in jobs]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n, backend="loky")(delayed(fn)(*job) for job in jobs)
