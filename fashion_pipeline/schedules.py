"""Weekly retraining. Cron and timezone come from the environment of the code location:

FASHION_RETRAIN_CRON      default "0 3 * * 1" (Mondays 03:00)
FASHION_RETRAIN_TIMEZONE  default "UTC" (any IANA name, e.g. "Europe/Berlin")
FASHION_AUTOMATION        "on" starts schedules and sensors switched on; default "off" (turn
                          them on in the UI: Automation tab), so a dev `dagster dev` never
                          starts a full run by itself.
"""

import os
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg

from fashion_pipeline.jobs import retraining_job

RETRAIN_CRON_ENV = "FASHION_RETRAIN_CRON"
RETRAIN_TZ_ENV = "FASHION_RETRAIN_TIMEZONE"
AUTOMATION_ENV = "FASHION_AUTOMATION"
DEFAULT_RETRAIN_CRON = "0 3 * * 1"


def automation_default_status() -> dg.DefaultScheduleStatus:
    value = os.environ.get(AUTOMATION_ENV, "off").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{AUTOMATION_ENV}={value!r}: expected 'on' or 'off'")
    return dg.DefaultScheduleStatus.RUNNING if value == "on" else dg.DefaultScheduleStatus.STOPPED


def retrain_cron() -> str:
    return os.environ.get(RETRAIN_CRON_ENV, DEFAULT_RETRAIN_CRON).strip()


def retrain_timezone() -> str:
    tz = os.environ.get(RETRAIN_TZ_ENV, "UTC").strip()
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{RETRAIN_TZ_ENV}={tz!r} is not an IANA timezone name") from None
    return tz


def build_retraining_schedule() -> dg.ScheduleDefinition:
    """Built at load time, so the env vars above are read when the code location (re)loads."""
    cron = retrain_cron()
    try:
        return _schedule(cron)
    except dg.DagsterInvalidDefinitionError as exc:
        raise ValueError(f"{RETRAIN_CRON_ENV}={cron!r} is not a valid cron expression") from exc


def _schedule(cron: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_retraining",
        job=retraining_job,
        cron_schedule=cron,
        execution_timezone=retrain_timezone(),
        default_status=automation_default_status(),
        tags={"fashion/trigger": "weekly-retraining"},
        description=f"Retrain the models weekly ({RETRAIN_CRON_ENV}, {RETRAIN_TZ_ENV}).",
    )
