"""Raw ingestion: each dataset read exactly as its download is laid out.

A re-run over raw folders whose files are unchanged (same names, sizes and modification times,
core.raw_files; symlinked sub-folders followed) reuses the stored tables (fashion_pipeline.reuse).
When some files changed, the readers still take every unchanged product JSON and image from their
file memo (core.readers.file_memo) instead of parsing and decoding it again."""


import dagster as dg
import pandas as pd

from fashion_pipeline import metadata as md
from fashion_pipeline import reuse
from fashion_pipeline.core.fingerprint import code_digest, combine
from fashion_pipeline.core.raw_files import fingerprint_folders
from fashion_pipeline.core.readers import read_hm_articles, read_hm_prices, read_kaggle_products
from fashion_pipeline.core.readers.file_memo import FileMemo
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline.resources.data import RawDataResource
from fashion_pipeline.resources.warehouse import WarehouseResource

GROUP = "ingest"


def _raw_fingerprint(root, raw_data: RawDataResource) -> str:
    files = fingerprint_folders([root], follow_links=True)  # a linked-in images folder counts
    return combine({"files": files.digest, "root": str(root), "check_images": raw_data.check_images,
                    "code": code_digest()})


def _file_memo(context, raw_data: RawDataResource, dataset: str) -> FileMemo:
    """The dataset reader's file memo; a run with reuse turned off reads every file (and rewrites it)."""
    memo = FileMemo(raw_data.memo_path(dataset), version=code_digest(), fresh=not reuse.reuse_enabled(context))
    context.log.info(f"file memo: {memo.note}")
    return memo


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas"},
          description="Kaggle Fashion Product Images: styles.csv rows enriched from styles/<id>.json when present.")
def kaggle_products_raw(context: dg.AssetExecutionContext, raw_data: RawDataResource,
                        warehouse: WarehouseResource) -> dg.Output[pd.DataFrame]:
    report = DropReport()
    root = raw_data.kaggle_root()
    fingerprint = _raw_fingerprint(root, raw_data)
    if (previous := reuse.reused_table(context, "kaggle_products_raw", fingerprint, warehouse.read_table)) is not None:
        return previous
    context.log.info(f"reading Kaggle products from {root}")
    memo = _file_memo(context, raw_data, "kaggle")
    df = read_kaggle_products(root, report, check_image_files=raw_data.check_images, log=context.log.info, memo=memo)
    memo.save()
    context.log.info(f"{len(df)} Kaggle rows; problems: {report.as_dict()}; files: {memo.counts()}")
    return dg.Output(df, metadata={
        "source_path": dg.MetadataValue.path(str(root)),
        "files": dg.MetadataValue.json(memo.counts()),
        "json_status": md.counts_table(df["json_status"], "json_status"),
        "preview": md.preview(df[["id", "title", "brand", "price_raw", "article_type", "image_path"]]),
        **md.drops(report, "problems"),
        reuse.FINGERPRINT_KEY: fingerprint,
    })


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas"},
          description="H&M articles.csv with article_id kept as a zero-padded 10-digit string.")
def hm_articles_raw(context: dg.AssetExecutionContext, raw_data: RawDataResource,
                    warehouse: WarehouseResource) -> dg.Output[pd.DataFrame]:
    report = DropReport()
    root = raw_data.hm_root()
    fingerprint = _raw_fingerprint(root, raw_data)
    if (previous := reuse.reused_table(context, "hm_articles_raw", fingerprint, warehouse.read_table)) is not None:
        return previous
    context.log.info(f"reading H&M articles from {root}")
    memo = _file_memo(context, raw_data, "hm")
    df = read_hm_articles(root, report, check_image_files=raw_data.check_images, memo=memo)
    memo.save()
    return dg.Output(df, metadata={
        "source_path": dg.MetadataValue.path(str(root)),
        "files": dg.MetadataValue.json(memo.counts()),
        "preview": md.preview(df[["article_id", "prod_name", "product_type_name", "index_name", "image_path"]]),
        **md.drops(report, "problems"),
        reuse.FINGERPRINT_KEY: fingerprint,
    })


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas"},
          description="One price per H&M article: the median of its transaction prices (normalised units).")
def hm_article_prices(context: dg.AssetExecutionContext, raw_data: RawDataResource,
                      hm_articles_raw: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    report = DropReport()
    prices = read_hm_prices(raw_data.hm_root(), hm_articles_raw["article_id"], report)
    return dg.Output(prices, metadata={
        "statistic": "median transaction price per article",
        "articles_with_price": dg.MetadataValue.int(len(prices)),
        "articles_without_price": dg.MetadataValue.int(int(len(hm_articles_raw) - len(prices))),
        "preview": md.preview(prices),
        **md.drops(report, "dropped_transactions"),
    })
