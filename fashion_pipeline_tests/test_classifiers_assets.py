"""Real materialization of product_clusters / clustering_metrics / classifier_leaderboard /
attribute_classifiers on the embedded sample, then loading a serving model from the model store."""

from __future__ import annotations

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_pipeline.core.encoders.io import read_embeddings
from fashion_pipeline.core.features import with_embeddings
from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline_tests.conftest import SAMPLE_ROOT
from fashion_pipeline.checks import classifier_gate_check
from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, assets_by_name, defs, materialize, resources_for
from fashion_pipeline_tests.fixtures.real_products import encode

pytestmark = pytest.mark.slow


def _write_embeddings(products, path):
    """product_embeddings in the embedding stage's Parquet schema, from the real offline encoders."""
    with_image = products[products["image_path"].notna()]
    image, text = encode(with_image)
    img_col = {pid: v for pid, v in zip(with_image["product_id"], image)}
    txt_col = {pid: v for pid, v in zip(with_image["product_id"], text)}
    ids = products["product_id"].tolist()
    from fashion_pipeline.core.encoders.io import embeddings_schema

    schema = embeddings_schema({"image_dim": image.shape[1], "text_dim": text.shape[1], "backend": "offline",
                                "aligned": "false"})
    table = pa.table({
        "product_id": pa.array(ids, pa.string()),
        "image_embedding": pa.array([img_col[i].tolist() if i in img_col else None for i in ids], pa.list_(pa.float32())),
        "text_embedding": pa.array([txt_col[i].tolist() if i in txt_col else None for i in ids], pa.list_(pa.float32())),
        "image_status": pa.array(["ok" if i in img_col else "missing" for i in ids], pa.string()),
        "text_status": pa.array(["ok" if i in txt_col else "missing" for i in ids], pa.string()),
    }).cast(schema)
    pq.write_table(table, path)


def _run(names, var, run_config):
    """Materialize with the blocking classifier gate, as the code location does."""
    return dg.materialize(assets_by_name(*names) + [classifier_gate_check], resources=resources_for(SAMPLE_ROOT, var),
                          run_config=run_config, raise_on_error=False)


