"""`fashion-pipeline score` on real listings the models never saw, including damaged ones."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashion_pipeline import cli
from fashion_pipeline.core import scoring
from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.core.pricing.features import PriceFeaturizer, build_price_inputs
from fashion_pipeline.core.pricing.training import train_price_models
from fashion_pipeline_tests.test_pricing_core import KAGGLE, clean_sample


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ModelStore:
    """A store with a price model trained on the sample's train split only, published."""
    res = train_price_models(clean_sample(), None, models=("ridge", "lightgbm"),
                             params={"lightgbm": {"n_estimators": 150}}, blend=False)
    s = ModelStore(tmp_path_factory.mktemp("models"))
    s.publish(scoring.PRICE_MODEL_NAME, s.save(scoring.PRICE_MODEL_NAME, res.model, {"kind": res.model.name}, {}))
    return s


def _kaggle_listing_folder(dest: Path, ids: list[str]) -> Path:
    """Copy the given products into a new folder in the Kaggle download layout."""
    (dest / "styles").mkdir(parents=True)
    (dest / "images").mkdir()
    with open(KAGGLE / "styles.csv", encoding="utf-8") as f:
        header = f.readline()
        rows = [line for line in f if line.split(",", 1)[0] in set(ids)]
    (dest / "styles.csv").write_text(header + "".join(rows), encoding="utf-8")
    for i in ids:
        shutil.copy(KAGGLE / "styles" / f"{i}.json", dest / "styles" / f"{i}.json")
        if (KAGGLE / "images" / f"{i}.jpg").exists():
            shutil.copy(KAGGLE / "images" / f"{i}.jpg", dest / "images" / f"{i}.jpg")
    return dest


def _unseen_kaggle_ids(n: int = 40) -> list[str]:
    df = clean_sample()
    test = df[(df["source"] == "kaggle") & (df["split"] == "test") & (df["price_status"] == "ok")]
    test = test[test["image_path"].notna()]
    return test["source_id"].astype(str).head(n).tolist()


