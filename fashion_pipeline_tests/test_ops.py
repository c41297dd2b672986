"""Operations: the raw-files sensor, the retraining schedule, graph-based jobs, automation that
respects the blocking gates, and the shipped instance config (GPU pool) on a real Dagster instance.
The reviewed literal snapshot of every job / schedule / sensor is test_definitions_snapshot.py."""

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

from fashion_pipeline.automation import EAGER_WHEN_GATES_PASS
from fashion_pipeline.definitions import all_assets, defs
from fashion_pipeline.jobs import ALL_JOBS
from fashion_pipeline.paths import PROJECT_ROOT
from fashion_pipeline.resources import build_resources
from fashion_pipeline.resources.data import RawDataResource
from fashion_pipeline.resources.lineage import LineageWarehouseIOManager
from fashion_pipeline.schedules import build_retraining_schedule
from fashion_pipeline.sensors import new_raw_files
from fashion_pipeline_tests.conftest import KAGGLE
from fashion_pipeline_tests.ops_pool_job import two_gpu_steps_job

SHIPPED_DAGSTER_YAML = PROJECT_ROOT / "fashion_pipeline" / "deploy" / "dagster.yaml"


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



def test_a_retrain_keeps_each_classifiers_choice_published_or_refused(tmp_path):
    """The weekly retrain trains, per task x regime, the published model; where the gate refused every
    candidate (nothing published) the latest candidate's model; only a pair with nothing stored selects."""
    from fashion_pipeline.assets.classifiers import ClassifierConfig, models_to_train, retrain_choice
    from fashion_pipeline.core.model_store import ModelStore

    store = ModelStore(tmp_path)
    published_old = store.save("category_classifier", {"m": 1}, {}, {"model": "logreg"})
    store.publish("category_classifier", published_old)
    store.save("category_classifier", {"m": 2}, {}, {"model": "lightgbm"})  # a newer candidate, refused
    store.save("usage_classifier", {"m": 3}, {}, {"model": "linear_svc"})  # refused, nothing published
    store.save("usage_classifier", {"m": 4}, {}, {"model": "clip_fusion"})  # refused again, the latest
    # The default config leaves clip_fusion out (it competes only in model_selection_job), yet a clip_fusion
    # choice is what the retrain trains: the lists say what competes in a selection, not what is kept.
    assert "clip_fusion" not in ClassifierConfig().neural_models
    assert "lightgbm" not in ClassifierConfig().classical_models  # likewise: model_selection_job adds it
    chosen, note = retrain_choice(store, ClassifierConfig(regimes=["full"]))
    assert chosen == {("category", "full"): "logreg", ("usage", "full"): "clip_fusion"}
    assert "usage/full" in note and "gender/full" in note  # gender: nothing stored, so it selects
    # ... and the leaderboard is handed that neural model to train, beside the configured lists.
    assert models_to_train(ClassifierConfig(), chosen) == {
        "classical": ("linear_svc", "logreg", "complement_nb"), "neural": ("image_cnn", "clip_fusion")}
    lgbm = {**chosen, ("category", "full"): "lightgbm"}  # a published LightGBM is retrained all the same
    assert models_to_train(ClassifierConfig(), lgbm)["classical"] == ("linear_svc", "logreg", "complement_nb", "lightgbm")
    assert models_to_train(ClassifierConfig(classical_models=["linear_svc"]), chosen)["classical"] == (
        "linear_svc", "logreg")
    # A model this code does not know (an older release's) is selected anew; 'select' mode ignores the store.
    store.publish("category_classifier", store.save("category_classifier", {"m": 5}, {}, {"model": "retired_family"}))
    chosen, note = retrain_choice(store, ClassifierConfig(regimes=["full"]))
    assert chosen == {("usage", "full"): "clip_fusion"} and "category/full" in note.split("selecting")[1]
    assert retrain_choice(store, ClassifierConfig(regimes=["full"], mode="select"))[0] == {}

