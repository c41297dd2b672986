"""Price regressors, all trained on log1p(price_usd) and returning USD with an interval.

Every regressor here has the same small surface (scikit-learn style):
``fit(train, y_train, val, y_val)`` with ``PriceInputs`` and log-price targets, and
``predict_log(inputs)``. `PriceModel` wraps one with split-conformal prediction intervals
(quantiles of validation residuals in log space) and is what the model store keeps.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from fashion_pipeline.core.split import grew_beyond, group_unit
from fashion_pipeline.core.threads import resolve_threads

from .features import (CATEGORICAL_COLUMNS, MISSING, CategoricalEncoder, EmbeddingScaler, PriceFeaturizer, PriceInputs,
                       fit_pca)

log = logging.getLogger(__name__)

# A source needs this many validation rows to get its own blend weights (`BlendPriceRegressor`) or its own
# say in choosing a hyper-parameter (`source_balanced_rmse`).
MIN_SOURCE_ROWS = 200


def _groups(inputs: PriceInputs) -> np.ndarray:
    f = inputs.frame
    return (f["group_id"] if "group_id" in f.columns else f["product_id"]).astype(str).to_numpy()


def growth_refusal(rows_now: int, rows_then: int, share: float, kept: str, refitted: str) -> str | None:
    """A warm start's refusal when the train split moved more than ``share`` from the ``rows_then`` rows
    ``kept`` (what the warm start keeps) was fitted on (`core.split.grew_beyond`), else None."""
    if grew_beyond(rows_now, rows_then, share):
        return (f"{kept} fitted on {rows_then} rows, these are {rows_now}: more than warm_max_growth "
                f"{share:.0%} apart, {refitted}")
    return None


def start_from(model, warm_from, train: PriceInputs, name: str) -> bool:
    """The start of a fit asked to continue ``warm_from``: sets ``model.warm_started_`` and ``warm_note_``
    (``model.warm_start_refusal``'s reason, "" when it starts warm or was not asked to) and logs a refusal."""
    refusal = None if warm_from is None else model.warm_start_refusal(warm_from, train)
    model.warm_started_ = warm_from is not None and refusal is None
    model.warm_note_ = refusal or ""
    if refusal is not None:
        log.warning("%s: cold start instead of the warm start asked for: %s", name, refusal)
    return model.warm_started_


class RidgePriceRegressor:
    """Linear baseline: ridge on TF-IDF + metadata one-hots (+ scaled embeddings).

    ``alpha`` is picked from ``alphas`` on the validation split by `source_balanced_rmse` (each source with
    ``min_source_rows`` validation rows counts once: Myntra's rows, ~90% of them, would otherwise choose H&M's
    alpha too). A retrain may continue a fitted
    ridge (`fit`'s ``warm_from``) while its train split is within ``warm_max_growth`` of the rows
    its featurizer was fitted on.
    """

    name = "ridge"

    def __init__(self, alphas: tuple[float, ...] = (0.25, 0.5, 1.0), use_embeddings: bool = True,
                 warm_max_growth: float = 0.25, n_threads: int | None = None, char_sources: tuple[str, ...] = (),
                 min_source_rows: int = MIN_SOURCE_ROWS):
        self.alphas = tuple(alphas)
        self.min_source_rows = min_source_rows  # a source's validation rows for its own say in the alpha
        self.use_embeddings = use_embeddings
        self.warm_max_growth = warm_max_growth
        self.n_threads = n_threads  # BlockRidge's sparse products; None: the cores available
        self.char_sources = tuple(char_sources)  # `PriceFeaturizer`'s character n-gram sources

    def warm_start_refusal(self, warm_from, train: PriceInputs) -> str | None:
        """Why ``warm_from`` cannot seed this fit on ``train`` (None when it can): it must be a fitted
        ridge of this kind (same use of embeddings, same embedding widths, solved by `BlockRidge`) whose
        featurizer was fitted on a train split that ``train`` differs from by at most
        ``warm_max_growth`` of its rows (past that, new words and levels would wait too long: a cold fit
        refits the featurizer)."""
        if not isinstance(warm_from, RidgePriceRegressor) or not isinstance(getattr(warm_from, "model_", None), BlockRidge):
            return f"{type(warm_from).__name__} is not a fitted ridge solved by BlockRidge"
        rows = getattr(warm_from, "featurizer_rows_", None)
        if rows is None:
            return "it records no featurizer_rows_ (trained by an older version)"
        if warm_from.use_embeddings != self.use_embeddings:
            return f"it was fitted with use_embeddings={warm_from.use_embeddings}, this fit has {self.use_embeddings}"
        refusal = char_refusal(warm_from.featurizer_, self.char_sources)
        if refusal:
            return refusal
        scaler = getattr(warm_from.featurizer_, "scaler_", None)
        width = train.text.shape[1] + train.image.shape[1] + 2
        if self.use_embeddings and len(scaler.mean_) != width:
            return f"its featurizer reads {len(scaler.mean_) - 2} embedding columns, these rows have {width - 2}"
        return growth_refusal(len(train), rows, self.warm_max_growth, "its featurizer was", "the featurizer is refitted")

    @classmethod
    def from_parts(cls, featurizer: PriceFeaturizer, featurizer_rows: int, model: "BlockRidge",
                   n_threads: int | None = None, warm_started: bool = False,
                   warm_note: str = "") -> "RidgePriceRegressor":
        """A fitted ridge from a fitted featurizer and a `BlockRidge` solved on its columns (the stacked
        TF-IDF ridge of `_text_ridge_oof`, whose folds share one featurizer); ``warm_started`` /
        ``warm_note`` as `fit` sets them."""
        ridge = cls(alphas=(model.alpha,), use_embeddings=featurizer.use_embeddings, n_threads=n_threads,
                    char_sources=getattr(featurizer, "char_sources", ()))
        ridge.featurizer_, ridge.featurizer_rows_, ridge.model_, ridge.alpha_ = featurizer, featurizer_rows, model, model.alpha
        ridge.warm_started_, ridge.warm_note_ = warm_started, warm_note
        return ridge

    def start_note(self) -> str:
        """How a fit asked to warm-start began: the featurizer it kept and LSQR's iterations, or why cold."""
        if not self.warm_started_:
            return f"cold: {self.warm_note_}"
        return (f"warm (featurizer of {self.featurizer_rows_} rows kept; LSQR from its coefficients: "
                f"{self.model_.n_iter_} iterations)")

    def fit(self, train: PriceInputs, y: np.ndarray, val: PriceInputs | None = None, y_val=None,
            warm_from: "RidgePriceRegressor | None" = None):
        """``warm_from`` (a fitted ridge, e.g. the published model's, see `warm_start_refusal`): a retrain
        that keeps its featurizer (TF-IDF vocabulary and IDF, categorical levels, embedding scaling: a
        word or level new since then is unseen until the next cold fit) and starts LSQR from its
        coefficients; the solution is the ridge on the kept columns, to LSQR's tolerance. On the full
        development data's 'full' form (26.5k rows), continuing a ridge fitted on 99% of them: 103 LSQR
        iterations instead of 214, 4.7 s instead of 9.4 s, validation RMSE(log) 0.2586 vs 0.2584 cold with
        a refitted vocabulary (0.2587 cold on the kept one).
        ``warm_started_`` / ``warm_note_`` say whether it did and why not."""
        start_from(self, warm_from, train, "ridge")
        x0 = None
        if self.warm_started_:
            self.featurizer_, self.featurizer_rows_ = warm_from.featurizer_, warm_from.featurizer_rows_
            x0 = warm_from.model_.coef_
        else:
            self.featurizer_ = PriceFeaturizer(use_embeddings=self.use_embeddings,
                                               char_sources=self.char_sources).fit(train)
            self.featurizer_rows_ = len(train)
        x = self.featurizer_.transform_blocks(train)
        best = None
        xv = self.featurizer_.transform_blocks(val) if val is not None and len(val) else None
        # The alphas from the largest (fewest LSQR iterations from zero) down, each solve started from the last
        # one's coefficients (a cold fit: x0 is None at first), the same ridge problems to LSQR's tolerance.
        path = sorted(self.alphas, reverse=True) if xv is not None else self.alphas[:1]
        self.path_iterations_ = {}  # alpha -> LSQR iterations
        for a in path:
            m = BlockRidge(alpha=a, n_threads=getattr(self, "n_threads", None)).fit(*x, y, x0=x0)
            self.path_iterations_[a] = m.n_iter_
            if not self.warm_started_:
                x0 = m.coef_
            score = 0.0
            if xv is not None:
                score, by_source = source_balanced_rmse(m.predict(*xv), y_val, val.frame, self.min_source_rows)
                log.info("ridge alpha=%s (%d LSQR iterations) validation rmse(log) %.4f (%s)", a, m.n_iter_, score,
                         ", ".join(f"{s} {v:.4f}" for s, v in by_source.items()))
            if best is None or score < best[0]:
                best = (score, a, m)
        self.alpha_, self.model_ = best[1], best[2]
        return self

    def predict_log(self, inputs: PriceInputs) -> np.ndarray:
        if isinstance(self.model_, BlockRidge):
            return self.model_.predict(*self.featurizer_.transform_blocks(inputs))
        return self.model_.predict(self.featurizer_.transform(inputs))  # a model stored with sklearn's Ridge


def _row_split_product(m: sp.csr_matrix, parts: int, pool) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> m @ v`` computed on ``pool``'s threads, one block of rows (about equal non-zeros) each:
    scipy's CSR product releases the GIL, and each output entry is the same row's dot product, so
    the result is ``m @ v`` bit for bit. One block (and no pool) below two threads or ~100k non-zeros."""
    if pool is None or parts < 2 or m.nnz < 100_000:
        return lambda v: m @ v
    cuts = [0, *(int(np.searchsorted(m.indptr, m.nnz * i // parts)) for i in range(1, parts)), m.shape[0]]
    blocks = [m[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]  # copies: the caller may drop m
    return lambda v: np.concatenate(list(pool.map(lambda block: block @ v, blocks)))


class BlockRidge:
    """Ridge regression with an intercept on ``[sparse | dense]`` columns, solved as sklearn's
    ``Ridge(solver="lsqr")`` solves a sparse design (LSQR on the implicitly centred matrix, damp =
    sqrt(alpha), atol = btol = ``tol``), with the dense block multiplied by BLAS instead of as CSR.

    On the price ridge's design (26.5k rows; 7.7M sparse entries beside a 1,666-column dense
    embedding block, 44M entries as CSR) one LSQR iteration's two products take ~15 ms instead of
    ~90 ms. The coefficients solve the same problem; they equal sklearn's to LSQR's tolerance, not
    bit for bit (fashion_pipeline_tests/test_pricing_core.py compares them).

    LSQR runs on the column-scaled problem (Jacobi preconditioning): ``w = D v`` with
    ``D = 1 / sqrt(|centred column|² + alpha)``, so every column of the damped design ``[X D; sqrt(alpha) D]``
    has unit norm — TF-IDF columns of rare and common words differ in norm by orders of magnitude,
    which slows LSQR on the unscaled design. The stacked TF-IDF ridge of the full data's 'full' form
    (26.5k x 151k): 76 iterations instead of 109 at the default tolerance; its title-only form 57
    instead of 107; validation predictions as close to the exact solution as before."""

    def __init__(self, alpha: float = 1.0, tol: float = 1e-4, n_threads: int | None = None):
        self.alpha = alpha
        self.tol = tol
        self.n_threads = n_threads

    def fit(self, sparse: sp.csr_matrix, dense: np.ndarray | None, y: np.ndarray,
            x0: np.ndarray | None = None) -> "BlockRidge":
        """``x0``: coefficients to start LSQR from (a retrain's previous solution on the same columns).
        scipy's LSQR started from ``x0`` would shrink the *correction* towards zero (the solution towards
        ``x0``); the same ridge problem is solved instead as the undamped least squares of the augmented
        design ``[X; sqrt(alpha) I]`` (column-scaled, see the class docstring) against ``[y; 0]``, which
        LSQR may start anywhere."""
        from scipy.sparse.linalg import LinearOperator, lsqr

        # In float64 once: a float32 CSR times a float64 vector is ~2x slower per product (measured on the
        # price design: 26 vs 13 ms), and it is multiplied ~2x per LSQR iteration.
        sparse = sp.csr_matrix(sparse, dtype=np.float64)
        sparse_t = sparse.T.tocsr()  # X.T @ r as a row-major product
        n, k = sparse.shape
        dense = None if dense is None or dense.shape[1] == 0 else np.ascontiguousarray(dense, dtype=np.float32)
        d = 0 if dense is None else dense.shape[1]
        if x0 is not None:
            x0 = np.asarray(x0, dtype=np.float64).ravel()
            if len(x0) != k + d:
                raise ValueError(f"x0 has {len(x0)} coefficients for {k + d} columns")
        y = np.asarray(y, dtype=np.float64)
        offset = np.concatenate([np.asarray(sparse.mean(axis=0), dtype=np.float64).ravel(),
                                 dense.mean(axis=0, dtype=np.float64) if dense is not None else np.zeros(0)])
        y_offset = float(y.mean())
        # A sparse-only design (the stacked TF-IDF ridges) multiplies on this fit's threads, with BLAS on one
        # (its idle workers spin and took the second core from the products: no gain measured on 2 cores); a
        # dense block keeps BLAS's threads for its own products, and the sparse ones stay on this thread.
        threads = resolve_threads(self.n_threads) if dense is None else 1
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        product, product_t = _row_split_product(sparse, threads, pool), _row_split_product(sparse_t, threads, pool)
        # Jacobi scaling (class docstring): the columns' sums of squares (centred below, with the damping's alpha).
        sq = np.bincount(sparse.indices, weights=np.square(sparse.data), minlength=k)
        if dense is not None:
            sq = np.concatenate([sq, sum((np.square(dense[s : s + 4096], dtype=np.float64).sum(axis=0)
                                          for s in range(0, n, 4096)), np.zeros(d))])
        del sparse, sparse_t  # held by the products (whole, or as their row blocks), not twice

        def matvec(b):
            b = np.asarray(b, dtype=np.float64).ravel()
            out = product(b[:k])
            if dense is not None:
                out += dense @ b[k:].astype(np.float32)
            return out - b.dot(offset)

        def rmatvec(r):
            r = np.asarray(r, dtype=np.float64).ravel()
            parts = [product_t(r)]
            if dense is not None:
                parts.append((dense.T @ r.astype(np.float32)).astype(np.float64))
            return np.concatenate(parts) - offset * r.sum()

        scale = 1.0 / np.sqrt(np.maximum(sq - n * np.square(offset), 0.0) + self.alpha)
        root = float(np.sqrt(self.alpha))
        def scaled_matvec(v):
            w = scale * np.asarray(v, dtype=np.float64).ravel()
            return np.concatenate([matvec(w), root * w])

        def scaled_rmatvec(r):
            r = np.asarray(r, dtype=np.float64).ravel()
            return scale * (rmatvec(r[:n]) + root * r[n:])

        op = LinearOperator((n + k + d, k + d), dtype=np.float64, matvec=scaled_matvec, rmatvec=scaled_rmatvec)
        try:
            with threadpool_limits(limits=1, user_api="blas") if dense is None else contextlib.nullcontext():
                # Undamped least squares of the augmented design (the damping rows are in it), which LSQR may
                # start anywhere: from x0 scaled to v, the solution is still the ridge's (not shrunk towards x0).
                info = lsqr(op, np.concatenate([y - y_offset, np.zeros(k + d)]), atol=self.tol, btol=self.tol,
                            x0=None if x0 is None else x0 / scale)
        finally:
            if pool is not None:
                pool.shutdown()
        self.coef_ = scale * info[0]
        self.n_iter_ = int(info[2])
        self.intercept_ = y_offset - float(offset @ self.coef_)
        self.n_sparse_ = k
        return self

    def predict(self, sparse: sp.csr_matrix, dense: np.ndarray | None) -> np.ndarray:
        out = np.asarray(sparse @ self.coef_[: self.n_sparse_], dtype=np.float64).ravel()
        if dense is not None and dense.shape[1]:
            w = self.coef_[self.n_sparse_:]
            for s in range(0, len(out), 4096):  # in float64, a row chunk at a time (no full float64 copy)
                out[s : s + 4096] += np.asarray(dense[s : s + 4096], dtype=np.float64) @ w
        return out + self.intercept_


STACKING_SALT = "price-stacking-folds-v1"


def stacking_folds(groups: np.ndarray, folds: int) -> np.ndarray:
    """The out-of-fold stacking's fold of each row: a stable hash of its group (`core.split.group_unit`),
    so a product keeps its fold while the catalogue grows and a retrain's fold ridges can start from the
    last run's (no fold ridge ever saw the rows it predicts). Where the hash leaves fewer than two folds
    with rows (a handful of groups), GroupKFold's balanced folds instead."""
    unique, inverse = np.unique(groups, return_inverse=True)
    fold = np.array([int(group_unit(g, STACKING_SALT) * folds) for g in unique], dtype=np.int64)[inverse]
    if len(np.unique(fold)) >= 2:
        return fold
    fold = np.zeros(len(groups), dtype=np.int64)
    k = min(folds, len(unique))
    if k >= 2:
        for i, (_, te) in enumerate(GroupKFold(n_splits=k).split(np.zeros(len(groups)), None, groups)):
            fold[te] = i
    return fold


