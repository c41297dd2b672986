"""A real Dagster materialization of the ingestion-to-clean chain on the embedded sample."""

import duckdb
import pytest

from fashion_pipeline.core.cleaning import PRODUCT_COLUMNS
from fashion_pipeline.core.taxonomy import CATEGORIES
from fashion_pipeline.definitions import defs
from fashion_pipeline_tests.conftest import HM, KAGGLE, SAMPLE_ROOT
from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, materialize


def test_the_chain_materializes_into_the_warehouse(tmp_path):
    result = materialize(INGEST_CHAIN, SAMPLE_ROOT, tmp_path / "var")
    assert result.success
    with duckdb.connect(str(tmp_path / "var" / "warehouse.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        assert set(INGEST_CHAIN) <= tables
        cols = [r[0] for r in con.execute("describe clean_products").fetchall()]
        assert cols == PRODUCT_COLUMNS
        per_source = dict(con.execute("select source, count(*) from clean_products group by 1").fetchall())
        cats = {r[0] for r in con.execute("select distinct category from clean_products").fetchall()}
    assert per_source["kaggle"] > 700 and per_source["hm"] > 400
    assert cats == set(CATEGORIES)
    mats = {e.event_specific_data.materialization.asset_key.path[-1]: e.event_specific_data.materialization.metadata
            for e in result.get_asset_materialization_events()}
    clean_md = mats["clean_products"]
    assert clean_md["dagster/row_count"].value == sum(per_source.values())
    assert "dagster/column_schema" in clean_md and "dagster/column_lineage" in clean_md
    assert clean_md["dropped_or_flagged/price_missing"].value > 0          # H&M articles without sales
    assert mats["hm_article_prices"]["dropped_transactions/tx_unknown_article"].value == 300


def test_the_dag_shows_raw_to_clean_lineage():
    graph = defs.resolve_asset_graph()
    parents = lambda name: {k.path[-1] for k in graph.get(__import__("dagster").AssetKey(name)).parent_keys}  # noqa: E731
    assert parents("clean_products") == {"merged_products"}
    assert parents("merged_products") == {"kaggle_products_raw", "hm_articles_raw", "hm_article_prices"}
    assert parents("hm_article_prices") == {"hm_articles_raw"}


def test_a_missing_data_root_stops_the_run_naming_the_path(tmp_path):
    result = materialize(["kaggle_products_raw"], tmp_path / "no-such-folder", tmp_path / "var", raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    error = failure.event_specific_data.error
    assert error.cause.cls_name == "DataRootError"
    assert str(tmp_path / "no-such-folder") in error.cause.message


def test_a_re_ingest_after_one_product_changed_reads_only_that_products_files(sample_copy, tmp_path, monkeypatch):
    import json

    def files_metadata(result):
        [mat] = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
        return mat.metadata["files"].value

    var = tmp_path / "var"
    first = files_metadata(materialize(["kaggle_products_raw"], sample_copy, var))
    root = sample_copy / KAGGLE
    n_files = len(list((root / "styles").glob("*.json"))) + len(list((root / "images").glob("*.jpg")))
    assert (first["files_read"], first["files_reused"]) == (n_files, 0)
    path = sorted((root / "styles").glob("*.json"))[0]
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["data"]["brandName"] = "Changed Brand"
    path.write_text(json.dumps(doc), encoding="utf-8")
    second = files_metadata(materialize(["kaggle_products_raw"], sample_copy, var))
    assert (second["files_read"], second["files_reused"]) == (1, n_files - 1)
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        brand = con.execute("select brand from kaggle_products_raw where id = ?", [path.stem]).fetchone()[0]
    assert brand == "Changed Brand"
    # Reuse turned off: every file is read again (and the memo rewritten).
    monkeypatch.setenv("FASHION_REUSE", "off")
    third = files_metadata(materialize(["kaggle_products_raw"], sample_copy, var))
    assert (third["files_read"], third["files_reused"]) == (n_files, 0) and "turned off" in third["memo"]
