"""The weekly retraining job for real, end to end, on a copy of the embedded sample.

A first refresh_job run (what the new-raw-files sensor starts) builds and publishes everything
from a sample with some Kaggle products held back. Those products are then added to the raw
files; ingest_job rebuilds the clean table and the schedule's own run request (weekly_retraining
-> retraining_job) retrains: every model in the store gets a new version, the price model is
republished, and the new products have attributes, embeddings and (listed in the incoming folder)
scores. Model configurations are small (run_config) to keep it cheap; the code paths are the real ones.
"""

import re
import shutil
from datetime import datetime, timezone

import dagster as dg
import duckdb
import pandas as pd
import pytest

from fashion_pipeline.assets.regressors import RECIPES_NAME
from fashion_pipeline.core import scoring
from fashion_pipeline.core.encoders.io import read_embedding_metadata, read_embeddings
from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.core.pricing.features import char_text_vectorizer, price_text_vectorizer
from fashion_pipeline.core.token_counts import TokenCaches
from fashion_pipeline.definitions import all_asset_checks, all_assets
from fashion_pipeline.jobs import ALL_JOBS
from fashion_pipeline.resources.encoders import EncoderResource
from fashion_pipeline.schedules import build_retraining_schedule
from fashion_pipeline_tests.conftest import KAGGLE
from fashion_pipeline_tests.fixtures.runs import resources_for

N_NEW = 12
CLUSTERER = "product_clusterer"


def _run_config(incoming) -> dict:
    return {"ops": {
        "classifier_leaderboard": {"config": {"classical_models": ["linear_svc", "complement_nb"], "neural_models": []}},
        "product_clusters": {"config": {"methods": ["kmeans"]}},
        # Ridge alone: on the sample's ~150 test listings a LightGBM retrained on 12 more products moved
        # test RMSLE by 1.5% — beyond the gate's 1% — and whether LightGBM or ridge wins the first run's
        # selection on ~750 training rows turns on LSQR's stopping point. A ridge retrain moves by < 0.1%,
        # so the gate's refusal path is not what this test exercises (test_pricing_assets / test_pricing_listing do).
        "regressor_metrics": {"config": {"models": ["ridge"], "blend": False}},
        "scored_listings": {"config": {"incoming_dir": str(incoming)}},
        "product_embeddings": {"config": {"plot_sample": 0}},
    }}