def test_a_retrain_keeps_the_price_models_choices_published_or_refused(tmp_path):
    """Per listing form, the weekly retrain trains the kind the published price model chose; when the
    gate refused every candidate so far (nothing published), the latest candidate's kinds; with no
    price model stored, or in 'select' mode, it selects (None)."""
    from fashion_pipeline.assets.regressors import RegressorConfig, retrain_choice
    from fashion_pipeline.core.model_store import ModelStore
    from fashion_pipeline.core.scoring import PRICE_MODEL_NAME

    store = ModelStore(tmp_path)
    assert retrain_choice(store, RegressorConfig())[0] is None  # nothing stored: select
    store.save(PRICE_MODEL_NAME, {"m": 1}, {}, {"forms": {"full": "ridge", "image": "mlp"}})
    latest = store.save(PRICE_MODEL_NAME, {"m": 2}, {}, {"forms": {"full": "blend", "sparse": "lightgbm"}})
    chosen, tuned, note = retrain_choice(store, RegressorConfig())  # both refused: the latest candidate's choice
    assert chosen == {"full": "blend", "sparse": "lightgbm"} and tuned == {}  # it recorded no tuning
    assert latest in note and "candidate" in note
    published = store.save(PRICE_MODEL_NAME, {"m": 3}, {}, {
        "forms": {"full": "ridge", "sparse": "mlp"},
        "tuned": {"full": {"ridge": {"alphas": [0.5]}}, "image": {"ridge": {"alphas": [1.0]}}}})
    store.publish(PRICE_MODEL_NAME, published)
    store.save(PRICE_MODEL_NAME, {"m": 4}, {}, {"forms": {"full": "lightgbm"}})  # a newer candidate, refused
    chosen, tuned, note = retrain_choice(store, RegressorConfig())
    assert chosen == {"full": "ridge", "sparse": "mlp"} and published in note
    assert tuned == {"full": {"ridge": {"alphas": [0.5]}}}  # the published model's, for the forms retrained
    # A kind the config no longer trains is selected anew; 'select' mode ignores the store.
    assert retrain_choice(store, RegressorConfig(models=["ridge", "lightgbm"]))[0] == {"full": "ridge"}
    assert retrain_choice(store, RegressorConfig(mode="select"))[0] is None


def test_the_extractor_retrain_reuses_the_published_c_per_attribute(tmp_path):
    from fashion_pipeline.assets.attributes import EXTRACTOR_MODEL, AttributeExtractorConfig, retrain_c
    from fashion_pipeline.core.model_store import ModelStore

    store = ModelStore(tmp_path)
    assert retrain_c(store, AttributeExtractorConfig())[0] == {}  # nothing published: search
    v = store.save(EXTRACTOR_MODEL, {"m": 1}, {}, {"heads": {"material": {"C": 3.0}, "fit": {"C": 0.3},
                                                             "care": {"C": 10.0}}})
    assert retrain_c(store, AttributeExtractorConfig())[0] == {}  # saved, not published
    store.publish(EXTRACTOR_MODEL, v)
    tuned, note = retrain_c(store, AttributeExtractorConfig())
    assert tuned == {"material": 3.0, "fit": 0.3} and v in note  # 10.0 is not in the configured grid
    assert retrain_c(store, AttributeExtractorConfig(c_grid=[3.0]))[0] == {"material": 3.0}
    assert retrain_c(store, AttributeExtractorConfig(mode="select"))[0] == {}


# --- jobs select over the asset graph, so stages merged later join them -------------------------------

@dg.asset(group_name="some_new_group")
def later_stage_stub(clean_products):
    return clean_products


@dg.asset(group_name="another_group")
def later_model_stub(later_stage_stub):
    return later_stage_stub


def _job_keys(d: dg.Definitions, name: str) -> set[str]:
    return {k.path[-1] for k in d.resolve_job_def(name).asset_layer.executable_asset_keys}


