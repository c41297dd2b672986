"""The DuckDB warehouse file: one writer at a time, atomic table replacement.

DuckDB allows one read-write process per file. Parallel steps of a run (multiprocess
executor) and overlapping runs would otherwise fail on its lock. Every access therefore
goes through :func:`connect`, which holds an exclusive ``fcntl`` lock on ``<file>.lock`` for
the (short) life of the connection: processes queue instead of failing, and the lock dies
with its process, so a SIGKILLed writer never leaves the warehouse locked. Each table is
replaced inside one transaction, so readers see the old table or the new one, never half.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd

# Re-exported: the atomic helpers live in core.atomic (temp sibling + fsync + os.replace).
from fashion_pipeline.core.atomic import atomic_write_bytes  # noqa: F401

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WarehouseLockTimeout(TimeoutError):
    pass


def quote_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a valid table name: {name!r}")
    return f'"{name}"'


def _duckdb_lock_conflict(exc: Exception) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


@contextlib.contextmanager
def connect(path: str | Path, timeout_s: float = 600.0, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection to ``path`` held under the warehouse's inter-process lock.

    Waits up to ``timeout_s`` for the lock, then raises :class:`WarehouseLockTimeout`. A
    process outside the project holding DuckDB's own file lock (the duckdb CLI, a notebook)
    is waited for in the same way instead of failing at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + timeout_s

    def wait(delay: float, holder: str) -> float:
        if time.monotonic() > deadline:
            raise WarehouseLockTimeout(f"warehouse {path} stayed locked ({holder}) for {timeout_s:.0f} s")
        time.sleep(delay)
        return min(delay * 2, 1.0)

    with open(lock_path, "a+") as lock:
        delay = 0.05
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                delay = wait(delay, "by another pipeline process")
        try:
            if read_only and not path.exists():
                raise FileNotFoundError(f"warehouse file not found: {path}")
            delay = 0.05
            while True:
                try:
                    con = duckdb.connect(str(path), read_only=read_only)
                    break
                except duckdb.IOException as exc:
                    if not _duckdb_lock_conflict(exc):
                        raise
                    delay = wait(delay, f"by a process outside the pipeline: {exc}")
            try:
                yield con
            finally:
                con.close()
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def registered_transaction(con: duckdb.DuckDBPyConnection, view: str, df: pd.DataFrame) -> Iterator[None]:
    """``df`` registered as ``view`` inside one transaction: committed when the block ends,
    rolled back if it raises; the view is unregistered either way."""
    con.register(view, df)
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister(view)


def write_table(path: str | Path, name: str, df: pd.DataFrame, timeout_s: float = 600.0) -> int:
    """Replace table ``name`` with ``df`` atomically; returns the row count written."""
    table = quote_ident(name)
    with connect(path, timeout_s=timeout_s) as con:
        with registered_transaction(con, "_incoming", df):
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM _incoming")
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def read_table(path: str | Path, name: str, timeout_s: float = 600.0) -> pd.DataFrame:
    table = quote_ident(name)
    if not Path(path).exists():  # do not create an empty warehouse just to report a missing table
        raise LookupError(f"warehouse {path} does not exist: materialize the asset '{name}' first")
    with connect(path, timeout_s=timeout_s) as con:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchall()[0][0]
        if not exists:
            raise LookupError(f"table {name} not found in warehouse {path}: materialize the asset '{name}' first")
        return con.execute(f"SELECT * FROM {table}").df()


def create_parquet_view(path: str | Path, name: str, parquet_path: str | Path, timeout_s: float = 600.0) -> None:
    """A view over a Parquet file, so large arrays stay in Parquet yet are queryable in SQL.

    DuckDB does not accept a bound parameter inside CREATE VIEW, so the path is inlined as an
    escaped string literal."""
    view = quote_ident(name)
    literal = "'" + str(Path(parquet_path).resolve()).replace("'", "''") + "'"
    with connect(path, timeout_s=timeout_s) as con:
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet({literal})")

