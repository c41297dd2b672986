"""Shared machinery for the fault tests: an uninterrupted reference run, output comparison,
killing a subprocess at a known point. The tests at the bottom check the comparison itself.

Extending the determinism / fault checks to a new stage is one line in one of the registries:
DETERMINISTIC_TABLES (warehouse tables), DETERMINISTIC_FILES (Parquet or other files under the
var folder), DETERMINISTIC_MODELS (model-store names).
"""

from __future__ import annotations

import atexit
import functools
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.paths import PROJECT_ROOT
from fashion_pipeline_tests.conftest import SAMPLE_ROOT
from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, materialize

# ---- registries: what must be identical for identical inputs + config -----------------------
DETERMINISTIC_TABLES: list[str] = list(INGEST_CHAIN)
# Paths relative to the var folder, e.g. "embeddings/product_embeddings.parquet".
DETERMINISTIC_FILES: list[str] = []
# Model-store names, e.g. "price_regressor"; compared by metrics, feature spec and pickled bytes.
DETERMINISTIC_MODELS: list[str] = []
# The assets a full run materializes (extend with each merged stage).
FULL_RUN: list[str] = list(INGEST_CHAIN)


def warehouse_tables(path: Path, tables: list[str] | None = None) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(path), read_only=True) as con:
        present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        return {t: con.execute(f'SELECT * FROM "{t}"').df() for t in (tables or sorted(present)) if t in present}


def _normalise(df: pd.DataFrame, root: Path | None) -> pd.DataFrame:
    """Absolute paths under a data root depend on where the data lives, not on the pipeline."""
    if root is None:
        return df
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(lambda v: v.replace(str(root), "<data>") if isinstance(v, str) else v)
    return df


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    try:
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)
    except AssertionError as exc:
        raise AssertionError(f"{what} differs: {exc}") from None


def _model_fingerprint(store: ModelStore, name: str) -> tuple:
    model, info = store.load(name)
    return info.get("metrics"), info.get("features_spec"), pickle.dumps(model)


def assert_same_outputs(var_a: Path, var_b: Path, root_a: Path | None = None, root_b: Path | None = None,
                        tables: list[str] | None = None) -> None:
    """Every registered output of two runs is identical (tables row for row, in order)."""
    tables = tables or DETERMINISTIC_TABLES
    ta = warehouse_tables(var_a / "warehouse.duckdb", tables)
    tb = warehouse_tables(var_b / "warehouse.duckdb", tables)
    for t in tables:
        assert t in ta and t in tb, f"table {t} missing: {sorted(ta)} vs {sorted(tb)}"
        assert_frames_equal(_normalise(ta[t], root_a), _normalise(tb[t], root_b), f"table {t}")
    for rel in DETERMINISTIC_FILES:
        fa, fb = var_a / rel, var_b / rel
        if rel.endswith(".parquet"):
            assert_frames_equal(pd.read_parquet(fa), pd.read_parquet(fb), rel)
        else:
            assert fa.read_bytes() == fb.read_bytes(), f"{rel} differs"
    for name in DETERMINISTIC_MODELS:
        ma = _model_fingerprint(ModelStore(var_a / "models"), name)
        mb = _model_fingerprint(ModelStore(var_b / "models"), name)
        assert ma == mb, f"model {name} differs between runs"


@functools.lru_cache(maxsize=None)
def reference_run() -> Path:
    """The var folder of one uninterrupted in-process run on the sample (computed once)."""
    var = Path(tempfile.mkdtemp(prefix="reference-run-")) / "var"
    atexit.register(shutil.rmtree, var.parent, True)
    result = materialize(FULL_RUN, SAMPLE_ROOT, var)
    assert result.success
    return var


# ---- subprocesses ------------------------------------------------------------------------------

def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def start_module(module: str, *args: str, **env: str) -> subprocess.Popen:
    """Run ``python -m module args`` from the project root with stdout/stderr captured."""
    log = tempfile.NamedTemporaryFile(prefix="fault-", suffix=".log", delete=False)
    atexit.register(Path(log.name).unlink, missing_ok=True)  # read by output_of() until the session ends
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=PROJECT_ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(**env), start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc


def output_of(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")[-6000:]  # type: ignore[attr-defined]


def wait_for_file(path: Path, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"subprocess exited ({proc.returncode}) before reaching the fault point:\n{output_of(proc)}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail(f"subprocess never reached the fault point in {timeout_s} s:\n{output_of(proc)}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no handler, no finally block, no atexit runs — the harshest way a run dies."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def pause_forever(ready_file: str) -> None:
    """Called inside a subprocess at the fault point: say so, then wait to be killed."""
    Path(ready_file).write_text(str(os.getpid()))
    while True:
        time.sleep(60)


# ---- tests of the comparison itself (a comparison that cannot fail proves nothing) -------------

def test_the_comparison_catches_a_single_changed_cell(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        with duckdb.connect(str(tmp_path / name / "warehouse.duckdb")) as con:
            con.execute("CREATE TABLE t AS SELECT range AS i, range / 3.0::DOUBLE AS x FROM range(100)")
    assert_same_outputs(tmp_path / "a", tmp_path / "b", tables=["t"])
    with duckdb.connect(str(tmp_path / "b" / "warehouse.duckdb")) as con:
        con.execute("UPDATE t SET x = x + 1e-12 WHERE i = 57")
    with pytest.raises(AssertionError, match="table t differs"):
        assert_same_outputs(tmp_path / "a", tmp_path / "b", tables=["t"])


def test_the_comparison_catches_row_order_and_missing_tables(tmp_path):
    for name, order in (("a", "ASC"), ("b", "DESC")):
        (tmp_path / name).mkdir()
        with duckdb.connect(str(tmp_path / name / "warehouse.duckdb")) as con:
            con.execute(f"CREATE TABLE t AS SELECT range AS i FROM range(10) ORDER BY i {order}")
    with pytest.raises(AssertionError, match="table t differs"):
        assert_same_outputs(tmp_path / "a", tmp_path / "b", tables=["t"])
    with pytest.raises(AssertionError, match="table u missing"):
        assert_same_outputs(tmp_path / "a", tmp_path / "b", tables=["u"])