def char_refusal(featurizer: PriceFeaturizer, char_sources: tuple[str, ...]) -> str | None:
    """Why a fitted ``featurizer`` cannot be kept by a fit asked for character n-grams of ``char_sources``
    (None when it can): it must have been asked for the same ones, and give them in place of those
    sources' per-source copies (a featurizer fitted before that layout gives them beside the copies)."""
    kept = tuple(getattr(featurizer, "char_sources", ()))
    if kept != tuple(char_sources):
        return f"its featurizer has character n-grams for sources {list(kept)}, this fit asks for {list(char_sources)}"
    doubled = sorted(set(getattr(featurizer, "char_", {})) & set(featurizer.copied_sources()))
    if doubled:
        return (f"its featurizer gives sources {doubled} their character n-grams beside a per-source copy of the "
                "word columns (fitted by an older version), this fit gives them instead of it")
    return None


def stacking_warm_refusal(warm_from, train: PriceInputs, folds: int, alpha: float, max_growth: float,
                          char_sources: tuple[str, ...] = ()) -> str | None:
    """Why ``warm_from`` (the stacked TF-IDF ridge of the model a retrain continues) cannot seed
    `_text_ridge_oof` on ``train`` (None when it can)."""
    if max_growth <= 0:
        return "warm_max_growth is 0"
    if not isinstance(warm_from, RidgePriceRegressor) or getattr(warm_from, "fold_coefs_", None) is None:
        return "it keeps no fold coefficients (trained by older code)"
    refusal = char_refusal(warm_from.featurizer_, char_sources)
    if refusal:
        return refusal
    if (len(warm_from.fold_coefs_), warm_from.alpha_, getattr(warm_from, "folds_salt_", None)) != (
            folds, alpha, STACKING_SALT):
        return "its folds or alpha differ from this fit's"
    return growth_refusal(len(train), warm_from.featurizer_rows_, max_growth, "its featurizer was",
                          "the stacked ridge is fitted afresh")


