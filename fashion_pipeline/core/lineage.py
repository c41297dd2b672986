"""The ``_lineage`` warehouse table: which tables and columns each table was built from.

One row per (asset, upstream asset) with NULL columns for table-level lineage, plus one row per
(column, upstream column) where the producing asset declared column lineage. Each write replaces
the asset's previous rows, so the table describes the warehouse as it is now, answerable in SQL:

    select upstream_asset, upstream_column from _lineage
    where asset = 'clean_products' and column_name = 'price_usd';
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from fashion_pipeline.core import warehouse as wh

LINEAGE_TABLE = "_lineage"
COLUMNS = ["asset", "column_name", "upstream_asset", "upstream_column", "run_id", "recorded_at"]


def lineage_rows(asset: str, upstream_assets: list[str], column_deps: dict[str, list[tuple[str, str]]],
                 run_id: str) -> pd.DataFrame:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = [(asset, None, up, None, run_id, now) for up in sorted(upstream_assets)]
    rows += [(asset, col, up, up_col, run_id, now)
             for col, deps in sorted(column_deps.items()) for up, up_col in deps]
    return pd.DataFrame(rows, columns=COLUMNS).astype({"recorded_at": "datetime64[ns]"})


def record_lineage(path: str | Path, asset: str, rows: pd.DataFrame) -> None:
    """Replace ``asset``'s rows in the lineage table (created on first use)."""
    table = wh.quote_ident(LINEAGE_TABLE)
    with wh.connect(path) as con:
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} (asset VARCHAR, column_name VARCHAR, "
                    "upstream_asset VARCHAR, upstream_column VARCHAR, run_id VARCHAR, recorded_at TIMESTAMP)")
        with wh.registered_transaction(con, "_incoming_lineage", rows):
            con.execute(f"DELETE FROM {table} WHERE asset = ?", [asset])
            con.execute(f"INSERT INTO {table} SELECT {', '.join(COLUMNS)} FROM _incoming_lineage")
