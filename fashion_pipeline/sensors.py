"""Start refresh_job (everything downstream of the raw-file assets) when the raw files change.

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
    description="Runs refresh_job (everything downstream of the raw files) when files under the data root are added or change.",
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


# --- Declarative automation ------------------------------------------------------------------
# The conditions live on the assets (fashion_pipeline.automation: the publish assets and
# scored_listings, eager once the blocking gates passed). This sensor evaluates every condition
# declared in the code location; assets without one are left to the jobs.
model_automation = dg.AutomationConditionSensorDefinition(
    "model_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus(automation_default_status().value),
    description="Evaluates the automation conditions the assets declare: publish a candidate whose blocking "
                "gate passed, re-score the listings when a published model changed.",
)