def _text_ridge_oof(train: PriceInputs, y: np.ndarray, folds: int = 3, alpha: float = 1.0,
                    n_threads: int | None = None, warm_from: "RidgePriceRegressor | None" = None,
                    max_growth: float = 0.25, char_sources: tuple[str, ...] = ()):
    """Out-of-fold predictions of a TF-IDF ridge (folds by group, `stacking_folds`) plus the ridge fit on
    all rows, which also keeps each fold's coefficients (``fold_coefs_``).

    Used as one feature for the tree / neural models (stacking): TF-IDF carries brand and
    article-type words that embeddings blur, and out-of-fold values keep it honest on train. One
    featurizer (TF-IDF vocabulary and IDF, fitted without prices) serves every fold.
    ``warm_from`` (the stacked ridge of the model a retrain continues, `stacking_warm_refusal`): its
    featurizer is kept and each fold's LSQR, and the full fit's, starts from its coefficients: the same
    ridge problems, to LSQR's tolerance, in fewer iterations. ``stacking_note_`` on the returned ridge
    says how it started. ``char_sources``: `PriceFeaturizer`'s character n-gram sources."""
    char_sources = tuple(char_sources)
    cached = train.cache.get("text_ridge_oof")
    if (cached is not None and len(cached[0]) == len(y) and np.array_equal(cached[2], y)
            and cached[3] == char_sources):
        return cached[0], cached[1]  # the tree and neural models share one stacking fit
    refusal = None if warm_from is None else stacking_warm_refusal(warm_from, train, folds, alpha, max_growth,
                                                                   char_sources)
    warm = warm_from is not None and refusal is None
    if warm:
        featurizer, rows = warm_from.featurizer_, warm_from.featurizer_rows_
    else:
        featurizer, rows = PriceFeaturizer(use_embeddings=False, char_sources=char_sources).fit(train), len(train)
    xs, xd = featurizer.transform_blocks(train)
    fold = stacking_folds(_groups(train), folds)
    oof = np.zeros(len(train), dtype=np.float64)
    fold_coefs, iterations = [], []
    for f in range(folds):
        te = fold == f
        m = None
        if te.any() and not te.all():
            tr = ~te
            m = BlockRidge(alpha=alpha, n_threads=n_threads).fit(
                xs[tr], None if xd is None else xd[tr], y[tr],
                x0=warm_from.fold_coefs_[f] if warm and warm_from.fold_coefs_[f] is not None else None)
            oof[te] = m.predict(xs[te], None if xd is None else xd[te])
            iterations.append(m.n_iter_)
        fold_coefs.append(None if m is None else m.coef_.astype(np.float32))  # a start point: float32 will do
    model = BlockRidge(alpha=alpha, n_threads=n_threads).fit(xs, xd, y, x0=warm_from.model_.coef_ if warm else None)
    full = RidgePriceRegressor.from_parts(featurizer, rows, model, n_threads=n_threads, warm_started=warm,
                                          warm_note=refusal or "")
    full.fold_coefs_, full.folds_salt_, full.fold_iterations_ = fold_coefs, STACKING_SALT, iterations
    how = (f"warm: featurizer of {rows} rows kept, LSQR from the last run's coefficients"
           if warm else f"cold: {refusal}" if refusal else "cold")
    full.stacking_note_ = f"{how} ({iterations} fold and {model.n_iter_} full LSQR iterations)"
    if refusal is not None:
        log.warning("stacked TF-IDF ridge: cold start instead of the warm start asked for: %s", refusal)
    train.cache["text_ridge_oof"] = (oof, full, np.asarray(y).copy(), char_sources)
    return oof, full


