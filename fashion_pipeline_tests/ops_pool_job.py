"""A job of two independent GPU-pool steps, in its own light module: the multiprocess executor
re-imports it in every step process (keep imports to dagster alone)."""

import json
import os
import time
from pathlib import Path

import dagster as dg


def _record(name: str) -> None:
    start = time.time()
    time.sleep(0.5)
    with open(Path(os.environ["FASHION_TEST_SPANS"]), "a") as fh:
        fh.write(json.dumps({"step": name, "start": start, "end": time.time()}) + "\n")


@dg.asset(pool="gpu")
def gpu_step_a() -> None:
    _record("a")


@dg.asset(pool="gpu")
def gpu_step_b() -> None:
    _record("b")


def two_gpu_steps_job():
    return dg.Definitions(
        assets=[gpu_step_a, gpu_step_b],
        jobs=[dg.define_asset_job("two_gpu_steps", executor_def=dg.multiprocess_executor)],
    ).resolve_job_def("two_gpu_steps")