def test_materialize_clustering_and_classifiers_on_the_sample(tmp_path):
    var = tmp_path / "var"
    materialize(INGEST_CHAIN, SAMPLE_ROOT, var)
    wh = str(var / "warehouse.duckdb")
    with duckdb.connect(wh, read_only=True) as con:
        products = con.sql("select * from clean_products").df()
    emb = tmp_path / "product_embeddings.parquet"
    _write_embeddings(products, emb)

    run_config = {"ops": {
        "product_clusters": {"config": {"embeddings_path": str(emb), "dec_pretrain_epochs": 3, "dec_max_iter": 200}},
        # The neural models as model_selection_job names them (the default lists leave them out).
        "classifier_leaderboard": {"config": {"embeddings_path": str(emb), "neural_epochs": 6,
                                              "neural_models": ["image_cnn", "multimodal_cnn", "clip_fusion"],
                                              "classical_models": ["linear_svc", "complement_nb", "lightgbm"]}},
    }}
    names = ["product_clusters", "clustering_metrics", "classifier_leaderboard", "attribute_classifiers",
             "published_classifiers"]
    # The chain is run again (deterministic, cheap on the sample) so the selection is self-contained.
    result = _run([*INGEST_CHAIN, *names], var, run_config)
    assert result.success

    with duckdb.connect(wh, read_only=True) as con:
        clusters = con.sql("select * from product_clusters").df()
        cmetrics = con.sql("select * from clustering_metrics").df()
        lb = con.sql("select * from classifier_leaderboard").df()
        stored = con.sql("select * from attribute_classifiers").df()
    n_images = int(products["image_path"].notna().sum())
    assert len(clusters) == n_images  # every product with both embeddings, once
    assert set(cmetrics["method"]) == {"kmeans", "gmm", "dec"}
    assert cmetrics["nmi"].between(0, 1).all()
    # every task x regime has results; sparse and image regimes never beat... nothing assumed, just present
    assert set(lb["regime"]) == {"full", "sparse", "image"}
    assert set(lb["task"]) == {"category", "gender", "usage"}
    assert {"image_cnn", "multimodal_cnn", "clip_fusion"} <= set(lb["model"])
    test = products[products["split"] == "test"]
    for task in ("category", "gender", "usage"):
        n = lb[(lb.task == task) & (lb.source == "all")]["n"]
        assert (n == int(test[task].notna().sum())).all()
    # the best full-listing category model is far better than chance on real data
    best = lb[(lb.task == "category") & (lb.regime == "full") & (lb.source == "all")]["accuracy"].max()
    assert best > 0.7

    mat = result.asset_materializations_for_node("classifier_leaderboard")
    meta = {k: v for m in mat for k, v in m.metadata.items()}
    assert "confusion/category" in meta and "data:image/png;base64," in meta["confusion/category"].value
    assert meta["excluded_null_label/usage"].value == int(products["usage"].isna().sum())
    # how each regime's classical fits ran: LinearSVC beside Complement NB where there are two cores, LightGBM
    # (its own threads) after them
    from fashion_pipeline.core.threads import available_cores

    fits = meta["classical_fits"].value  # (attribute_classifiers' metadata: an output of the same node)
    assert {r: f["how"] for r, f in fits.items()} == {r: (
        "two lanes: 3 liblinear fits beside 3 other single-threaded ones, then 3 alone" if available_cores() >= 2
        else "one after another") for r in ("full", "sparse", "image")}

    # The gate compared each candidate with the linear baseline (nothing published before); those it
    # accepted are published, a refused one (if any) is not, and the check says which and why.
    gate1 = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}["classifier_gate"]
    assert stored["published_version_before"].isna().all() and stored["baseline_model"].eq("linear_svc").all()
    store = ModelStore(var / "models")
    assert len(stored) == 9
    refused = set(gate1.metadata["refused"].value)
    assert gate1.passed == (not refused) and set(gate1.metadata["accepted"].value) == set(stored["name"]) - refused
    for r in stored.itertuples():
        worse = r.model != "linear_svc" and r.test_macro_f1 < 0.98 * r.baseline_test_macro_f1
        assert (r.name in refused) == worse, r.name
        assert (store.published(r.name) or {}).get("version") == (None if worse else r.version)
    assert "category_classifier" not in refused

    # scoring's path: load the published model and predict
    clf, info = store.load("category_classifier")
    assert info["version"] == stored.set_index("name").loc["category_classifier", "version"]
    ids, image, text = read_embeddings(emb)
    frame = with_embeddings(test, ids, image, text)
    pred = clf.predict(frame)
    acc = float((pred["label"].to_numpy() == test["category"].to_numpy()).mean())
    # the stored model reproduces exactly the test accuracy recorded for it
    assert acc == pytest.approx(info["metrics"]["test"]["all"]["accuracy"])
    assert np.allclose(clf.predict_proba(frame).sum(axis=1), 1.0)

    # A much worse candidate set (a selection among Complement NB on 60 training rows; a retrain would
    # retrain the published choices): the published models, re-scored on the same test split, beat it:
    # those candidates are refused and their published versions stay.
    worse = {"ops": {"classifier_leaderboard": {"config": {
        "embeddings_path": str(emb), "mode": "select", "classical_models": ["complement_nb"], "neural_models": [],
        "max_train_rows": {"complement_nb": 60}}}}}
    r2 = _run([*INGEST_CHAIN, "classifier_leaderboard", "attribute_classifiers", "published_classifiers"], var, worse)
    gate2 = {e.asset_check_key.name: e for e in r2.get_asset_check_evaluations()}["classifier_gate"]
    assert not gate2.passed and "REFUSED" in gate2.metadata["decision"].value
    with duckdb.connect(wh, read_only=True) as con:
        cand2 = con.sql("select * from attribute_classifiers").df()
    refused2 = set(gate2.metadata["refused"].value)
    prev = {r.name: (None if r.name in refused else r.version) for r in stored.itertuples()}
    for r in cand2.itertuples():
        # a candidate re-scored below the published model (beyond 2%) is refused and the old version stays
        if pd.notna(r.published_test_macro_f1) and r.test_macro_f1 < 0.98 * r.published_test_macro_f1:
            assert r.name in refused2, r.name
        expected = prev[r.name] if r.name in refused2 else r.version
        assert (store.published(r.name) or {}).get("version") == expected, r.name
    assert "category_classifier" in refused2
    assert store.published("category_classifier")["version"] == stored.set_index("name").loc["category_classifier", "version"]

    # A retrain (the schedule's mode) on the same rows: a pair whose choice is not linear is gated against
    # the linear_svc baseline the selection stored, re-scored on the test split (the same rows, so the
    # first run's leaderboard figure), and no baseline is fitted or stored again; a linear choice is
    # its own reference.
    before = {n: store.versions(n) for n in store_names(var / "models") if n.endswith("_baseline")}
    assert before and all(len(v) == 1 for v in before.values())  # run 1 stored one per non-linear choice
    r3 = _run([*INGEST_CHAIN, "classifier_leaderboard", "attribute_classifiers"], var, {"ops": {
        "classifier_leaderboard": {"config": {"embeddings_path": str(emb), "neural_epochs": 6}}}})
    assert r3.success
    with duckdb.connect(wh, read_only=True) as con:
        cand3 = con.sql("select * from attribute_classifiers").df()
    notes = [m.metadata["baselines"].value for m in r3.asset_materializations_for_node("classifier_leaderboard")
             if m.asset_key == dg.AssetKey("attribute_classifiers")][0]
    first = lb[(lb.model == "linear_svc") & (lb.source == "all")].set_index(["task", "regime"])["macro_f1"]
    rescored = 0
    for r in cand3.itertuples():
        if r.model in ("linear_svc", "logreg"):
            assert r.baseline_model == r.model, r.name
            continue
        assert r.baseline_model == "linear_svc"
        # Fitted again or re-scored, the same rows give the first run's linear_svc figure.
        assert r.baseline_test_macro_f1 == pytest.approx(first[(r.task, r.regime)], abs=1e-12)
        note = notes[f"{r.task}/{r.regime}"]
        if f"{r.name}_baseline" in before:
            assert note.startswith(f"re-scored {r.name}_baseline {before[f'{r.name}_baseline'][0]}"), note
            rescored += 1
        else:  # run 2 published a non-linear model where run 1 served a linear one: nothing stored yet
            assert note.startswith(f"fitted, stored as {r.name}_baseline"), note
    assert rescored > 0
    assert {n: store.versions(n) for n in before} == before


def store_names(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def test_assets_are_in_the_code_location():
    keys = {k.path[-1] for a in defs.assets for k in getattr(a, "keys", [])}
    assert {"product_clusters", "clustering_metrics", "classifier_leaderboard", "attribute_classifiers",
            "published_classifiers"} <= keys
