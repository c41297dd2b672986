"""The DuckDB warehouse as a Dagster IO manager and as a resource for direct SQL."""


import pandas as pd
import dagster as dg
from pydantic import Field

from fashion_pipeline.core import warehouse as wh
from fashion_pipeline.paths import default_var_path, resolve
from fashion_pipeline.reuse import REUSED_FROM_KEY


def warehouse_file(path: str | None):
    return resolve(path) if path else resolve(default_var_path("warehouse.duckdb"))

_DUCKDB_TYPES = {"object": "VARCHAR", "float64": "DOUBLE", "int64": "BIGINT", "bool": "BOOLEAN",
                 "float32": "FLOAT", "int32": "INTEGER", "datetime64[ns]": "TIMESTAMP"}


def reemitted(context: dg.OutputContext) -> str | None:
    """The run whose table this output re-emits (`reuse.reused_table`: read from the warehouse, unchanged
    inputs), else None. Such a table is not written again: the warehouse holds it already."""
    value = (context.output_metadata or {}).get(REUSED_FROM_KEY)
    return None if value is None else str(getattr(value, "value", value))


def column_schema(df: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(name=str(c), type=_DUCKDB_TYPES.get(str(t), str(t))) for c, t in df.dtypes.items()
    ])


class WarehouseIOManager(dg.ConfigurableIOManager):
    """Stores each DataFrame asset as table ``main.<asset name>`` in the DuckDB file."""

    path: str | None = Field(default=None, description="DuckDB warehouse file (relative paths resolve against "
                             "the project root); default <var dir>/warehouse.duckdb (FASHION_VAR_DIR, else var/).")
    lock_timeout_s: float = Field(default=600.0, description="How long a writer waits for the warehouse lock.")

    def _table(self, context) -> str:
        return context.asset_key.path[-1]

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"the warehouse stores pandas DataFrames, got {type(obj).__name__}")
        table = self._table(context)
        if reemitted(context) is not None:
            # Read from this table by the asset a moment ago: writing it back cost ~0.1 s per asset, most of a
            # nothing-changed re-run's stages (benchmarks/results/pipeline.md).
            n = len(obj)
            context.log.debug(f"{table}: re-emitted from run {reemitted(context)}; the warehouse holds it already")
        else:
            n = wh.write_table(warehouse_file(self.path), table, obj, timeout_s=self.lock_timeout_s)
        context.add_output_metadata({
            "dagster/row_count": n,
            "dagster/column_schema": column_schema(obj),
            "dagster/table_name": f"warehouse.main.{table}",
            "warehouse": dg.MetadataValue.path(str(warehouse_file(self.path))),
        })

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return wh.read_table(warehouse_file(self.path), self._table(context.upstream_output),
                             timeout_s=self.lock_timeout_s)


class WarehouseResource(dg.ConfigurableResource):
    """Direct SQL on the warehouse (views over Parquet, ad-hoc queries), under the same lock."""

    path: str | None = Field(default=None, description="DuckDB warehouse file; must match the IO manager's "
                             "(default <var dir>/warehouse.duckdb).")

    def file(self):
        return warehouse_file(self.path)

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with wh.connect(self.file()) as con:
            return con.execute(sql, params or []).df()

    def create_parquet_view(self, name: str, parquet_path: str) -> None:
        wh.create_parquet_view(self.file(), name, parquet_path)

    def write_table(self, name: str, df: pd.DataFrame) -> int:
        return wh.write_table(self.file(), name, df)

    def read_table(self, name: str) -> pd.DataFrame:
        """The table as the IO manager stored it (LookupError when it is not there)."""
        return wh.read_table(self.file(), name)
