"""The Dagster code location: assembles assets, checks, jobs, schedules, sensors and resources.

The jobs select over the asset graph (fashion_pipeline.jobs), so a new module under
fashion_pipeline/assets/ downstream of clean_products joins the retraining and refresh jobs, and
its own automation_condition is evaluated, without an edit in this file. FASHION_PROFILE picks the
resources (fashion_pipeline.profiles); FASHION_EXECUTOR picks how a run executes its steps.
"""

from __future__ import annotations

import os

import dagster as dg

from fashion_pipeline import assets, checks
from fashion_pipeline.jobs import ALL_JOBS
from fashion_pipeline.resources import build_resources
from fashion_pipeline.schedules import build_retraining_schedule
from fashion_pipeline.sensors import model_automation, new_raw_files

EXECUTOR_ENV = "FASHION_EXECUTOR"


def build_executor(name: str | None = None) -> dg.ExecutorDefinition:
    """in_process (default), multiprocess, or k8s (one pod per step).

    "in_process" runs a run's steps one after another in the run's own process. On one host it is
    the cheaper choice for this pipeline: its stages are few, heavy and mostly chained, each
    already uses the cores it is given, and a step of the multiprocess executor pays a fresh Python
    process importing Dagster and the project (~5 s per step here: the embedded sample's full run
    took 178 s under multiprocess against 52 s in process, a re-run with nothing changed 116 s
    against 25 s, README main command on 2 cores; the full development data 1,199 s against 964 s,
    peak RSS of the run's processes 5.5 GB against 3.5 GB, nothing changed 90 s against 16 s:
    benchmarks/results/pipeline*.md). A run whose worker dies (e.g. killed for memory) fails as a
    whole and is retried by the instance's run_retries.

    "multiprocess" is Dagster's multi_or_in_process_executor: one process per step, independent
    steps side by side (a run may pick ``execution: {config: {in_process: {}}}`` in the launchpad).

    k8s needs the dagster-k8s package (the `dev` extra here; install it in the cluster image);
    per-step pod resources come from each op's ``dagster-k8s/config`` tag (fashion_pipeline.gpu,
    set under the gpu profile on the assets that run on CUDA).
    """
    name = (name or os.environ.get(EXECUTOR_ENV, "in_process")).strip()
    if name == "multiprocess":
        return dg.multi_or_in_process_executor
    if name == "in_process":
        return dg.in_process_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected in_process, multiprocess or k8s")


all_assets = dg.load_assets_from_package_module(assets)
# Standalone @dg.asset_check functions in the asset modules (load_assets_... does not return them).
all_asset_checks = [*dg.load_asset_checks_from_package_module(assets), *dg.load_asset_checks_from_modules([checks])]

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_asset_checks,
    jobs=ALL_JOBS,
    schedules=[build_retraining_schedule()],
    sensors=[new_raw_files, model_automation],
    resources=build_resources(),
    executor=build_executor(),
)