def _stacked_log(ridge: "RidgePriceRegressor", inputs: PriceInputs) -> np.ndarray:
    """The stacked TF-IDF ridge's prediction for ``inputs``. Within one blend prediction the tree and
    neural members share one ridge (see `_text_ridge_oof`); the blend hands them a per-call memo
    (``inputs.cache["stacked"]``) so its TF-IDF transform runs once, not once per member."""
    memo = inputs.cache.get("stacked")
    if memo is None:
        return ridge.predict_log(inputs)
    hit = memo.get(id(ridge))
    if hit is None or hit[0] is not ridge:  # the entry holds the ridge, so its id is not reused meanwhile
        hit = memo[id(ridge)] = (ridge, ridge.predict_log(inputs))
    return hit[1]


class LightGBMPriceRegressor:
    """Gradient-boosted trees on categorical codes, text embedding, image embedding (PCA) and a
    stacked out-of-fold TF-IDF ridge prediction; early stopping on validation."""

    name = "lightgbm"

    def __init__(
        self,
        n_estimators: int = 2000,
        learning_rate: float = 0.05,
        num_leaves: int = 63,
        image_components: int = 32,
        early_stopping_rounds: int = 100,
        num_threads: int = 2,
        warm_rounds: int = 40,
        warm_max_growth: float = 0.25,
        char_sources: tuple[str, ...] = (),
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.image_components = image_components
        self.early_stopping_rounds = early_stopping_rounds
        self.num_threads = num_threads
        self.warm_rounds = warm_rounds
        self.warm_max_growth = warm_max_growth
        self.char_sources = tuple(char_sources)  # the stacked ridge's (`PriceFeaturizer`)

    def warm_start_refusal(self, warm_from, train: PriceInputs) -> str | None:
        """Why ``warm_from`` cannot seed this fit on ``train`` (None when it can): it must be a fitted
        LightGBM regressor over the same categorical columns and embedding widths, with fewer than
        twice ``n_estimators`` trees (each warm retrain adds up to ``warm_rounds``; past that a
        cold fit starts the ensemble again)."""
        if not isinstance(warm_from, LightGBMPriceRegressor) or not hasattr(warm_from, "model_"):
            return f"{type(warm_from).__name__} is not a fitted LightGBM regressor"
        if list(warm_from.cats_.levels_) != list(CATEGORICAL_COLUMNS):
            return f"its categorical columns {list(warm_from.cats_.levels_)} are not {list(CATEGORICAL_COLUMNS)}"
        have = ~train.missing()[1]
        width = len(CATEGORICAL_COLUMNS) + 1 + train.text.shape[1] + (
            warm_from.pca_.n_components_ if warm_from.pca_ is not None else 0)
        if warm_from.pca_ is not None and warm_from.pca_.n_features_in_ != train.image.shape[1]:
            return f"its image PCA reads {warm_from.pca_.n_features_in_} columns, these rows have {train.image.shape[1]}"
        if warm_from.pca_ is None and have.sum() > self.image_components:
            return "it was trained without an image block, these rows have images"
        if warm_from.model_.booster_.num_feature() != width:
            return f"it reads {warm_from.model_.booster_.num_feature()} columns, these rows give {width}"
        if warm_from.best_iteration_ >= 2 * self.n_estimators:
            return (f"it has {warm_from.best_iteration_} trees, twice the configured {self.n_estimators} rounds: "
                    "a cold fit starts the ensemble again")
        return None

    def start_note(self) -> str:
        """How a fit asked to warm-start began: the trees it kept, or why it started cold."""
        if not self.warm_started_:
            return f"cold: {self.warm_note_}"
        return (f"warm ({self.start_trees_} + {self.best_iteration_ - self.start_trees_} of {self.warm_rounds} trees "
                f"kept; stacked ridge {self.text_ridge_.stacking_note_})")

    def _design(self, inputs: PriceInputs, ridge_pred: np.ndarray) -> np.ndarray:
        codes = self.cats_.codes(inputs.frame).astype(np.float32)
        text = inputs.text  # NaN rows: LightGBM treats them as missing natively
        img = inputs.image
        have = ~inputs.missing()[1]
        if self.pca_ is None:
            return np.hstack([codes, ridge_pred[:, None].astype(np.float32), text]).astype(np.float32)
        img_p = np.full((len(inputs), self.pca_.n_components_), np.nan, dtype=np.float32)
        if have.any():
            img_p[have] = self.pca_.transform(img[have])
        return np.hstack([codes, ridge_pred[:, None].astype(np.float32), text, img_p]).astype(np.float32)

    def fit(self, train: PriceInputs, y: np.ndarray, val: PriceInputs | None = None, y_val=None,
            warm_from: "LightGBMPriceRegressor | None" = None):
        """Train on ``train``; early stopping on ``val``.

        ``warm_from`` (a fitted LightGBM regressor, e.g. the published model's, see
        `warm_start_refusal`): a retrain that continues its trees (as far as its ``best_iteration_``)
        with up to ``warm_rounds`` more on ``train``, keeping its categorical codes and image PCA (a
        level new since then reads as unknown until the next cold fit); the stacked ridge is refitted.
        The kept number of trees is chosen on ``val`` including the starting point, so the result is
        never worse there than the model it started from. ``warm_started_`` / ``warm_note_`` say
        whether it did and why not."""
        import lightgbm as lgb

        start_from(self, warm_from, train, "lightgbm")
        init = None
        if self.warm_started_:
            self.cats_, self.pca_ = warm_from.cats_, warm_from.pca_
            # The trees the model predicts with (an early stop may have kept fewer than it grew).
            init = lgb.Booster(model_str=warm_from.model_.booster_.model_to_string(
                num_iteration=warm_from.best_iteration_))
        else:
            self.cats_ = CategoricalEncoder().fit(train.frame)
            have = ~train.missing()[1]
            n_comp = min(self.image_components, int(have.sum()) - 1, train.image.shape[1])
            # No (or too few) images in training: the image block is left out entirely.
            self.pca_ = fit_pca(train.image[have], n_comp, 0) if n_comp >= 1 else None
        oof, self.text_ridge_ = _text_ridge_oof(
            train, y, n_threads=self.num_threads, warm_from=warm_from.text_ridge_ if self.warm_started_ else None,
            max_growth=self.warm_max_growth, char_sources=self.char_sources)
        x = self._design(train, oof)
        n_cat = len(self.cats_.cardinalities())
        params = dict(
            n_estimators=self.warm_rounds if init is not None else self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=10,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.5,
            reg_lambda=1.0,
            n_jobs=self.num_threads,
            random_state=0,
            verbose=-1,
        )
        self.model_ = lgb.LGBMRegressor(**params)
        fit_kw: dict = {"categorical_feature": list(range(n_cat))}
        xv = None
        if val is not None and len(val):
            xv = self._design(val, self.text_ridge_.predict_log(val))
            fit_kw.update(eval_X=(xv,), eval_y=(y_val,))
            fit_kw["callbacks"] = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        if init is not None:
            fit_kw["init_model"] = init
        self.model_.fit(x, y, **fit_kw)
        self.best_iteration_ = int(self.model_.best_iteration_ or self.model_.booster_.current_iteration())
        if init is not None:
            self.start_trees_ = init.current_iteration()
            if xv is not None:  # the starting point is a candidate too: more trees only if they help
                rmse = lambda k: float(np.sqrt(np.mean((self.model_.predict(xv, num_iteration=k) - y_val) ** 2)))  # noqa: E731
                if rmse(self.start_trees_) <= rmse(self.best_iteration_):
                    self.best_iteration_ = self.start_trees_
        return self

    def predict_log(self, inputs: PriceInputs) -> np.ndarray:
        x = self._design(inputs, _stacked_log(self.text_ridge_, inputs))
        return self.model_.predict(x, num_iteration=self.best_iteration_)


@dataclass
class MLPConfig:
    hidden: int = 512
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 5
    device: str = "cpu"  # chosen by configuration (a compute resource), never guessed here
    mixed_precision: bool = True
    seed: int = 0
    stack_text_ridge: bool = True
    cat_dims: tuple[int, ...] = field(default=(4, 16, 6))  # source, brand, colour
    # A warm start (fit(warm_from=...): a retrain of a fitted MLP on fresh rows) fine-tunes its weights
    # for this many epochs from ``lr * warm_lr_scale``, instead of ``epochs`` from a random start.
    warm_epochs: int = 3
    warm_lr_scale: float = 0.25
    # A fine-tune stops after this many epochs in a row that do not beat the best validation score so
    # far (the starting weights' included). A +1% retrain on the full development data kept the starting
    # weights in all three forms at warm_lr_scale 0.25 and 0.05 (at 0.01 one form gained 0.0006 RMSLE on
    # validation): the epochs after the first worse one were spent for nothing.
    warm_patience: int = 1
    # A warm start keeps the stacked TF-IDF ridge's featurizer (and starts its LSQR from the retrained
    # model's coefficients) while the train split is within this share of the rows it was fitted on.
    warm_max_growth: float = 0.25
    # The stacked ridge's character n-gram sources (`PriceFeaturizer`).
    char_sources: tuple[str, ...] = ()


def _build_net(n_dense: int, cards: list[int], cfg: MLPConfig):
    from .net import PriceNet  # torch is imported only when an MLP is used

    dims = list(cfg.cat_dims) + [8] * (len(cards) - len(cfg.cat_dims))
    return PriceNet(n_dense, cards, dims[: len(cards)], cfg.hidden, cfg.dropout)


class MLPPriceRegressor:
    """PyTorch MLP on the raw (standardised, not PCA-reduced) text + image embeddings, learned
    embeddings of the metadata columns and, by default, the stacked TF-IDF ridge prediction.

    Mixed precision through ``torch.autocast``: float16 with a GradScaler on CUDA, bfloat16 on a
    CPU with native bf16, float32 on any other CPU (``precision_`` says which the fit used). Early
    stopping keeps the weights of the best validation epoch.
    """

    name = "mlp"

    def __init__(self, config: MLPConfig | None = None):
        self.config = config or MLPConfig()

    def _dense(self, inputs: PriceInputs, ridge_pred: np.ndarray | None) -> np.ndarray:
        z = self.scaler_.transform(inputs)
        if ridge_pred is not None:
            z = np.hstack([z, ((ridge_pred - self.y_mean_) / self.y_std_)[:, None].astype(np.float32)])
        return z

    def _amp(self, torch, device):
        """(autocast context, GradScaler or None) and the precision's name, for training and
        predicting on ``device``: float16 with a GradScaler on CUDA; bfloat16 on a CPU that
        multiplies bf16 in hardware (AVX512-BF16 or AMX); float32 elsewhere, where bf16 is emulated
        (the 'full' form's MLP on the full data, stacked ridge included, took 497 s in bf16 and
        65 s in fp32 on a 2-core AVX2 EPYC)."""
        from fashion_pipeline.core.encoders.base import autocast, resolve_precision

        precision = resolve_precision("auto", str(device)) if self.config.mixed_precision else "fp32"
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        return autocast(str(device), precision), scaler, precision

    def warm_start_refusal(self, warm_from, train: PriceInputs) -> str | None:
        """Why ``warm_from`` cannot seed this fit on ``train`` (None when it can): it must be a fitted
        MLP of the same shape (width, categorical columns and dims, stacked ridge) over embeddings of
        the same widths."""
        if not isinstance(warm_from, MLPPriceRegressor) or not hasattr(warm_from, "net_"):
            return f"{type(warm_from).__name__} is not a fitted MLP"
        old, cfg = warm_from.config, self.config
        for key in ("hidden", "cat_dims", "stack_text_ridge"):
            if getattr(old, key) != getattr(cfg, key):
                return f"its {key} {getattr(old, key)!r} differs from this fit's {getattr(cfg, key)!r}"
        width = train.text.shape[1] + train.image.shape[1] + 2
        if len(warm_from.scaler_.mean_) != width:
            return f"it was trained on {len(warm_from.scaler_.mean_)} embedding columns, these rows have {width}"
        if list(warm_from.cats_.levels_) != list(CATEGORICAL_COLUMNS):
            return f"its categorical columns {list(warm_from.cats_.levels_)} are not {list(CATEGORICAL_COLUMNS)}"
        return None

    def start_note(self) -> str:
        """How a fit asked to warm-start began: the epoch it kept, or why it started cold."""
        if not self.warm_started_:
            return f"cold: {self.warm_note_}"
        ran = sum(h["epoch"] > 0 for h in self.history_)
        stacked = f"; stacked ridge {self.text_ridge_.stacking_note_}" if self.text_ridge_ is not None else ""
        return f"warm (best epoch {self.best_epoch_}; {ran} of {self.config.warm_epochs} epochs run{stacked})"

    def fit(self, train: PriceInputs, y: np.ndarray, val: PriceInputs | None = None, y_val=None,
            warm_from: "MLPPriceRegressor | None" = None):
        """Train on ``train``; early stopping on ``val``.

        ``warm_from`` (a fitted MLP, e.g. the published model's, see `warm_start_refusal`): a retrain
        that fine-tunes its weights for at most ``warm_epochs`` epochs (stopping after ``warm_patience``
        epochs in a row without a better validation score), keeping its input standardisation,
        categorical levels and target scale (a level new since then reads as unknown until the next
        cold fit); its own validation score counts as epoch 0, so the result is never worse on
        ``val`` than the model it started from. ``warm_started_`` says whether it did, and
        ``warm_note_`` why not. The fitted model keeps no reference to ``warm_from``."""
        import torch

        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        device = torch.device(cfg.device)
        start_from(self, warm_from, train, "mlp")
        if self.warm_started_:
            self.scaler_, self.cats_ = warm_from.scaler_, warm_from.cats_
            self.y_mean_, self.y_std_ = warm_from.y_mean_, warm_from.y_std_
            epochs, lr, patience = cfg.warm_epochs, cfg.lr * cfg.warm_lr_scale, cfg.warm_patience
        else:
            self.scaler_ = EmbeddingScaler().fit(train)
            self.cats_ = CategoricalEncoder().fit(train.frame)
            self.y_mean_, self.y_std_ = float(np.mean(y)), float(np.std(y) + 1e-6)
            epochs, lr, patience = cfg.epochs, cfg.lr, cfg.patience
        ridge_tr = None
        self.text_ridge_ = None
        if cfg.stack_text_ridge:
            ridge_tr, self.text_ridge_ = _text_ridge_oof(
                train, y, warm_from=warm_from.text_ridge_ if self.warm_started_ else None,
                max_growth=cfg.warm_max_growth, char_sources=tuple(cfg.char_sources))
        x = torch.from_numpy(self._dense(train, ridge_tr)).to(device)
        c = torch.from_numpy(self.cats_.codes(train.frame)).to(device)
        t = torch.from_numpy(((y - self.y_mean_) / self.y_std_).astype(np.float32)).to(device)
        has_val = val is not None and len(val) > 0
        if has_val:
            xv = torch.from_numpy(self._dense(val, self._ridge(val))).to(device)
            cv = torch.from_numpy(self.cats_.codes(val.frame)).to(device)
        net = _build_net(x.shape[1], self.cats_.cardinalities(), cfg)
        if self.warm_started_:
            net.load_state_dict(warm_from.net_.state_dict())
        net = net.to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
        autocast, scaler, self.precision_ = self._amp(torch, device)
        log.info("mlp: %s on %s", self.precision_, device)
        best = (np.inf, None, 0)
        self.history_: list[dict] = []
        if self.warm_started_ and has_val:  # the starting weights compete as epoch 0
            pv = self._predict_tensor(net, xv, cv, autocast)
            self.history_.append({"epoch": 0, "val_rmse_log": float(np.sqrt(np.mean((pv - y_val) ** 2)))})
            best = (self.history_[0]["val_rmse_log"], copy.deepcopy(net.state_dict()), 0)
            log.info("mlp warm start %s", self.history_[0])
        for epoch in range(epochs):
            net.train()
            order = torch.from_numpy(rng.permutation(len(x))).to(device)
            total = 0.0
            for s in range(0, len(x), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                with autocast:
                    pred = net(x[idx], c[idx])
                loss = torch.nn.functional.smooth_l1_loss(pred.float(), t[idx], beta=0.5)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            rec = {"epoch": epoch + 1, "train_loss": total / len(x)}
            if has_val:
                pv = self._predict_tensor(net, xv, cv, autocast)
                rec["val_rmse_log"] = float(np.sqrt(np.mean((pv - y_val) ** 2)))
                if rec["val_rmse_log"] < best[0]:
                    best = (rec["val_rmse_log"], copy.deepcopy(net.state_dict()), epoch + 1)
                elif epoch + 1 - best[2] >= patience:
                    self.history_.append(rec)
                    log.info("mlp early stop at epoch %d (best %d)", epoch + 1, best[2])
                    break
            self.history_.append(rec)
            log.info("mlp epoch %s", rec)
        if best[1] is not None:
            net.load_state_dict(best[1])
        self.best_epoch_ = best[2] if best[1] is not None else epochs
        # Keep weights on the CPU so the stored model loads anywhere.
        self.net_ = net.to("cpu").eval()
        self._device_used = str(device)
        return self

    def _ridge(self, inputs: PriceInputs):
        return None if self.text_ridge_ is None else _stacked_log(self.text_ridge_, inputs)

    def _predict_tensor(self, net, x, c, autocast) -> np.ndarray:
        import torch

        net.eval()
        out = []
        with torch.no_grad(), autocast:
            for s in range(0, len(x), 4096):
                out.append(net(x[s : s + 4096], c[s : s + 4096]).float().cpu().numpy())
        return np.concatenate(out) * self.y_std_ + self.y_mean_ if out else np.zeros(0)

    def predict_log(self, inputs: PriceInputs) -> np.ndarray:
        import torch

        x = torch.from_numpy(self._dense(inputs, self._ridge(inputs)))
        c = torch.from_numpy(self.cats_.codes(inputs.frame))
        autocast, _, _ = self._amp(torch, torch.device("cpu"))
        return self._predict_tensor(self.net_, x, c, autocast)


class KNNPriceRegressor:
    """The prices of the most similar training products: a similarity-weighted mean of the log prices
    of the ``k`` nearest training rows of the same source, by the embeddings the listing form shows.

    Colour and size variants of one catalogue product share its price, and a listing's nearest
    catalogue products by photo and text are its best evidence; the other regressors learn a smooth
    function of the features instead, and their errors differ (benchmarks/results/hm_price_cv.md).
    It is meant as a blend member: ``predict_log_partial`` says which rows it could price.

    The vector is the comparables index's (core.comparables), reduced: each modality is projected
    by a PCA fitted on the train rows (``components`` per modality), L2-normalised, and the parts
    are weighted so that the inner product is the mean cosine over the modalities the query has; a
    modality a training row lacks counts as similarity 0. Neighbours are weighted by
    similarity ** ``power``. Exact search (faiss ``IndexFlatIP`` over the stored rows, ``block``
    queries at a time: 4k listings against 30k rows in ~0.5 s on 2 cores, against 2.4–7.6 s for a numpy
    product and argpartition); the stored vectors are float16.
    """

    name = "knn"

    def __init__(self, k: int = 8, power: float = 10.0, components: int = 128, block: int = 8192, seed: int = 0,
                 warm_max_growth: float = 0.25):
        self.k = k
        self.power = power
        self.components = components
        self.block = block
        self.seed = seed
        self.warm_max_growth = warm_max_growth

    def warm_start_refusal(self, warm_from, train: PriceInputs) -> str | None:
        """Why ``warm_from``'s projections cannot serve this fit on ``train`` (None when they can): a
        fitted k-NN regressor whose PCAs read these rows' embedding widths, fitted on a train split
        these rows differ from by at most ``warm_max_growth`` of its rows."""
        if not isinstance(warm_from, KNNPriceRegressor) or not hasattr(warm_from, "pca_"):
            return f"{type(warm_from).__name__} is not a fitted k-NN regressor"
        for name, m, missing in (("image", train.image, train.missing()[1]), ("text", train.text, train.missing()[0])):
            pca = warm_from.pca_.get(name)
            if (pca is None) != bool(missing.all()):
                return f"it was fitted with{'out' if pca is None else ''} a {name} projection, these rows have " + (
                    "no" if missing.all() else "") + f" {name} embeddings"
            if pca is not None and pca.n_features_in_ != m.shape[1]:
                return f"its {name} PCA reads {pca.n_features_in_} columns, these rows have {m.shape[1]}"
        return growth_refusal(len(train), warm_from.fitted_rows_, self.warm_max_growth, "it was",
                              "its projections are refitted")

    def start_note(self) -> str:
        if not self.warm_started_:
            return f"cold: {self.warm_note_}"
        return f"warm (projections fitted on {self.fitted_rows_} rows kept; {len(self.y_)} rows indexed)"

    def _project(self, inputs: PriceInputs) -> tuple[np.ndarray, np.ndarray]:
        """Per row the weighted, reduced vector (module docstring) and how many modalities it has."""
        n = len(inputs)
        parts, present = [], np.zeros(n, np.float32)
        for name, m, missing in (("image", inputs.image, inputs.missing()[1]), ("text", inputs.text, inputs.missing()[0])):
            pca = self.pca_.get(name)
            if pca is None:
                continue
            z = np.zeros((n, pca.n_components_), np.float32)
            have = ~missing
            if have.any():
                z[have] = pca.transform(m[have]).astype(np.float32)
                norms = np.linalg.norm(z[have], axis=1)
                ok = norms > 0
                rows = np.flatnonzero(have)
                z[rows[ok]] /= norms[ok, None]
                z[rows[~ok]] = 0.0
                present[rows[ok]] += 1
            parts.append(z)
        if not parts:
            return np.zeros((n, 0), np.float32), present
        return np.hstack(parts), present

    def fit(self, train: PriceInputs, y: np.ndarray, val: PriceInputs | None = None, y_val=None,
            warm_from: "KNNPriceRegressor | None" = None) -> "KNNPriceRegressor":
        """Project and store the train rows. ``warm_from`` (the retrained model's k-NN member, see
        `warm_start_refusal`): keep its PCA projections instead of fitting them again; every train
        row is projected and stored either way. ``warm_started_`` / ``warm_note_`` say whether it did."""
        if start_from(self, warm_from, train, "k-NN regressor"):
            self.pca_, self.fitted_rows_ = dict(warm_from.pca_), warm_from.fitted_rows_
        else:
            t_miss, i_miss = train.missing()
            self.pca_, self.fitted_rows_ = {}, len(train)
            for name, m, missing in (("image", train.image, i_miss), ("text", train.text, t_miss)):
                have = ~missing
                k = min(self.components, m.shape[1], int(have.sum()) - 1)
                if k >= 1:
                    self.pca_[name] = fit_pca(m[have], k, self.seed, "randomized")
        self.vectors_, self.y_, self.sources_ = self._stored(train, y)
        self.fallback_ = {s: float(np.mean(self.y_[self.sources_ == s])) for s in np.unique(self.sources_)}
        self.mean_ = float(np.mean(y))
        return self

    def _stored(self, inputs: PriceInputs, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(float16 vectors, log prices, source codes) of the rows with an embedding the model reads."""
        v, present = self._project(inputs)
        keep = present > 0
        scale = np.float32(1.0 / np.sqrt(max(len(self.pca_), 1)))
        return ((v[keep] * scale).astype(np.float16), np.asarray(y, dtype=np.float32)[keep],
                _source_codes(inputs.frame)[keep])

    def index_more(self, inputs: PriceInputs, y: np.ndarray) -> int:
        """Add labelled rows to the searched rows (projected by the fitted PCAs, which stay as they
        are; the fallback means stay the train rows'). Training adds the validation rows once the
        blend weights are chosen, so a listing's neighbours come from every row not kept for
        calibration or test. Returns how many rows were added (rows without a read embedding are not)."""
        v, yy, src = self._stored(inputs, y)
        self.vectors_ = np.vstack([self.vectors_, v])
        self.y_ = np.concatenate([self.y_, yy])
        self.sources_ = np.concatenate([self.sources_, src])
        return len(yy)

    def predict_log_partial(self, inputs: PriceInputs) -> tuple[np.ndarray, np.ndarray]:
        """(log price, priced): NaN and False for a row with no embedding the model reads."""
        n = len(inputs)
        out = np.full(n, np.nan)
        q, present = self._project(inputs)
        has = present > 0
        if not has.any() or not len(self.y_):
            return out, np.zeros(n, bool)
        # sqrt(M) / (modalities present) per query: the inner product is the mean cosine (see class doc).
        q *= (np.sqrt(len(self.pca_)) / np.maximum(present, 1)).astype(np.float32)[:, None]
        from fashion_pipeline.core.comparables import load_faiss

        faiss = load_faiss()
        src = _source_codes(inputs.frame)
        for s in np.unique(src[has]):
            cand = np.flatnonzero(self.sources_ == s) if s in self.fallback_ else np.arange(len(self.y_))
            index = faiss.IndexFlatIP(self.vectors_.shape[1])  # exact search; built per call (a copy of the rows)
            index.add(np.ascontiguousarray(self.vectors_[cand], dtype=np.float32))
            k = min(self.k, len(cand))
            rows = np.flatnonzero(has & (src == s))
            for b in range(0, len(rows), self.block):
                r = rows[b : b + self.block]
                sims, idx = index.search(np.ascontiguousarray(q[r]), k)
                w = np.clip(sims, 0, None).astype(np.float64) ** self.power + 1e-12
                out[r] = (w * self.y_[cand][idx]).sum(axis=1) / w.sum(axis=1)
        return out, np.isfinite(out)

    def predict_log(self, inputs: PriceInputs) -> np.ndarray:
        """`predict_log_partial`, with the mean training log price of the row's source (else of all
        rows) where it has no neighbours."""
        return self.fill_unpriced(self.predict_log_partial(inputs)[0], inputs.frame)

    def fill_unpriced(self, partial: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """``partial`` (`predict_log_partial`'s log prices for ``frame``'s rows) with the fallback of
        `predict_log` where it is NaN."""
        out = np.array(partial, dtype=np.float64, copy=True)
        missing = ~np.isfinite(out)
        if missing.any():
            src = _source_codes(frame)
            out[missing] = [self.fallback_.get(s, self.mean_) for s in src[missing]]
        return out


def source_balanced_rmse(pred: np.ndarray, y: np.ndarray, frame: pd.DataFrame,
                         min_source_rows: int = MIN_SOURCE_ROWS) -> tuple[float, dict[str, float]]:
    """(the validation score that chooses a hyper-parameter, {source: RMSE} of the sources it averages).

    The score is the mean of the per-source RMSEs over the sources with at least ``min_source_rows`` rows,
    so each market counts once, as in the listing targets; with fewer than two such sources it is the
    pooled RMSE over every row (and the dict holds "all")."""
    err = np.square(np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64))
    src = _source_codes(frame)
    by_source = {}
    for s in sorted(set(src) - {""}):
        rows = src == s
        if rows.sum() >= min_source_rows:
            by_source[s] = float(np.sqrt(err[rows].mean()))
    if len(by_source) < 2:
        pooled = float(np.sqrt(err.mean()))
        return pooled, {"all": pooled}
    return float(np.mean(list(by_source.values()))), by_source


def _source_codes(frame: pd.DataFrame) -> np.ndarray:
    if "source" not in frame:
        return np.array([""] * len(frame), dtype=object)
    return frame["source"].astype(object).where(frame["source"].notna(), "").astype(str).to_numpy(dtype=object)


class BlendPriceRegressor:
    """Weighted average (in log space) of already-fitted regressors; the weights are chosen on
    validation by a small grid, once over all rows and again per source with at least
    ``min_source_rows`` validation rows (the members' worth differs by market: the k-NN member helps
    H&M listings much more than Myntra's, whose rows dominate the pooled choice). A row is weighted by
    its source's weights (the stated or routed source), else the pooled ones. Not refitted: it
    reuses its members."""

    name = "blend"

    def __init__(self, members: list, min_source_rows: int = MIN_SOURCE_ROWS):
        self.members = members
        self.min_source_rows = min_source_rows

    def _best_weights(self, preds: np.ndarray, y: np.ndarray) -> np.ndarray:
        grid = np.linspace(0, 1, 11)
        if len(self.members) == 2:
            cands = [np.array([w, 1 - w]) for w in grid]
        else:
            cands = [np.array(w) / sum(w) for w in _simplex(len(self.members), 10)]
        best = None
        for w in cands:
            s = float(np.sqrt(np.mean((self._combine(preds, w) - y) ** 2)))
            if best is None or s < best[0]:
                best = (s, w)
        return best[1]

    def fit(self, train, y, val: PriceInputs, y_val, member_preds: np.ndarray | None = None):
        """Weights chosen on ``val``; ``member_preds``: `member_predictions` of the members on ``val``,
        when the caller has them already (training scores each member on validation too)."""
        preds = self.member_predictions(self.members, val) if member_preds is None else member_preds
        y_val = np.asarray(y_val, dtype=np.float64)
        self.weights_ = self._best_weights(preds, y_val)
        self.source_weights_ = {}
        src = _source_codes(val.frame)
        for s in np.unique(src):
            rows = src == s
            if s and rows.sum() >= self.min_source_rows:
                self.source_weights_[s] = self._best_weights(preds[rows], y_val[rows])
        return self

    @staticmethod
    def member_predictions(members: list, inputs: PriceInputs) -> np.ndarray:
        """[n, members] log prices; NaN where a member cannot price a row (the k-NN member for a row with
        no embedding it reads: its `predict_log_partial`; `member_prediction` gives what it predicts alone)."""
        # One view per call, with a memo the members share (the stacked ridge); nothing outlives the call.
        shared = PriceInputs(inputs.frame, inputs.text, inputs.image, inputs.title_text, cache={"stacked": {}},
                             tokens=inputs.tokens)
        return np.stack([m.predict_log_partial(shared)[0] if hasattr(m, "predict_log_partial") else m.predict_log(shared)
                         for m in members], axis=1)

    @staticmethod
    def member_prediction(member, column: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """``member``'s own `predict_log` from its column of `member_predictions` (the k-NN member's
        fallback filled in where it found no neighbours)."""
        return member.fill_unpriced(column, frame) if hasattr(member, "fill_unpriced") else np.asarray(column)

    @staticmethod
    def _combine(preds: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The weighted mean per row over the members that priced it (weights renormalised); where
        those members have no weight, the plain mean of them."""
        ok = np.isfinite(preds)
        p = np.where(ok, preds, 0.0)
        ww = ok * w[None, :]
        total = ww.sum(axis=1)
        plain = p.sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
        return np.where(total > 0, (p * ww).sum(axis=1) / np.where(total > 0, total, 1), plain)

    def predict_log(self, inputs: PriceInputs) -> np.ndarray:
        return self.combine_members(self.member_predictions(self.members, inputs), inputs.frame)

    def combine_members(self, preds: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """The blend's log prices for ``frame``'s rows from its members' `member_predictions` on them."""
        out = self._combine(preds, self.weights_)
        by_source = getattr(self, "source_weights_", {})  # models stored before per-source weights have none
        if by_source:
            src = _source_codes(frame)
            for s, w in by_source.items():
                rows = src == s
                if rows.any():
                    out[rows] = self._combine(preds[rows], w)
        return out


def _simplex(k: int, steps: int):
    if k == 1:
        yield (steps,)
        return
    for i in range(steps + 1):
        for rest in _simplex(k - 1, steps - i):
            yield (i,) + rest


class PriceModel:
    """A fitted regressor + prediction intervals + the training price range.

    Intervals are split-conformal: quantiles of (actual - predicted) log residuals on
    calibration rows that nothing else used, per group (Mondrian conformal): by source *and* by
    whether the listing states a brand or colour (a stated brand makes the price much surer, so
    pooled quantiles would over-cover listings with one and under-cover those without), falling
    back to the source alone, then to all rows, where a group has fewer than ``min_group`` rows.
    The quantile is the finite-sample one, ceil((n + 1) * q) / n, so coverage holds for small
    groups too.
    """

    def __init__(self, regressor, coverage: float = 0.8):
        self.regressor = regressor
        self.coverage = coverage

    @property
    def name(self) -> str:
        return self.regressor.name

    def known_brands(self) -> list[str]:
        """Brands seen often enough in training to be a feature (for brand extraction)."""
        def encoder(r):
            found = getattr(r, "cats_", None) or getattr(getattr(r, "featurizer_", None), "cats_", None)
            for m in getattr(r, "members", []) if found is None else []:
                found = found or encoder(m)
            return found

        cats = encoder(self.regressor)
        return sorted(b for b in cats.levels_.get("brand", {}) if b != MISSING) if cats is not None else []

    def calibrate(self, cal: PriceInputs, y_cal: np.ndarray, train_prices_usd: np.ndarray,
                  min_group: int = 30) -> "PriceModel":
        res = y_cal - self.regressor.predict_log(cal)
        self.residual_quantiles_ = {"*": conformal_quantiles(res, self.coverage)}
        self.calibration_rows_ = {"*": int(len(res))}
        src, keys = calibration_keys(cal.frame)
        for groups in (src, keys):
            for g in np.unique(groups):
                r = res[groups == g]
                if len(r) >= min_group:
                    self.residual_quantiles_[g] = conformal_quantiles(r, self.coverage)
                    self.calibration_rows_[g] = int(len(r))
        self.price_range_ = (float(np.min(train_prices_usd)), float(np.max(train_prices_usd)))
        return self

    def predict(self, inputs: PriceInputs) -> pd.DataFrame:
        """Columns: price_usd, price_low_usd, price_high_usd (all > 0)."""
        lp = self.regressor.predict_log(inputs)
        q = self.interval_quantiles(inputs.frame)
        # log1p target: keep predictions at or above a cent so prices stay positive.
        price = np.maximum(np.expm1(lp), 0.01)
        low = np.maximum(np.expm1(lp + q[:, 0]), 0.01)
        high = np.maximum(np.expm1(lp + q[:, 1]), price)
        return pd.DataFrame({"price_usd": price, "price_low_usd": np.minimum(low, price), "price_high_usd": high})


    def interval_quantiles(self, frame: pd.DataFrame) -> np.ndarray:
        """[n, 2] lower / upper log residual quantiles per row: its (source, stated) group, else
        its source, else all calibration rows."""
        q = self.residual_quantiles_
        src, keys = calibration_keys(frame)
        return np.array([q.get(k, q.get(s, q["*"])) for s, k in zip(src, keys)], dtype=float).reshape(-1, 2)


def calibration_keys(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its source, and 'source|stated' or 'source|unstated' (a brand or colour given)."""
    n = len(frame)
    src = frame["source"].astype(str).to_numpy() if "source" in frame else np.array([""] * n, dtype=object)
    stated = np.zeros(n, bool)
    for col in ("brand", "colour"):
        if col in frame:
            v = frame[col]
            stated |= (v.notna() & (v.astype(str).str.strip() != "")).to_numpy()
    keys = np.array([f"{s}|{'stated' if st else 'unstated'}" for s, st in zip(src, stated)], dtype=object)
    return src.astype(object), keys


def conformal_quantiles(residuals: np.ndarray, coverage: float) -> tuple[float, float]:
    """Lower / upper residual quantiles for a central ``coverage`` interval, with the split-
    conformal finite-sample correction (each tail at level ceil((n+1)(1-a/2))/n)."""
    r = np.sort(np.asarray(residuals, dtype=np.float64))
    n = len(r)
    if n == 0:
        raise ValueError("conformal calibration needs at least one residual")
    tail = (1 - coverage) / 2
    eps = 1e-9  # (1 - 0.8) / 2 is 0.0999...: without it floor(100 * tail) would be 9, not 10
    k_hi = min(int(np.ceil((n + 1) * (1 - tail) - eps)), n)
    k_lo = max(int(np.floor((n + 1) * tail + eps)), 1)
    return float(r[k_lo - 1]), float(r[k_hi - 1])


def train_regressor(kind: str, train: PriceInputs, y: np.ndarray, val: PriceInputs, y_val: np.ndarray,
                    warm_from=None, **params):
    """Fit one regressor by name; returns (regressor, seconds). ``warm_from``: a fitted regressor
    of the same kind to continue (`MLPPriceRegressor.fit`, `LightGBMPriceRegressor.fit`,
    `RidgePriceRegressor.fit`)."""
    t0 = time.perf_counter()
    if kind == "ridge":
        reg = RidgePriceRegressor(**params)
    elif kind == "lightgbm":
        reg = LightGBMPriceRegressor(**params)
    elif kind == "mlp":
        reg = MLPPriceRegressor(MLPConfig(**params))
    elif kind == "knn":
        reg = KNNPriceRegressor(**params)
    else:
        raise ValueError(f"unknown regressor {kind!r}; expected ridge, lightgbm, mlp or knn")
    if warm_from is not None:
        reg.fit(train, y, val, y_val, warm_from=warm_from)
    else:
        reg.fit(train, y, val, y_val)
    return reg, time.perf_counter() - t0


def log_target(price_usd) -> np.ndarray:
    return np.log1p(np.asarray(price_usd, dtype=np.float64))


__all__ = [
    "RidgePriceRegressor",
    "LightGBMPriceRegressor",
    "MLPPriceRegressor",
    "MLPConfig",
    "KNNPriceRegressor",
    "BlendPriceRegressor",
    "PriceModel",
    "train_regressor",
    "log_target",
    "conformal_quantiles",
    "calibration_keys",
    "sp",
]
