"""Unchanged inputs skip their work: an asset whose input fingerprint equals the one its latest
materialization recorded returns that materialization's output instead of recomputing it.

Each reusing asset computes a fingerprint of what decides its result (core.fingerprint: input
tables, embeddings, config, published models it reads, code and library versions) and records it
in its metadata under ``input_fingerprint``. On a match the asset re-emits the stored output (the
warehouse table, the model store version, the Parquet file) with the previous metadata, plus
``reused_from_run`` naming the run that computed it. Plots, tables and counts in the UI are then
those of that run, which are the ones these inputs give.

Set the run tag ``fashion/reuse: "false"`` (the UI's Launchpad), or the environment variable
``FASHION_REUSE=off`` in the process that runs the steps (``dg launch``, which takes no tags), to
recompute everything in a run (e.g. after changing something the fingerprint cannot see, like a
file in the model store edited by hand).
"""

from __future__ import annotations

from collections.abc import Callable

import os

import dagster as dg
import pandas as pd

REUSE_TAG = "fashion/reuse"
REUSE_ENV = "FASHION_REUSE"
_OFF = ("false", "0", "no", "off")
FINGERPRINT_KEY = "input_fingerprint"
REUSED_FROM_KEY = "reused_from_run"
# Added again by the IO manager when it re-emits the reused table (without writing it back).
_IO_MANAGER_KEYS = ("dagster/row_count", "dagster/column_schema", "dagster/table_name", "warehouse")


def resource_config(resource, exclude: tuple[str, ...] = ()) -> dict:
    """A configurable resource's field values (what its behaviour depends on), for a fingerprint;
    ``exclude`` names fields that do not change the output (housekeeping such as retention)."""
    return {name: getattr(resource, name, None) for name in type(resource).model_fields if name not in exclude}


def _run_tags(context) -> dict | None:
    try:
        return dict(context.run.tags)
    except dg.DagsterError:  # a directly invoked asset (build_asset_context) has no run
        return None


def reuse_enabled(context) -> bool:
    """Off outside a run (nothing to compare with), or when the run's tag or the environment says so."""
    tags = _run_tags(context)
    if tags is None:
        return False
    tag = str(tags.get(REUSE_TAG, "true")).strip().lower()
    env = os.environ.get(REUSE_ENV, "on").strip().lower()
    return tag not in _OFF and env not in _OFF


def matching(context, key: str, fingerprint: str, metadata_key: str = FINGERPRINT_KEY) -> dg.EventLogEntry | None:
    """The latest materialization of asset ``key`` if it recorded ``fingerprint`` under
    ``metadata_key`` (and reuse is on)."""
    if not reuse_enabled(context):
        return None
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    mat = event.asset_materialization if event is not None else None
    if mat is None:
        return None
    recorded = mat.metadata.get(metadata_key)
    return event if recorded is not None and recorded.value == fingerprint else None


def origin_run(event: dg.EventLogEntry) -> str:
    """The run that computed the output an event carries (itself, unless it was reused too)."""
    prior = event.asset_materialization.metadata.get(REUSED_FROM_KEY)
    return str(prior.value) if prior is not None else event.run_id


def carried_metadata(event: dg.EventLogEntry, fingerprint: str, drop: tuple[str, ...] = ()) -> dict:
    """The previous materialization's metadata (less the keys in ``drop``), marked as reused."""
    meta = {k: v for k, v in event.asset_materialization.metadata.items() if k not in drop}
    meta[REUSED_FROM_KEY] = dg.MetadataValue.text(origin_run(event))
    meta[FINGERPRINT_KEY] = dg.MetadataValue.text(fingerprint)
    return meta


def _reusable(context, key: str, fingerprint: str,
              still_there: Callable[[dg.EventLogEntry], bool] | None) -> dg.EventLogEntry | None:
    """The latest materialization of ``key`` when it had this fingerprint and (per ``still_there``)
    what it stored can still be served; None means compute."""
    event = matching(context, key, fingerprint)
    if event is None:
        return None
    if still_there is not None and not still_there(event):
        context.log.warning(f"{key}: inputs unchanged but what its last run stored is gone; recomputing")
        return None
    return event


def _log_reuse(context, key: str, event: dg.EventLogEntry, fingerprint: str) -> None:
    context.log.info(f"{key}: inputs unchanged since run {origin_run(event)} "
                     f"(fingerprint {fingerprint[:12]}); reusing its output")


def reused_table(context, key: str, fingerprint: str, read_table: Callable[[str], pd.DataFrame],
                 output_name: str | None = None,
                 still_there: Callable[[dg.EventLogEntry], bool] | None = None) -> dg.Output | None:
    """An Output re-emitting the stored table of ``key`` when its last materialization had this
    fingerprint; None (compute) when it did not, or the table (or, per ``still_there``, what else
    the output stands for, e.g. a model store version) can no longer be read."""
    event = _reusable(context, key, fingerprint, still_there)
    if event is None:
        return None
    try:
        table = read_table(key)
    except Exception as e:  # the warehouse lost the table: compute it again, and say why
        context.log.warning(f"{key}: inputs unchanged but the stored table cannot be read ({e}); recomputing")
        return None
    _log_reuse(context, key, event, fingerprint)
    kwargs = {"output_name": output_name} if output_name else {}
    return dg.Output(table, metadata=carried_metadata(event, fingerprint, drop=_IO_MANAGER_KEYS), **kwargs)


def reused_result(context, key: str, fingerprint: str,
                  still_there: Callable[[dg.EventLogEntry], bool] | None = None) -> dg.MaterializeResult | None:
    """`reused_table` for an asset that stores its output itself (a file, a model store artefact)
    and returns a MaterializeResult: the previous metadata, marked as reused."""
    event = _reusable(context, key, fingerprint, still_there)
    if event is None:
        return None
    _log_reuse(context, key, event, fingerprint)
    return dg.MaterializeResult(metadata=carried_metadata(event, fingerprint))
