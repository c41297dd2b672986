"""Start ingestion-to-models when the raw files change.

The sensor fingerprints the two dataset folders of the same ``raw_data`` resource the assets
read (path, size and mtime of every file; fashion_pipeline.core.raw_files). Its cursor is the
last fingerprint it acted on; the run key is the fingerprint, so the daemon never starts two
runs for the same state of the files, even if the cursor were lost. A change is acted on only
once no file has been modified for FASHION_SENSOR_SETTLE_S seconds (default 120), so a
dataset still being copied does not start a run that reads half a CSV.

The first evaluation (no cursor yet) starts a run: the sensor has never seen these files.
"""

import json
import os
import time

import dagster as dg

from fashion_pipeline.core.raw_files import fingerprint_folders
from fashion_pipeline.jobs import refresh_job
from fashion_pipeline.resources.data import RawDataResource
from fashion_pipeline.schedules import automation_default_status

SETTLE_ENV = "FASHION_SENSOR_SETTLE_S"
INTERVAL_ENV = "FASHION_SENSOR_INTERVAL_S"
FINGERPRINT_TAG = "fashion/raw_fingerprint"


def _settle_seconds() -> float:
    return float(os.environ.get(SETTLE_ENV, "120"))


@dg.sensor(
    name="new_raw_files",
    job=refresh_job,
    minimum_interval_seconds=int(os.environ.get(INTERVAL_ENV, "300")),
    default_status=dg.DefaultSensorStatus(automation_default_status().value),
    description="Runs refresh_job (ingestion to models) when files under the data root are added or change.",
)
def new_raw_files(context: dg.SensorEvaluationContext, raw_data: RawDataResource):
    try:
        folders = [raw_data.kaggle_root(), raw_data.hm_root()]
    except Exception as exc:  # a missing data root is reported on the tick, not raised every 5 minutes
        return dg.SkipReason(f"data root unavailable: {exc}")
    fp = fingerprint_folders(folders)
    if fp.files == 0:
        return dg.SkipReason(f"no raw files under {', '.join(map(str, folders))}")
    previous = json.loads(context.cursor) if context.cursor else None
    if previous and previous.get("digest") == fp.digest:
        return dg.SkipReason(f"no change: {fp.files} files, fingerprint {fp.digest[:12]}")
    age = time.time() - fp.newest_mtime
    settle = _settle_seconds()
    if age < settle:
        return dg.SkipReason(f"files changed {age:.0f} s ago; waiting until nothing changed for {settle:.0f} s")
    context.update_cursor(json.dumps(fp.as_cursor()))
    change = (f"{fp.files - previous['files']:+d} files" if previous else "first evaluation")
    context.log.info(f"raw data changed ({change}); fingerprint {fp.digest[:12]}")
    return dg.RunRequest(
        run_key=fp.digest,
        tags={FINGERPRINT_TAG: fp.digest, "fashion/trigger": "new-raw-files", "fashion/raw_files": str(fp.files)},
    )


# --- Declarative automation for the scoring group -------------------------------------------
# Scoring is cheap and must always reflect the latest published models, whatever retrained
# them (the weekly schedule, the raw-files sensor, a hand-launched run). "eager" expresses
# exactly that per asset, without a job listing what scoring depends on; the heavy stages stay
# on explicit jobs, because eager there would start GPU-hours of work on every upstream change.
SCORING_GROUP = "scoring"


def _eager_if_unset(spec: dg.AssetSpec) -> dg.AssetSpec:
    if spec.group_name == SCORING_GROUP and spec.automation_condition is None:
        return spec.replace_attributes(automation_condition=dg.AutomationCondition.eager())
    return spec


def with_scoring_automation(assets: list) -> list:
    """Scoring assets get AutomationCondition.eager() unless they chose a condition themselves."""
    def apply(a):
        if isinstance(a, dg.AssetChecksDefinition):  # checks carry no asset specs to change
            return a
        if isinstance(a, (dg.AssetsDefinition, dg.AssetSpec)):
            return dg.map_asset_specs(_eager_if_unset, [a])[0]
        return a

    return [apply(a) for a in assets]


scoring_automation = dg.AutomationConditionSensorDefinition(
    "scoring_automation",
    target=dg.AssetSelection.groups(SCORING_GROUP),
    default_status=dg.DefaultSensorStatus(automation_default_status().value),
    description="Evaluates the scoring group's automation conditions (eager: refresh when a model changes).",
)
