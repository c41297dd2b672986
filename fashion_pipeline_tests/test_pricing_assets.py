"""Real Dagster materializations of the pricing assets on the embedded sample: train, gate,
publish, score the incoming folder; then a worse candidate is refused by the blocking check."""

import json
import shutil

import dagster as dg
import pytest
import duckdb
import numpy as np
import pandas as pd

from fashion_pipeline.assets.regressors import RECIPES_NAME
from fashion_pipeline.checks import price_regressor_gate
from fashion_pipeline.core import listing_eval, scoring
from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline_tests.conftest import SAMPLE_ROOT
from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, assets_by_name, resources_for
from fashion_pipeline_tests.test_scoring_cli import _kaggle_listing_folder, _unseen_kaggle_ids

PRICING = ["regressor_metrics", "published_price_regressor"]
ATTRIBUTES = ["attribute_extractor", "product_attributes"]  # regressor_metrics reads product_attributes


def _run(names, var_dir, run_config, with_check=True):
    # Upstream assets are in the definitions (their tables are read from the warehouse) but only
    # ``names`` run.
    defs = assets_by_name(*set(INGEST_CHAIN + ATTRIBUTES + PRICING + names)) + ([price_regressor_gate] if with_check else [])
    return dg.materialize(defs, resources=resources_for(SAMPLE_ROOT, var_dir), run_config=run_config,
                          raise_on_error=False, selection=names)


def _reg_config(**kw):
    cfg = {"models": ["ridge"], "blend": False, "mlp_epochs": 3, "mlp_hidden": 64, "lightgbm_estimators": 80}
    cfg.update(kw)
    return {"ops": {"regressor_metrics": {"config": cfg}}}


def _table(var, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).df()


def _meta(result, asset: str) -> dict:
    [meta] = [e.event_specific_data.materialization.metadata for e in result.get_asset_materialization_events()
              if e.event_specific_data.materialization.asset_key.path[-1] == asset]
    return meta


def _check_result(result):
    evals = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(evals) == 1
    return evals[0]


