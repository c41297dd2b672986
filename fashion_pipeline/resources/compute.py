"""Where tensors run: one resource every GPU-capable stage asks for its device and batch size."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import dagster as dg
from pydantic import Field

from fashion_pipeline.core.oom import run_with_oom_backoff

R = TypeVar("R")


class ComputeResource(dg.ConfigurableResource):
    """Device and batch-size policy shared by the encoders and extractors."""

    device: str = Field(default="cpu", description="'cpu', 'cuda', 'cuda:<n>', or 'auto' (cuda when torch sees "
                        "a GPU, else cpu). The profile sets it (local: cpu, gpu: cuda).")
    batch_size: int = Field(default=32, ge=1, description="Starting batch size; halved on CUDA out-of-memory.")
    min_batch_size: int = Field(default=1, ge=1, description="Below this an out-of-memory error is raised: "
                                "the input does not fit at all.")

    def resolved_device(self) -> str:
        """The torch device string to use; fails clearly when CUDA is asked for but absent."""
        if self.device == "cpu":
            return "cpu"
        import torch  # only the stages that use tensors pay the import

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"device {self.device!r} configured but torch sees no CUDA device; use FASHION_PROFILE=local "
                    "or set resources.compute.device to 'cpu' or 'auto'")
            return self.device
        raise ValueError(f"unknown device {self.device!r}: expected cpu, cuda, cuda:<n> or auto")

    def run_with_oom_backoff(self, fn: Callable[[int], R], batch_size: int | None = None,
                             log: Callable[[str], None] | None = None) -> R:
        """``fn(batch_size)`` with the batch halved on CUDA OOM (see fashion_pipeline.core.oom)."""
        def report(old: int, new: int, exc: BaseException) -> None:
            if log:
                log(f"CUDA out of memory at batch size {old}; retrying with {new}")

        return run_with_oom_backoff(fn, batch_size or self.batch_size, min_batch_size=self.min_batch_size,
                                    on_backoff=report)
