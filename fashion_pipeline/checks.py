"""Asset checks. The publishing gates are blocking: a failed gate skips the publish step."""


import dagster as dg
import pandas as pd

from fashion_pipeline.assets.regressors import regressor_metrics
from fashion_pipeline.core.listing_eval import GATE_FORMS
from fashion_pipeline.core.models.publishing import TOLERANCE, classifier_gate, gate_each
from fashion_pipeline.core.pricing.gate import price_gate


@dg.asset_check(asset=regressor_metrics, blocking=True,
                description="Refuses a candidate price model whose RMSLE on the test split's listings (forms full, "
                            "title+photo, photo; scored through the CLI's code path) is more than 1% worse than the "
                            "published model's on the same listings (5% on one source with 30 or more paired "
                            "listings), more than 5% worse than the TF-IDF recipe's, or whose 80% interval coverage "
                            "is more than 10 points off. Blocking: "
                            "published_price_regressor does not run.")
def price_regressor_gate(regressor_metrics: pd.DataFrame) -> dg.AssetCheckResult:
    decision = price_gate(regressor_metrics, GATE_FORMS)
    cand = regressor_metrics[regressor_metrics["model"] == "candidate"]
    return dg.AssetCheckResult(
        passed=decision.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "decision": dg.MetadataValue.md(decision.markdown()),
            "candidate_version": str(cand["version"].iloc[0]) if len(cand) else "none",
        },
    )


@dg.asset_check(asset=dg.AssetKey("attribute_classifiers"), name="classifier_gate", blocking=True,
                description="Gates each candidate classifier: refused if its test macro-F1 is more than "
                            f"{TOLERANCE:.0%} (relative) below the published model's on the same test split or the "
                            "linear baseline's (linear_svc, else logreg). Some refused: WARN, published_classifiers "
                            "publishes only the others. All refused: ERROR, which blocks published_classifiers.")
def classifier_gate_check(attribute_classifiers: pd.DataFrame) -> dg.AssetCheckResult:
    decision = classifier_gate(attribute_classifiers)
    decisions = gate_each(attribute_classifiers) if len(attribute_classifiers) else {}
    accepted = sorted(n for n, d in decisions.items() if d.passed)
    return dg.AssetCheckResult(
        passed=decision.passed,
        severity=dg.AssetCheckSeverity.WARN if accepted else dg.AssetCheckSeverity.ERROR,
        metadata={"decision": dg.MetadataValue.md(decision.markdown()),
                  "accepted": dg.MetadataValue.json(accepted),
                  "refused": dg.MetadataValue.json(sorted(n for n, d in decisions.items() if not d.passed))},
    )


all_checks = [price_regressor_gate, classifier_gate_check]