@pytest.mark.slow
def test_train_gate_publish_score_then_refuse_a_worse_candidate(tmp_path):
    var = tmp_path / "var"
    store = ModelStore(var / "models")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    _kaggle_listing_folder(incoming / "shop_a", _unseen_kaggle_ids(20))
    (incoming / "extra.json").write_text(json.dumps([
        {"listing_id": "x1", "title": "Puma Men Grey Sports Shoes", "description": "", "image_path": ""},
        {"listing_id": "x2", "title": "Silk scarf", "description": "Printed silk", "category": "Moon boots"},
    ]))
    (incoming / "notes.txt").write_text("not a listing file: ignored by suffix")

    # 1. First candidate: a ridge per listing form. Nothing is published yet; it is within 5% of the
    #    TF-IDF recipe on the same test listings and its intervals cover about 80%, so it is published.
    r1 = _run(INGEST_CHAIN + ATTRIBUTES + PRICING, var, _reg_config())
    assert r1.success
    assert _check_result(r1).passed
    v1 = store.published(scoring.PRICE_MODEL_NAME)["version"]
    # Trained with the extracted attributes (the default), and says so for scoring.
    assert store.info(scoring.PRICE_MODEL_NAME, v1)["features_spec"]["uses_attributes"] is True
    # The recipes were fitted (nothing stored) and stored for the next retrain.
    [recipes_v1] = store.versions(RECIPES_NAME)
    assert _meta(r1, "regressor_metrics")["listing_recipes"].value == (
        f"fitted (none stored): stored as {RECIPES_NAME} {recipes_v1}")
    # (recipe_rmsle is over the listings the judged model priced; the class recipe's figures are its own.)
    recipe_cols = "form, source, recipe_category_macro_f1, recipe_gender_macro_f1, recipe_usage_macro_f1"
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        recipe_r1 = con.execute(f"select {recipe_cols} from regressor_metrics where model = 'candidate' "
                                "order by form, source").df()

    # 2. A candidate choosing between ridge and LightGBM on validation: no worse than the published
    #    ridge on the test listings, so accepted and published; the incoming folder is scored with it.
    r2 = _run(PRICING + ["scored_listings"], var, {
        **_reg_config(models=["ridge", "lightgbm"]),
        "ops": {**_reg_config(models=["ridge", "lightgbm"])["ops"],
                "scored_listings": {"config": {"incoming_dir": str(incoming), "embed": False}}},
    })
    assert r2.success, [e.message for e in r2.all_events if e.event_type_value == "STEP_FAILURE"]
    check2 = _check_result(r2)
    assert check2.passed
    assert "published [full, all]" in check2.metadata["decision"].value
    v2 = store.published(scoring.PRICE_MODEL_NAME)["version"]
    assert v2 != v1
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        m = con.execute("select model, form, source, rmsle, recipe_rmsle, coverage, version "
                        "from regressor_metrics").df()
        scores = con.execute("select * from scored_listings").df()
    # The candidate is scored as listings in every form, the published model in the gated forms.
    assert set(m["model"]) == {"candidate", "published"}
    assert set(m[m["model"] == "candidate"]["form"]) == set(listing_eval.LISTING_FORMS)
    assert set(m[m["model"] == "published"]["form"]) == set(listing_eval.GATE_FORMS)
    assert {"all", "kaggle", "hm"} == set(m["source"])
    cand = m[m["model"] == "candidate"].set_index(["form", "source"])
    pub = m[m["model"] == "published"].set_index(["form", "source"])
    assert set(cand["version"]) == {v2} and set(pub["version"]) == {v1}
    assert cand.loc[("full", "all"), "rmsle"] <= 1.01 * pub.loc[("full", "all"), "rmsle"]
    mats = {e.event_specific_data.materialization.asset_key.path[-1]: e.event_specific_data.materialization.metadata
            for e in r2.get_asset_materialization_events()}
    # The precision each form's MLP trained in (machine-dependent) is in the metadata and the stored model.
    from fashion_pipeline.core.pricing.training import mlp_precisions
    v2_model, v2_info = store.load(scoring.PRICE_MODEL_NAME, v2)
    assert mats["regressor_metrics"]["mlp_precision"].value == v2_info["features_spec"]["mlp_precision"] == \
        mlp_precisions(v2_model)
    # A retrain on the same train split re-scores the stored recipes: their figures are run 1's.
    assert mats["regressor_metrics"]["listing_recipes"].value.startswith(
        f"re-scored {RECIPES_NAME} {recipes_v1} (0.0% of its ")
    assert store.versions(RECIPES_NAME) == [recipes_v1]
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        recipe_r2 = con.execute(f"select {recipe_cols} from regressor_metrics where model = 'candidate' "
                                "order by form, source").df()
    pd.testing.assert_frame_equal(recipe_r2, recipe_r1)
    assert mats["regressor_metrics"]["predicted_vs_actual"].value.startswith("![predicted vs actual](data:image/png;base64,")
    assert "residuals_by_category" in mats["regressor_metrics"]
    # The published model's 3 gated forms are read first and those reads handed to the candidate, which
    # reads only its other 4 forms: 7 forms' listings reach the extractor, not 7 + 3. A product's listings
    # carry only three texts (title + description, title, nothing): each is extracted once.
    n = mats["regressor_metrics"]["rows"].value["test_listings_per_form"]
    ex = mats["regressor_metrics"]["listing_eval_extraction"].value
    assert ex["extracted"] + ex["remembered"] == 7 * n and 0 < ex["extracted"] <= 3 * n
    # scored listings: 20 real unseen Kaggle products + 2 JSON listings; the .txt is ignored
    assert len(scores) == 22
    priced = scores["price_usd"].notna()
    lo, hi = store.load(scoring.PRICE_MODEL_NAME, v2)[0].price_range_
    assert priced.sum() >= 15 and scores.loc[priced, "price_usd"].between(lo, hi).all()
    # a listing without a price says why in its flags
    abstain_flags = {scoring.PRICE_ABSTAINED_NO_INPUT, scoring.PRICE_ABSTAINED_WIDE, scoring.PRICE_ABSTAINED_NO_MODEL}
    assert all(abstain_flags & set(f.split(";")) for f in scores.loc[~priced, "flags"])
    assert (scores["price_model_version"] == v2).all()
    x2 = scores.set_index("listing_id").loc["extra/x2", "flags"].split(";")
    assert scoring.UNKNOWN_CATEGORY in x2 and scoring.NO_IMAGE in x2
    assert mats["scored_listings"]["listings"].value == 22

    # 3. A worse candidate (ridge on a fifth of the train rows) is refused by the blocking
    #    check; the publish step does not run and the published version stays.
    #    recipe_max_change 0 fits the recipes again (the same train rows: the same figures) and stores them.
    r3 = _run(PRICING, var, _reg_config(train_fraction=0.2, recipe_max_change=0))
    recipes_v3 = store.versions(RECIPES_NAME)[-1]
    assert store.versions(RECIPES_NAME) == [recipes_v1, recipes_v3] and recipes_v3 != recipes_v1
    assert _meta(r3, "regressor_metrics")["listing_recipes"].value == (
        f"fitted (recipe_max_change 0): stored as {RECIPES_NAME} {recipes_v3}")
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        recipe_r3 = con.execute(f"select {recipe_cols} from regressor_metrics where model = 'candidate' "
                                "order by form, source").df()
    pd.testing.assert_frame_equal(recipe_r3, recipe_r1)
    # The stored price recipe prices test listings as the one fitted again on the same rows.
    rows = _table(var, "select * from clean_products where split = 'test'")
    test = listing_eval.as_listings(rows, "full")
    prices = [store.load(RECIPES_NAME, v)[0].recipe.predict(test, rows["source"].to_numpy(), rows["category"].to_numpy())
              for v in (recipes_v1, recipes_v3)]
    assert np.isfinite(prices[0]).all()
    np.testing.assert_array_equal(prices[0], prices[1])
    check3 = _check_result(r3)
    assert not check3.passed
    assert "REFUSED" in check3.metadata["decision"].value
    published_steps = [e for e in r3.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
                       and e.event_specific_data.materialization.asset_key.path[-1] == "published_price_regressor"]
    assert not published_steps
    assert store.published(scoring.PRICE_MODEL_NAME)["version"] == v2


