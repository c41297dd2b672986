"""Merge both sources into one product table and clean it (taxonomy, prices, duplicates)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fashion_pipeline.core import taxonomy as tx
from fashion_pipeline.core.raw_prices import (
    DEFAULT_HM_PRICE_SCALE, DEFAULT_INR_TO_USD, parse_price, price_outliers,
)
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline.core.split import assign_splits

PRODUCT_COLUMNS = [
    "product_id", "source", "source_id", "group_id", "title", "description", "brand", "colour",
    "image_path", "category", "gender", "usage", "price_usd", "price_status", "split",
    "source_category", "article_attributes", "age_group",
]
MERGED_COLUMNS = [c for c in PRODUCT_COLUMNS if c != "split"] + ["price_local", "currency"]


@dataclass(frozen=True)
class CleaningSettings:
    inr_to_usd: float = DEFAULT_INR_TO_USD
    hm_price_scale: float = DEFAULT_HM_PRICE_SCALE
    outlier_iqr_k: float = 3.0
    outlier_min_group_size: int = 20
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    split_salt: str = "fashion-v1"

    def __post_init__(self) -> None:
        if self.inr_to_usd <= 0 or self.hm_price_scale <= 0:
            raise ValueError("currency factors must be positive")
        if self.outlier_iqr_k <= 0:
            raise ValueError("outlier_iqr_k must be positive")


def _source_category(*parts: object) -> str:
    return " > ".join(str(p) for p in parts if isinstance(p, str) and p)


def kaggle_to_products(kaggle: pd.DataFrame, settings: CleaningSettings, report: DropReport,
                       keep_unlabelled: bool = False) -> pd.DataFrame:
    """Kaggle rows in the shared schema and taxonomy. A row whose category labels are missing,
    blank or not in the taxonomy map is dropped (``unmapped_category``), unless
    ``keep_unlabelled`` (scoring new listings, where the classifiers fill the labels): then it is
    kept with a null category. Out-of-scope rows are dropped either way (``out_of_scope``)."""
    rows = []
    for r in kaggle.itertuples(index=False):
        source_category = _source_category(r.master_category, r.sub_category, r.article_type)
        category = tx.kaggle_category(r.master_category, r.sub_category, r.article_type)
        if category is None and not keep_unlabelled:
            report.add("unmapped_category", f"kaggle {source_category}")
            continue
        if category == tx.OUT_OF_SCOPE:
            report.add("out_of_scope", f"kaggle {source_category}")
            continue
        price, status = parse_price(r.price_raw)
        rows.append({
            "product_id": f"kaggle-{r.id}", "source": "kaggle", "source_id": r.id, "group_id": f"kaggle-{r.id}",
            "title": r.title, "description": r.description or "", "brand": r.brand, "colour": r.colour,
            "image_path": r.image_path, "category": category,
            "gender": tx.kaggle_gender(r.gender), "usage": tx.kaggle_usage(r.usage),
            "price_local": price, "currency": "INR",
            "price_usd": price * settings.inr_to_usd if price is not None else None,
            "price_status": status, "source_category": source_category,
            "article_attributes": r.article_attributes, "age_group": r.age_group,
        })
    return pd.DataFrame.from_records(rows, columns=MERGED_COLUMNS)


def hm_to_products(articles: pd.DataFrame, prices: pd.DataFrame, settings: CleaningSettings, report: DropReport,
                   keep_unlabelled: bool = False) -> pd.DataFrame:
    """H&M articles in the shared schema and taxonomy; ``keep_unlabelled`` as in `kaggle_to_products`."""
    price_by_id = dict(zip(prices["article_id"], prices["price_median"]))
    rows = []
    for r in articles.itertuples(index=False):
        source_category = _source_category(r.product_group_name, r.product_type_name)
        category = tx.hm_category(r.product_group_name, r.product_type_name)
        if category is None and not keep_unlabelled:
            report.add("unmapped_category", f"hm {source_category}")
            continue
        if category == tx.OUT_OF_SCOPE:
            report.add("out_of_scope", f"hm {source_category}")
            continue
        price, status = parse_price(price_by_id.get(r.article_id))
        rows.append({
            "product_id": f"hm-{r.article_id}", "source": "hm", "source_id": r.article_id,
            "group_id": f"hm-{r.product_code}", "title": r.prod_name, "description": r.detail_desc or "",
            "brand": "H&M", "colour": r.colour_group_name, "image_path": r.image_path,
            "category": category, "gender": tx.hm_gender(r.index_name, r.section_name),
            "usage": tx.hm_usage(r.index_group_name, r.section_name, r.product_group_name),
            "price_local": price, "currency": "HM_NORMALISED",
            "price_usd": price * settings.hm_price_scale if price is not None else None,
            "price_status": status, "source_category": source_category,
            "article_attributes": None, "age_group": None,
        })
    return pd.DataFrame.from_records(rows, columns=MERGED_COLUMNS)


def merge_sources(
    kaggle: pd.DataFrame, hm_articles: pd.DataFrame, hm_prices: pd.DataFrame,
    settings: CleaningSettings, report: DropReport,
) -> pd.DataFrame:
    """Both sources in the shared schema and taxonomy; out-of-scope rows dropped and counted."""
    parts = [kaggle_to_products(kaggle, settings, report), hm_to_products(hm_articles, hm_prices, settings, report)]
    merged = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]
    return merged.reset_index(drop=True)


def read_clean_products(data_root, report: DropReport | None = None,
                        settings: CleaningSettings | None = None) -> pd.DataFrame:
    """The clean_products table of a data root in the datasets' own layouts, read and cleaned in one
    process: the ingest assets' readers, `merge_sources` and `clean_products`, without Dagster (for
    benchmarks and tests). Drops are counted in ``report``."""
    from pathlib import Path

    from fashion_pipeline.core.readers import read_hm_articles, read_hm_prices, read_kaggle_products

    root, report, settings = Path(data_root), report or DropReport(), settings or CleaningSettings()
    hm_dir = root / "h-and-m-personalized-fashion-recommendations"
    kaggle = read_kaggle_products(root / "fashion-product-images", report)
    hm = read_hm_articles(hm_dir, report)
    prices = read_hm_prices(hm_dir, hm["article_id"], report)
    return clean_products(merge_sources(kaggle, hm, prices, settings, report), settings, report)


def clean_products(merged: pd.DataFrame, settings: CleaningSettings, report: DropReport) -> pd.DataFrame:
    """Drop unusable rows and duplicates, flag bad prices, add the split.

    Dropped rows (counted): ``missing_title``, ``duplicate_product_id`` (first kept),
    ``duplicate_listing`` (same source, title, description, colour, category and price as an
    earlier row: a re-listing that would leak between splits).
    Price problems keep the row for classification and null ``price_usd``; ``price_status``
    says why (``missing``, ``invalid``, ``outlier``), and each is counted as ``price_<status>``.
    """
    df = merged.copy()
    no_title = df["title"].fillna("").str.strip() == ""
    for pid in df.loc[no_title, "product_id"]:
        report.add("missing_title", pid)
    df = df[~no_title]

    dup_id = df["product_id"].duplicated(keep="first")
    for pid in df.loc[dup_id, "product_id"]:
        report.add("duplicate_product_id", pid)
    df = df[~dup_id]

    listing_key = ["source", "title", "description", "colour", "category", "price_local"]
    dup_listing = df[listing_key].astype(str).duplicated(keep="first")
    for pid in df.loc[dup_listing, "product_id"]:
        report.add("duplicate_listing", pid)
    df = df[~dup_listing].copy()

    outlier = price_outliers(
        df["price_usd"].where(df["price_status"] == "ok"),
        df[["source", "category"]],
        k=settings.outlier_iqr_k,
        min_group_size=settings.outlier_min_group_size,
    )
    df.loc[outlier, "price_status"] = "outlier"
    df.loc[df["price_status"] != "ok", "price_usd"] = None
    df["price_usd"] = df["price_usd"].astype(float)
    for status, n in df["price_status"].value_counts().items():
        if status != "ok":
            report.add(f"price_{status}", n=int(n))
    for pid in df.loc[outlier, "product_id"].head(5):
        report.examples.setdefault("price_outlier", []).append(pid)

    df["split"] = assign_splits(
        df["group_id"], salt=settings.split_salt,
        validation=settings.validation_fraction, test=settings.test_fraction,
    )
    return df[PRODUCT_COLUMNS].reset_index(drop=True)
