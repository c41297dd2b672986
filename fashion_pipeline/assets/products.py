"""The merged product table in the shared taxonomy, and its cleaned, split version."""


import dagster as dg
import pandas as pd
from pydantic import Field

from fashion_pipeline import metadata as md
from fashion_pipeline.core.cleaning import CleaningSettings, clean_products as clean_core, merge_sources
from fashion_pipeline.core.raw_prices import DEFAULT_HM_PRICE_SCALE, DEFAULT_INR_TO_USD
from fashion_pipeline.core.reports import DropReport

GROUP = "products"


class MergeConfig(dg.Config):
    inr_to_usd: float = Field(default=DEFAULT_INR_TO_USD, gt=0,
                              description="USD per Indian rupee, applied to Kaggle (Myntra) MRP prices.")
    hm_price_scale: float = Field(default=DEFAULT_HM_PRICE_SCALE, gt=0,
                                  description="Factor turning H&M's normalised transaction price into USD.")


class CleanConfig(dg.Config):
    outlier_iqr_k: float = Field(default=3.0, gt=0, description=(
        "Prices whose log lies more than k inter-quartile ranges outside their (source, category) "
        "quartiles are outliers: kept for classification, excluded from price training."))
    outlier_min_group_size: int = Field(default=20, ge=1, description=(
        "Smaller (source, category) groups are judged against their whole source."))
    validation_fraction: float = Field(default=0.1, ge=0, lt=1, description="Share of groups in validation.")
    test_fraction: float = Field(default=0.1, ge=0, lt=1, description="Share of groups in test.")
    split_salt: str = Field(default="fashion-v1", description="Changing it reshuffles the split deterministically.")


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas"},
          description="Both sources in one schema and the shared 11-category taxonomy, prices in USD.")
def merged_products(context: dg.AssetExecutionContext, config: MergeConfig, kaggle_products_raw: pd.DataFrame,
                    hm_articles_raw: pd.DataFrame, hm_article_prices: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    report = DropReport()
    settings = CleaningSettings(inr_to_usd=config.inr_to_usd, hm_price_scale=config.hm_price_scale)
    merged = merge_sources(kaggle_products_raw, hm_articles_raw, hm_article_prices, settings, report)
    if report.counts.get("unmapped_category"):
        context.log.warning(f"categories missing from the taxonomy: {report.examples.get('unmapped_category')}")
    return dg.Output(merged, metadata={
        "rows_by_source": md.counts_table(merged["source"], "source"),
        "preview": md.preview(merged[["product_id", "title", "category", "gender", "usage", "price_usd"]]),
        **md.drops(report),
    })


_PASSTHROUGH = [
    "product_id", "source", "source_id", "group_id", "title", "description", "brand", "colour", "image_path",
    "category", "gender", "usage", "source_category", "article_attributes", "age_group",
]


def _column_lineage() -> dg.TableColumnLineage:
    upstream = dg.AssetKey("merged_products")
    deps = {c: [dg.TableColumnDep(asset_key=upstream, column_name=c)] for c in _PASSTHROUGH}
    deps["price_usd"] = [dg.TableColumnDep(asset_key=upstream, column_name=c)
                         for c in ("price_usd", "source", "category", "price_status")]
    deps["price_status"] = [dg.TableColumnDep(asset_key=upstream, column_name=c) for c in ("price_status", "price_usd")]
    deps["split"] = [dg.TableColumnDep(asset_key=upstream, column_name="group_id")]
    return dg.TableColumnLineage(deps_by_column=deps)


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas"},
          description="The clean product table: duplicates removed, price outliers flagged, grouped split.")
def clean_products(context: dg.AssetExecutionContext, config: CleanConfig,
                   merged_products: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    report = DropReport()
    settings = CleaningSettings(
        outlier_iqr_k=config.outlier_iqr_k, outlier_min_group_size=config.outlier_min_group_size,
        validation_fraction=config.validation_fraction, test_fraction=config.test_fraction,
        split_salt=config.split_salt,
    )
    df = clean_core(merged_products, settings, report)
    by_cat = df.pivot_table(index="category", columns="source", values="product_id", aggfunc="count", fill_value=0)
    return dg.Output(df, metadata={
        "rows_by_source_and_category": dg.MetadataValue.md(by_cat.to_markdown()),
        "rows_by_split": md.counts_table(df["split"], "split"),
        "price_status": md.counts_table(df["price_status"], "price_status"),
        "rows_with_price": dg.MetadataValue.int(int(df["price_usd"].notna().sum())),
        "rows_with_image": dg.MetadataValue.int(int(df["image_path"].notna().sum())),
        "dagster/column_lineage": _column_lineage(),
        "preview": md.preview(df[["product_id", "title", "category", "gender", "usage", "price_usd", "split"]]),
        **md.drops(report, "dropped_or_flagged"),
    })
