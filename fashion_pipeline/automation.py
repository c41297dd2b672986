"""Automation conditions the assets declare on themselves (``automation_condition=`` in their
decorators); the sensor ``model_automation`` (fashion_pipeline.sensors) evaluates them.

- The publish assets (``published_classifiers``, ``published_price_regressor``) run when the
  candidate they read was updated *and* every blocking check on it passed: a candidate refused by
  ``classifier_gate`` / ``price_regressor_gate`` is never published by automation.
- ``price_comparables`` (the comparables index of the published price model) and
  ``scored_listings`` run whenever a published model changed, whatever published it (the weekly
  schedule, the raw-files sensor, a hand-launched run).

The heavy stages (extraction, embeddings, training) have no condition: they run from the jobs
(schedule, sensor) only, since eager there would start hours of work on every upstream change.
"""

import dagster as dg

# eager(): a dependency was updated (or the asset is newly missing), none is missing or in
# progress; all_deps_blocking_checks_passed(): every blocking check on a dependency passed.
EAGER_WHEN_GATES_PASS = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager, blocking checks passed")
