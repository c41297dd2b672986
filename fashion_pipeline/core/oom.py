"""GPU out-of-memory handling: halve the batch and try again.

The contract for every GPU-using backend (encoders, extractors): wrap the batched call in
:func:`run_with_oom_backoff` (one call) or :func:`map_in_batches` (a list of items), so a CUDA
OOM costs a smaller batch instead of a failed run. Only ``torch.cuda.OutOfMemoryError`` (and
the plain RuntimeError "CUDA out of memory" older torch raised) is retried; any other error
propagates at once. At ``min_batch_size`` the OOM propagates: the item does not fit at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def is_cuda_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # torch is optional for this module
        pass
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def _release_cuda_cache() -> None:
    # Frees the cached blocks the failed attempt left behind, so the retry sees them.
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def run_with_oom_backoff(
    fn: Callable[[int], R],
    batch_size: int,
    *,
    min_batch_size: int = 1,
    on_backoff: Callable[[int, int, BaseException], None] | None = None,
) -> R:
    """Call ``fn(batch_size)``; on CUDA OOM halve the batch size and call again.

    ``on_backoff(old, new, exc)`` is told about every reduction (log it: it explains a slow run).
    """
    if batch_size < 1 or min_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, min_batch_size={min_batch_size}")
    size = batch_size
    while True:
        try:
            return fn(size)
        except Exception as exc:
            if not is_cuda_oom(exc) or size <= min_batch_size:
                raise
            new = max(min_batch_size, size // 2)
            _release_cuda_cache()
            if on_backoff is not None:
                on_backoff(size, new, exc)
            size = new


def map_in_batches(
    items: Sequence[T],
    fn: Callable[[Sequence[T]], list[R]],
    batch_size: int,
    *,
    min_batch_size: int = 1,
    on_backoff: Callable[[int, int, BaseException], None] | None = None,
) -> list[R]:
    """``fn`` over ``items`` in batches; an OOM shrinks the batch for the rest of the list.

    Finished batches are kept (no work is redone) and the smaller size sticks, since a batch
    that ran out of memory once will do so again on similar inputs.
    """
    out: list[R] = []
    start = 0
    size = batch_size
    while start < len(items):
        def attempt(n: int) -> list[R]:
            nonlocal size
            size = n
            return fn(items[start:start + n])

        result = run_with_oom_backoff(attempt, size, min_batch_size=min_batch_size, on_backoff=on_backoff)
        if len(result) != len(items[start:start + size]):
            raise ValueError(f"batch function returned {len(result)} results for {len(items[start:start + size])} items")
        out.extend(result)
        start += size
    return out
