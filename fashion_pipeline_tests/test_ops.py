"""Operations: OOM backoff, the raw-files sensor, the retraining schedule, group-based jobs,
scoring automation, and the shipped instance config (GPU pool) on a real Dagster instance."""

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import torch

from fashion_pipeline.core.oom import map_in_batches, run_with_oom_backoff
from fashion_pipeline.definitions import all_assets, defs
from fashion_pipeline.jobs import ALL_JOBS
from fashion_pipeline.paths import PROJECT_ROOT
from fashion_pipeline.resources import build_resources
from fashion_pipeline.resources.compute import ComputeResource
from fashion_pipeline.resources.data import RawDataResource
from fashion_pipeline.resources.lineage import LineageWarehouseIOManager
from fashion_pipeline.schedules import build_retraining_schedule
from fashion_pipeline.sensors import new_raw_files, with_scoring_automation
from fashion_pipeline_tests.conftest import KAGGLE
from fashion_pipeline_tests.ops_pool_job import two_gpu_steps_job

SHIPPED_DAGSTER_YAML = PROJECT_ROOT / "fashion_pipeline" / "deploy" / "dagster.yaml"


# --- GPU out-of-memory: halve the batch ----------------------------------------------------------

def _oom() -> torch.cuda.OutOfMemoryError:
    # The exception class torch raises on a CUDA allocation failure (no GPU here to raise it for us).
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_oom_halves_the_batch_until_it_fits():
    tried, backoffs = [], []

    def encode(batch_size: int) -> str:
        tried.append(batch_size)
        if batch_size > 8:
            raise _oom()
        return f"done at {batch_size}"

    assert run_with_oom_backoff(encode, 32, on_backoff=lambda a, b, e: backoffs.append((a, b, type(e)))) == "done at 8"
    assert tried == [32, 16, 8]
    assert backoffs == [(32, 16, torch.cuda.OutOfMemoryError), (16, 8, torch.cuda.OutOfMemoryError)]


def test_oom_at_the_minimum_batch_and_other_errors_propagate():
    calls = []

    def always_oom(n):
        calls.append(n)
        raise _oom()

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_oom_backoff(always_oom, 8, min_batch_size=2)
    assert calls == [8, 4, 2]

    calls.clear()

    def broken(n):
        calls.append(n)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        run_with_oom_backoff(broken, 8)
    assert calls == [8]  # not an OOM: no retry at a smaller size


def test_map_in_batches_keeps_finished_batches_and_the_smaller_size():
    seen = []

    def double(batch):
        seen.append(len(batch))
        if len(batch) > 10:
            raise _oom()
        return [x * 2 for x in batch]

    assert map_in_batches(list(range(45)), double, 32) == [x * 2 for x in range(45)]
    assert seen == [32, 16, 8, 8, 8, 8, 8, 5]  # one OOM episode, then the size sticks


def test_compute_resource_resolves_devices_without_a_gpu():
    assert ComputeResource(device="cpu").resolved_device() == "cpu"
    assert ComputeResource(device="auto").resolved_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            ComputeResource(device="cuda").resolved_device()
    sizes = []

    def fn(n):
        sizes.append(n)
        if n > 4:
            raise _oom()
        return n

    logs = []
    assert ComputeResource(batch_size=16).run_with_oom_backoff(fn, log=logs.append) == 4
    assert sizes == [16, 8, 4] and len(logs) == 2 and "batch size 16" in logs[0]


# --- the new-raw-files sensor ---------------------------------------------------------------------

