"""product_embeddings: an image and a text embedding for every clean product, in Parquet.

The logic lives in fashion_pipeline.core.encoders (embed_products); this asset loads the
encoders from EncoderResource, passes the optional extracted attributes, writes the Parquet file,
puts a DuckDB view ``product_embeddings`` over it in the warehouse and reports counts + plots.
Downstream code reads the file with ``fashion_pipeline.core.encoders.io.read_embeddings(path)``
(path in this asset's metadata and at ``EncoderResource.output_path()``) or SQL on the view.
GPU scheduling for a CUDA encoder: ``gpu_declarations`` (fashion_pipeline.gpu), from the profile.
"""

import sqlite3

import dagster as dg
import pandas as pd
from pydantic import Field

from fashion_pipeline import reuse
from fashion_pipeline.core.fingerprint import code_digest, combine, frame_digest
from fashion_pipeline.gpu import gpu_declarations

from fashion_pipeline.core.encoders import embed_products
from fashion_pipeline.core.encoders.pipeline import image_key_memo
from fashion_pipeline.core.encoders.report import projection_markdown
from fashion_pipeline.resources.encoders import EncoderResource
from fashion_pipeline.resources.warehouse import WarehouseResource

GROUP = "embeddings"
ATTRIBUTES_TABLE = "product_attributes"


class EmbeddingsConfig(dg.Config):
    use_attributes: bool = Field(
        default=True,
        description="Add extracted attributes (table product_attributes) to the embedded text when the "
        "table exists; without it the text is title + colour + description.",
    )
    plot_sample: int = Field(default=2000, ge=0, description="Products in the 2-D projection plots.")


def _attributes(context, warehouse: WarehouseResource, use: bool) -> pd.DataFrame | None:
    """The product_attributes table if present. Optional: embeddings must not wait on extraction."""
    if not use:
        return None
    try:
        return warehouse.query(f"SELECT * FROM {ATTRIBUTES_TABLE}")
    except Exception as exc:  # noqa: BLE001 - a missing table is the expected case; any failure -> no attributes
        context.log.info(f"{ATTRIBUTES_TABLE} not available ({type(exc).__name__}); embedding text without attributes")
        return None


