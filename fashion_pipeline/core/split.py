"""Deterministic, grouped train / validation / test split."""

from __future__ import annotations

import hashlib

import pandas as pd

SPLITS = ("train", "validation", "test")


def group_unit(group_id: str, salt: str) -> float:
    """A number in [0, 1) from a stable hash (not Python's salted ``hash``) of ``salt:group_id``: the
    same on any machine, in any order. Each use (split, calibration share, benchmark folds) has its salt."""
    return int.from_bytes(hashlib.sha1(f"{salt}:{group_id}".encode()).digest()[:8], "big") / 2**64


def split_for_group(group_id: str, salt: str = "fashion-v1", validation: float = 0.1, test: float = 0.1) -> str:
    """The same group always lands in the same split, on any machine, in any order.

    Grouping by H&M ``product_code`` keeps colour variants of one product together.
    """
    u = group_unit(group_id, salt)
    if u < 1.0 - validation - test:
        return "train"
    if u < 1.0 - test:
        return "validation"
    return "test"


def assign_splits(group_ids: pd.Series, salt: str = "fashion-v1", validation: float = 0.1, test: float = 0.1) -> pd.Series:
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise ValueError(f"invalid split fractions: validation={validation}, test={test}")
    cache: dict[str, str] = {}
    out = []
    for g in group_ids.astype(str):
        if g not in cache:
            cache[g] = split_for_group(g, salt, validation, test)
        out.append(cache[g])
    return pd.Series(out, index=group_ids.index, dtype=object)


def grew_beyond(rows_now: int, rows_then: int, share: float) -> bool:
    """Whether a train split of ``rows_now`` rows is more than ``share`` of the ``rows_then`` rows a kept
    part (a featurizer, a stored baseline) was fitted on away from them: the retrains' keep-or-refit rule."""
    return abs(rows_now - rows_then) > share * max(rows_then, 1)
