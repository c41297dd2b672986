"""Train the listing price model on the clean product table's splits.

Rows and what each is for (nothing is used twice):

- train (less its calibration share): fit every candidate regressor and the source routers;
- calibration (a stable hash of ``group_id`` takes ``calibration_fraction`` of the train groups):
  conformal intervals only;
- validation: alphas, early stopping, blend weights, and the choice of candidate per form; then,
  with every choice made, they join the rows the chosen model's k-NN member searches (before
  calibration, so the intervals are calibrated on the model that is published);
- test: untouched here. It is scored through the listing path (core.pricing.listing_eval) to
  report and to gate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .features import (PriceInputs, build_price_inputs, concat_inputs, mask_stated, price_text_vectorizer, regime_view,
                       title_texts)
from .listing_model import FORMS, FormModel, ListingPriceModel, SourceRouter, route_sources
from ..split import group_unit
from ..token_counts import memo_for
from .price_metrics import regression_metrics
from .models import (BlendPriceRegressor, KNNPriceRegressor, LightGBMPriceRegressor, MLPPriceRegressor, PriceModel,
                     RidgePriceRegressor, log_target, train_regressor)

log = logging.getLogger(__name__)
DEFAULT_MODELS = ("ridge", "lightgbm", "mlp", "knn")
# The members a retrain continues from the model it retrains (and "router": each form's source router).
WARM_CLASSES = {"mlp": MLPPriceRegressor, "lightgbm": LightGBMPriceRegressor, "ridge": RidgePriceRegressor,
                "knn": KNNPriceRegressor}
WARM_KINDS = (*WARM_CLASSES, "router")
# The kinds with a TF-IDF ridge (their own, or stacked) that ``char_ngrams`` reaches.
CHAR_KINDS = ("ridge", "lightgbm", "mlp")


@dataclass
class TrainingResult:
    model: ListingPriceModel
    selection: pd.DataFrame  # one row per (form, candidate) with its validation metrics
    train_seconds: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    # {form: {kind: params}} for the next retrain: what selection tuned; a retrained form keeps the
    # values it was given (LightGBM may stop earlier on the new rows: re-deriving them would ratchet
    # its rounds down retrain after retrain, and change the fingerprint of a run with nothing new).
    tuned: dict[str, dict[str, dict]] = field(default_factory=dict)
    # {form: {kind: how it started}} for the members a retrain continued: MLP "warm (best epoch k; r of n epochs run)",
    # LightGBM "warm (n + k of w trees kept)", ridge "warm (featurizer of n rows kept; ...)", router
    # "warm (TF-IDF and photo PCA of n rows kept; ...)", or "cold: <why the warm start was refused>".
    warm_starts: dict[str, dict[str, str]] = field(default_factory=dict)


def priced_rows(products: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows usable for price training, with counts of what was left out and why."""
    status = products.get("price_status", pd.Series(["ok"] * len(products)))
    price = pd.to_numeric(products["price_usd"], errors="coerce")
    ok = (status == "ok") & price.notna() & np.isfinite(price) & (price > 0)
    counts = {"products": int(len(products)), "priced": int(ok.sum())}
    for s, n in status[~ok].value_counts().items():
        counts[f"skipped_price_{s}"] = int(n)
    return products[ok.to_numpy()].reset_index(drop=True), counts


def calibration_groups(group_ids: pd.Series, fraction: float, salt: str = "price-calibration-v1") -> np.ndarray:
    """True for the groups (a stable hash, like the split) held out of training for conformal calibration."""
    return np.array([group_unit(g, salt) < fraction for g in group_ids.astype(str)], dtype=bool)


def pricing_splits(rows: pd.DataFrame, calibration_fraction: float = 0.125) -> np.ndarray:
    """train / calibration / validation / test per priced row."""
    split = rows["split"].astype(str).to_numpy().copy()
    groups = rows["group_id"] if "group_id" in rows.columns else rows["product_id"]
    cal = calibration_groups(groups, calibration_fraction) & (split == "train")
    split[cal] = "calibration"
    return split


def form_rows(inputs: PriceInputs, form: str) -> np.ndarray:
    """Rows that can teach a form: the photo-only model learns from rows that have a photo."""
    if form == "image":
        return ~inputs.missing()[1]
    return np.ones(len(inputs), dtype=bool)


def _rmsle_log(pred_log: np.ndarray, y_log: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred_log - y_log) ** 2)))