def test_assets_added_downstream_of_clean_products_join_retraining_and_refresh_whatever_their_group():
    d = dg.Definitions(assets=[*all_assets, later_stage_stub, later_model_stub], jobs=ALL_JOBS,
                       resources=build_resources("local"))
    stubs = {"later_stage_stub", "later_model_stub"}
    assert stubs <= _job_keys(d, "retraining_job")
    assert stubs <= _job_keys(d, "refresh_job")
    assert not stubs & _job_keys(d, "ingest_job")
    # The heavy stages and what publishing needs are in the weekly job (literal list: test_definitions_snapshot).
    assert {"product_attributes", "product_embeddings", "regressor_metrics", "published_price_regressor",
            "published_classifiers", "scored_listings"} <= _job_keys(d, "retraining_job")


# --- automation declared on the assets respects the blocking gates ---------------------------------------

GATE_PASSES = {"value": False}


@dg.asset
def candidate_stub() -> int:
    return 1


@dg.asset_check(asset=candidate_stub, blocking=True)
def candidate_gate_stub() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=GATE_PASSES["value"])


@dg.asset(deps=[candidate_stub], automation_condition=EAGER_WHEN_GATES_PASS)
def published_stub() -> None:
    return None


def _requested(instance, d, cursor=None):
    result = dg.evaluate_automation_conditions(defs=d, instance=instance, cursor=cursor)
    return {"published_stub"} if result.get_num_requested(dg.AssetKey("published_stub")) else set(), result.cursor


def test_automation_publishes_only_a_candidate_whose_blocking_gate_passed():
    d = dg.Definitions(assets=[candidate_stub, published_stub], asset_checks=[candidate_gate_stub])
    with dg.instance_for_test() as instance:
        dg.materialize([candidate_stub, published_stub], instance=instance, selection=[published_stub])
        _, cursor = _requested(instance, d)
        GATE_PASSES["value"] = False
        result = dg.materialize([candidate_stub, candidate_gate_stub], instance=instance, raise_on_error=False)
        assert result.get_asset_check_evaluations()[0].passed is False
        requested, cursor = _requested(instance, d, cursor)
        assert "published_stub" not in requested          # the failed gate holds publishing back
        GATE_PASSES["value"] = True
        result = dg.materialize([candidate_stub, candidate_gate_stub], instance=instance)
        assert result.get_asset_check_evaluations()[0].passed is True
        requested, _ = _requested(instance, d, cursor)
        assert "published_stub" in requested              # a new candidate that passed: publish it


def test_the_code_location_holds_the_operations_objects():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {j.name for j in repo.get_all_jobs()} >= {"ingest_job", "retraining_job", "refresh_job"}
    assert {s.name for s in repo.schedule_defs} == {"weekly_retraining"}
    assert {s.name for s in repo.sensor_defs} == {"new_raw_files", "model_automation"}


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


def test_a_reemitted_table_is_not_written_back_and_keeps_the_lineage_of_the_run_that_wrote_it(tmp_path):
    """reuse.reused_table re-emits the table it just read (unchanged inputs): the IO manager neither writes
    it again nor re-records its lineage. The re-emitting asset below hands over another frame on purpose:
    the warehouse must still hold the first run's."""
    from fashion_pipeline.reuse import REUSED_FROM_KEY

    path = str(tmp_path / "wh.duckdb")
    io = {"io_manager": LineageWarehouseIOManager(path=path)}
    first = dg.materialize([lineage_src, lineage_dst], resources=io)

    @dg.asset(name="lineage_dst", deps=["lineage_src"])
    def reemitted_dst():
        return dg.Output(pd.DataFrame({"id": [9]}), metadata={REUSED_FROM_KEY: first.run_id})

    second = dg.materialize([reemitted_dst], resources=io)
    assert second.success
    with duckdb.connect(path, read_only=True) as con:
        assert con.execute("select id, price_x2 from lineage_dst order by id").fetchall() == [(1, 6.0), (2, 8.0)]
        runs = con.execute("select distinct asset, run_id from _lineage order by all").fetchall()
    assert runs == [("lineage_dst", first.run_id)]  # (lineage_src has no upstream: no rows)
    meta = second.get_asset_materialization_events()[0].materialization.metadata
    assert meta["dagster/row_count"].value == 1 and meta[REUSED_FROM_KEY].value == first.run_id
