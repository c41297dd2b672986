"""SIGKILL mid-write, for real: a subprocess runs the real code, pauses at a known point inside
a write (signalled through a file), and is killed with SIGKILL. Then: nothing half-written is
visible, no lock is left held, no temporary file is picked up, and a re-run reproduces an
uninterrupted run exactly.

The pause is injected from outside the production code: the subprocess (this module run as
``python -m fashion_pipeline_tests.test_faults_kill <mode> ...``) wraps the real functions.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_pipeline.core import warehouse as wh
from fashion_pipeline.core.atomic import atomic_write_parquet, remove_stale_temps
from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.core.split import assign_splits
from fashion_pipeline_tests.conftest import SAMPLE_ROOT
from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, materialize
from fashion_pipeline_tests.test_reliability_support import (
    FULL_RUN, assert_frames_equal, assert_same_outputs, kill, pause_forever, reference_run, start_module,
    wait_for_file, warehouse_tables,
)

MODULE = "fashion_pipeline_tests.test_faults_kill"
WAREHOUSE_FILES = {"warehouse.duckdb", "warehouse.duckdb.lock", "warehouse.duckdb.wal"}


# ---------------------------------------------------------------- the subprocess side

class _PausingConnection:
    """A DuckDB connection that stops just before COMMIT of the replacement of ``table``:
    the new table's data is written inside the open transaction, the commit is not."""

    def __init__(self, con, table: str, ready: str):
        self._con, self._table, self._ready, self._armed = con, table, ready, False

    def execute(self, sql: str, *args):
        if sql.startswith("CREATE OR REPLACE TABLE") and f'"{self._table}"' in sql:
            self._armed = True
        if sql == "COMMIT" and self._armed:
            pause_forever(self._ready)
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


class _PauseWhilePickled:
    def __init__(self, ready: str):
        self.ready = ready

    def __reduce__(self):
        pause_forever(self.ready)