def _file_stat(path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _counts_md(counter: dict) -> dg.MetadataValue:
    if not counter:
        return dg.MetadataValue.md("_none_")
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))
    return dg.MetadataValue.md(f"| reason | rows |\n|---|---|\n{rows}")


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet", "duckdb"},
    # Ordering/lineage only: the table is read through the warehouse resource, and only if it exists.
    deps=[dg.AssetKey(ATTRIBUTES_TABLE)],
    description="Image + text embeddings per product (Parquet + DuckDB view), cached by content and encoder.",
    **gpu_declarations("product_embeddings"),
)
def product_embeddings(
    context: dg.AssetExecutionContext,
    config: EmbeddingsConfig,
    clean_products: pd.DataFrame,
    encoder: EncoderResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    attributes = _attributes(context, warehouse, config.use_attributes)
    path = encoder.output_path()
    fingerprint = combine({"products": frame_digest(clean_products), "attributes": frame_digest(attributes),
                           "encoder": reuse.resource_config(encoder, exclude=("cache_retention_days",)),
                           "config": config.model_dump(),
                           "code": code_digest()})
    untouched = lambda event: path.is_file() and getattr(  # noqa: E731 - the Parquet file it wrote, as it wrote it
        event.asset_materialization.metadata.get("file_stat"), "value", None) == _file_stat(path)
    if (previous := reuse.reused_result(context, "product_embeddings", fingerprint, still_there=untouched)) is not None:
        warehouse.create_parquet_view("product_embeddings", str(path))  # a replaced warehouse gets it back
        return previous
    backend = encoder.build_backend()
    context.log.info(f"encoders: {backend.describe()}")
    # The photos' keys (sha256 of their bytes) by file size and mtime: a re-run reads only new or changed
    # photos to key them. A run with reuse turned off reads every photo (and rewrites the memo).
    key_memo = image_key_memo(encoder.cache_path(), fresh=not reuse.reuse_enabled(context))
    report = embed_products(
        clean_products,
        backend,
        path,
        encoder.cache_path(),
        attributes=attributes,
        image_batch_size=encoder.image_batch_size,
        text_batch_size=encoder.text_batch_size,
        loader_workers=encoder.loader_workers,
        chunk_rows=encoder.chunk_rows,
        sample_size=config.plot_sample,
        progress=context.log.info,
        key_memo=key_memo,
    )
    key_memo.save()
    warehouse.create_parquet_view("product_embeddings", str(path))  # under the warehouse's process lock
    try:
        swept = encoder.sweep_cache(backend)  # after the run stamped every vector it used
    except (OSError, sqlite3.Error) as exc:  # housekeeping: the embeddings stand without it
        swept = None
        context.log.warning(f"embedding cache retention skipped this run ({type(exc).__name__}: {exc}); "
                            "the next computation tries again")
    if swept is not None:
        context.log.info(f"embedding cache: {swept.total_entries_removed} entries unused for "
                         f"{encoder.cache_retention_days:g} days removed, {len(swept.files_removed)} other cache "
                         f"files removed; {swept.bytes_before / 1e6:.1f} -> {swept.bytes_after / 1e6:.1f} MB")

    category = clean_products.set_index("product_id")["category"] if "category" in clean_products else None
    labels = [str(category.get(i, "?")) if category is not None else "?" for i in report.sample_ids]
    info = report.backend
    matched = 0
    if attributes is not None and "product_id" in attributes:
        matched = int(clean_products["product_id"].isin(attributes["product_id"]).sum())
    img, txt = report.image, report.text
    metadata = {
        "path": dg.MetadataValue.path(str(path)),
        "dagster/row_count": dg.MetadataValue.int(report.rows),
        "duckdb_view": dg.MetadataValue.text("warehouse.main.product_embeddings"),
        "backend": dg.MetadataValue.text(info["backend"]),
        "device": dg.MetadataValue.text(info["device"]),
        "precision": dg.MetadataValue.text(info["precision"]),
        "aligned": dg.MetadataValue.bool(info["aligned"] == "true"),
        "image_model": dg.MetadataValue.text(f"{info['image_model']} ({info['image_model_version']})"),
        "text_model": dg.MetadataValue.text(f"{info['text_model']} ({info['text_model_version']})"),
        "image_dim": dg.MetadataValue.int(int(info["image_dim"])),
        "text_dim": dg.MetadataValue.int(int(info["text_dim"])),
        "image/encoded_rows": dg.MetadataValue.int(img.encoded_rows),
        "image/reused_rows": dg.MetadataValue.int(img.reused_rows),
        "image/failed_rows": dg.MetadataValue.int(int(sum(img.failed_rows.values()))),
        "image/failed_by_reason": _counts_md(dict(img.failed_rows)),
        "image/converted_by_mode": _counts_md(dict(img.converted_rows)),
        "image/corrupt_cache_entries": dg.MetadataValue.int(img.corrupt_cache_entries),
        "images_per_s": dg.MetadataValue.float(round(img.per_second, 1)),
        "text/encoded_rows": dg.MetadataValue.int(txt.encoded_rows),
        "text/reused_rows": dg.MetadataValue.int(txt.reused_rows),
        "text/failed_rows": dg.MetadataValue.int(int(sum(txt.failed_rows.values()))),
        "text/failed_by_reason": _counts_md(dict(txt.failed_rows)),
        "text/corrupt_cache_entries": dg.MetadataValue.int(txt.corrupt_cache_entries),
        "texts_per_s": dg.MetadataValue.float(round(txt.per_second, 1)),
        "attributes_rows_matched": dg.MetadataValue.int(matched),
        "image_keys": dg.MetadataValue.json(key_memo.counts()),
        "wall_seconds": dg.MetadataValue.float(round(report.wall_seconds, 1)),
        "file_stat": _file_stat(path),
        reuse.FINGERPRINT_KEY: fingerprint,
    }
    if swept is not None:
        metadata.update({
            "cache/retention_days": dg.MetadataValue.float(float(encoder.cache_retention_days)),
            "cache/entries_removed": dg.MetadataValue.int(swept.total_entries_removed),
            "cache/files_removed": dg.MetadataValue.int(len(swept.files_removed)),
            "cache/size_mb": dg.MetadataValue.float(round(swept.bytes_after / 1e6, 1)),
        })
    if len(report.sample_ids) >= 3:
        metadata["image_projection"] = dg.MetadataValue.md(
            projection_markdown(report.sample_image, labels, f"Image embeddings, PCA, {len(labels)} products")
        )
        metadata["text_projection"] = dg.MetadataValue.md(
            projection_markdown(report.sample_text, labels, f"Text embeddings, PCA, {len(labels)} products")
        )
    return dg.MaterializeResult(metadata=metadata)
