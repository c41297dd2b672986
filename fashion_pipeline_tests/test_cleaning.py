import pandas as pd

from fashion_pipeline.core.cleaning import PRODUCT_COLUMNS, CleaningSettings, clean_products, merge_sources
from fashion_pipeline.core.readers import read_hm_articles, read_hm_prices, read_kaggle_products
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline_tests.conftest import HM, KAGGLE, SAMPLE_ROOT


def _merged(settings=CleaningSettings()):
    report = DropReport()
    k = read_kaggle_products(SAMPLE_ROOT / KAGGLE, report, check_image_files=False)
    a = read_hm_articles(SAMPLE_ROOT / HM, report, check_image_files=False)
    p = read_hm_prices(SAMPLE_ROOT / HM, a["article_id"], report)
    return k, a, p, merge_sources(k, a, p, settings, report), report


def test_prices_are_converted_to_usd():
    settings = CleaningSettings(inr_to_usd=0.5, hm_price_scale=100.0)
    k, a, p, merged, _ = _merged(settings)
    kid = k.dropna(subset=["price_raw"]).iloc[0]
    row = merged.set_index("product_id").loc[f"kaggle-{kid['id']}"]
    assert row["price_usd"] == float(kid["price_raw"]) * 0.5
    hp = p.iloc[0]
    assert merged.set_index("product_id").loc[f"hm-{hp['article_id']}", "price_usd"] == hp["price_median"] * 100.0


def test_merge_counts_out_of_scope_rows_and_keeps_the_rest():
    k, a, p, merged, report = _merged()
    assert len(merged) + report.counts.get("out_of_scope", 0) + report.counts.get("unmapped_category", 0) == len(k) + len(a)
    assert set(merged["source"]) == {"kaggle", "hm"}
    assert merged["product_id"].str.match(r"^(kaggle-\d+|hm-\d{10})$").all()


def test_clean_drops_duplicates_and_flags_bad_prices_with_reasons():
    *_, merged, _ = _merged()
    extra = merged.iloc[[0, 1]].copy()
    extra.iloc[1, extra.columns.get_loc("product_id")] = "kaggle-999999999"  # same listing, new id
    bad = merged[merged["price_status"] == "ok"].iloc[[5]].copy()
    bad["product_id"], bad["title"] = "kaggle-888888888", "A very expensive sock"
    bad["price_usd"] = bad["price_usd"] * 10_000
    blank = merged.iloc[[7]].copy()
    blank["product_id"], blank["title"] = "kaggle-777777777", "  "
    report = DropReport()
    out = clean_products(pd.concat([merged, extra, bad, blank], ignore_index=True), CleaningSettings(), report)
    assert list(out.columns) == PRODUCT_COLUMNS
    assert out["product_id"].is_unique
    assert report.counts["duplicate_product_id"] == 1
    assert report.counts["duplicate_listing"] >= 1 and "kaggle-999999999" not in set(out["product_id"])
    assert report.counts["missing_title"] == 1
    row = out.set_index("product_id").loc["kaggle-888888888"]
    assert row["price_status"] == "outlier" and pd.isna(row["price_usd"])
    # every row is accounted for
    dropped = sum(report.counts[r] for r in ("duplicate_product_id", "duplicate_listing", "missing_title"))
    assert len(out) + dropped == len(merged) + 4
    assert (out["price_usd"].notna() == (out["price_status"] == "ok")).all()
    assert set(out["split"]) == {"train", "validation", "test"}


def test_a_non_numeric_json_price_is_kept_as_an_unpriced_row(sample_copy):
    import json

    from fashion_pipeline.core.cleaning import kaggle_to_products

    styles = sample_copy / KAGGLE / "styles"
    victim = sorted(styles.glob("*.json"))[0]
    doc = json.loads(victim.read_text())
    doc["data"]["price"] = "twelve hundred"
    victim.write_text(json.dumps(doc))
    report = DropReport()
    k = read_kaggle_products(sample_copy / KAGGLE, report, check_image_files=False)
    products = kaggle_to_products(k, CleaningSettings(), report)
    row = products.set_index("product_id").loc[f"kaggle-{victim.stem}"]
    assert row["price_status"] == "invalid" and pd.isna(row["price_usd"])
    out = clean_products(products, CleaningSettings(), DropReport())
    assert f"kaggle-{victim.stem}" in set(out["product_id"])



def test_rows_without_labels_are_dropped_for_ingest_and_kept_with_keep_unlabelled():
    """Ingest (the default) drops a row it cannot map; scoring (keep_unlabelled) keeps it with
    null labels. Out-of-scope rows are dropped in both."""
    from fashion_pipeline.core.cleaning import hm_to_products, kaggle_to_products

    k, a, p, _, _ = _merged()
    labels = ["master_category", "sub_category", "article_type", "gender", "usage"]
    k = k.head(5).copy()
    k[labels] = [
        [None, None, None, None, None],                       # missing
        ["", "", "", "", ""],                                 # blank
        ["Spaceships", "Rockets", "Saturn V", "Men", "Casual"],   # not in the taxonomy
        ["Accessories", "Accessories", "Ipad", "Men", "Casual"],  # out of scope
        ["Apparel", "Topwear", "Tshirts", "Women", "Sports"],     # mapped
    ]
    ids = list(k["id"])
    report = DropReport()
    ingest = kaggle_to_products(k, CleaningSettings(), report)
    assert list(ingest["source_id"]) == [ids[4]] and list(ingest["category"]) == ["Topwear"]
    assert report.counts["unmapped_category"] == 3 and report.counts["out_of_scope"] == 1
    report = DropReport()
    kept = kaggle_to_products(k, CleaningSettings(), report, keep_unlabelled=True)
    assert list(kept["source_id"]) == [ids[0], ids[1], ids[2], ids[4]]
    assert kept["category"].tolist() == [None, None, None, "Topwear"]
    assert kept["gender"].tolist()[:2] == [None, None] and kept["usage"].tolist()[:2] == [None, None]
    assert dict(report.counts) == {"out_of_scope": 1}

    a = a.head(3).copy()
    a[["product_group_name", "product_type_name"]] = [[None, None], ["", ""], ["Furniture", "Chair"]]
    report = DropReport()
    assert len(hm_to_products(a, p, CleaningSettings(), report)) == 0
    assert report.counts["unmapped_category"] == 2 and report.counts["out_of_scope"] == 1
    kept = hm_to_products(a, p, CleaningSettings(), DropReport(), keep_unlabelled=True)
    assert list(kept["source_id"]) == list(a["article_id"].iloc[:2]) and kept["category"].isna().all()
