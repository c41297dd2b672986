"""product_attributes materialized for real: clean_products (embedded sample) -> rules extraction,
and the learned extractor (attribute_extractor) trained, published and used."""

import json
import time

import dagster as dg
import duckdb

from fashion_pipeline.core.extraction.cache import ExtractionCache
from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.resources.extraction import ExtractorResource
from fashion_pipeline_tests.conftest import KAGGLE, SAMPLE_ROOT
from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, assets_by_name, materialize, resources_for

COLUMNS = ["product_id", "brand", "materials", "care", "fit", "pattern", "occasion", "style", "backend", "model",
           "status"]


def _metadata(result, name):
    return {e.event_specific_data.materialization.asset_key.path[-1]: e.event_specific_data.materialization.metadata
            for e in result.get_asset_materialization_events()}[name]


def test_product_attributes_materializes_from_clean_products_and_reruns_from_cache(tmp_path):
    var = tmp_path / "var"
    extractor = ExtractorResource(backend="rules", cache_dir=str(var / "cache" / "extraction"))
    # A result no run has read for 40 days (a product gone since): the default 28-day retention drops it.
    ExtractionCache(var / "cache" / "extraction" / "rules", clock=lambda: time.time() - 40 * 86400).put_many(
        {"0" * 64: {"attributes": {}, "status": "ok"}})
    result = materialize(INGEST_CHAIN + ["attribute_extractor", "product_attributes"], SAMPLE_ROOT, var,
                         extractor=extractor)
    assert result.success
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        cols = [r[0] for r in con.execute("describe product_attributes").fetchall()]
        n_products = con.execute("select count(*) from clean_products").fetchone()[0]
        attrs = con.execute("select * from product_attributes").df()
        hm_brands = con.execute("select distinct a.brand from product_attributes a join clean_products c "
                                "using (product_id) where c.source = 'hm'").fetchall()
    assert cols == COLUMNS
    assert len(attrs) == n_products and attrs["product_id"].is_unique
    assert set(attrs["status"]) <= {"ok", "empty", "fallback"} and (attrs["backend"] == "rules").all()
    assert all(isinstance(json.loads(m), list) for m in attrs["materials"])
    assert (attrs["materials"] != "[]").mean() > 0.5
    assert hm_brands == [("H&M",)]

    md = _metadata(result, "product_attributes")
    assert md["backend"].value == "rules" and md["rows"].value == n_products
    assert md["rows_computed"].value == n_products and md["rows_cached"].value == 0
    assert md["cache_entries_expired"].value == 1
    assert "0" * 64 not in ExtractionCache(var / "cache" / "extraction" / "rules")
    table = md["quality_vs_catalogue"].value
    assert "| rules | material |" in table and "| naive keyword baseline | material |" in table
    assert md["rows_empty_description"].value == (attrs["status"] == "empty").sum()

    # Re-materializing only product_attributes reads clean_products from the warehouse and the cache.
    again = dg.materialize(assets_by_name(*INGEST_CHAIN, "attribute_extractor", "product_attributes"),
                           selection=["product_attributes"],
                           resources=resources_for(SAMPLE_ROOT, var, extractor=extractor))
    assert again.success
    md2 = _metadata(again, "product_attributes")
    assert md2["rows_cached"].value == n_products and md2["rows_computed"].value == 0

    # Another retention is housekeeping, not another output: the next run re-emits this one.
    with dg.instance_for_test() as instance:
        def run(resource):
            return dg.materialize(assets_by_name(*INGEST_CHAIN, "attribute_extractor", "product_attributes"),
                                  selection=["product_attributes"], instance=instance,
                                  resources=resources_for(SAMPLE_ROOT, var, extractor=resource))

        first = run(extractor)
        shorter = run(ExtractorResource(backend="rules", cache_dir=str(var / "cache" / "extraction"),
                                        cache_retention_days=7))
        assert "reused_from_run" not in _metadata(first, "product_attributes")
        assert _metadata(shorter, "product_attributes")["reused_from_run"].value == first.run_id