def _drive(mode: str, *args: str) -> int:
    if mode == "chain":
        data_root, var_dir, table, ready, salt = args
        real_connect = wh.connect

        @contextlib.contextmanager
        def pausing_connect(path, *a, **kw):
            with real_connect(path, *a, **kw) as con:
                yield _PausingConnection(con, table, ready)

        wh.connect = pausing_connect
        run_config = {"ops": {"clean_products": {"config": {"split_salt": salt}}}} if salt else {}
        return 0 if materialize(FULL_RUN, Path(data_root), Path(var_dir), run_config=run_config).success else 1
    if mode == "model_save":
        root, ready = args
        model = {"weights": np.arange(3_000_000, dtype=np.float64), "tail": _PauseWhilePickled(ready)}
        ModelStore(root).save("price", model, {"r2": 0.9}, {"features": ["x"]})
        return 0
    if mode == "parquet":
        target, ready = args

        def write_half_then_pause(table, where, row_group_size=None, **kw):
            with pq.ParquetWriter(where, table.schema) as writer:
                writer.write_table(table.slice(0, len(table) // 2))
                pause_forever(ready)

        pq.write_table = write_half_then_pause
        atomic_write_parquet(pd.DataFrame({"i": np.arange(200_000), "v": np.full(200_000, 2)}), target)
        return 0
    if mode == "warehouse_loop":
        path, ready = args
        for k in range(1_000_000):
            wh.write_table(path, "t", pd.DataFrame({"i": np.arange(400_000), "v": np.full(400_000, k),
                                                    "s": [f"row-{k}"] * 400_000}))
            Path(ready).touch()
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(_drive(*sys.argv[1:]))


# ---------------------------------------------------------------- checks

def _assert_lock_free_and_readable(var: Path) -> dict[str, pd.DataFrame]:
    """The flock dies with its process: a new writer gets the lock at once, and DuckDB opens
    the file (replaying or discarding its WAL) without error."""
    with wh.connect(var / "warehouse.duckdb", timeout_s=5) as con:
        con.execute("CHECKPOINT")
    return warehouse_tables(var / "warehouse.duckdb")


def _assert_no_stray_files(var: Path) -> None:
    # The model store and the ingest readers' file memo (cache/ingest) are outputs; nothing else is,
    # and no half-written temporary file (core.atomic.temp_name) may be left under them.
    stray = {p.name for p in var.iterdir()} - WAREHOUSE_FILES - {"models", "cache"}
    assert not stray, f"unexpected files left in {var}: {stray}"
    if (var / "cache").exists():
        assert {p.name for p in (var / "cache").iterdir()} <= {"ingest"}, list((var / "cache").iterdir())
        temps = list((var / "cache").rglob(".*.tmp-*"))
        assert not temps, f"half-written files left: {temps}"


# ---------------------------------------------------------------- Dagster runs killed mid-write

@pytest.mark.slow
def test_run_killed_while_committing_a_table_leaves_no_half_table_and_rerun_matches(tmp_path):
    reference = reference_run()
    var = tmp_path / "var"
    ready = tmp_path / "ready"
    proc = start_module(MODULE, "chain", SAMPLE_ROOT, var, "clean_products", ready, "")
    wait_for_file(ready, proc)
    kill(proc)
    assert proc.returncode == -9

    tables = _assert_lock_free_and_readable(var)
    assert "clean_products" not in tables                      # the uncommitted table is not there at all
    ref = warehouse_tables(reference / "warehouse.duckdb")
    for name in set(INGEST_CHAIN) - {"clean_products"}:         # what committed before the kill is whole
        assert_frames_equal(tables[name], ref[name], name)
    _assert_no_stray_files(var)

    assert materialize(FULL_RUN, SAMPLE_ROOT, var).success      # the re-run just works
    assert_same_outputs(var, reference)
    _assert_no_stray_files(var)


@pytest.mark.slow
def test_run_killed_while_replacing_a_table_keeps_the_previous_table_whole(tmp_path):
    reference = reference_run()
    var = tmp_path / "var"
    var.mkdir()
    shutil.copy(reference / "warehouse.duckdb", var / "warehouse.duckdb")
    ready = tmp_path / "ready"
    proc = start_module(MODULE, "chain", SAMPLE_ROOT, var, "clean_products", ready, "reshuffled")
    wait_for_file(ready, proc)
    kill(proc)

    tables = _assert_lock_free_and_readable(var)
    ref = warehouse_tables(reference / "warehouse.duckdb")
    assert_frames_equal(tables["clean_products"], ref["clean_products"], "clean_products after the kill")

    run_config = {"ops": {"clean_products": {"config": {"split_salt": "reshuffled"}}}}
    assert materialize(FULL_RUN, SAMPLE_ROOT, var, run_config=run_config).success
    new = warehouse_tables(var / "warehouse.duckdb")["clean_products"]
    expected = ref["clean_products"].assign(split=assign_splits(ref["clean_products"]["group_id"], salt="reshuffled"))
    assert_frames_equal(new, expected, "clean_products after the re-run")
    assert (new["split"] != ref["clean_products"]["split"]).any()


@pytest.mark.slow
def test_writer_killed_at_random_instants_never_leaves_a_mixed_table(tmp_path):
    """Not only at a chosen point: kill a table-replacing loop at random times (seeded) —
    during CREATE, COMMIT, WAL write or checkpoint — and the table is always one whole version."""
    path = tmp_path / "w.duckdb"
    rng = random.Random(20261127)
    seen_versions = set()
    for attempt in range(4):
        ready = tmp_path / f"ready-{attempt}"
        proc = start_module(MODULE, "warehouse_loop", path, ready)
        wait_for_file(ready, proc)
        import time
        time.sleep(rng.uniform(0.0, 1.5))
        kill(proc)
        with wh.connect(path, timeout_s=5) as con:
            n, versions, labels = con.execute(
                "SELECT count(*), count(DISTINCT v), count(DISTINCT s) FROM t").fetchall()[0]
            v, s = con.execute("SELECT min(v), min(s) FROM t").fetchall()[0]
        assert (n, versions, labels) == (400_000, 1, 1), f"attempt {attempt}: mixed table {n, versions, labels}"
        assert s == f"row-{v}"
        seen_versions.add(v)
    assert wh.write_table(path, "t", pd.DataFrame({"i": [1]})) == 1


# ---------------------------------------------------------------- model store

def test_training_killed_mid_save_leaves_previous_model_and_cleans_up(tmp_path):
    store = ModelStore(tmp_path / "models")
    v1 = store.save("price", {"w": 1}, {"r2": 0.5}, {"features": ["x"]})
    ready = tmp_path / "ready"
    proc = start_module(MODULE, "model_save", store.root, ready)
    wait_for_file(ready, proc)
    partial = [p for p in (store.root / "price").iterdir() if p.name.startswith(".")]
    assert len(partial) == 1 and (partial[0] / "model.pkl").stat().st_size > 1_000_000  # really mid-write
    kill(proc)

    assert store.versions("price") == [v1]                     # the half-written folder is not a version
    assert store.load("price")[0] == {"w": 1}
    assert partial[0].exists()
    v2 = store.save("price", {"w": 2}, {"r2": 0.6}, {"features": ["x"]})
    assert not partial[0].exists()                             # the killed save's temp folder is removed
    assert store.versions("price") == [v1, v2] and store.load("price")[0] == {"w": 2}


# ---------------------------------------------------------------- atomic Parquet

def test_parquet_writer_killed_mid_file_leaves_old_file_and_no_visible_temp(tmp_path):
    out = tmp_path / "embeddings"
    target = out / "product_embeddings.parquet"
    old = pd.DataFrame({"i": np.arange(1000), "v": np.ones(1000, dtype=np.int64)})
    atomic_write_parquet(old, target)
    ready = tmp_path / "ready"
    proc = start_module(MODULE, "parquet", target, ready)
    wait_for_file(ready, proc)
    kill(proc)

    temps = [p for p in out.iterdir() if p != target]
    assert len(temps) == 1 and temps[0].name.startswith(".product_embeddings.parquet.tmp-")
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(temps[0])                                # the temp really is half a file
    assert_frames_equal(pd.read_parquet(target), old, "Parquet after the kill")
    assert sorted(p.name for p in out.glob("*.parquet")) == ["product_embeddings.parquet"]
    with duckdb.connect() as con:                              # a glob view never sees the temp
        assert con.execute(f"SELECT count(*), max(v) FROM read_parquet('{out}/*.parquet')").fetchall() == [(1000, 1)]
    assert remove_stale_temps(out) == temps and not temps[0].exists()
