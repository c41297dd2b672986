"""Regression metrics for prices, computed on USD (raw) and on log1p(USD)."""

from __future__ import annotations

import numpy as np
import pandas as pd

METRIC_COLUMNS = ("n", "r2_raw", "r2_log", "rmse", "mae", "rmsle", "interval_coverage")
# Lower is better for these; the quality gate compares on LOWER_IS_BETTER[0].
LOWER_IS_BETTER = ("rmsle", "rmse", "mae")


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y - p) ** 2)) / ss_tot


def regression_metrics(y_true_usd, y_pred_usd, low_usd=None, high_usd=None) -> dict:
    """R² on USD and on log1p(USD), RMSE / MAE in USD, RMSLE, interval coverage (if given)."""
    y = np.asarray(y_true_usd, dtype=np.float64)
    p = np.asarray(y_pred_usd, dtype=np.float64)
    if len(y) == 0:
        return {k: (0 if k == "n" else float("nan")) for k in METRIC_COLUMNS}
    ly, lp = np.log1p(y), np.log1p(p)
    out = {
        "n": int(len(y)),
        "r2_raw": _r2(y, p),
        "r2_log": _r2(ly, lp),
        "rmse": float(np.sqrt(np.mean((y - p) ** 2))),
        "mae": float(np.mean(np.abs(y - p))),
        "rmsle": float(np.sqrt(np.mean((ly - lp) ** 2))),
        "interval_coverage": float("nan"),
    }
    if low_usd is not None and high_usd is not None:
        lo, hi = np.asarray(low_usd, dtype=np.float64), np.asarray(high_usd, dtype=np.float64)
        out["interval_coverage"] = float(np.mean((y >= lo) & (y <= hi)))
    return out


def metrics_by_source(frame: pd.DataFrame, y_true_usd, pred: pd.DataFrame) -> list[dict]:
    """Rows for source 'all' plus each source present in ``frame['source']``."""
    y = np.asarray(y_true_usd, dtype=np.float64)
    src = frame["source"].astype(str).to_numpy()
    rows = [{"source": "all", **regression_metrics(y, pred["price_usd"], pred["price_low_usd"], pred["price_high_usd"])}]
    for s in sorted(np.unique(src)):
        m = src == s
        rows.append(
            {
                "source": s,
                **regression_metrics(
                    y[m], pred["price_usd"].to_numpy()[m], pred["price_low_usd"].to_numpy()[m],
                    pred["price_high_usd"].to_numpy()[m],
                ),
            }
        )
    return rows


def paired_rmsle_difference_se(y_true_usd, pred_a_usd, pred_b_usd) -> float:
    """Standard error of RMSLE(a) - RMSLE(b) on the same rows, from the paired per-row squared log
    errors: SE(mean(e_a² - e_b²)) / (2 · RMSLE(b)) (delta method). nan with fewer than 2 rows or
    RMSLE(b) = 0. It says how far two models' RMSLE on these rows can differ by the luck of which
    rows were drawn, which a fixed relative tolerance cannot on a small test split."""
    ly = np.log1p(np.asarray(y_true_usd, dtype=np.float64))
    ea = (np.log1p(np.asarray(pred_a_usd, dtype=np.float64)) - ly) ** 2
    eb = (np.log1p(np.asarray(pred_b_usd, dtype=np.float64)) - ly) ** 2
    if len(ly) < 2:
        return float("nan")
    rmsle_b = float(np.sqrt(np.mean(eb)))
    if rmsle_b == 0.0:
        return float("nan")
    return float(np.std(ea - eb, ddof=1) / np.sqrt(len(ly)) / (2.0 * rmsle_b))
