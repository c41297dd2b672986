"""Clustering and classification metrics, and the plot helpers every stage uses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fashion_pipeline.core.label_metrics import classification_metrics, sampled_silhouette
from fashion_pipeline.core.figures import confusion_matrix_png, png_markdown, scatter_2d_png


def test_classification_metrics_by_hand():
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    assert m["n"] == 4 and m["accuracy"] == 0.75
    # F1: a = 2/3, b = 2/3, c = 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)
    assert math.isnan(classification_metrics([], [])["accuracy"])
    with pytest.raises(ValueError):
        classification_metrics(["a"], ["a", "b"])


def test_macro_f1_over_the_true_classes_counts_a_missing_prediction_as_a_miss_not_as_a_class():
    y, pred = ["a", "a", "b", "b"], ["a", "<none>", "b", "b"]
    # a: precision 1, recall 1/2 -> F1 2/3; b: F1 1. The default also averages in "<none>" (F1 0).
    assert classification_metrics(y, pred)["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    m = classification_metrics(y, pred, true_classes_only=True)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["accuracy"] == 0.75 and m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 1) / 4)


@pytest.mark.parametrize("true_classes_only", [False, True])
def test_classification_metrics_agree_with_sklearn_on_random_labels(true_classes_only):
    """The counts-table implementation against sklearn's accuracy_score / f1_score(zero_division=0),
    with classes only predicted, only true, and a class present in neither split of a draw."""
    from sklearn import metrics as skm

    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        y = rng.choice(["a", "b", "c", "d"], n).astype(object)
        pred = rng.choice(["a", "b", "c", "e", "<none>"], n).astype(object)
        labels = sorted(set(y.tolist())) if true_classes_only else None
        m = classification_metrics(y, pred, true_classes_only=true_classes_only)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
        for average in ("macro", "weighted"):
            assert m[f"{average}_f1"] == pytest.approx(
                skm.f1_score(y, pred, labels=labels, average=average, zero_division=0), abs=1e-12)


def test_silhouette_is_seeded_and_bounded():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    labels = np.repeat([0, 1], 50)
    s = sampled_silhouette(x, labels, sample_size=40, seed=1)
    assert s == sampled_silhouette(x, labels, sample_size=40, seed=1) and 0.9 < s <= 1.0


def test_plots_are_png():
    for png in (confusion_matrix_png(["a", "b"], ["a", "a"]), scatter_2d_png(np.eye(3)[:, :2], ["x", "y", "x"])):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_markdown(b"\x89PNG").startswith("![plot](data:image/png;base64,")


def test_classifier_gate_refuses_each_candidate_worse_than_a_reference_or_without_any():
    import pandas as pd

    from fashion_pipeline.core.models.publishing import classifier_gate, gate_each

    t = pd.DataFrame([
        # name, model, test F1, published before, its F1 on this test split, baseline model, baseline F1
        ("a", "lightgbm", 0.90, "v1", 0.85, "linear_svc", 0.88),   # better than both: accepted
        ("b", "lightgbm", 0.80, "v1", 0.90, "linear_svc", 0.70),   # worse than the published model: refused
        ("c", "clip_fusion", 0.70, None, None, "linear_svc", 0.75),  # worse than the baseline beyond 2%: refused
        ("d", "clip_fusion", 0.74, None, None, "linear_svc", 0.75),  # within the 2% tolerance: accepted
        ("e", "linear_svc", 0.60, None, None, "linear_svc", 0.60),  # the baseline itself, first publish: accepted
        ("f", "complement_nb", 0.99, None, None, None, None),      # nothing to compare with: refused
    ], columns=["name", "model", "test_macro_f1", "published_version_before", "published_test_macro_f1",
                "baseline_model", "baseline_test_macro_f1"])
    d = gate_each(t)
    assert {n for n, x in d.items() if x.passed} == {"a", "d", "e"}
    assert any("published b v1" in r for r in d["b"].reasons)
    assert any("no reference" in r for r in d["f"].reasons)
    overall = classifier_gate(t)
    assert not overall.passed and "REFUSED" in overall.markdown()
    assert classifier_gate(t[t["name"].isin(["a", "d", "e"])]).passed
    assert not classifier_gate(t.iloc[:0]).passed
