"""Helpers that turn core results into Dagster metadata (the UI is the metadata)."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from fashion_pipeline.core.figures import png_markdown
from fashion_pipeline.core.reports import DropReport


def preview(df: pd.DataFrame, n: int = 10, max_chars: int = 80) -> dg.MetadataValue:
    head = df.head(n).copy()
    for col in head.columns:
        if head[col].dtype == object:
            head[col] = head[col].map(lambda v: v if not isinstance(v, str) or len(v) <= max_chars else v[: max_chars - 1] + "…")
    return dg.MetadataValue.md(head.to_markdown(index=False) if len(head) else "_empty_")


def drops(report: DropReport, prefix: str = "dropped") -> dict:
    md = {f"{prefix}/{reason}": dg.MetadataValue.int(int(n)) for reason, n in report.counts.items()}
    md[f"{prefix}/total"] = dg.MetadataValue.int(int(report.total))
    md[f"{prefix}/by_reason"] = dg.MetadataValue.md(report.to_markdown())
    return md


def counts_table(series: pd.Series, title: str) -> dg.MetadataValue:
    table = series.value_counts(dropna=False).rename_axis(title).reset_index(name="rows")
    table[title] = table[title].fillna("(null)")
    return dg.MetadataValue.md(table.to_markdown(index=False))


def png(image_bytes: bytes, alt: str = "plot") -> dg.MetadataValue:
    return dg.MetadataValue.md(png_markdown(image_bytes, alt))
