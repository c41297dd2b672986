"""Comparable catalogue products (core.comparables) with the real faiss library.

Expected neighbours and similarities are computed here by brute force with numpy from the
definition in core/comparables.py's docstring (mean cosine over the modalities the query has; a
modality the catalogue row lacks counts 0), never through the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fashion_pipeline import cli
from fashion_pipeline.core import comparables as cmp
from fashion_pipeline.core import scoring
from fashion_pipeline.core.comparables import ComparablesDimensionError, ComparablesIndex
from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.core.pricing.features import IMAGE_DIM, TEXT_DIM

DI, DT = 6, 4  # tiny image / text widths for the hand-made cases


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _expected(q_img, q_txt, cat_img, cat_txt, k):
    """Brute-force [(row, similarity)] most similar first, from the definition (catalogue rows
    with neither embedding are not candidates)."""
    sims = {}
    for r in range(len(cat_img)):
        if np.isnan(cat_img[r]).any() and np.isnan(cat_txt[r]).any():
            continue
        parts = []
        for q, c in ((q_img, cat_img[r]), (q_txt, cat_txt[r])):
            if q is None or np.isnan(q).any():
                continue
            parts.append(0.0 if np.isnan(c).any() else _cos(q, c))
        sims[r] = np.mean(parts)
    order = sorted(sims, key=lambda r: -sims[r])[:k]
    return [(r, sims[r]) for r in order]


@pytest.fixture
def tiny():
    """12 catalogue products; row 3 has no photo, row 7 no text, row 11 neither."""
    rng = np.random.default_rng(7)
    n = 12
    img = rng.standard_normal((n, DI)).astype(np.float32) * rng.uniform(0.5, 3, (n, 1)).astype(np.float32)
    txt = rng.standard_normal((n, DT)).astype(np.float32)
    img[3] = np.nan
    txt[7] = np.nan
    img[11] = txt[11] = np.nan
    items = pd.DataFrame({"product_id": [f"p{i}" for i in range(n)], "title": [f"item {i}" for i in range(n)],
                          "price_usd": np.arange(1, n + 1) * 10.0, "source": ["kaggle", "hm"] * (n // 2),
                          "category": "Topwear"})
    return items, img, txt


def test_nearest_neighbour_of_a_catalogue_row_is_itself_with_similarity_one(tiny):
    items, img, txt = tiny
    index = ComparablesIndex.build(items, img, txt)
    assert index.size == 11 and index.dimension == DI + DT  # the row with neither embedding is left out
    assert index.info["rows_without_embedding"] == 1
    assert (index.info["rows_image_only"], index.info["rows_text_only"]) == (1, 1)
    res = index.search_embeddings(img, txt, k=1)
    for r in range(11):
        assert res[r][0]["product_id"] == f"p{r}"
        assert res[r][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
        assert res[r][0]["title"] == f"item {r}" and res[r][0]["price_usd"] == (r + 1) * 10.0
    assert res[11] is None  # no embedding: no comparables


@pytest.mark.parametrize("mode", ["both", "image_only", "text_only"])
def test_results_match_brute_force_cosine_are_ordered_and_k_is_respected(tiny, mode):
    items, img, txt = tiny
    index = ComparablesIndex.build(items, img, txt)
    rng = np.random.default_rng(1)
    q_img = rng.standard_normal((5, DI)).astype(np.float32)
    q_txt = rng.standard_normal((5, DT)).astype(np.float32)
    if mode == "image_only":
        q_txt[:] = np.nan
    if mode == "text_only":
        q_img = None
    for k in (1, 4, 11):
        got = index.search_embeddings(q_img, q_txt, k=k)
        for j in range(5):
            want = _expected(None if q_img is None else q_img[j], q_txt[j], img, txt, k)
            assert len(got[j]) == k
            assert [h["product_id"] for h in got[j]] == [f"p{r}" for r, _ in want]
            np.testing.assert_allclose([h["similarity"] for h in got[j]], [s for _, s in want], atol=1e-5)
            sims = [h["similarity"] for h in got[j]]
            assert sims == sorted(sims, reverse=True)
    # k beyond the index size gives every indexed product once; k = 0 gives nothing.
    assert len(index.search_embeddings(q_img, q_txt, k=50)[0]) == 11
    assert index.search_embeddings(q_img, q_txt, k=0)[0] == []


def test_save_load_round_trip_gives_identical_results(tiny, tmp_path):
    items, img, txt = tiny
    index = ComparablesIndex.build(items, img, txt)
    q = np.random.default_rng(2).standard_normal((8, DI + DT)).astype(np.float32)
    before = index.search(q, k=5)
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted([cmp.INDEX_FILE, cmp.ITEMS_FILE, cmp.META_FILE])
    loaded = ComparablesIndex.load(tmp_path / "idx")
    assert (loaded.size, loaded.dimension, loaded.dims) == (index.size, index.dimension, index.dims)
    assert loaded.search(q, k=5) == before


def test_dimension_mismatch_is_a_clear_error(tiny):
    items, img, txt = tiny
    index = ComparablesIndex.build(items, img, txt)
    with pytest.raises(ComparablesDimensionError, match=r"image embeddings of shape \(2, 5\).*image dimension 6"):
        index.search_embeddings(np.ones((2, DI - 1), np.float32), np.ones((2, DT), np.float32))
    with pytest.raises(ComparablesDimensionError, match=r"text dimension 4"):
        index.query_vectors(None, np.ones((2, 384), np.float32))
    with pytest.raises(ComparablesDimensionError, match=r"index has dimension 10"):
        index.search(np.ones((2, 7), np.float32), k=3)


def test_load_refuses_files_that_do_not_belong_together(tiny, tmp_path):
    items, img, txt = tiny
    ComparablesIndex.build(items, img, txt).save(tmp_path / "idx")
    items.iloc[:3].to_parquet(tmp_path / "idx" / cmp.ITEMS_FILE, index=False)
    with pytest.raises(ValueError, match="does not match its metadata"):
        ComparablesIndex.load(tmp_path / "idx")


def test_comparables_columns_json_median_and_reasons(tiny):
    items, img, txt = tiny
    index = ComparablesIndex.build(items, img, txt)
    q_img, q_txt = img[[0, 11, 5]].copy(), txt[[0, 11, 5]].copy()
    cols, counts = cmp.comparables_columns(index, q_img, q_txt, 3, k=3)
    assert counts == {"k": 3, "with_comparables": 2, "none/no_embedding": 1}
    first = json.loads(cols["comparables"][0])
    want = _expected(img[0], txt[0], img, txt, 3)
    assert [c["product_id"] for c in first] == [f"p{r}" for r, _ in want]
    assert set(first[0]) == {"product_id", "title", "price_usd", "source", "similarity"}
    assert cols["comparables_median_price_usd"][0] == pytest.approx(np.median([(r + 1) * 10.0 for r, _ in want]))
    assert cols["comparables"][1] is None and np.isnan(cols["comparables_median_price_usd"][1])
    assert cmp.comparables_columns(None, q_img, q_txt, 3, k=3)[1]["none/no_index"] == 3
    assert cmp.comparables_columns(index, q_img, q_txt, 3, k=0)[1]["none/disabled"] == 3
    assert cmp.comparables_columns(index, None, None, 3, k=3)[1]["none/no_embedding"] == 3


def test_catalogue_items_take_priced_train_and_validation_rows_never_test():
    products = pd.DataFrame({
        "product_id": ["a", "b", "c", "d", "e"], "title": list("ABCDE"), "source": "kaggle",
        "split": ["train", "validation", "test", "train", "train"],
        "price_usd": [10.0, 20.0, 30.0, np.nan, 50.0], "price_status": ["ok", "ok", "ok", "missing", "ok"]})
    ids = ["e", "c", "a", "b"]  # embeddings in another order; "d" has none
    image = np.arange(4 * DI, dtype=np.float32).reshape(4, DI)
    text = np.arange(4 * DT, dtype=np.float32).reshape(4, DT)
    items, img, txt = cmp.catalogue_items(products, (ids, image, text))
    assert items["product_id"].tolist() == ["a", "b", "e"]
    np.testing.assert_array_equal(img, image[[2, 3, 0]])
    np.testing.assert_array_equal(txt, text[[2, 3, 0]])


def test_store_keeps_the_index_with_the_price_model_version_it_serves(tiny, tmp_path):
    items, img, txt = tiny
    store = ModelStore(tmp_path / "models")
    index = ComparablesIndex.build(items, img, txt)
    v1 = cmp.save_to_store(store, index, "price-v1")
    loaded, info, note = cmp.load_for_price_model(store, "price-v1")
    assert info["version"] == v1 and info["features_spec"]["price_model_version"] == "price-v1"
    q = img[:2], txt[:2]
    assert loaded.search_embeddings(*q, k=3) == index.search_embeddings(*q, k=3)
    # A newer price model without its own index: no comparables, and the note says which asset to run.
    none, _, note = cmp.load_for_price_model(store, "price-v2")
    assert none is None and "price-v2" in note and cmp.COMPARABLES_NAME in note
    # The index of an older price model stays usable for it after a newer one is published.
    cmp.save_to_store(store, ComparablesIndex.build(items.iloc[:5], img[:5], txt[:5]), "price-v2")
    assert cmp.load_for_price_model(store, "price-v2")[0].size == 5
    assert cmp.load_for_price_model(store, "price-v1")[0].size == 11
    # A damaged artefact is never served.
    (store.root / cmp.COMPARABLES_NAME / v1 / cmp.INDEX_FILE).write_bytes(b"garbage")
    none, _, note = cmp.load_for_price_model(store, "price-v1")
    assert none is None and "checksum mismatch" in note
    # A PUBLISHED marker naming a version that is gone does not hide the intact ones.
    (store.root / cmp.COMPARABLES_NAME / "PUBLISHED").write_text("19700101T000000-000000")
    assert cmp.load_for_price_model(store, "price-v2")[0].size == 5


def test_openblas_hint_follows_the_cpu_flags():
    assert cmp.openblas_coretype_hint("flags\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl avx512dq\n") == "SkylakeX"
    assert cmp.openblas_coretype_hint("flags\t: fpu sse2 avx avx2 fma\n") == "Haswell"
    assert cmp.openblas_coretype_hint("flags\t: fpu sse2\n") is None


# ---- through score_listings and the CLI, with a real (small) price model -----------------------

@pytest.fixture(scope="module")
def catalogue():
    """The embedded sample's clean products, a ridge listing price model trained on them, and
    synthetic per-product embeddings (a real encoder is not needed to test the lookup)."""
    from fashion_pipeline.core.pricing.training import train_price_models
    from fashion_pipeline_tests.test_pricing_core import clean_sample

    products = clean_sample()
    model = train_price_models(products, None, models=("ridge",), blend=False, progress=lambda *a: None).model
    rng = np.random.default_rng(3)
    ids = products["product_id"].astype(str).tolist()
    # The widths the price model's featurizer expects (EfficientNet-Lite0 image, MiniLM text).
    image = rng.standard_normal((len(ids), IMAGE_DIM)).astype(np.float32)
    text = rng.standard_normal((len(ids), TEXT_DIM)).astype(np.float32)
    return products, model, (ids, image, text)


def _embedder_near(emb, noise: float = 0.05):
    """Listings embedded as their own catalogue product plus a little noise (seeded)."""
    ids, image, text = emb
    pos = {p: i for i, p in enumerate(ids)}
    rng = np.random.default_rng(4)

    def embed(df, attributes):
        rows = [pos[p] for p in df["product_id"]]
        img = image[rows] + noise * rng.standard_normal((len(rows), image.shape[1])).astype(np.float32)
        txt = text[rows] + noise * rng.standard_normal((len(rows), text.shape[1])).astype(np.float32)
        return df["product_id"].tolist(), img, txt, [None] * len(rows)

    return embed


def test_score_listings_gives_k_comparables_from_the_catalogue(catalogue):
    products, model, emb = catalogue
    items, img, txt = cmp.catalogue_items(products, emb)
    index = ComparablesIndex.build(items, img, txt)
    listings = products[products["split"] == "train"].head(6).drop(columns=["price_usd"]).reset_index(drop=True)
    scores, counts = scoring.score_listings(listings, model, {"version": "v"}, embedder=_embedder_near(emb),
                                            comparables_index=index, comparables_k=4)
    assert list(scores.columns) == list(scoring.OUTPUT_COLUMNS)
    assert counts["comparables"] == {"k": 4, "with_comparables": 6}
    catalogue_ids = set(products.loc[products["split"].isin(["train", "validation"]), "product_id"])
    for pid, js, med in zip(scores["listing_id"], scores["comparables"], scores["comparables_median_price_usd"]):
        found = json.loads(js)
        assert len(found) == 4 and {c["product_id"] for c in found} <= catalogue_ids
        assert found[0]["product_id"] == pid  # its own catalogue product is the closest
        sims = [c["similarity"] for c in found]
        assert sims == sorted(sims, reverse=True)
        price = products.set_index("product_id")["price_usd"]
        assert med == pytest.approx(np.median([price[c["product_id"]] for c in found]), abs=0.01)
    # Test-split products are never cited, even when the listing is one of them.
    test_rows = products[products["split"] == "test"].head(5).reset_index(drop=True)
    scores, _ = scoring.score_listings(test_rows, model, {}, embedder=_embedder_near(emb), comparables_index=index)
    assert all(c["product_id"] in catalogue_ids for js in scores["comparables"] for c in json.loads(js))
    # Without an index or without embeddings: null columns and a counted reason.
    scores, counts = scoring.score_listings(listings, model, {}, embedder=None, comparables_index=index)
    assert scores["comparables"].isna().all() and counts["comparables"]["none/no_embedding"] == 6
    scores, counts = scoring.score_listings(listings, model, {}, embedder=_embedder_near(emb))
    assert scores["comparables"].isna().all() and counts["comparables"]["none/no_index"] == 6


def test_cli_prints_comparables_and_warns_once_without_an_index(catalogue, tmp_path, monkeypatch, capsys):
    products, model, emb = catalogue
    store = ModelStore(tmp_path / "models")
    version = store.save(scoring.PRICE_MODEL_NAME, model, {}, {})
    store.publish(scoring.PRICE_MODEL_NAME, version)
    listings = products[products["split"] == "validation"].head(4)
    records = [{"listing_id": p, "title": t, "description": d} for p, t, d in
               zip(listings["product_id"], listings["title"], listings["description"])]
    (tmp_path / "listings.json").write_text(json.dumps(records))
    monkeypatch.setattr(scoring, "encoder_embedder", lambda *a, **k: _embedder_near(emb))
    args = ["score", "--input", str(tmp_path / "listings.json"), "--model-store", str(store.root),
            "--no-extraction", "--no-classifiers"]

    assert cli.main([*args, "--output", str(tmp_path / "a.parquet")]) == 0
    err = capsys.readouterr().err
    assert err.count("no comparables") == 1 and cmp.COMPARABLES_NAME in err
    assert pd.read_parquet(tmp_path / "a.parquet")["comparables"].isna().all()

    items, img, txt = cmp.catalogue_items(products, emb)
    cmp.save_to_store(store, ComparablesIndex.build(items, img, txt), version)
    assert cli.main([*args, "--output", str(tmp_path / "b.csv"), "--comparables", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["comparables"]["with_comparables"] == 4 and out["comparables"]["k"] == 3
    scores = pd.read_csv(tmp_path / "b.csv")
    assert all(len(json.loads(js)) == 3 for js in scores["comparables"])
    assert [json.loads(js)[0]["product_id"] for js in scores["comparables"]] == listings["product_id"].tolist()
    assert scores["comparables_median_price_usd"].notna().all()

    assert cli.main([*args, "--output", str(tmp_path / "c.parquet"), "--comparables", "0"]) == 0
    assert "none/disabled" in json.loads(capsys.readouterr().out)["comparables"]
    # --no-embeddings is the user's choice: counted, not warned about.
    assert cli.main([*args, "--output", str(tmp_path / "d.parquet"), "--no-embeddings"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["comparables"]["none/no_embedding"] == 4 and "comparables" not in captured.err

    # An index built from another encoder's embeddings than the listings get is not searched, and that is said.
    built_on = {"backend": "offline", "options": {}, "image_identity": "img-a:fp32", "text_identity": "txt-a:fp32",
                "image_dim": DI, "text_dim": DT, "precision": "fp32"}
    cmp.save_to_store(store, ComparablesIndex.build(items, img, txt), version, {"encoder": built_on})
    near = _embedder_near(emb)
    monkeypatch.setattr(scoring, "encoder_embedder", lambda *a, **k: near)
    near.encoder = {**built_on, "image_identity": "img-b:fp32"}
    assert cli.main([*args, "--output", str(tmp_path / "e.parquet")]) == 0
    captured = capsys.readouterr()
    assert "built from other embeddings" in json.loads(captured.out)["comparables"]["index"]
    assert "image encoder 'img-a:fp32' vs 'img-b:fp32'" in captured.err
    near.encoder = {**built_on, "image_identity": "img-a:bf16"}  # only the precision differs: used
    assert cli.main([*args, "--output", str(tmp_path / "f.parquet")]) == 0
    assert json.loads(capsys.readouterr().out)["comparables"]["with_comparables"] == 4


def test_price_comparables_asset_builds_from_train_and_validation_and_ties_to_the_published_model(tmp_path):
    import dagster as dg

    from fashion_pipeline.assets.comparables import ComparablesConfig, price_comparables
    from fashion_pipeline.core.encoders.io import EmbeddingsWriter
    from fashion_pipeline.resources.model_store import ModelStoreResource

    rng = np.random.default_rng(5)
    n = 9
    products = pd.DataFrame({"product_id": [f"x{i}" for i in range(n)], "title": [f"t{i}" for i in range(n)],
                             "source": "hm", "price_usd": np.linspace(5, 45, n), "price_status": "ok",
                             "split": ["train"] * 5 + ["validation"] * 2 + ["test"] * 2})
    image = rng.standard_normal((n, 3)).astype(np.float32)
    text = rng.standard_normal((n, 2)).astype(np.float32)
    path = tmp_path / "emb.parquet"
    w = EmbeddingsWriter(path, {"image_dim": "3", "text_dim": "2"})
    w.write(products["product_id"], image, np.ones(n, bool), text, np.ones(n, bool), ["ok"] * n, ["ok"] * n)
    w.commit()
    resource = ModelStoreResource(root=str(tmp_path / "models"))
    store = resource.store()
    store.publish(scoring.PRICE_MODEL_NAME, store.save(scoring.PRICE_MODEL_NAME, {"stand-in": 1}, {}, {}))
    price_version = store.published(scoring.PRICE_MODEL_NAME)["version"]

    result = price_comparables(dg.build_asset_context(), ComparablesConfig(embeddings_path=str(path)), products,
                               resource)
    meta = result.metadata
    assert meta["index_size"].value == 7 and meta["dimension"].value == 5  # 5 train + 2 validation, 3 + 2 dims
    assert meta["build_seconds"].value >= 0 and meta["price_model_version"] == price_version
    index, info, _ = cmp.load_for_price_model(store, price_version)
    assert set(index.items["product_id"]) == {f"x{i}" for i in range(7)}  # never the test rows
    # A test product's own vector finds catalogue products only.
    hits = index.search_embeddings(image[[8]], text[[8]], k=7)[0]
    assert {h["product_id"] for h in hits} == {f"x{i}" for i in range(7)}

    with pytest.raises(dg.Failure, match="test split"):
        price_comparables(dg.build_asset_context(), ComparablesConfig(embeddings_path=str(path),
                                                                      splits=["train", "test"]), products, resource)
    # Without embeddings the asset materializes empty (scoring then counts no_index), it does not fail.
    result = price_comparables(dg.build_asset_context(), ComparablesConfig(embeddings_path=str(tmp_path / "none.pq")),
                               products, resource)
    assert result.metadata["index_size"].value == 0 and "skipped" in result.metadata


def test_scored_listings_asset_loads_the_index_once_and_fills_the_columns(catalogue, tmp_path, monkeypatch):
    import dagster as dg

    from fashion_pipeline.assets.scoring import ScoringConfig, scored_listings
    from fashion_pipeline.resources.model_store import ModelStoreResource

    products, model, emb = catalogue
    resource = ModelStoreResource(root=str(tmp_path / "models"))
    store = resource.store()
    version = store.save(scoring.PRICE_MODEL_NAME, model, {}, {})
    store.publish(scoring.PRICE_MODEL_NAME, version)
    items, img, txt = cmp.catalogue_items(products, emb)
    cmp.save_to_store(store, ComparablesIndex.build(items, img, txt), version)
    listings = products[products["split"] == "train"].head(3)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "batch.json").write_text(json.dumps(
        [{"listing_id": p, "title": t, "description": d} for p, t, d in
         zip(listings["product_id"], listings["title"], listings["description"])]))
    ids, image, text = emb  # the asset prefixes listing ids with the file stem
    monkeypatch.setattr(scoring, "encoder_embedder",
                        lambda *a, **k: _embedder_near(([f"batch/{i}" for i in ids], image, text)))
    loads = []
    real_load = cmp.load_for_price_model
    monkeypatch.setattr(cmp, "load_for_price_model", lambda *a: loads.append(1) or real_load(*a))

    out = scored_listings(dg.build_asset_context(),
                          ScoringConfig(incoming_dir=str(incoming), extract_attributes=False, classify=False,
                                        comparables=2), resource)
    scores = out.value
    assert len(loads) == 1
    assert [json.loads(js)[0]["product_id"] for js in scores["comparables"]] == listings["product_id"].tolist()
    assert all(len(json.loads(js)) == 2 for js in scores["comparables"])
    assert out.metadata["flag_counts"].value["comparables"]["with_comparables"] == 3


def test_a_large_catalogue_gets_a_graph_index_that_finds_the_exact_neighbours(tmp_path):
    """From HNSW_MIN_ROWS rows the index is HNSW (approximate); on clustered vectors, as real
    embeddings are, it returns what brute force returns, and keeps doing so after save / load."""
    rng = np.random.default_rng(3)
    n, centres = 3000, rng.standard_normal((30, DI + DT)).astype(np.float32)
    x = centres[rng.integers(0, 30, n)] + 0.3 * rng.standard_normal((n, DI + DT)).astype(np.float32)
    items = pd.DataFrame({"product_id": [f"p{i}" for i in range(n)], "title": "t", "price_usd": 10.0, "source": "hm"})
    index = ComparablesIndex.build(items, x[:, :DI], x[:, DI:], hnsw_min_rows=1000)
    assert hasattr(index.index, "hnsw") and index.size == n
    q_img, q_txt = x[:200, :DI] + 0.05, x[:200, DI:]
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    brute = (unit(q_img) @ unit(x[:, :DI]).T + unit(q_txt) @ unit(x[:, DI:]).T) / 2
    want = np.argsort(-brute, axis=1)[:, :5]
    got = index.search_embeddings(q_img, q_txt, k=5)
    recall = np.mean([len({int(h["product_id"][1:]) for h in g} & set(w)) / 5 for g, w in zip(got, want)])
    assert recall >= 0.98
    index.save(tmp_path / "idx")
    assert cmp.ComparablesIndex.load(tmp_path / "idx").search_embeddings(q_img, q_txt, k=5) == got
    # Below the threshold: exact.
    assert not hasattr(ComparablesIndex.build(items, x[:, :DI], x[:, DI:]).index, "hnsw")


def test_extending_the_previous_graph_index_with_new_products_finds_what_a_rebuild_finds(tmp_path):
    """A retrain adds the new products onto the previous index (after save / load, as the asset does)
    when every indexed product kept its vector; the neighbours are brute force's, as a rebuild's are."""
    rng = np.random.default_rng(4)
    n, centres = 1200, rng.standard_normal((20, DI + DT)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DI + DT)).astype(np.float32)
    items = pd.DataFrame({"product_id": [f"p{i}" for i in range(n)], "title": "t", "price_usd": 10.0, "source": "hm"})
    old = ComparablesIndex.build(items.iloc[:1100], x[:1100, :DI], x[:1100, DI:], hnsw_min_rows=1000)
    old.save(tmp_path / "old")
    fresh = items.assign(price_usd=np.where(np.arange(n) == 5, 99.0, 10.0))  # a price changed: refreshed
    order = np.r_[n - 1 : 1099 : -1, 0:1100]  # the catalogue in another order: the new rows come first
    ext, how = ComparablesIndex.extend(ComparablesIndex.load(tmp_path / "old"), fresh.iloc[order],
                                       x[order, :DI], x[order, DI:], hnsw_min_rows=1000)
    assert how == "added 100 products to the 1100 of the previous index"
    assert hasattr(ext.index, "hnsw") and ext.size == n and ext.info["extended"] == {"kept": 1100, "added": 100}
    # The previous rows keep their faiss ids; the new ones follow.
    assert ext.items["product_id"].tolist() == [f"p{i}" for i in range(1100)] + [f"p{i}" for i in range(n - 1, 1099, -1)]
    assert ext.items.set_index("product_id").loc["p5", "price_usd"] == 99.0
    q_img, q_txt = x[:, :DI] + 0.05, x[:, DI:]
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    want = np.argsort(-((unit(q_img) @ unit(x[:, :DI]).T + unit(q_txt) @ unit(x[:, DI:]).T) / 2), axis=1)[:, :5]
    got = ext.search_embeddings(q_img, q_txt, k=5)
    recall = np.mean([len({int(h["product_id"][1:]) for h in g} & set(w)) / 5 for g, w in zip(got, want)])
    assert recall >= 0.98
    new_rows = got[1100:]  # each new product finds itself
    assert [g[0]["product_id"] for g in new_rows[:3]] == ["p1100", "p1101", "p1102"]


def test_the_previous_index_is_rebuilt_when_a_product_changed_left_or_the_index_kind_changes(tiny):
    items, img, txt = tiny
    old = ComparablesIndex.build(items.iloc[:10], img[:10], txt[:10])
    moved = img.copy()
    moved[2] += 1.0  # re-encoded photo
    assert ComparablesIndex.extend(old, items, moved, txt)[1] == "embeddings of indexed products changed"
    old = ComparablesIndex.build(items.iloc[:10], img[:10], txt[:10])
    assert ComparablesIndex.extend(old, items.iloc[1:], img[1:], txt[1:])[1] == (
        "1 indexed products are no longer in the catalogue (or lost their embeddings)")
    assert ComparablesIndex.extend(old, items, img, txt, hnsw_min_rows=11)[1] == (
        "11 products need the other index kind (graph from 11)")
    assert ComparablesIndex.extend(old, items, img[:, :3], txt)[1].startswith("dimensions {'image': 3")
    ext, how = ComparablesIndex.extend(old, items, img, txt)  # row 10 is new; row 11 has no embedding
    assert how == "added 1 products to the 10 of the previous index"
    for r, hits in enumerate(ext.search_embeddings(img[:11], txt[:11], k=4)):
        want = _expected(img[r], txt[r], img, txt, 4)
        assert [h["product_id"] for h in hits] == [f"p{i}" for i, _ in want]
        assert [h["similarity"] for h in hits] == pytest.approx([v for _, v in want], abs=1e-5)


def test_price_comparables_asset_extends_the_published_index_with_new_products_and_rebuilds_on_change(tmp_path):
    import dagster as dg

    from fashion_pipeline.assets.comparables import ComparablesConfig, price_comparables
    from fashion_pipeline.core.encoders.io import EmbeddingsWriter
    from fashion_pipeline.resources.model_store import ModelStoreResource

    rng = np.random.default_rng(6)
    n = 12
    products = pd.DataFrame({"product_id": [f"x{i}" for i in range(n)], "title": [f"t{i}" for i in range(n)],
                             "source": "kaggle", "price_usd": np.linspace(5, 60, n), "price_status": "ok",
                             "split": "train"})
    image = rng.standard_normal((n, 3)).astype(np.float32)
    text = rng.standard_normal((n, 2)).astype(np.float32)
    resource = ModelStoreResource(root=str(tmp_path / "models"))
    store = resource.store()

    def run(rows: int, img: np.ndarray, name: str):
        path = tmp_path / f"{name}.parquet"
        w = EmbeddingsWriter(path, {"image_dim": "3", "text_dim": "2"})
        w.write(products["product_id"][:rows], img[:rows], np.ones(rows, bool), text[:rows], np.ones(rows, bool),
                ["ok"] * rows, ["ok"] * rows)
        w.commit()
        store.publish(scoring.PRICE_MODEL_NAME, store.save(scoring.PRICE_MODEL_NAME, {"stand-in": name}, {}, {}))
        return price_comparables(dg.build_asset_context(), ComparablesConfig(embeddings_path=str(path)),
                                 products[:rows], resource).metadata

    first = run(9, image, "first")
    assert first["built"] == "built from scratch (nothing published)"
    v1 = first["version"]
    second = run(12, image, "second")  # three new products, nothing else changed
    assert second["built"] == f"extended {cmp.COMPARABLES_NAME} {v1}: added 3 products to the 9 of the previous index"
    index, _, _ = cmp.load_for_price_model(store, second["price_model_version"])
    assert index.size == 12 and index.items["product_id"].tolist() == [f"x{i}" for i in range(12)]
    hits = index.search_embeddings(image[[10]], text[[10]], k=1)[0]
    assert hits[0]["product_id"] == "x10" and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    moved = image.copy()
    moved[0] *= -1  # one indexed product re-encoded: rebuilt
    third = run(12, moved, "third")
    assert third["built"] == (f"built from scratch ({cmp.COMPARABLES_NAME} {second['version']}: "
                              "embeddings of indexed products changed)")