def train_price_models(
    products: pd.DataFrame,
    embeddings=None,
    attributes: pd.DataFrame | None = None,
    models: tuple[str, ...] = DEFAULT_MODELS,
    params: dict[str, dict] | None = None,
    blend: bool = True,
    coverage: float = 0.8,
    train_fraction: float = 1.0,
    forms: tuple[str, ...] = FORMS,
    calibration_fraction: float = 0.125,
    mask_rate: float = 0.5,
    max_interval_ratio: float = 6.0,
    chosen: dict[str, str] | None = None,
    tuned: dict[str, dict[str, dict]] | None = None,
    warm: dict[str, object] | None = None,
    warm_kinds: tuple[str, ...] = WARM_KINDS,
    encode_titles=None,
    char_ngrams: dict[str, tuple[str, ...]] | None = None,
    progress=log.info,
) -> TrainingResult:
    """One regressor per listing form, chosen on validation among ``models`` (+ their blend);
    routers on train; intervals on the calibration rows. Test rows are not read.

    ``chosen`` ({form: model kind}, e.g. the published model's): a retrain, not a selection —
    each form named there trains only its kind ("blend": the blend of ``models``); other forms
    are selected among ``models`` as usual.
    ``tuned`` ({form: {kind: params}}, ``tuned_params`` of the model being retrained): what selection
    searched on validation (ridge's alpha, LightGBM's rounds), reused by a retrain of a form named in
    ``chosen`` instead of searched again; over ``params``, except that LightGBM's reused rounds stay
    within the configured ``n_estimators`` (a maximum: a user who lowers it gets what they asked for;
    the tuned value is still recorded for the next retrain).
    ``warm`` ({form: the `FormModel` of the model being retrained, or its fitted regressor}):
    a retrained form whose kind includes the MLP, LightGBM or the ridge (``warm_kinds``) continues that
    model's member (alone or in its blend) instead of training one from scratch (`MLPPriceRegressor.fit`:
    ``warm_epochs`` epochs; `LightGBMPriceRegressor.fit`: up to ``warm_rounds`` more trees;
    `RidgePriceRegressor.fit`: its featurizer kept, LSQR started from its coefficients). With "router"
    in ``warm_kinds``, its source router keeps the retrained router's TF-IDF and photo PCA
    and continues its logistic regression (`SourceRouter.fit`).
    ``TrainingResult.warm_starts`` says per form and kind whether it could.
    ``encode_titles`` (texts -> [n, d] vectors, e.g. `scoring.encoder_embedder`'s ``encode_texts``): the
    encoder of the sparse form's title vectors (`features.title_texts`); without it that form has no text
    vector, and scoring must not give it one (``features_spec["sparse_text"]``).
    ``char_ngrams`` ({form: sources}): the TF-IDF ridges of that form (the ridge member and the ridge
    stacked into LightGBM and the MLP) add character n-grams of those sources' price texts
    (`PriceFeaturizer`'s ``char_sources``); other forms have none.
    Inside a `token_caches` block, the price text's TF-IDF, its ``char_ngrams`` block and the router's TF-IDF
    count each text through that block's memos (a text its files hold is not tokenised again); the same models
    either way."""
    params = params or {}
    tuned = tuned or {}
    warm = warm or {}
    chosen = dict(chosen or {})
    bad = {k for k in chosen.values() if k != "blend" and k not in models}
    if bad:
        raise ValueError(f"chosen model kinds {sorted(bad)} are not among the models to train {list(models)}")
    unknown = (set(forms) | set(char_ngrams or {})) - set(FORMS)
    if unknown:
        raise ValueError(f"unknown listing forms {sorted(unknown)}; expected some of {list(FORMS)}")
    rows, counts = priced_rows(products)
    title_text = None
    if encode_titles is not None:
        t0 = time.perf_counter()
        title_text = encode_titles(title_texts(rows["title"]))
        progress(f"title vectors of {len(rows)} priced rows in {time.perf_counter() - t0:.1f} s")
    inputs = build_price_inputs(rows, embeddings, attributes, title_text)
    # Every fit and transform of the price text below shares one tokenisation of each text.
    inputs.tokens = memo_for(price_text_vectorizer())
    embeddings = None  # the aligned copy is all training reads (a caller that handed them over frees them now)
    split = pricing_splits(inputs.frame, calibration_fraction)
    if train_fraction < 1.0:  # deterministic subsample of train only; the other splits stay whole
        keep = np.random.default_rng(0).random(len(split)) < train_fraction
        split = np.where((split == "train") & ~keep, "unused", split)
        counts["train_rows_unused"] = int((split == "unused").sum())
    tr, cal, va = (inputs.subset(split == s) for s in ("train", "calibration", "validation"))
    del inputs  # the three subsets are copies; test rows are not read here
    counts.update({"train": len(tr), "calibration": len(cal), "validation": len(va), "test": int((split == "test").sum())})
    if len(tr) == 0 or len(va) == 0 or len(cal) == 0:
        raise ValueError(f"price training needs train, calibration and validation rows, got {counts}")
    train_prices = tr.frame["price_usd"].to_numpy(dtype=np.float64)
    # Stated fields hidden on half the rows (different draws per split), so each form's model and
    # its calibration see listings with and without brand / colour.
    tr_m, va_m = mask_stated(tr, mask_rate, 1), mask_stated(va, mask_rate, 2)
    # Calibration rows in both views a listing shows: the catalogue's brand / colour stated, and
    # neither stated. Each (source, stated) interval is then calibrated on every calibration row of
    # its source rather than on the random share a mask left in that group.
    cal_m = concat_inputs([mask_stated(cal, 0.0, 3), mask_stated(cal, 1.0, 3)])
    fitted: dict[str, FormModel] = {}
    selection, seconds, warm_starts = [], {}, {}
    for form in forms:
        t_form = time.perf_counter()
        ftr = regime_view(tr_m.subset(form_rows(tr_m, form)), form)
        fva = regime_view(va_m.subset(form_rows(va_m, form)), form)
        if len(ftr) < 10 or len(fva) < 2:
            progress(f"{form}: too few rows to train ({len(ftr)} train, {len(fva)} validation): skipped")
            counts[f"form_skipped/{form}"] = 1
            continue
        y_tr, y_va = log_target(ftr.frame["price_usd"]), log_target(fva.frame["price_usd"])
        cands: dict[str, object] = {}
        kinds = models if chosen.get(form) in (None, "blend") else (chosen[form],)
        for kind in kinds:
            reuse = _within_limits(tuned.get(form, {}).get(kind, {}) if form in chosen else {}, params.get(kind, {}))
            start = (_member(warm.get(form), WARM_CLASSES[kind])
                     if kind in WARM_CLASSES and kind in warm_kinds and form in chosen else None)
            chars = ({"char_sources": tuple(char_ngrams[form])}
                     if kind in CHAR_KINDS and (char_ngrams or {}).get(form) else {})
            progress(f"{form}: training {kind} on {len(ftr)} rows" + (f" with the tuned {reuse}" if reuse else "")
                     + (f" continuing the retrained model's {kind}" if start is not None else "")
                     + (f" (character n-grams of {list(chars['char_sources'])} texts)" if chars else ""))
            reg, secs = train_regressor(kind, ftr, y_tr, fva, y_va, warm_from=start,
                                        **{**params.get(kind, {}), **reuse, **chars})
            cands[kind] = reg
            seconds[f"{form}/{kind}"] = round(secs, 2)
            if start is not None:
                warm_starts.setdefault(form, {})[kind] = reg.start_note()
        val_preds = {}  # each candidate's validation log prices; the blend's come from its members' (read once)
        if (blend if form not in chosen else chosen[form] == "blend") and len(cands) >= 2:
            t0 = time.perf_counter()
            members, member_kinds = list(cands.values()), list(cands)
            member_val = BlendPriceRegressor.member_predictions(members, fva)
            val_preds = {kind: BlendPriceRegressor.member_prediction(reg, member_val[:, i], fva.frame)
                         for i, (kind, reg) in enumerate(cands.items())}
            cands["blend"] = blender = BlendPriceRegressor(members).fit(ftr, y_tr, fva, y_va, member_preds=member_val)
            progress(f"{form}: blend weights {_named(member_kinds, blender.weights_)}" + "".join(
                f"; for {s} listings {_named(member_kinds, w)}" for s, w in blender.source_weights_.items()))
            val_preds["blend"] = cands["blend"].combine_members(member_val, fva.frame)
            seconds[f"{form}/blend"] = round(time.perf_counter() - t0, 2)
        val_scores = {}
        for kind, reg in cands.items():
            p = val_preds[kind] if kind in val_preds else reg.predict_log(fva)
            val_scores[kind] = _rmsle_log(p, y_va)
            m = regression_metrics(np.expm1(y_va), np.expm1(p))
            selection.append({"form": form, "model": kind, "split": "validation", "n": m["n"],
                              "rmsle": m["rmsle"], "r2_log": m["r2_log"], "mae": m["mae"]})
        pick = chosen[form] if chosen.get(form) in cands else min(val_scores, key=val_scores.get)
        knn = _member(cands[pick], KNNPriceRegressor)
        if knn is not None:  # weights chosen: the validation rows join the searched rows (calibration sees them)
            added = knn.index_more(fva, y_va)
            progress(f"{form}: the k-NN member now searches {len(knn.y_)} rows ({added} validation rows added)")
        previous_router = getattr(warm.get(form), "router", None) if "router" in warm_kinds and form in chosen else None
        router = SourceRouter(**params.get("router", {})).fit(ftr, warm_from=previous_router)
        if previous_router is not None:
            warm_starts.setdefault(form, {})["router"] = router.start_note()
        # Calibration rows go through the same routing as a listing that states no source.
        fcal = regime_view(cal_m.subset(form_rows(cal_m, form)), form)
        hidden = PriceInputs(fcal.frame.assign(source=None), fcal.text, fcal.image, fcal.title_text, tokens=fcal.tokens)
        fcal.frame["source"] = route_sources(hidden, router, set(router.classes_))
        pm = PriceModel(cands[pick], coverage).calibrate(fcal, log_target(fcal.frame["price_usd"]), train_prices)
        fitted[form] = FormModel(pm, router, pick)
        seconds[f"{form}/total"] = round(time.perf_counter() - t_form, 2)
        how = "retrained the chosen" if chosen.get(form) == pick else "chose"
        progress(f"{form}: {how} {pick} (validation RMSLE {val_scores[pick]:.4f}); intervals "
                 f"{ {k: tuple(round(v, 3) for v in q) for k, q in pm.residual_quantiles_.items()} }")
    progress(f"price text: {tr.tokens.counts['texts_tokenised']} distinct texts tokenised once and "
             f"{tr.tokens.counts['texts_from_cache']} counted by the last run for "
             f"{tr.tokens.counts['texts_requested']} rows fitted or transformed (cache {tr.tokens.cache_note})")
    if not fitted:
        raise ValueError(f"no listing form could be trained: {counts}")
    model = ListingPriceModel(fitted, (float(train_prices.min()), float(train_prices.max())), coverage,
                              max_interval_ratio)
    for row in selection:
        row["chosen"] = fitted.get(row["form"]) is not None and fitted[row["form"]].chosen == row["model"]
    recorded = tuned_params(model)
    for form, by_kind in tuned.items():
        if form in chosen and form in recorded:
            recorded[form].update({k: p for k, p in by_kind.items() if k in recorded[form]})
    return TrainingResult(model, pd.DataFrame(selection), seconds, counts, recorded, warm_starts)


