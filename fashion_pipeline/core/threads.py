"""How many threads training uses by default: the cores this process may run on."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor


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


def map_chunked(fn, items: list, workers: int, chunk: int = 256) -> list:
    """``[fn(x) for x in items]`` (in order) on ``workers`` threads, ``chunk`` items per task: a thread
    pool ignores map's chunksize, and one task per item cost more than the work itself for cheap ``fn``
    (a memo lookup per file: ~3 s of the 43.7k-product catalogue's ~6 s went to the tasks)."""
    def run(part: list) -> list:
        return [fn(x) for x in part]

    parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        return [y for part in pool.map(run, parts) for y in part]


class WorkerPool:
    """Runs independent jobs in up to ``processes`` worker processes: for single-threaded solvers that
    cannot share a process's threads — liblinear (LinearSVC) draws its coordinate order from a
    process-global generator, so two fits on threads would change each other's result; in processes
    each fit is what it would be alone.

    The workers are loky's (joblib's process pool: spawned, so no fork of a process that runs threads,
    and without re-running an unguarded ``__main__``), started by the first `map` that needs them and
    shut down by `close` (or the end of a ``with`` block): left idle they held ~290 MB each through the
    next stages of a run. Several `map` calls inside one block share the workers (~1.5 s to start)."""

    def __init__(self, processes: int):
        self.processes = max(1, int(processes))
        self._pool = None

    def map(self, fn, jobs: list[tuple]) -> list:
        """``[fn(*job) for job in jobs]`` (results in job order); in this process for one job or one
        process. ``fn`` must be importable (a module-level function)."""
        n = min(self.processes, len(jobs))
        if n <= 1:
            return [fn(*job) for job in jobs]
        if self._pool is None:
            from joblib.externals.loky import get_reusable_executor

            self._pool = get_reusable_executor(max_workers=self.processes)
        return list(self._pool.map(fn, *zip(*jobs)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def map_processes(fn, jobs: list[tuple], processes: "int | WorkerPool") -> list:
    """``[fn(*job) for job in jobs]`` through ``processes``: a `WorkerPool` the caller keeps open, or a
    number of processes for a pool of this call alone."""
    if isinstance(processes, WorkerPool):
        return processes.map(fn, jobs)
    with WorkerPool(processes) as pool:
        return pool.map(fn, jobs)
