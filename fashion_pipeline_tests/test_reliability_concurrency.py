"""Concurrent writers on one DuckDB warehouse: parallel steps of one run (Dagster's multiprocess
executor, FASHION_EXECUTOR=multiprocess) and two overlapping runs (a schedule firing during
a manual run), queued on the warehouse lock instead of failing, and the file intact after."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from fashion_pipeline.core import warehouse as wh
from fashion_pipeline_tests.conftest import SAMPLE_ROOT
from fashion_pipeline_tests.fixtures.runs import materialize
from fashion_pipeline_tests.test_reliability_support import (
    assert_same_outputs, kill, output_of, reference_run, start_module, subprocess_env,
)

PARALLEL_STEPS = ("kaggle_products_raw", "hm_articles_raw")  # no upstream: run side by side
# The ingestion group: two parallel steps and one downstream step that reads what they wrote.
# (The whole chain works the same, at twice the run time: every multiprocess step is a fresh
# Python process importing Dagster.)
CLI_SELECTION = ["kaggle_products_raw", "hm_articles_raw", "hm_article_prices"]


def _cli_run(dagster_home: Path, var: Path) -> subprocess.Popen:
    return start_module("dagster", "asset", "materialize", "--select", ",".join(CLI_SELECTION), "-m", "fashion_pipeline.definitions",
                        DAGSTER_HOME=str(dagster_home), FASHION_VAR_DIR=str(var), FASHION_DATA_ROOT=str(SAMPLE_ROOT),
                        FASHION_EXECUTOR="multiprocess")


def _steps_with(instance, kind: str) -> dict[str, set[str]]:
    """Per run id, the steps that have logged an event of ``kind`` (read from the instance)."""
    out = {}
    for run in instance.get_runs():
        out[run.run_id] = {e.step_key for e in instance.all_logs(run.run_id)
                           if e.dagster_event and e.dagster_event.event_type_value == kind}
    return out


@pytest.mark.slow
def test_parallel_steps_and_overlapping_runs_queue_on_the_lock_and_leave_the_warehouse_intact(tmp_path):
    reference = reference_run()
    home, var = tmp_path / "dagster_home", tmp_path / "var"
    home.mkdir()
    # A deployed instance already exists (the webserver / daemon created it). Two processes
    # creating a brand-new SQLite instance at the same instant race in Dagster's own schema
    # stamping (alembic), which is Dagster's concern, not the warehouse's: create it first.
    with dg.DagsterInstance.from_config(str(home)):
        pass
    warehouse = var / "warehouse.duckdb"
    instance = dg.DagsterInstance.from_config(str(home))
    # Hold the warehouse from here until every parallel step of both runs is running: they all
    # reach their write while it is held, so they certainly contend for it.
    with wh.connect(warehouse, timeout_s=5):
        runs = [_cli_run(home, var), _cli_run(home, var)]   # the manual run and the "schedule"
        deadline = time.monotonic() + 300
        while True:
            started = _steps_with(instance, "STEP_START")
            if len(started) == 2 and all(set(PARALLEL_STEPS) <= steps for steps in started.values()):
                break
            for r in runs:
                if r.poll() is not None:
                    pytest.fail(f"run exited early ({r.returncode}):\n{output_of(r)}")
            if time.monotonic() > deadline:
                for r in runs:
                    kill(r)
                pytest.fail(f"runs did not start their parallel steps in time: {started}")
            time.sleep(0.5)
        time.sleep(2.0)  # the steps read the sample in well under this; then they wait for the lock
        written = _steps_with(instance, "HANDLED_OUTPUT")
        assert not any(written.values()), f"a step wrote while another process held the warehouse: {written}"
        for r in runs:
            assert "Executing steps using multiprocess executor" in Path(r.log_path).read_text()
    for r in runs:
        try:
            r.wait(400)
        except subprocess.TimeoutExpired:
            kill(r)
        assert r.returncode == 0, output_of(r)
    runs_done = instance.get_runs()
    assert len(runs_done) == 2 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs_done)
    for steps in _steps_with(instance, "STEP_SUCCESS").values():
        assert steps == set(CLI_SELECTION)
    instance.dispose()
    with wh.connect(warehouse, timeout_s=5) as con:
        con.execute("CHECKPOINT")
    assert_same_outputs(var, reference, tables=CLI_SELECTION)  # both runs wrote the same, whole tables


def test_readers_take_the_same_lock_and_give_up_with_a_clear_error(tmp_path):
    path = tmp_path / "w.duckdb"
    wh.write_table(path, "t", pd.DataFrame({"i": [1, 2]}))
    with wh.connect(path):
        t0 = time.monotonic()
        with pytest.raises(wh.WarehouseLockTimeout, match="stayed locked"):
            wh.read_table(path, "t", timeout_s=0.5)
        with pytest.raises(wh.WarehouseLockTimeout):
            wh.write_table(path, "t", pd.DataFrame({"i": [3]}), timeout_s=0.5)
        assert 0.9 <= time.monotonic() - t0 < 10
    assert wh.read_table(path, "t")["i"].tolist() == [1, 2]     # the timed-out writer changed nothing


def test_io_manager_lock_timeout_is_honoured(tmp_path):
    from fashion_pipeline.resources.warehouse import WarehouseIOManager

    var = tmp_path / "var"
    with wh.connect(var / "warehouse.duckdb"):
        result = materialize(["hm_articles_raw"], SAMPLE_ROOT, var, raise_on_error=False,
                             io_manager=WarehouseIOManager(path=str(var / "warehouse.duckdb"), lock_timeout_s=1))
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "WarehouseLockTimeout" in str(failure.event_specific_data.error.to_string())


_HOLD_DUCKDB = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
open(sys.argv[2], "w").close()
time.sleep(float(sys.argv[3]))
con.close()
"""


def test_a_duckdb_client_outside_the_pipeline_is_waited_for_not_fatal(tmp_path):
    """Someone has the warehouse open in the duckdb CLI / a notebook (DuckDB's own file lock,
    not ours): the writer waits for it instead of failing with 'Could not set lock on file'."""
    path = tmp_path / "w.duckdb"
    wh.write_table(path, "t", pd.DataFrame({"i": [1]}))
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_DUCKDB, str(path), str(ready), "3"], env=subprocess_env())
    try:
        while not ready.exists():
            assert holder.poll() is None
            time.sleep(0.05)
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(path))                          # what a bare connection would do
        assert wh.write_table(path, "t", pd.DataFrame({"i": [2, 3]}), timeout_s=60) == 2
    finally:
        holder.wait(30)
    assert wh.read_table(path, "t")["i"].tolist() == [2, 3]
