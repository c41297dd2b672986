"""A real Dagster materialization clean_products -> product_embeddings on the embedded sample,
with the offline backend (real EfficientNet-Lite0 + all-MiniLM-L6-v2 weights)."""

import os
import time

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from fashion_pipeline.core.encoders import read_embedding_metadata, read_embeddings
from fashion_pipeline.core.encoders.cache import EmbeddingCache, cache_file
from fashion_pipeline.definitions import defs
from fashion_pipeline.resources.encoders import EncoderResource
from fashion_pipeline.resources.warehouse import WarehouseResource
from fashion_pipeline_tests.conftest import SAMPLE_ROOT
from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, assets_by_name, materialize, resources_for


def _metadata(result, name):
    return {e.event_specific_data.materialization.asset_key.path[-1]: e.event_specific_data.materialization.metadata
            for e in result.get_asset_materialization_events()}[name]


def test_product_embeddings_materializes_and_reruns_incrementally(tmp_path):
    var = tmp_path / "var"
    # 64 px / 32 word pieces keep the test cheap on CI's 2 cores; the code path is the default backend's.
    options = dict(output_dir=str(var / "embeddings"), cache_dir=str(var / "cache" / "embeddings"),
                   offline_image_resolution=64, offline_text_max_tokens=32, torch_threads=1)
    encoder = EncoderResource(**options)
    # Cache files of encoders this install no longer runs: one unused for 40 days, one used 2 days ago.
    cache_dir = var / "cache" / "embeddings"
    for identity, days in [("retired-encoder", 40), ("recent-encoder", 2)]:
        with EmbeddingCache(cache_dir, "text", identity, 2) as c:
            c.put_many(["k"], np.ones((1, 2), np.float32))
        for part in cache_dir.glob(f"{cache_file(cache_dir, 'text', identity).name}*"):
            os.utime(part, (time.time() - days * 86400,) * 2)
    first = materialize(INGEST_CHAIN + ["product_embeddings"], SAMPLE_ROOT, var, encoder=encoder)
    assert first.success
    md = _metadata(first, "product_embeddings")
    path = md["path"].value
    ids, image, text = read_embeddings(path)
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        products = con.execute("SELECT product_id, image_path FROM clean_products").df()
        in_view = con.execute(
            "SELECT count(*), count(image_embedding), max(len(text_embedding)) FROM product_embeddings"
        ).fetchone()
    # every clean product, once, with a 384-d text embedding; a 1280-d image embedding where it has a photo
    assert sorted(ids) == sorted(products.product_id) and len(ids) == md["dagster/row_count"].value
    assert image.shape == (len(ids), 1280) and text.shape == (len(ids), 384)
    assert not np.isnan(text).any()
    has_photo = dict(zip(products.product_id, products.image_path.notna()))
    got_image = ~np.isnan(image).any(axis=1)
    assert all(got_image[i] == has_photo[pid] for i, pid in enumerate(ids))
    assert in_view == (len(ids), int(got_image.sum()), 384)
    assert md["image/encoded_rows"].value == int(got_image.sum()) and md["image/reused_rows"].value == 0
    assert md["image/failed_rows"].value == len(ids) - int(got_image.sum())
    assert md["backend"].value == "offline" and md["aligned"].value is False
    assert md["images_per_s"].value > 0 and md["texts_per_s"].value > 0
    assert md["image_projection"].value.startswith("![") and "base64," in md["image_projection"].value
    meta = read_embedding_metadata(path)
    assert (meta["image_dim"], meta["text_dim"], meta["aligned"]) == ("1280", "384", "false")
    # The default 28-day retention: the retired encoder's file is removed, the recent one and every
    # vector this run used stay.
    assert md["cache/retention_days"].value == 28 and md["cache/files_removed"].value == 1
    assert md["cache/entries_removed"].value == 0
    assert not cache_file(cache_dir, "text", "retired-encoder").exists()
    assert cache_file(cache_dir, "text", "recent-encoder").exists()
    assert md["cache/size_mb"].value > 0

    # Attributes appear (as the extraction helper would write them): only the texts that change are re-encoded.
    changed = products.product_id.iloc[:5].tolist()
    WarehouseResource(path=str(var / "warehouse.duckdb")).write_table(
        "product_attributes",
        pd.DataFrame({"product_id": changed, "materials": ['["cotton"]'] * 5, "fit": ["slim"] * 5}),
    )
    with dg.instance_for_test() as instance:
        second = dg.materialize(assets_by_name(*INGEST_CHAIN, "product_embeddings"), selection=["product_embeddings"],
                                resources=resources_for(SAMPLE_ROOT, var, encoder=encoder), instance=instance)
        assert second.success
        # Another retention is housekeeping, not another output: the next run re-emits this one.
        shorter = EncoderResource(**options, cache_retention_days=7)
        third = dg.materialize(assets_by_name(*INGEST_CHAIN, "product_embeddings"), selection=["product_embeddings"],
                               resources=resources_for(SAMPLE_ROOT, var, encoder=shorter), instance=instance)
        md3 = _metadata(third, "product_embeddings")
        assert md3["reused_from_run"].value == second.run_id and md3["cache/retention_days"].value == 28
    md2 = _metadata(second, "product_embeddings")
    assert md2["image/encoded_rows"].value == 0 and md2["image/reused_rows"].value == int(got_image.sum())
    assert md2["text/encoded_rows"].value == 5 and md2["text/reused_rows"].value == len(ids) - 5
    assert md2["attributes_rows_matched"].value == 5
    ids2, image2, text2 = read_embeddings(path)
    assert ids2 == ids and np.array_equal(image2, image, equal_nan=True)
    moved = [ids.index(p) for p in changed]
    assert not np.allclose(text2[moved], text[moved])


def test_embeddings_lineage():
    graph = defs.resolve_asset_graph()
    parents = {k.path[-1] for k in graph.get(dg.AssetKey("product_embeddings")).parent_keys}
    assert parents == {"clean_products", "product_attributes"}


def test_a_failing_cache_sweep_is_a_warning_not_a_failed_materialization(tmp_path, monkeypatch):
    var = tmp_path / "var"

    def unwritable(self, backend):  # what a cache folder on a read-only or full disk raises
        raise PermissionError(13, "Permission denied", str(self.cache_path()))

    monkeypatch.setattr(EncoderResource, "sweep_cache", unwritable)
    encoder = EncoderResource(output_dir=str(var / "embeddings"), cache_dir=str(var / "cache" / "embeddings"),
                              offline_image_resolution=64, offline_text_max_tokens=32, torch_threads=1)
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets_by_name(*INGEST_CHAIN, "product_embeddings"),
                                resources=resources_for(SAMPLE_ROOT, var, encoder=encoder), instance=instance)
        assert result.success
        messages = [r.user_message for r in instance.all_logs(result.run_id)]
    md = _metadata(result, "product_embeddings")
    assert md["dagster/row_count"].value > 0 and "cache/entries_removed" not in md
    assert any("embedding cache retention skipped this run (PermissionError" in m for m in messages)
