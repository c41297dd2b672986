"""Unchanged inputs skip their work: content fingerprints (core.fingerprint) and the assets that
reuse their last output when the fingerprint matches (fashion_pipeline.reuse)."""

import json

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from fashion_pipeline.core import warehouse as wh
from fashion_pipeline.core.fingerprint import combine, frame_digest
from fashion_pipeline.reuse import REUSE_ENV, REUSE_TAG
from fashion_pipeline_tests.conftest import KAGGLE
from fashion_pipeline_tests.fixtures.runs import assets_by_name, resources_for


def test_a_frame_digest_follows_content_not_identity():
    a = pd.DataFrame({"id": ["1", "2"], "price": [1.5, np.nan], "tags": [["x", "y"], {"k": 1}]})
    same = pd.DataFrame({"id": ["1", "2"], "price": [1.5, np.nan], "tags": [["x", "y"], {"k": 1}]}, index=[7, 9])
    assert frame_digest(a) == frame_digest(same)  # index ignored; unhashable cells digested
    changed = a.copy()
    changed.loc[1, "price"] = 2.0
    listed = a.copy()
    listed.at[0, "tags"] = ["x", "z"]
    renamed = a.rename(columns={"price": "price_usd"})
    digests = {frame_digest(a), frame_digest(changed), frame_digest(listed), frame_digest(renamed),
               frame_digest(a.iloc[::-1]), frame_digest(None)}
    assert len(digests) == 6


def test_combined_parts_ignore_key_order():
    assert combine({"a": 1, "b": {"x": [1, 2]}}) == combine({"b": {"x": [1, 2]}, "a": 1})
    assert combine({"a": 1}) != combine({"a": 2})


def _ingest(instance, data, var, tags=None):
    result = dg.materialize(assets_by_name("kaggle_products_raw", "hm_articles_raw"),
                            resources=resources_for(data, var), instance=instance, tags=tags)
    assert result.success
    return result, {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}


def test_ingestion_reuses_its_tables_until_a_raw_file_changes(sample_copy, tmp_path, monkeypatch):
    var = tmp_path / "var"

    def prices():
        with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
            return con.sql("select id, price_raw from kaggle_products_raw order by id").df()

    with dg.instance_for_test() as instance:
        first, meta1 = _ingest(instance, sample_copy, var)
        assert "reused_from_run" not in meta1["kaggle_products_raw"]
        before = prices()

        written = []  # the tables the IO manager writes into the warehouse
        real_write = wh.write_table
        monkeypatch.setattr(wh, "write_table", lambda path, name, df, **kw: written.append(name) or real_write(
            path, name, df, **kw))
        _, meta2 = _ingest(instance, sample_copy, var)
        monkeypatch.setattr(wh, "write_table", real_write)
        for asset in ("kaggle_products_raw", "hm_articles_raw"):
            assert meta2[asset]["reused_from_run"].value == first.run_id, asset
            assert meta2[asset]["dagster/row_count"].value == meta1[asset]["dagster/row_count"].value, asset
        assert written == []  # re-emitted, not written back
        # the UI keeps the computed run's metadata (counts, preview), marked as reused
        assert meta2["kaggle_products_raw"]["json_status"] == meta1["kaggle_products_raw"]["json_status"]
        pd.testing.assert_frame_equal(prices(), before)

        # One product's JSON (its price) is edited: the Kaggle table is read again and shows it; H&M is still reused.
        pid = str(before["id"].iloc[0])
        path = sample_copy / KAGGLE / "styles" / f"{pid}.json"
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["data"]["price"] = 12345
        path.write_text(json.dumps(doc), encoding="utf-8")
        third, meta3 = _ingest(instance, sample_copy, var)
        assert "reused_from_run" not in meta3["kaggle_products_raw"]
        assert meta3["hm_articles_raw"]["reused_from_run"].value == first.run_id
        assert prices().set_index("id").loc[before["id"].iloc[0], "price_raw"] == "12345"

        # The run tag turns reuse off: both are computed again.
        _, meta4 = _ingest(instance, sample_copy, var, tags={REUSE_TAG: "false"})
        assert "reused_from_run" not in meta4["kaggle_products_raw"] and "reused_from_run" not in meta4["hm_articles_raw"]
        # So does the environment variable (dg launch takes no tags); without either, reuse is back.
        monkeypatch.setenv(REUSE_ENV, "off")
        _, meta5 = _ingest(instance, sample_copy, var)
        assert "reused_from_run" not in meta5["hm_articles_raw"]
        monkeypatch.delenv(REUSE_ENV)
        _, meta6 = _ingest(instance, sample_copy, var)
        assert "reused_from_run" in meta6["hm_articles_raw"]
