"""Prices as the datasets state them: parsing, conversion to USD, outlier rules (the price
model itself lives in core.pricing)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Kaggle (Myntra) prices are MRP in Indian rupees. 0.012 USD/INR is the 2019-2024 range's
# midpoint order of magnitude; it is configuration (CleaningConfig.inr_to_usd), not a fact.
DEFAULT_INR_TO_USD = 0.012
# H&M's transaction price is normalised; x590 lands on retail price points (9.99, 14.99...).
# See the shared data README. Treated as USD.
DEFAULT_HM_PRICE_SCALE = 590.0


def parse_price(value: object) -> tuple[float | None, str]:
    """(price, status) with status 'ok' | 'missing' | 'invalid' (non-numeric, <= 0, inf/nan)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "missing"
    if isinstance(value, str):
        text = value.strip().replace(",", "")
        if not text:
            return None, "missing"
        try:
            number = float(text)
        except ValueError:
            return None, "invalid"
    else:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None, "invalid"
    if not math.isfinite(number) or number <= 0:
        return None, "invalid"
    return number, "ok"


def price_outliers(
    prices: pd.Series, groups: pd.DataFrame, k: float = 3.0, min_group_size: int = 20,
    min_log_iqr: float = 0.1,
) -> pd.Series:
    """Boolean mask of extreme prices, judged on log price within each group.

    A price is an outlier when log(price) lies more than ``k`` inter-quartile ranges outside
    the quartiles of its group (Tukey's fences on the log scale: prices are multiplicative).
    Groups are the columns of ``groups`` (e.g. source + category); groups smaller than
    ``min_group_size`` fall back to the first column alone, so a rare category is judged
    against its source rather than not at all. The IQR is floored at ``min_log_iqr`` (about
    10%): a group sold at one price point would otherwise flag every other price. NaN prices
    are never outliers.
    """
    logp = np.log(prices.astype(float))
    valid = logp.notna()
    mask = pd.Series(False, index=prices.index)
    if not valid.any():
        return mask
    keys = [groups[c] for c in groups.columns]
    sizes = logp[valid].groupby([g[valid] for g in keys]).transform("size")
    small = pd.Series(True, index=prices.index)
    small.loc[sizes.index] = sizes < min_group_size

    def fences(values: pd.Series, by: list[pd.Series]) -> tuple[pd.Series, pd.Series]:
        q1 = values.groupby(by).transform(lambda s: s.quantile(0.25))
        q3 = values.groupby(by).transform(lambda s: s.quantile(0.75))
        iqr = (q3 - q1).clip(lower=min_log_iqr)
        return q1 - k * iqr, q3 + k * iqr

    fine = valid & ~small
    if fine.any():
        lo, hi = fences(logp[fine], [g[fine] for g in keys])
        mask.loc[fine] = (logp[fine] < lo) | (logp[fine] > hi)
    coarse = valid & small
    if coarse.any():
        # Judge small groups against the whole coarse group (all their source's rows).
        lo_all, hi_all = fences(logp[valid], [keys[0][valid]])
        mask.loc[coarse] = (logp[coarse] < lo_all[coarse]) | (logp[coarse] > hi_all[coarse])
    return mask