def mlp_precisions(model: ListingPriceModel) -> dict[str, str]:
    """{form: the precision its MLP trained in ('bf16', 'fp16', 'fp32')} for each form served by an MLP or a
    blend with one; the choice depends on the machine (`MLPPriceRegressor`), so the model records it."""
    out = {}
    for form, fm in model.forms.items():
        mlp = _member(fm, MLPPriceRegressor)
        if mlp is not None and getattr(mlp, "precision_", None):
            out[form] = mlp.precision_
    return out


def _member(previous, cls):
    """The retrained form's regressor (``previous``: its `FormModel`, or the regressor itself), or its
    blend's member, when it is a ``cls``; else None."""
    regressor = getattr(getattr(previous, "price_model", None), "regressor", previous)
    for m in getattr(regressor, "members", [regressor]) if regressor is not None else []:
        if isinstance(m, cls):
            return m
    return None


def _named(kinds: list[str], weights) -> str:
    """'ridge 0.30, lightgbm 0.20, ...': blend weights beside their members' names, for the log."""
    return ", ".join(f"{k} {w:.2f}" for k, w in zip(kinds, weights))


def _within_limits(reuse: dict, configured: dict) -> dict:
    """Tuned parameters to reuse, with a tuned round count cut to the configured maximum."""
    if "n_estimators" in reuse and "n_estimators" in configured:
        return {**reuse, "n_estimators": min(int(reuse["n_estimators"]), int(configured["n_estimators"]))}
    return reuse


def tuned_params(model: ListingPriceModel) -> dict[str, dict[str, dict]]:
    """{form: {kind: params}}: the hyper-parameters the model's regressors found on validation
    (ridge's alpha; LightGBM's early-stopped number of rounds), alone or inside a blend, in the form
    ``train_price_models(tuned=...)`` reuses when it retrains those forms."""
    out: dict[str, dict[str, dict]] = {}
    for form, fm in model.forms.items():
        reg = fm.price_model.regressor
        for member in getattr(reg, "members", [reg]):
            if isinstance(member, RidgePriceRegressor):
                out.setdefault(form, {})["ridge"] = {"alphas": [float(member.alpha_)]}
            elif isinstance(member, LightGBMPriceRegressor):
                out.setdefault(form, {})["lightgbm"] = {"n_estimators": int(member.best_iteration_)}
    return out