def _execute(d: dg.Definitions, job: str, instance, run_config, tags=None) -> dg.ExecuteInProcessResult:
    result = d.resolve_job_def(job).execute_in_process(run_config=run_config, instance=instance, tags=tags,
                                                       raise_on_error=False)
    failures = [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert result.success, failures
    return result


def _table(var, sql: str):
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(sql).df()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_weekly_retraining_retrains_republishes_and_scores_new_products(sample_copy, tmp_path):
    var = tmp_path / "var"
    styles = sample_copy / KAGGLE / "styles.csv"
    header, *rows = styles.read_text(encoding="utf-8").splitlines(keepends=True)
    held_back = [r for r in rows if (sample_copy / KAGGLE / "images" / f"{r.split(',', 1)[0]}.jpg").exists()][-N_NEW:]
    new_ids = [r.split(",", 1)[0] for r in held_back]
    styles.write_text(header + "".join(r for r in rows if r not in held_back), encoding="utf-8")
    # The new products are also listed for sale: a Kaggle-layout folder in the incoming listings.
    incoming = tmp_path / "incoming"
    shop = incoming / "shop"
    (shop / "styles").mkdir(parents=True)
    (shop / "images").mkdir()
    (shop / "styles.csv").write_text(header + "".join(held_back), encoding="utf-8")
    for i in new_ids:
        shutil.copy(sample_copy / KAGGLE / "styles" / f"{i}.json", shop / "styles" / f"{i}.json")
        shutil.copy(sample_copy / KAGGLE / "images" / f"{i}.jpg", shop / "images" / f"{i}.jpg")

    resources = resources_for(sample_copy, var, encoder=EncoderResource(
        output_dir=str(var / "embeddings"), cache_dir=str(var / "cache" / "embeddings")))
    d = dg.Definitions(assets=all_assets, asset_checks=all_asset_checks, jobs=ALL_JOBS, resources=resources)
    store = ModelStore(var / "models")
    cfg = _run_config(incoming)

    with dg.instance_for_test() as instance:
        # 1. Everything downstream of the raw files, as the sensor starts it: models published.
        _execute(d, "refresh_job", instance, cfg)
        names = sorted(p.name for p in (var / "models").iterdir() if p.is_dir() and store.versions(p.name))
        assert scoring.PRICE_MODEL_NAME in names and any(n.endswith("_classifier") for n in names)
        before = {n: store.versions(n)[-1] for n in names}
        published_before = {n: (store.published(n) or {}).get("version") for n in names}
        assert published_before[scoring.PRICE_MODEL_NAME] is not None
        clean_before = set(_table(var, "select product_id from clean_products")["product_id"])

        # 2. New products arrive; the clean table is rebuilt; the weekly schedule fires.
        styles.write_text(header + "".join(rows), encoding="utf-8")
        _execute(d, "ingest_job", instance, {})
        new_products = set(_table(var, "select product_id from clean_products")["product_id"]) - clean_before
        assert len(new_products) == N_NEW
        sched = build_retraining_schedule()
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(
                2026, 11, 30, 3, 0, tzinfo=timezone.utc)) as ctx:
            request = sched.evaluate_tick(ctx).run_requests[0]
        result = _execute(d, sched.job_name, instance, cfg, tags=request.tags)
        emb_file = var / "embeddings" / "product_embeddings.parquet"
        emb_stat = (emb_file.stat().st_size, emb_file.stat().st_mtime_ns)
        classifiers_table = _table(var, "select * from attribute_classifiers")
        versions_after_retrain = {n: store.versions(n) for n in names}
        published_after_retrain = {n: (store.published(n) or {}).get("version") for n in names}

        # 3. The schedule fires again with nothing changed but the clustering seed: only the clustering
        # recomputes; every other stage reuses what the retrain computed.
        cfg3 = {"ops": {**cfg["ops"], "product_clusters": {"config": {"methods": ["kmeans"], "seed": 1}}}}
        again = _execute(d, sched.job_name, instance, cfg3, tags=request.tags)

    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert {"product_attributes", "product_embeddings", "attribute_classifiers",
            "published_classifiers", "product_clusters", "regressor_metrics", "published_price_regressor",
            "scored_listings"} <= materialized
    # A retrain, not a selection: each classifier and each price form retrained the model published before
    # (nothing else trained), and the selection run's leaderboard was left as it was.
    assert "classifier_leaderboard" not in materialized
    assert set(_table(var, "select distinct model from classifier_leaderboard")["model"]) == {"linear_svc", "complement_nb"}
    meta = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["regressor_metrics"]["mode"].value.startswith("retrain: retraining the published")
    # The retrain's TF-IDF read the first run's term counts: only texts it had not seen were tokenised (the
    # new products', and for the price text the brand-hidden views its random masks drew anew). The price
    # training's files, by analyser: the price text's words and the source router's (under a quarter of their
    # texts new), and H&M's character n-grams (no new H&M product, only redrawn masks: a larger share of H&M's
    # few texts, but still fewer than the file gave).
    namer = TokenCaches(tmp_path / "token_names", "price_training")
    word_file, char_file = (namer.memo_for(v)._cache.name for v in (price_text_vectorizer(), char_text_vectorizer()))
    assert word_file != char_file
    for asset, key, share, default in (("regressor_metrics", "price_training_tokens", {char_file: 1}, 4),
                                       ("attribute_extractor", "text_tokenisation", {}, 20)):
        files = meta[asset][key].value
        assert files and all("counts read" in t["cache"] and t["texts_tokenised"] < t["texts_from_cache"] / share.get(f, default)
                             for f, t in files.items()), (asset, files)
        assert sum(t["texts_tokenised"] for t in files.values()) > 0, asset  # the new products' texts
    assert {word_file, char_file} <= set(meta["regressor_metrics"]["price_training_tokens"].value)
    # The extractor's prepared catalogue texts came from the first run's file too (the new products' are added).
    assert re.fullmatch(r"extractor_prepared_texts\.pkl: [1-9]\d* prepared texts read",
                        str(meta["attribute_extractor"]["prepared_texts"].value))
    # ...and so did its listing evaluation, per analyser (the test listings are the first run's, and a few new ones).
    eval_tokens = meta["regressor_metrics"]["listing_eval_tokens"].value
    assert len(eval_tokens) >= 2 and all(t["texts_tokenised"] < t["texts_from_cache"] / 10 for t in eval_tokens.values())
    assert meta["attribute_classifiers"]["mode"].value.startswith("retrain: retraining the published")
    price_before = store.info(scoring.PRICE_MODEL_NAME, published_before[scoring.PRICE_MODEL_NAME])
    price_after = store.info(scoring.PRICE_MODEL_NAME, after_version := store.versions(scoring.PRICE_MODEL_NAME)[-1])
    assert price_after["features_spec"]["forms"] == price_before["features_spec"]["forms"], after_version
    # Its title-only form was trained on title vectors, and says so for scoring; the retrain encoded only the
    # new products' titles, the others it read from the embedding stage's cache (the first run's).
    assert price_after["features_spec"]["sparse_text"] == "title embedding (features.title_texts)"
    assert price_after["features_spec"]["char_ngrams"] == {"full": ["hm"]}  # the default config's
    titles = meta["regressor_metrics"]["price_training_title_vectors"].value
    assert titles["text_encoded"] <= N_NEW < titles["text_from_cache"], titles
    assert {(r["form"], r["model"]) for r in price_after["metrics"]["validation"]} == set(
        price_before["features_spec"]["forms"].items())
    for n in [m for m in names if "_classifier" in m and published_before[m]]:
        was = store.info(n, published_before[n])["features_spec"]["model"]
        assert store.info(n, store.versions(n)[-1])["features_spec"]["model"] == was, n
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["price_regressor_gate"] is True and "classifier_gate" in checks

    # Every model in the store was retrained (a new version), and the price model republished.
    # (The TF-IDF recipes the price gate compares with are a reference, not a model: a retrain re-scores the
    # stored ones while the train split moved by at most recipe_max_change.)
    after = {n: store.versions(n)[-1] for n in names}
    assert all(after[n] != before[n] for n in names if n != RECIPES_NAME), (before, after)
    assert meta["regressor_metrics"]["listing_recipes"].value.startswith(f"re-scored {RECIPES_NAME} {before[RECIPES_NAME]} (")
    published_price = store.published(scoring.PRICE_MODEL_NAME)["version"]
    assert published_price == after[scoring.PRICE_MODEL_NAME] != published_before[scoring.PRICE_MODEL_NAME]
    republished = [n for n in names if n != scoring.PRICE_MODEL_NAME
                   and (store.published(n) or {}).get("version") == after[n]]
    assert republished, "no classifier was republished"

    # The new products went through extraction and embedding, and their listings were scored.
    attrs = _table(var, "select * from product_attributes")
    assert new_products <= set(attrs["product_id"])
    ids, image, text = read_embeddings(var / "embeddings" / "product_embeddings.parquet")
    assert new_products <= set(ids)
    # Each retrained model records the encoder behind those embeddings, which scoring rebuilds and checks.
    meta = read_embedding_metadata(var / "embeddings" / "product_embeddings.parquet")
    for n in [m for m in names if m == scoring.PRICE_MODEL_NAME or "_classifier" in m]:
        rec = store.info(n, after[n])["features_spec"]["encoder"]
        assert (rec["backend"], rec["image_identity"], rec["text_identity"]) == (
            "offline", meta["image_identity"], meta["text_identity"]), n
    # 3. Nothing retrained: no new version of any model, the same ones published, the same candidates and
    # embeddings file; each stage says which run computed what it re-emitted; the clustering recomputed.
    models = [n for n in names if n != CLUSTERER]
    assert {n: store.versions(n) for n in models} == {n: versions_after_retrain[n] for n in models}
    assert {n: (store.published(n) or {}).get("version") for n in names} == published_after_retrain
    assert (emb_file.stat().st_size, emb_file.stat().st_mtime_ns) == emb_stat
    pd.testing.assert_frame_equal(_table(var, "select * from attribute_classifiers"), classifiers_table)
    meta3 = {e.asset_key.path[-1]: e.materialization.metadata for e in again.get_asset_materialization_events()}
    for asset in ("attribute_extractor", "product_attributes", "product_embeddings", "attribute_classifiers",
                  "regressor_metrics", "price_comparables"):
        assert meta3[asset]["reused_from_run"].value == result.run_id, asset
    assert "reused_from_run" not in meta3["product_clusters"] and "reused_from_run" not in meta3["clustering_metrics"]
    meta2 = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    # The comparables index of the retrained price model is the previous one with the new priced catalogue
    # products added (the old products' embeddings were reused, so unchanged).
    indexed_new = new_products & set(_table(var, "select product_id from clean_products where split in "
                                                 "('train', 'validation') and price_status = 'ok'")["product_id"])
    assert indexed_new and meta2["price_comparables"]["built"].value.startswith(
        f"extended price_comparables {before['price_comparables']}: added {len(indexed_new)} products to the ")
    assert meta3["product_clusters"]["input_fingerprint"].value != meta2["product_clusters"]["input_fingerprint"].value
    # Each clustering continued from the clusterer the run before it stored (cluster numbers keep their
    # meaning), and stored its own.
    assert meta2["product_clusters"]["start"].value == (
        f"continuing from {CLUSTERER} {before[CLUSTERER]} (its projection, centres and DEC autoencoder; methods ['kmeans'])")
    assert meta3["product_clusters"]["start"].value.startswith(
        f"continuing from {CLUSTERER} {meta2['product_clusters']['clusterer_version'].value} ")
    assert store.versions(CLUSTERER)[-2:] == [meta2["product_clusters"]["clusterer_version"].value,
                                              meta3["product_clusters"]["clusterer_version"].value]
    # The price model's training and its listing evaluation are both reused: the retrain evaluated it
    # beside the classifiers it had just republished (published_classifiers runs first), and the
    # candidate since published keeps the comparison that gated it.
    assert meta3["regressor_metrics"]["candidate_trained_in_run"].value == result.run_id
    assert meta3["regressor_metrics"]["candidate_version"].value == after[scoring.PRICE_MODEL_NAME]
    assert meta3["regressor_metrics"]["published_version_before"].value == published_before[scoring.PRICE_MODEL_NAME]

    scored = _table(var, "select * from scored_listings")
    shop_rows = scored[scored["listing_id"].astype(str).str.startswith("shop/") |
                       scored["listing_id"].astype(str).isin(new_ids)]
    assert len(shop_rows) == N_NEW, scored["listing_id"].head().tolist()
    assert shop_rows["price_usd"].notna().any()
    assert shop_rows["category"].notna().all()
