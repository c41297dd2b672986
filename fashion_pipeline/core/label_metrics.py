"""Evaluation metrics of the clustering and classification stages (the price model's are in
core.pricing.price_metrics).

Plain functions over numpy arrays / sequences; no Dagster, no model code. Every function
returns plain Python floats/ints so results can go straight into metadata and tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: Sequence, y_pred: Sequence, *, true_classes_only: bool = False
                           ) -> dict[str, float]:
    """Accuracy, macro-F1 and weighted-F1 over the labels present in ``y_true`` or ``y_pred``.

    ``true_classes_only``: average the F1s over the classes present in ``y_true`` alone. A prediction
    outside them (a row left without a value, marked e.g. "<none>") is still a miss (it lowers its
    true class's recall), but it does not add a class whose F1 is zero by construction: with the
    default, 11 listings without a photo among 1,500 cost a photo-only category macro-F1 a twelfth
    (an empty twelfth class), whatever the classifier did on the rest.

    Returns ``{"n": 0, ...: nan}`` for empty input instead of raising, so a source or regime
    with no evaluable rows shows up as such in a leaderboard.
    """
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    n = int(len(y_true))
    if n == 0:
        return {"n": 0, "accuracy": float("nan"), "macro_f1": float("nan"), "weighted_f1": float("nan")}
    # sklearn's accuracy_score / f1_score(zero_division=0) from one table of counts: their input
    # validation cost ~8 ms a call, and a listing evaluation computes ~150 of these.
    classes, codes = np.unique(np.concatenate([y_true, y_pred]).astype(str), return_inverse=True)
    t, p = codes[:n], codes[n:]
    k = len(classes)
    support = np.bincount(t, minlength=k)
    predicted = np.bincount(p, minlength=k)
    hit = t == p
    tp = np.bincount(t[hit], minlength=k)
    denom = support + predicted
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(k), where=denom > 0)
    keep = support > 0 if true_classes_only else np.ones(k, bool)  # the classes averaged over
    weights = support[keep]
    return {
        "n": n,
        "accuracy": float(hit.mean()),
        "macro_f1": float(f1[keep].mean()),
        "weighted_f1": float(np.average(f1[keep], weights=weights)) if weights.sum() > 0 else 0.0,
    }


def purity(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Share of items whose cluster's majority true label equals their own label."""
    lt = np.asarray(labels_true, dtype=object)
    lp = np.asarray(labels_pred)
    if len(lt) == 0:
        return float("nan")
    table = skm.cluster.contingency_matrix(lt, lp)
    return float(table.max(axis=0).sum() / table.sum())


def clustering_metrics(labels_true: Sequence, labels_pred: Sequence) -> dict[str, float]:
    """NMI, ARI and purity of a clustering against known labels (e.g. categories)."""
    lt = np.asarray(labels_true, dtype=object)
    lp = np.asarray(labels_pred)
    return {
        "n": int(len(lt)),
        "nmi": float(skm.normalized_mutual_info_score(lt, lp)),
        "ari": float(skm.adjusted_rand_score(lt, lp)),
        "purity": purity(lt, lp),
    }


def sampled_silhouette(x: np.ndarray, labels: Sequence, sample_size: int = 2000, seed: int = 0) -> float:
    """Silhouette on a seeded random sample (the full O(n²) version is too slow for 44k rows).

    Returns nan when fewer than two clusters are present in the sample.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n < 3:
        return float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.choice(n, size=min(sample_size, n), replace=False)
    if len(np.unique(labels[idx])) < 2:
        return float("nan")
    return float(skm.silhouette_score(x[idx], labels[idx]))
