"""Asset checks. The publishing gates are blocking: a failed gate skips the publish step."""


import dagster as dg
import pandas as pd

from fashion_pipeline.assets.regressors import price_gate, regressor_metrics


@dg.asset_check(asset=regressor_metrics, blocking=True,
                description="Refuses a candidate price regressor whose test RMSLE (overall, and per source "
                            "beyond 5%) is worse than the published model's on the same test split or the "
                            "linear (ridge) baseline's. Blocking: published_price_regressor does not run.")
def price_regressor_gate(regressor_metrics: pd.DataFrame) -> dg.AssetCheckResult:
    decision = price_gate(regressor_metrics)
    cand = regressor_metrics[regressor_metrics["candidate"].astype(bool)]
    return dg.AssetCheckResult(
        passed=decision.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "decision": dg.MetadataValue.md(decision.markdown()),
            "candidate": str(cand["model"].iloc[0]) if len(cand) else "none",
            "candidate_version": str(cand["version"].iloc[0]) if len(cand) else "none",
        },
    )


all_checks = [price_regressor_gate]
