import math

import numpy as np
import pandas as pd
import pytest

from fashion_pipeline.core.raw_prices import parse_price, price_outliers
from fashion_pipeline.core.split import assign_splits, split_for_group


@pytest.mark.parametrize("raw,expected", [
    ("649", (649.0, "ok")), (649, (649.0, "ok")), ("1,299", (1299.0, "ok")), (" 12.5 ", (12.5, "ok")),
    ("", (None, "missing")), (None, (None, "missing")), (float("nan"), (None, "missing")),
    ("abc", (None, "invalid")), ("0", (None, "invalid")), ("-3", (None, "invalid")),
    ("inf", (None, "invalid")), ([1], (None, "invalid")),
])
def test_parse_price(raw, expected):
    assert parse_price(raw) == expected


def test_outliers_are_judged_on_log_price_within_their_group():
    rng = np.random.default_rng(0)
    cheap = np.exp(rng.normal(np.log(10), 0.2, 200))
    dear = np.exp(rng.normal(np.log(300), 0.2, 200))
    prices = pd.Series(np.r_[cheap, dear, [10_000.0, 0.01, 300.0]])
    groups = pd.DataFrame({"source": ["s"] * len(prices),
                           "category": ["socks"] * 200 + ["coats"] * 200 + ["socks", "socks", "socks"]})
    mask = price_outliers(prices, groups, k=3.0)
    assert mask.iloc[-3] and mask.iloc[-2]       # absurd for socks
    assert mask.iloc[-1]                          # a coat's price is extreme for socks
    assert not mask.iloc[:400].any()              # nothing normal is flagged
    # the same 300 is normal for coats
    assert not price_outliers(pd.Series(np.r_[dear, [300.0]]), pd.DataFrame({"s": ["s"] * 201}), k=3.0).iloc[-1]


def test_small_groups_fall_back_to_their_source():
    prices = pd.Series([10.0] * 50 + [11.0, 500.0])
    groups = pd.DataFrame({"source": ["s"] * 52, "category": ["big"] * 50 + ["tiny", "tiny"]})
    mask = price_outliers(prices, groups, k=3.0, min_group_size=20)
    assert not mask.iloc[50] and mask.iloc[51]


def test_nan_prices_are_never_outliers():
    mask = price_outliers(pd.Series([np.nan, 5.0, 5.0]), pd.DataFrame({"s": ["a"] * 3}))
    assert not mask.any()


def test_split_is_deterministic_grouped_and_proportioned():
    groups = pd.Series([f"g{i // 3}" for i in range(30_000)])  # 3 variants per group
    a = assign_splits(groups)
    b = assign_splits(groups.sample(frac=1, random_state=1)).sort_index()
    assert (a == b).all()                                      # order-independent, repeatable
    assert (a.groupby(groups).nunique() == 1).all()            # variants never straddle
    share = a.value_counts(normalize=True)
    assert abs(share["train"] - 0.8) < 0.02 and abs(share["test"] - 0.1) < 0.02
    assert split_for_group("hm-0108775") == split_for_group("hm-0108775")


def test_split_rejects_impossible_fractions():
    with pytest.raises(ValueError):
        assign_splits(pd.Series(["a"]), validation=0.6, test=0.5)
