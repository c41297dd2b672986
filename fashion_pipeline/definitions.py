"""The Dagster code location: assembles assets, checks, jobs, schedules, sensors and resources."""

from __future__ import annotations

import dagster as dg

from fashion_pipeline import assets
from fashion_pipeline.resources import build_resources

all_assets = dg.load_assets_from_package_module(assets)

defs = dg.Definitions(
    assets=all_assets,
    resources=build_resources(),
)
