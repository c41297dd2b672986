"""Train and evaluate the price regressors on the clean product table's splits."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .features import PriceInputs, build_price_inputs
from .metrics import metrics_by_source
from .models import BlendPriceRegressor, PriceModel, log_target, train_regressor

log = logging.getLogger(__name__)
DEFAULT_MODELS = ("ridge", "lightgbm", "mlp")


@dataclass
class TrainingResult:
    models: dict[str, PriceModel]
    metrics: pd.DataFrame  # one row per (model, source) on the test split
    train_seconds: dict[str, float]
    test_inputs: PriceInputs
    test_predictions: dict[str, pd.DataFrame]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> str:
        """Lowest overall test RMSLE."""
        allrows = self.metrics[self.metrics["source"] == "all"]
        return str(allrows.sort_values("rmsle").iloc[0]["model"])


def priced_rows(products: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows usable for price training, with counts of what was left out and why."""
    status = products.get("price_status", pd.Series(["ok"] * len(products)))
    price = pd.to_numeric(products["price_usd"], errors="coerce")
    ok = (status == "ok") & price.notna() & np.isfinite(price) & (price > 0)
    counts = {"products": int(len(products)), "priced": int(ok.sum())}
    for s, n in status[~ok].value_counts().items():
        counts[f"skipped_price_{s}"] = int(n)
    return products[ok.to_numpy()].reset_index(drop=True), counts


def evaluate(model: PriceModel, inputs: PriceInputs, y_usd: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    pred = model.predict(inputs)
    return pd.DataFrame(metrics_by_source(inputs.frame, y_usd, pred)), pred


def train_price_models(
    products: pd.DataFrame,
    embeddings=None,
    attributes: pd.DataFrame | None = None,
    models: tuple[str, ...] = DEFAULT_MODELS,
    params: dict[str, dict] | None = None,
    blend: bool = True,
    coverage: float = 0.8,
    train_fraction: float = 1.0,
) -> TrainingResult:
    """Fit each requested regressor on train, early-stop / tune on validation, score on test.

    ``blend`` adds a validation-weighted average (in log space) of all fitted regressors when at
    least two non-linear ones were trained.
    """
    params = params or {}
    rows, counts = priced_rows(products)
    inputs = build_price_inputs(rows, embeddings, attributes)
    split = inputs.frame["split"].astype(str).to_numpy()
    if train_fraction < 1.0:  # deterministic subsample of train only; validation / test stay whole
        keep = np.random.default_rng(0).random(len(split)) < train_fraction
        split = np.where((split == "train") & ~keep, "unused", split)
        counts["train_rows_unused"] = int((split == "unused").sum())
    tr, va, te = (inputs.subset(split == s) for s in ("train", "validation", "test"))
    counts.update({"train": len(tr), "validation": len(va), "test": len(te)})
    if len(tr) == 0 or len(va) == 0 or len(te) == 0:
        raise ValueError(f"price training needs rows in every split, got {counts}")
    y_tr, y_va = log_target(tr.frame["price_usd"]), log_target(va.frame["price_usd"])
    y_te_usd = te.frame["price_usd"].to_numpy(dtype=np.float64)
    fitted: dict[str, PriceModel] = {}
    seconds: dict[str, float] = {}
    for kind in models:
        log.info("training %s price regressor on %d rows", kind, len(tr))
        reg, secs = train_regressor(kind, tr, y_tr, va, y_va, **params.get(kind, {}))
        fitted[kind] = PriceModel(reg, coverage).calibrate(va, y_va, tr.frame["price_usd"].to_numpy())
        seconds[kind] = secs
        log.info("%s trained in %.1f s", kind, secs)
    members = [fitted[k].regressor for k in models]
    if blend and len([k for k in models if k != "ridge"]) >= 2:
        t0 = time.perf_counter()
        b = BlendPriceRegressor(members).fit(tr, y_tr, va, y_va)
        fitted["blend"] = PriceModel(b, coverage).calibrate(va, y_va, tr.frame["price_usd"].to_numpy())
        seconds["blend"] = sum(seconds[k] for k in models) + time.perf_counter() - t0
    tables, preds = [], {}
    for name, m in fitted.items():
        table, pred = evaluate(m, te, y_te_usd)
        table.insert(0, "model", name)
        table["train_seconds"] = round(seconds[name], 2)
        tables.append(table)
        preds[name] = pred
    metrics = pd.concat(tables, ignore_index=True)
    return TrainingResult(fitted, metrics, seconds, te, preds, counts)
