"""The price model that serves listings: one regressor per listing form, a source router,
conformal intervals per (form, source), clipping to the training range, and abstention.

A listing shows one of three forms (the classifiers' input regimes, same names):

- ``full``:   title + description (+ photo where there is one)
- ``sparse``: title only (+ photo; its text vector is the title's alone, `features.title_texts`)
- ``image``:  photo only

Each form has its own regressor, trained on catalogue rows restricted to what that form shows
(`features.regime_view`) with the optional stated fields hidden at random
(`features.mask_stated`), so no model leans on a column a listing does not carry.

``source`` (which market a product comes from: Myntra MRP in rupees or H&M) sets the price
scale. A listing may state it; otherwise a per-form logistic regression on the listing's text
and photo predicts it (`SourceRouter`), and the regressor and the interval use the predicted
source. Intervals are calibrated per (form, routed source) on calibration rows that nothing
else used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fashion_pipeline.core.sparse_blocks import dense_csr
from fashion_pipeline.core.token_counts import memo_for, tfidf_transform

from .features import PriceInputs, _clean_str, clean_column, fit_pca, regime_view, zero_nans_
from .models import PriceModel, growth_refusal, start_from

FORMS = ("full", "sparse", "image")

# Why a listing got no price (the `price_abstained` column / flags).
ABSTAIN_NO_INPUT = "no_usable_input"
ABSTAIN_WIDE_INTERVAL = "interval_too_wide"
ABSTAIN_NO_MODEL = "no_model_for_listing_form"


def _has(v) -> bool:
    return bool(_clean_str(v))


def listing_forms(frame: pd.DataFrame, image: np.ndarray) -> np.ndarray:
    """Per row the form it falls in (full / sparse / image), or None with nothing usable."""
    has_img = ~np.isnan(image).any(axis=1) if image.size else np.zeros(len(frame), bool)
    out = []
    for t, d, h in zip(frame["title"], frame["description"], has_img):
        out.append("full" if _has(t) and _has(d) else "sparse" if _has(t) else "image" if h else None)
    return np.array(out, dtype=object)


class SourceRouter:
    """Predicts a listing's source from what its form shows (logistic regression on TF-IDF of the
    form's text and the PCA-reduced photo embedding). With one source in training it returns it."""

    def __init__(self, image_components: int = 32, seed: int = 0, warm_max_growth: float = 0.25):
        self.image_components = image_components
        self.seed = seed
        self.warm_max_growth = warm_max_growth

    def warm_start_refusal(self, warm_from, inputs: PriceInputs) -> str | None:
        """Why ``warm_from`` cannot seed this fit on ``inputs`` (None when it can): a fitted router over
        the same sources whose TF-IDF and photo PCA read what these rows have, fitted on a train split
        these rows differ from by at most ``warm_max_growth`` of its rows."""
        if not isinstance(warm_from, SourceRouter) or getattr(warm_from, "model_", None) is None:
            return f"{type(warm_from).__name__} is not a fitted two-source router"
        rows = getattr(warm_from, "fitted_rows_", None)
        if rows is None:
            return "it records no fitted_rows_ (trained by an older version)"
        y = clean_column(inputs.frame["source"])
        if sorted(set(y) - {""}) != list(warm_from.classes_):
            return f"it routes to {list(warm_from.classes_)}, these rows come from {sorted(set(y) - {''})}"
        has_text = (inputs.frame["price_text"].str.len() > 0).sum() >= 2
        if has_text != (warm_from.tfidf_ is not None):
            return "it was fitted with" + ("out" if has_text else "") + " a text block, these rows have" + (
                "" if has_text else " no") + " text"
        if warm_from.pca_ is not None and warm_from.pca_.n_features_in_ != inputs.image.shape[1]:
            return f"its photo PCA reads {warm_from.pca_.n_features_in_} columns, these rows have {inputs.image.shape[1]}"
        return growth_refusal(len(inputs), rows, self.warm_max_growth, "it was", "its TF-IDF and PCA are refitted")

    def start_note(self) -> str:
        if not self.warm_started_:
            return f"cold: {self.warm_note_}"
        return (f"warm (TF-IDF and photo PCA of {self.fitted_rows_} rows kept; logistic regression from its "
                f"coefficients: {int(np.max(self.model_.n_iter_))} iterations)")

    def _x(self, inputs: PriceInputs):
        parts = []
        if self.tfidf_ is not None:
            parts.append(tfidf_transform(self.tfidf_, inputs.frame["price_text"]))
        if self.pca_ is not None:
            have = ~inputs.missing()[1]
            z = np.zeros((len(inputs), self.pca_.n_components_ + 1), np.float32)
            if have.any():  # rows without a NaN: only an infinity is left to clip (in the row copy)
                z[have, :-1] = self.pca_.transform(zero_nans_(inputs.image[have]))
            z[:, -1] = have
            parts.append(dense_csr(z))
        if not parts:
            return sp.csr_matrix((len(inputs), 1), dtype=np.float32)
        return sp.hstack(parts, format="csr", dtype=np.float32)

    def fit(self, inputs: PriceInputs, warm_from: "SourceRouter | None" = None) -> "SourceRouter":
        """``warm_from`` (the retrained model's router, see `warm_start_refusal`): keep its TF-IDF and
        photo PCA and start the logistic regression (lbfgs, a convex problem solved to its tolerance)
        from its coefficients. ``warm_started_`` / ``warm_note_`` say whether it did and why not."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        y = clean_column(inputs.frame["source"])
        self.classes_ = sorted(set(y) - {""})
        self.model_ = None
        start_from(self, warm_from, inputs, "source router")
        if len(self.classes_) < 2:
            return self
        lr = LogisticRegression(C=4.0, max_iter=500, warm_start=self.warm_started_)
        if self.warm_started_:
            self.tfidf_, self.pca_, self.fitted_rows_ = warm_from.tfidf_, warm_from.pca_, warm_from.fitted_rows_
            lr.coef_, lr.intercept_ = warm_from.model_.coef_.copy(), warm_from.model_.intercept_.copy()
        else:
            docs = inputs.frame["price_text"]
            vec = TfidfVectorizer(min_df=2, max_features=30_000, sublinear_tf=True, dtype=np.float32)
            # Through the active token_caches block's memo (its transforms below then tokenise nothing).
            self.tfidf_ = memo_for(vec).fit(vec, docs) if (docs.str.len() > 0).sum() >= 2 else None
            have = ~inputs.missing()[1]
            k = min(self.image_components, inputs.image.shape[1], int(have.sum()) - 1)
            self.pca_ = fit_pca(inputs.image[have], k, self.seed) if k >= 1 else None
            self.fitted_rows_ = len(inputs)
        self.model_ = lr.fit(self._x(inputs), y)
        return self

    def predict(self, inputs: PriceInputs) -> np.ndarray:
        if self.model_ is None:
            return np.array([self.classes_[0] if self.classes_ else ""] * len(inputs), dtype=object)
        if len(inputs) == 0:
            return np.array([], dtype=object)
        return self.model_.predict(self._x(inputs)).astype(object)


def route_sources(inputs: PriceInputs, router: SourceRouter, known: set[str]) -> np.ndarray:
    """The stated source where it is one the model knows, else the router's prediction."""
    stated = clean_column(inputs.frame["source"])
    routed = stated.astype(object).copy()
    need = np.array([s not in known for s in stated])
    if need.any():
        routed[need] = router.predict(inputs.subset(need))
    return routed