def test_scored_listings_without_a_published_model_names_the_asset(tmp_path):
    var = tmp_path / "var"
    incoming = tmp_path / "in"
    incoming.mkdir()
    shutil.copy(next((SAMPLE_ROOT / "fashion-product-images" / "images").glob("*.jpg")), incoming / "a.jpg")
    (incoming / "l.csv").write_text("title,description,image_path\nRed dress,Cotton,a.jpg\n")
    r = dg.materialize(assets_by_name(*(INGEST_CHAIN + ATTRIBUTES + PRICING + ["scored_listings"])), resources=resources_for(SAMPLE_ROOT, var),
                       run_config={"ops": {"scored_listings": {"config": {"incoming_dir": str(incoming)}}}},
                       raise_on_error=False, selection=["scored_listings"])
    assert not r.success
    failure = [e for e in r.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "published_price_regressor" in str(failure.event_specific_data.error)


def test_regressors_read_the_embeddings_file_the_latest_product_embeddings_run_recorded(tmp_path, monkeypatch):
    """The embeddings path is resolved when the run starts (latest product_embeddings materialization),
    not frozen when the code location is imported: a second var dir in the same process must not
    read the first one's file."""
    from fashion_pipeline_tests.test_classifiers_assets import _write_embeddings

    var = tmp_path / "var"
    monkeypatch.setenv("FASHION_VAR_DIR", str(tmp_path / "another_var"))  # where a frozen default would point
    r0 = dg.materialize(assets_by_name(*INGEST_CHAIN, *ATTRIBUTES), resources=resources_for(SAMPLE_ROOT, var))
    assert r0.success
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        products = con.sql("select * from clean_products").df()
    emb = tmp_path / "elsewhere" / "product_embeddings.parquet"
    emb.parent.mkdir()
    _write_embeddings(products.head(30), emb)  # 30 real products embedded, the others without a row
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "product_embeddings", metadata={"path": dg.MetadataValue.path(str(emb))}))
    r = dg.materialize(assets_by_name(*INGEST_CHAIN, *ATTRIBUTES, "regressor_metrics"), instance=instance,
                       resources=resources_for(SAMPLE_ROOT, var), run_config=_reg_config(),
                       selection=["regressor_metrics"])
    assert r.success
    meta = r.asset_materializations_for_node("regressor_metrics")[0].metadata
    assert meta["embeddings"].value == f"read from {emb}"


def test_a_retrain_refits_the_listing_recipes_once_the_train_split_moved_past_recipe_max_change(tmp_path):
    from fashion_pipeline.assets.regressors import RegressorConfig, listing_recipes
    from fashion_pipeline_tests.test_pricing_core import clean_sample

    store = ModelStore(tmp_path / "models")
    df = clean_sample()
    train = df[df["split"] == "train"]
    _, note = listing_recipes(store, RegressorConfig(), train)
    [v1] = store.versions(RECIPES_NAME)
    assert note == f"fitted (none stored): stored as {RECIPES_NAME} {v1}"
    few = len(train) // 20  # 5% of the rows removed: re-scored
    again, note = listing_recipes(store, RegressorConfig(), train.iloc[few:])
    assert note == f"re-scored {RECIPES_NAME} {v1} ({few / len(train):.1%} of its {len(train)} train rows differ from this run's)"
    assert store.versions(RECIPES_NAME) == [v1] and len(again.train_keys) == len(train)
    many = len(train) // 5  # 20% removed: fitted on this split and stored
    refit, note = listing_recipes(store, RegressorConfig(), train.iloc[many:])
    v2 = store.versions(RECIPES_NAME)[-1]
    assert v2 != v1 and len(refit.train_keys) == len(train) - many
    assert note == (f"fitted ({many / len(train):.1%} of the train rows of {RECIPES_NAME} {v1} differ from this run's, "
                    f"more than recipe_max_change 10%): stored as {RECIPES_NAME} {v2}")
    # a selection always fits
    _, note = listing_recipes(store, RegressorConfig(mode="select"), train.iloc[many:])
    assert note.startswith("fitted (model_selection_job fits them): stored as")
