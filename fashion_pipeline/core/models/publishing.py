"""The classifiers' publishing gate (pure code; the asset check and the publish asset call it).

Each serving candidate (one per task x input regime, chosen on validation macro-F1) is compared
on the *same test split* with

- the currently published model of that name, re-scored on this run's test rows (its own
  recorded metrics came from another run's split and are not comparable), and
- the linear baseline: ``linear_svc`` (the environment.md reference recipe's model), else
  ``logreg``, from the same leaderboard. A candidate that is one of these linear models is its own
  linear reference: a retrain fits no other linear model beside it (core.models.leaderboard
  ``LeaderboardConfig.trains``), so it is compared with the published model.

The candidate is refused when its test macro-F1 is below either reference by more than
``TOLERANCE`` (relative), or when there is no reference at all (nothing published and no linear
model trained: nothing to show it is any good). Each (task, regime) is gated on its own: a
refused candidate is never published and its previously published version (if any) stays;
the others are published. Scoring falls back to another regime's model where one is missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fashion_pipeline.core.label_metrics import classification_metrics
from fashion_pipeline.core.pricing.gate import GateDecision, gate

BASELINE_MODELS = ("linear_svc", "logreg")
# Macro-F1 averages classes with a handful of test rows (usage: Travel, Party, Home), so a few
# rows move it by points; 2% relative slack keeps seeded noise from blocking an equal model.
TOLERANCE = 0.02


def classifier_name(task: str, regime: str) -> str:
    """The model store name a task's classifier for an input regime is saved and published under."""
    return f"{task}_classifier" if regime == "full" else f"{task}_classifier_{regime}"


def baseline_name(task: str, regime: str) -> str:
    """The model store name a task / regime's linear baseline is kept under for later retrains (never published)."""
    return f"{classifier_name(task, regime)}_baseline"


def macro_f1_on_test_rows(clf, frame: pd.DataFrame, task: str) -> tuple[float | None, int]:
    """Macro-F1 of a serving classifier on the labelled test rows of ``frame`` (same rows as the leaderboard)."""
    test = frame[(frame["split"] == "test") & frame[task].notna()]
    if not len(test):
        return None, 0
    pred = clf.predict(test)["label"].astype(str).to_numpy()
    return float(classification_metrics(test[task].astype(str).to_numpy(), pred)["macro_f1"]), len(test)


def baseline_row(leaderboard: pd.DataFrame, task: str, regime: str) -> tuple[str | None, float | None]:
    lb = leaderboard[(leaderboard["task"] == task) & (leaderboard["regime"] == regime) & (leaderboard["source"] == "all")]
    for name in BASELINE_MODELS:
        row = lb[lb["model"] == name]
        if len(row):
            return name, float(row["macro_f1"].iloc[0])
    return None, None


def gate_each(table: pd.DataFrame, tolerance: float = TOLERANCE) -> dict[str, GateDecision]:
    """One decision per candidate row of the attribute_classifiers frame (name, model,
    test_macro_f1, published_version_before, published_test_macro_f1, baseline_model,
    baseline_test_macro_f1)."""
    out = {}
    for r in table.itertuples(index=False):
        refs = {
            f"published {r.name} {_str(r.published_version_before)}".rstrip(): _num(r.published_test_macro_f1),
            f"linear baseline {r.baseline_model} [{r.name}]": (
                _num(r.baseline_test_macro_f1) if _str(r.baseline_model) and r.baseline_model != r.model else None),
        }
        d = gate(_num(r.test_macro_f1), refs, metric="macro_f1", higher_is_better=True, tolerance=tolerance)
        is_baseline = _str(r.baseline_model) == r.model
        if d.passed and not d.comparisons and not is_baseline:
            d.passed = False
            d.reasons.append("no reference to compare with (nothing published, no linear model trained): "
                             f"add one of {list(BASELINE_MODELS)} to classical_models")
        out[r.name] = d
    return out


def classifier_gate(table: pd.DataFrame | None, tolerance: float = TOLERANCE) -> GateDecision:
    """All candidates' decisions in one (passed only if every candidate passed)."""
    if table is None or not len(table):
        return GateDecision(False, ["no candidate classifiers (was any task trained?)"])
    decision = GateDecision(True)
    for name, d in gate_each(table, tolerance).items():
        model = table.loc[table["name"] == name, "model"].iloc[0]
        decision.passed &= d.passed
        decision.reasons += [f"{name} ({model}): {'' if d.passed else 'REFUSED: '}{x}" for x in d.reasons]
        decision.comparisons += d.comparisons
    return decision


def _str(v) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) or v is pd.NA else str(v)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None