@dataclass
class FormModel:
    price_model: PriceModel  # regressor + conformal residual quantiles per routed source
    router: SourceRouter
    chosen: str  # which candidate (ridge / lightgbm / mlp / blend) won on validation


class ListingPriceModel:
    """What the model store keeps as ``price_regressor`` and scoring serves."""

    name = "listing_price_model"

    def __init__(self, forms: dict[str, FormModel], price_range: tuple[float, float], coverage: float = 0.8,
                 max_interval_ratio: float = 6.0):
        self.forms = forms
        self.price_range_ = (float(price_range[0]), float(price_range[1]))
        self.coverage = coverage
        # Abstain where the calibrated interval for what the listing shows spans more than this
        # factor (in log1p space, where the model works): a price that could be anything in a 6x
        # range tells the seller nothing.
        self.max_interval_ratio = max_interval_ratio

    @property
    def sources(self) -> set[str]:
        return {s for f in self.forms.values() for s in f.router.classes_}

    def known_brands(self) -> list[str]:
        brands: set[str] = set()
        for f in self.forms.values():
            brands.update(f.price_model.known_brands())
        return sorted(brands)

    def describe(self) -> dict:
        return {form: {"model": f.chosen, "intervals_log": f.price_model.residual_quantiles_,
                       "calibration_rows": getattr(f.price_model, "calibration_rows_", {})}
                for form, f in self.forms.items()}

    def predict(self, inputs: PriceInputs) -> pd.DataFrame:
        """price_usd, price_low_usd, price_high_usd (NaN where abstained, else inside the training
        range), price_form, price_source (stated or routed), price_abstained (reason or None),
        price_clipped (the point estimate was outside the training range and was clipped)."""
        n = len(inputs)
        out = pd.DataFrame({
            "price_usd": np.full(n, np.nan), "price_low_usd": np.full(n, np.nan), "price_high_usd": np.full(n, np.nan),
            "price_form": pd.Series([None] * n, dtype=object), "price_source": pd.Series([None] * n, dtype=object),
            "price_abstained": pd.Series([None] * n, dtype=object), "price_clipped": np.zeros(n, bool),
        })
        if n == 0:
            return out
        forms = listing_forms(inputs.frame, inputs.image)
        lo_p, hi_p = self.price_range_
        known = self.sources
        wide = np.zeros(n, bool)
        no_model = np.zeros(n, bool)
        for form in FORMS:
            rows = np.array([f == form for f in forms])
            if not rows.any():
                continue
            if form not in self.forms:  # e.g. trained without embeddings: no photo-only model
                no_model |= rows
                continue
            serve = form
            fm = self.forms[serve]
            view = regime_view(inputs.subset(rows), serve)
            src = route_sources(view, fm.router, known)
            view.frame["source"] = src
            pred = fm.price_model.predict(view)
            price = pred["price_usd"].to_numpy()
            clipped = (price < lo_p) | (price > hi_p)
            idx = np.flatnonzero(rows)
            out.loc[idx, "price_usd"] = np.clip(price, lo_p, hi_p)
            out.loc[idx, "price_low_usd"] = np.clip(pred["price_low_usd"].to_numpy(), lo_p, hi_p)
            out.loc[idx, "price_high_usd"] = np.clip(pred["price_high_usd"].to_numpy(), lo_p, hi_p)
            out.loc[idx, "price_clipped"] = clipped
            out.loc[idx, "price_form"] = serve
            out.loc[idx, "price_source"] = src
            q = fm.price_model.interval_quantiles(view.frame)
            width = q[:, 1] - q[:, 0]
            wide[idx] = width > np.log(self.max_interval_ratio)
        none = np.array([f is None for f in forms])
        out.loc[none, "price_abstained"] = ABSTAIN_NO_INPUT
        out.loc[wide & ~none, "price_abstained"] = ABSTAIN_WIDE_INTERVAL
        out.loc[no_model, "price_abstained"] = ABSTAIN_NO_MODEL
        out.loc[out["price_abstained"].notna(), ["price_usd", "price_low_usd", "price_high_usd"]] = np.nan
        return out