def test_score_cli_on_unseen_kaggle_folder_with_damaged_listings(tmp_path, store):
    ids = _unseen_kaggle_ids()
    folder = _kaggle_listing_folder(tmp_path / "incoming", ids)
    (folder / "images" / f"{ids[0]}.jpg").unlink()  # no image
    (folder / "images" / f"{ids[1]}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # unreadable
    j = json.loads((folder / "styles" / f"{ids[2]}.json").read_text())
    j["data"].pop("productDescriptors", None)  # no description
    (folder / "styles" / f"{ids[2]}.json").write_text(json.dumps(j))
    out = tmp_path / "scores.parquet"
    rc = cli.main(["score", "--input", str(folder), "--output", str(out), "--model-store", str(store.root),
                   "--no-embeddings"])
    assert rc == 0
    scores = pd.read_parquet(out)
    assert list(scores.columns) == list(scoring.OUTPUT_COLUMNS)
    assert len(scores) == len(ids)  # nobody dropped
    assert np.isfinite(scores["price_usd"]).all() and (scores["price_usd"] > 0).all()
    assert (scores["price_low_usd"] <= scores["price_usd"]).all() and (scores["price_usd"] <= scores["price_high_usd"]).all()
    flags = dict(zip(scores["listing_id"].str.replace("kaggle-", ""), scores["flags"].str.split(";")))
    assert scoring.NO_IMAGE in flags[ids[0]]
    assert scoring.UNREADABLE_IMAGE in flags[ids[1]]
    assert scoring.NO_DESCRIPTION in flags[ids[2]]
    assert all(scoring.NO_IMAGE not in flags[i] and scoring.UNREADABLE_IMAGE not in flags[i] for i in ids[3:])
    assert scores["category"].isin(scoring.CATEGORIES).all()
    # Plausible accuracy against the catalogue price the listing came with (never trained on).
    truth = scores["asking_price_usd"].to_numpy()
    rmsle = np.sqrt(np.mean((np.log1p(scores["price_usd"]) - np.log1p(truth)) ** 2))
    train = clean_sample().query("split == 'train' and price_status == 'ok' and source == 'kaggle'")
    median_rmsle = np.sqrt(np.mean((np.log1p(train["price_usd"].median()) - np.log1p(truth)) ** 2))
    assert rmsle < 0.8 * median_rmsle


def test_score_json_listings_flags_bad_input_and_writes_csv(tmp_path, store):
    img = next((KAGGLE / "images").glob("*.jpg"))
    shutil.copy(img, tmp_path / "photo.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"GIF89a-truncated")
    listings = [
        {"listing_id": "a", "title": "Nike Men Black Running Shoes", "description": "Mesh upper, rubber sole",
         "image_path": "photo.jpg", "category": "Footwear", "gender": "Men", "price_usd": 40},
        {"listing_id": "b", "title": "Blue cotton shirt", "description": "", "image_path": ""},
        {"listing_id": "c", "title": "Leather wallet", "description": "Genuine leather bifold",
         "image_path": "broken.jpg", "category": "Spaceships", "price_usd": 250000},
    ]
    path = tmp_path / "listings.json"
    path.write_text(json.dumps(listings))
    out = tmp_path / "scores.csv"
    assert cli.main(["score", "--input", str(path), "--output", str(out), "--model-store", str(store.root),
                     "--no-embeddings"]) == 0
    scores = pd.read_csv(out, keep_default_na=False).set_index("listing_id")
    f = {k: set(v.split(";")) for k, v in scores["flags"].items()}
    assert scoring.UNKNOWN_CATEGORY not in f["a"] and scoring.NO_IMAGE not in f["a"]
    assert scoring.ASKING_PRICE_OUTSIDE_RANGE not in f["a"]
    assert {scoring.NO_IMAGE, scoring.NO_DESCRIPTION, scoring.UNKNOWN_CATEGORY} <= f["b"]
    assert {scoring.UNREADABLE_IMAGE, scoring.UNKNOWN_CATEGORY, scoring.ASKING_PRICE_OUTSIDE_RANGE} <= f["c"]
    prices = pd.to_numeric(scores["price_usd"])
    assert np.isfinite(prices).all() and (prices > 0).all()


def test_score_without_published_model_names_the_asset(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("title,description,image_path\nRed dress,,\n")
    rc = cli.main(["score", "--input", str(tmp_path / "l.csv"), "--output", str(tmp_path / "o.csv"),
                   "--model-store", str(tmp_path / "empty_store")])
    assert rc == 2
    err = capsys.readouterr().err
    assert scoring.PRICE_MODEL_ASSET in err and not (tmp_path / "o.csv").exists()


def test_unreadable_input_is_a_clear_error(tmp_path, store, capsys):
    rc = cli.main(["score", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o.csv"),
                   "--model-store", str(store.root)])
    assert rc == 2 and "cannot read listings" in capsys.readouterr().err


def test_features_identical_at_train_and_score_time(tmp_path):
    """A product read through scoring's listing reader gets exactly the price features it got
    in training (same columns through the same build_price_inputs + fitted featurizer)."""
    ids = _unseen_kaggle_ids(15)
    folder = _kaggle_listing_folder(tmp_path / "k", ids)
    listed = scoring.read_listings(folder)
    listed = listed.rename(columns={"asking_price_usd": "price_usd"})
    train_rows = clean_sample().set_index("product_id").loc[listed["product_id"]].reset_index()
    fit_on = build_price_inputs(clean_sample().query("split == 'train'"))
    f = PriceFeaturizer().fit(fit_on)
    a = f.transform(build_price_inputs(train_rows))
    b = f.transform(build_price_inputs(listed))
    assert a.shape == b.shape and (a != b).nnz == 0
    assert a.nnz > 0


def test_empty_listings_give_an_empty_table_with_all_columns(store):
    model, info = store.load(scoring.PRICE_MODEL_NAME)
    scores, counts = scoring.score_listings(pd.DataFrame(columns=["product_id", "title"]), model, info)
    assert list(scores.columns) == list(scoring.OUTPUT_COLUMNS) and len(scores) == 0
    assert counts["listings"] == 0 and counts[scoring.NO_IMAGE] == 0


def test_listings_scored_without_the_embeddings_the_model_was_trained_with_are_flagged(store):
    model, info = store.load(scoring.PRICE_MODEL_NAME)
    listings = pd.DataFrame({"product_id": ["p"], "title": ["Red cotton kurta"], "description": ["Cotton"]})
    trained_with = {**info, "features_spec": {"embeddings": "read from var/embeddings/product_embeddings.parquet"}}
    flagged, counts = scoring.score_listings(listings, model, trained_with, embedder=None)
    assert scoring.NO_EMBEDDINGS in flagged["flags"].iloc[0].split(";") and counts[scoring.NO_EMBEDDINGS] == 1
    plain, _ = scoring.score_listings(listings, model, info, embedder=None)  # trained without: nothing missing
    assert scoring.NO_EMBEDDINGS not in plain["flags"].iloc[0]


def test_score_cli_on_unseen_hm_folder(tmp_path, store):
    """An H&M-layout folder (articles.csv + transactions + images/0XX/) of test-split articles."""
    from fashion_pipeline_tests.test_pricing_core import HM

    df = clean_sample()
    test = df[(df["source"] == "hm") & (df["split"] == "test") & (df["price_status"] == "ok")]
    ids = set(test["source_id"].astype(str).head(12))
    dest = tmp_path / "hm"
    dest.mkdir()
    arts = pd.read_csv(HM / "articles.csv", dtype=str, keep_default_na=False)
    arts[arts["article_id"].str.zfill(10).isin(ids)].to_csv(dest / "articles.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    tx = pd.read_csv(HM / "transactions_train.csv", dtype=str)
    tx[tx["article_id"].str.zfill(10).isin(ids)].to_csv(dest / "transactions_train.csv", index=False)
    for aid in ids:
        src = HM / "images" / aid[:3] / f"{aid}.jpg"
        if src.exists():
            (dest / "images" / aid[:3]).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / "images" / aid[:3] / f"{aid}.jpg")
    out = tmp_path / "hm.parquet"
    assert cli.main(["score", "--input", str(dest), "--output", str(out), "--model-store", str(store.root),
                     "--no-embeddings"]) == 0
    scores = pd.read_parquet(out)
    assert len(scores) == len(ids) and (scores["source"] == "hm").all()
    assert np.isfinite(scores["price_usd"]).all() and (scores["price_usd"] > 0).all()
    truth = test.set_index("product_id").loc[scores["listing_id"], "price_usd"].to_numpy()
    assert np.allclose(scores["asking_price_usd"], truth)  # same price the pipeline computed
    rmsle = np.sqrt(np.mean((np.log1p(scores["price_usd"]) - np.log1p(truth)) ** 2))
    train = df.query("split == 'train' and price_status == 'ok' and source == 'hm'")
    median_rmsle = np.sqrt(np.mean((np.log1p(train["price_usd"].median()) - np.log1p(truth)) ** 2))
    assert rmsle < median_rmsle  # 12 articles, small H&M sample: only "better than a constant"


# ------------------------------------------------------------- published classifiers at scoring time


@pytest.fixture(scope="module")
def classified(tmp_path_factory, store):
    """The price store plus serving classifiers for every task and regime, trained (logreg) on
    the sample's train split with real offline embeddings, and published like the asset does."""
    from fashion_pipeline.core.features import with_embeddings
    from fashion_pipeline.core.models.leaderboard import LeaderboardConfig, run_leaderboard

    df = clean_sample()
    embed = scoring.encoder_embedder("offline", resolution=64)
    ids, image, text, _ = embed(df, None)
    frame = with_embeddings(df, ids, image, text)
    res = run_leaderboard(frame, LeaderboardConfig(classical=("logreg",), neural=(), n_threads=1))
    s = ModelStore(tmp_path_factory.mktemp("models_cls"))
    s.publish(scoring.PRICE_MODEL_NAME, s.save(scoring.PRICE_MODEL_NAME, *store.load(scoring.PRICE_MODEL_NAME)[:1],
                                               {"kind": "copy"}, {}))
    for (task, regime), clf in res.serving.items():
        name = scoring.classifier_name(task, regime)
        s.publish(name, s.save(name, clf, {}, clf.features_spec()))
    return s, embed


def test_free_form_listings_get_category_gender_usage_from_the_published_classifiers(classified):
    s, embed = classified
    df = clean_sample()
    test = df[(df["split"] == "test") & df["image_path"].notna() & df["gender"].notna()].head(60).reset_index(drop=True)
    # What a seller types: no category / gender / usage; a third give only a title, a third only a photo.
    listings = test[["product_id", "title", "description", "image_path"]].copy()
    third = len(listings) // 3
    listings.loc[third : 2 * third - 1, "description"] = ""
    listings.loc[2 * third :, ["title", "description"]] = ""
    listings.loc[0, "category"] = "Footwear"  # a stated, valid value is kept
    model, info = s.load(scoring.PRICE_MODEL_NAME)
    out, counts = scoring.score_listings(listings, model, info, embedder=embed,
                                         classifiers=scoring.load_published_classifiers(s))
    assert list(out.columns) == list(scoring.OUTPUT_COLUMNS) and len(out) == len(listings)
    assert list(out["classifier_regime"]) == ["full"] * third + ["sparse"] * third + ["image"] * (len(out) - 2 * third)
    assert counts["classified_by_regime"] == {"full": third, "sparse": third, "image": len(out) - 2 * third}
    assert out.loc[0, "category"] == "Footwear" and out["category"].iloc[1:].equals(out["category_predicted"].iloc[1:])
    for task, classes in (("category", scoring.CATEGORIES), ("gender", scoring.GENDERS)):
        assert out[f"{task}_predicted"].isin(classes).all()
        assert out[f"{task}_confidence"].between(0, 1).all()
    assert scoring.UNKNOWN_CATEGORY not in ";".join(out["flags"]) and counts[scoring.NOT_CLASSIFIED] == 0
    # Better than guessing the most frequent training class, in every regime (60 unseen test products).
    train = df[df["split"] == "train"]
    for task in ("category", "gender"):
        acc = (out[f"{task}_predicted"].to_numpy() == test[task].to_numpy())
        base = float((test[task] == train[task].mode()[0]).mean())
        assert acc[1:third].mean() > base and acc[third : 2 * third].mean() > base, task
        assert acc.mean() > base + 0.1, task


def test_without_published_classifiers_the_stated_values_are_kept_and_flagged(store):
    model, info = store.load(scoring.PRICE_MODEL_NAME)
    listings = pd.DataFrame({"product_id": ["a", "b"], "title": ["Red kurta", "Blue jeans"], "description": ["", ""],
                             "category": ["Topwear", "Spaceships"]})
    out, counts = scoring.score_listings(listings, model, info, classifiers={})
    assert list(out["category"]) == ["Topwear", "Spaceships"] and out["category_predicted"].isna().all()
    assert counts[scoring.NOT_CLASSIFIED] == 2 and counts["classifiers_published"] == 0
    assert scoring.UNKNOWN_CATEGORY in out.loc[1, "flags"] and scoring.UNKNOWN_CATEGORY not in out.loc[0, "flags"]


def test_the_readme_example_listings_score(tmp_path, store):
    """data/examples/listings.json (the README's scoring example) stays valid: its images exist and
    every listing is scored with the flags its content implies."""
    example = Path(__file__).resolve().parents[1] / "data" / "examples" / "listings.json"
    out = tmp_path / "scored.csv"
    assert cli.main(["score", "--input", str(example), "--output", str(out), "--model-store", str(store.root),
                     "--no-embeddings", "--no-classifiers"]) == 0
    scores = pd.read_csv(out, keep_default_na=False).set_index("listing_id")
    assert len(scores) == len(json.loads(example.read_text())["listings"])
    flags = {k: set(v.split(";")) - {""} for k, v in scores["flags"].items()}
    assert not {scoring.NO_IMAGE, scoring.UNREADABLE_IMAGE} & (flags["full-jeans"] | flags["photo-only"])
    assert scoring.NO_IMAGE in flags["no-photo"] and scoring.NO_TITLE in flags["photo-only"]
    assert scores.loc["stated-category", "category"] == "Dresses & Sets"
    assert (pd.to_numeric(scores["price_usd"]) > 0).all()
