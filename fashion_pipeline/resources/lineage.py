"""The warehouse IO manager, also recording each table's lineage in the ``_lineage`` table."""

import dagster as dg
import pandas as pd

from fashion_pipeline.core.lineage import lineage_rows, record_lineage
from fashion_pipeline.resources.warehouse import WarehouseIOManager, reemitted, warehouse_file

COLUMN_LINEAGE_KEY = "dagster/column_lineage"


def _column_deps(metadata) -> dict[str, list[tuple[str, str]]]:
    value = metadata.get(COLUMN_LINEAGE_KEY)
    lineage = getattr(value, "value", value)  # TableColumnLineageMetadataValue or the bare object
    if lineage is None:
        return {}
    return {col: [(dep.asset_key.to_user_string(), dep.column_name) for dep in deps]
            for col, deps in lineage.deps_by_column.items()}


class LineageWarehouseIOManager(WarehouseIOManager):
    """Stores the table like WarehouseIOManager, then replaces its rows in ``_lineage``:
    upstream assets from the asset graph, columns from the output's dagster/column_lineage. A re-emitted
    table (`reemitted`: unchanged inputs) keeps the rows of the run that wrote it (their ``run_id``)."""

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | None) -> None:
        super().handle_output(context, obj)
        if obj is None or not context.has_asset_key or reemitted(context) is not None:
            return
        key = context.asset_key
        try:
            node = context.step_context.job_def.asset_layer.get(key)
        except dg.DagsterInvariantViolationError:  # a hand-built context (unit tests): no graph to read
            return
        upstream = [k.to_user_string() for k in node.parent_keys]
        rows = lineage_rows(key.to_user_string(), upstream, _column_deps(context.output_metadata), context.run_id)
        record_lineage(warehouse_file(self.path), key.to_user_string(), rows)
        context.log.debug(f"recorded lineage of {key.to_user_string()}: {len(rows)} rows in _lineage")