def test_learned_extractor_is_trained_published_and_used_by_product_attributes(tmp_path):
    var = tmp_path / "var"
    result = materialize(INGEST_CHAIN + ["attribute_extractor", "product_attributes"], SAMPLE_ROOT, var)
    assert result.success
    md = _metadata(result, "attribute_extractor")
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        report = con.execute("select * from attribute_extractor").df()
        attrs = con.execute("select * from product_attributes").df()
        n_test_gold = con.execute("select count(*) from clean_products where split = 'test' "
                                  "and article_attributes is not null").fetchone()[0]
    # The report: learned (shipped), learned always answering, and the recipe, on test rows only.
    assert set(report["extractor"]) == {"learned", "learned, always answering", "TF-IDF + LinearSVC recipe"}
    assert set(report["split"]) == {"test"} and (report["n"] <= n_test_gold).all()
    forced = report[report["extractor"] == "learned, always answering"].set_index("attribute")
    heads = set(md["thresholds"].value)  # attributes with a classifier; the others keep the rules value
    assert heads >= {"material", "pattern"}
    assert (forced.loc[sorted(heads), "coverage"].dropna() == 1.0).all()
    shipped = report[report["extractor"] == "learned"].set_index("attribute")
    assert (shipped["coverage"].dropna() <= 1.0).all() and (shipped["accuracy"] <= shipped["coverage"] + 1e-9).all()
    # product_attributes ran the published learned model (its version keys the cache).
    assert (attrs["backend"] == "learned").all()
    assert attrs["model"].str.fullmatch(rf"{md['model_version'].value}\+rules-v1\+[0-9a-f]{{8}}").all()
    pa = _metadata(result, "product_attributes")
    assert pa["backend"].value == "learned" and "| learned | material |" in pa["quality_vs_catalogue"].value


def test_a_retrain_not_measurably_better_keeps_the_published_extractor_and_its_cached_attributes(sample_copy, tmp_path):
    """The weekly retrain refits the extractor on changed products; when the refit is not better on
    validation by the configured margin, it is stored unpublished, the published extractor keeps
    serving and product_attributes answers every unchanged product from the cache of that extractor."""
    var = tmp_path / "var"
    chain = INGEST_CHAIN + ["attribute_extractor", "product_attributes"]
    first = materialize(chain, sample_copy, var)
    md1 = _metadata(first, "attribute_extractor")
    v1 = md1["store_version"].value
    assert md1["published_version"].value == v1 and md1["publish_decision"].value == "nothing published before"
    # Twenty labelled Kaggle train products leave the catalogue: the refit differs from the published model.
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        gone = {r[0] for r in con.execute("select product_id from clean_products where split = 'train' and "
                                          "source = 'kaggle' and article_attributes is not null "
                                          "order by product_id limit 20").fetchall()}
        n_products = con.execute("select count(*) from clean_products").fetchone()[0]
    styles = sample_copy / KAGGLE / "styles.csv"
    header, *rows = styles.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [r for r in rows if f"kaggle-{r.split(',', 1)[0]}" not in gone]
    assert len(kept) == len(rows) - len(gone)
    styles.write_text(header + "".join(kept), encoding="utf-8")
    # A margin no refit on a handful of rows can clear: the published extractor must stay.
    second = materialize(chain, sample_copy, var, run_config={
        "ops": {"attribute_extractor": {"config": {"publish_margin_se": 1000.0}}}})
    md2 = _metadata(second, "attribute_extractor")
    v2 = md2["store_version"].value
    assert v2 != v1 and md2["model_version"].value != md1["model_version"].value  # a different model was trained
    assert md2["published_version"].value == v1
    assert md2["publish_decision"].value.startswith("candidate not measurably better")
    comparison = md2["validation_vs_published"].value
    assert comparison["published_before"] == v1 and comparison["pairs"] > 0 and comparison["difference_se"] > 0
    store = ModelStore(var / "models")
    assert store.published("attribute_extractor")["version"] == v1 and v2 in store.versions("attribute_extractor")
    # product_attributes served the published extractor: every remaining product came from its cache.
    pa = _metadata(second, "product_attributes")
    assert pa["rows"].value == n_products - len(gone)
    assert pa["rows_computed"].value == 0 and pa["rows_cached"].value == n_products - len(gone)
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        models = {r[0] for r in con.execute("select distinct model from product_attributes").fetchall()}
    assert all(m.startswith(md1["model_version"].value + "+") for m in models)


def test_catalogue_values_outside_the_vocabulary_are_counted_per_field():
    """attribute_extractor's gold_values_outside_vocabulary: a catalogue value no vocabulary entry takes
    is counted under its field; known values, "NA" and rows without attributes are not."""
    import numpy as np
    import pandas as pd

    from fashion_pipeline.assets.attributes import _unknown_gold_values
    from fashion_pipeline.core.extraction import quality

    rows = pd.Series(['{"Fabric": "Moonrock", "Wash Care": "Hand wash"}',
                      '{"Fabric": "Cotton", "Fit": "Weird", "Pattern": "NA"}', None, np.nan, "",
                      '{"Print or Pattern Type": "Zigzag mesh", "Occasion": "Casual"}', '{"Material": "Polyester"}'])
    truths = [quality.catalogue_truth(v) if isinstance(v, str) else {} for v in rows]
    assert _unknown_gold_values(rows, truths) == {"material": 1, "fit": 1, "pattern": 1}