def _tick(instance, root: Path, cursor: str | None):
    # As context managers: the contexts hold resources and the instance on an exit stack.
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"raw_data": RawDataResource(root=str(root))}) as ctx:
        data = new_raw_files.evaluate_tick(ctx)
    return data.run_requests or [], data.cursor, data.skip_message


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sensor_requests_one_run_per_new_file_state(sample_copy, monkeypatch):
    monkeypatch.setenv("FASHION_SENSOR_SETTLE_S", "60")
    assert new_raw_files.job_name == "refresh_job"
    with dg.instance_for_test() as instance:
        runs, cursor, _ = _tick(instance, sample_copy, None)
        assert len(runs) == 1                              # never seen these files
        first_key = runs[0].run_key
        assert json.loads(cursor)["digest"] == first_key

        runs, cursor2, skip = _tick(instance, sample_copy, cursor)
        assert runs == [] and "no change" in skip and cursor2 in (None, cursor)

        new = sample_copy / KAGGLE / "images" / "99999999.jpg"
        shutil.copy(next((sample_copy / KAGGLE / "images").glob("*.jpg")), new)
        runs, cursor3, skip = _tick(instance, sample_copy, cursor)
        assert runs == [] and "waiting" in skip            # just written: maybe still copying
        assert cursor3 in (None, cursor)

        _age(new, 120)
        runs, cursor4, _ = _tick(instance, sample_copy, cursor)
        assert len(runs) == 1 and runs[0].run_key not in (None, first_key)
        assert runs[0].tags["fashion/raw_fingerprint"] == runs[0].run_key
        assert json.loads(cursor4)["files"] == json.loads(cursor)["files"] + 1

        runs, _, skip = _tick(instance, sample_copy, cursor4)
        assert runs == [] and "no change" in skip          # the second evaluation: nothing new

        partial = sample_copy / KAGGLE / "styles.csv.part"  # a download in progress is not data
        partial.write_text("id\n")
        _age(partial, 120)
        assert _tick(instance, sample_copy, cursor4)[0] == []


def test_sensor_skips_with_a_reason_when_the_data_root_is_missing(tmp_path):
    with dg.instance_for_test() as instance:
        runs, cursor, skip = _tick(instance, tmp_path / "nowhere", None)
    assert runs == [] and cursor is None and str(tmp_path / "nowhere") in skip


# --- the weekly retraining schedule ---------------------------------------------------------------

def test_schedule_requests_a_retraining_run(monkeypatch):
    sched = build_retraining_schedule()
    assert (sched.cron_schedule, sched.execution_timezone, sched.job_name) == ("0 3 * * 1", "UTC", "retraining_job")
    assert sched.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(
                2026, 11, 30, 3, 0, tzinfo=timezone.utc)) as ctx:
            data = sched.evaluate_tick(ctx)
    assert len(data.run_requests) == 1
    assert data.run_requests[0].tags["fashion/trigger"] == "weekly-retraining"


def test_schedule_cron_timezone_and_status_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FASHION_RETRAIN_CRON", "30 4 * * 0")
    monkeypatch.setenv("FASHION_RETRAIN_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("FASHION_AUTOMATION", "on")
    sched = build_retraining_schedule()
    assert (sched.cron_schedule, sched.execution_timezone) == ("30 4 * * 0", "Europe/Berlin")
    assert sched.default_status == dg.DefaultScheduleStatus.RUNNING
    monkeypatch.setenv("FASHION_RETRAIN_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ValueError, match="FASHION_RETRAIN_TIMEZONE"):
        build_retraining_schedule()
    monkeypatch.setenv("FASHION_RETRAIN_TIMEZONE", "UTC")
    monkeypatch.setenv("FASHION_RETRAIN_CRON", "every monday")
    with pytest.raises(ValueError, match="FASHION_RETRAIN_CRON"):
        build_retraining_schedule()


# --- jobs select by group, so stages merged later join them ----------------------------------------

@dg.asset(group_name="enrichment")
def product_embeddings_stub(clean_products):
    return clean_products


@dg.asset(group_name="models")
def price_model_stub(product_embeddings_stub):
    return product_embeddings_stub


@dg.asset(group_name="scoring")
def scored_listings_stub(price_model_stub):
    return price_model_stub


@dg.asset(group_name="scoring", automation_condition=dg.AutomationCondition.on_cron("0 * * * *"))
def scoring_report_stub(scored_listings_stub):
    return scored_listings_stub


@dg.asset_check(asset=scored_listings_stub)
def scored_listings_stub_check():
    return dg.AssetCheckResult(passed=True)


def _job_keys(d: dg.Definitions, name: str) -> set[str]:
    return {k.path[-1] for k in d.resolve_job_def(name).asset_layer.executable_asset_keys}


def test_jobs_pick_up_assets_of_later_groups_without_edits():
    *later, check = with_scoring_automation([product_embeddings_stub, price_model_stub, scored_listings_stub,
                                             scoring_report_stub, scored_listings_stub_check])
    assert isinstance(check, dg.AssetChecksDefinition)  # passed through untouched
    d = dg.Definitions(assets=[*all_assets, *later], asset_checks=[check], jobs=ALL_JOBS,
                       resources=build_resources("local"))
    ingest = {"kaggle_products_raw", "hm_articles_raw", "hm_article_prices", "merged_products", "clean_products"}
    assert _job_keys(d, "ingest_job") == ingest
    # the real enrichment/models assets already merged, plus the stubs added "later"
    real_models = {k.path[-1] for a in all_assets for k, g in a.group_names_by_key.items()
                   if g in ("enrichment", "models")}
    stubs = {"product_embeddings_stub", "price_model_stub"}
    assert _job_keys(d, "retraining_job") == real_models | stubs
    assert _job_keys(d, "refresh_job") == ingest | real_models | stubs
    graph = d.resolve_asset_graph()
    cond = lambda name: graph.get(dg.AssetKey(name)).automation_condition  # noqa: E731
    assert cond("scored_listings_stub").get_label() == "eager"            # added for the scoring group
    assert cond("scoring_report_stub").get_label().startswith("on_cron")  # its own choice is kept
    assert cond("price_model_stub") is None                               # heavy stages: explicit jobs only


def test_the_code_location_holds_the_operations_objects():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {j.name for j in repo.get_all_jobs()} >= {"ingest_job", "retraining_job", "refresh_job"}
    assert {s.name for s in repo.schedule_defs} == {"weekly_retraining"}
    assert {s.name for s in repo.sensor_defs} == {"new_raw_files", "scoring_automation"}


# --- the shipped dagster.yaml on a real instance: the GPU pool serializes GPU steps ------------------

@pytest.mark.slow
def test_shipped_instance_config_limits_the_gpu_pool(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(SHIPPED_DAGSTER_YAML, home / "dagster.yaml")
    spans = tmp_path / "spans.jsonl"
    monkeypatch.setenv("FASHION_TEST_SPANS", str(spans))
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        pool_cfg = instance.get_concurrency_config().pool_config
        assert pool_cfg.default_pool_limit == 1 and pool_cfg.pool_granularity.value == "op"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        # Two steps that could run in parallel (multiprocess executor, no dependency between them).
        result = dg.execute_job(dg.reconstructable(two_gpu_steps_job), instance=instance)
        assert result.success
        a, b = sorted((json.loads(line) for line in spans.read_text().splitlines()), key=lambda s: s["start"])
        assert a["end"] <= b["start"], "GPU steps overlapped despite the pool limit of 1"
        assert any("blocked by limit for pool gpu" in (e.message or "") for e in result.all_events)
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    finally:
        instance.dispose()


# --- the _lineage warehouse table -------------------------------------------------------------------

@dg.asset
def lineage_src() -> pd.DataFrame:
    return pd.DataFrame({"id": [1, 2], "price": [3.0, 4.0]})


@dg.asset
def lineage_dst(lineage_src):
    src = dg.AssetKey("lineage_src")
    out = lineage_src.assign(price_x2=lineage_src["price"] * 2)
    return dg.Output(out, metadata={"dagster/column_lineage": dg.TableColumnLineage(deps_by_column={
        "id": [dg.TableColumnDep(asset_key=src, column_name="id")],
        "price_x2": [dg.TableColumnDep(asset_key=src, column_name="price")],
    })})


def test_the_io_manager_records_table_and_column_lineage_in_sql(tmp_path):
    path = str(tmp_path / "wh.duckdb")
    for _ in range(2):  # a re-materialization replaces the rows instead of adding to them
        result = dg.materialize([lineage_src, lineage_dst], resources={"io_manager": LineageWarehouseIOManager(path=path)})
        assert result.success
    with duckdb.connect(path, read_only=True) as con:
        rows = con.execute("select asset, column_name, upstream_asset, upstream_column, run_id from _lineage "
                           "order by all").fetchall()
    run = result.run_id
    assert rows == [
        ("lineage_dst", "id", "lineage_src", "id", run),
        ("lineage_dst", "price_x2", "lineage_src", "price", run),
        ("lineage_dst", None, "lineage_src", None, run),
    ]
