"""The publishing gate: a candidate model must not be worse than the published model or the
linear baseline on the same test split. Pure code, used by the blocking asset check and
usable for any model family (regressors by RMSLE, classifiers by macro-F1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)

    def markdown(self) -> str:
        head = "| reference | metric | candidate | reference value | allowed | ok |\n|---|---|---|---|---|---|\n"
        body = "".join(
            f"| {c['reference']} | {c['metric']} | {c['candidate']:.4f} | {c['reference_value']:.4f} | "
            f"{c['allowed']:.4f} | {'yes' if c['ok'] else 'NO'} |\n"
            for c in self.comparisons
        )
        return ("**PASSED**" if self.passed else "**REFUSED**") + "\n\n" + head + body + "\n" + "\n".join(
            f"- {r}" for r in self.reasons
        )


def gate(
    candidate: float,
    references: dict[str, float | None],
    metric: str = "rmsle",
    higher_is_better: bool = False,
    tolerance: float | dict[str, float] = 0.0,
) -> GateDecision:
    """Refuse ``candidate`` if it is worse than any reference by more than ``tolerance``
    (relative; one number for all references, or a number per reference name). References that are None (nothing published yet) are skipped and said so;
    a non-finite candidate is always refused."""
    d = GateDecision(passed=True)
    if candidate is None or not math.isfinite(candidate):
        d.passed = False
        d.reasons.append(f"candidate {metric} is not a finite number ({candidate!r})")
        return d
    for ref_name, ref in references.items():
        if ref is None or not math.isfinite(ref):
            d.reasons.append(f"no {ref_name} to compare with: skipped")
            continue
        tol = tolerance.get(ref_name, 0.0) if isinstance(tolerance, dict) else tolerance
        allowed = ref * (1 - tol) if higher_is_better else ref * (1 + tol)
        ok = candidate >= allowed if higher_is_better else candidate <= allowed
        d.comparisons.append(
            {"reference": ref_name, "metric": metric, "candidate": candidate, "reference_value": ref,
             "allowed": allowed, "ok": ok}
        )
        if not ok:
            d.passed = False
            word = "below" if higher_is_better else "above"
            d.reasons.append(f"candidate {metric} {candidate:.4f} is {word} {ref_name} {ref:.4f} (allowed {allowed:.4f})")
        else:
            d.reasons.append(f"candidate {metric} {candidate:.4f} is no worse than {ref_name} {ref:.4f}")
    return d


# Overall, the candidate may be at most 1% (relative RMSLE) worse than the published model on the
# same listings: retraining on 1% more products moved test RMSLE by +0.4% from training noise
# alone (benchmarks/results/pipeline.md), and a zero margin refused every such weekly retrain.
# Per source, test sets can be small (tens of H&M rows in the embedded sample): 5%.
PUBLISHED_TOLERANCE = {"all": 0.01, "source": 0.05}
# ... or this many standard errors of the paired RMSLE difference on those listings, when larger (the
# published row's rmsle_diff_se, core.listing_eval.paired_price_differences): on a small catalogue's
# test split a retrain on 12 more products moved RMSLE by 1.5% and a fixed 1% refused it. On a large
# test split the standard error shrinks (as 1 / sqrt(listings)) and the fixed margin binds again: on the
# full development data's 3,890 paired listings two SE were 0.4-0.6% of RMSLE (benchmarks/results/pipeline.md).
PUBLISHED_SE_MULTIPLIER = 2.0
# A source's own comparison with the published model needs this many paired listings: below it one
# listing moves the RMSLE by several percent and its standard error is itself a guess (on the embedded
# sample's 8 H&M photo listings a retrain was refused at +24% against an allowed +23%, on a machine
# whose fp32 embeddings differ from the bf16 ones the published model was trained on). Those listings
# still count in the overall comparison.
MIN_SOURCE_LISTINGS = 30
# Against the plain TF-IDF recipe on the same listings (overall): at most 5% worse. The recipe is
# told the true source and trained per source, so it is a strong reference on text listings.
RECIPE_TOLERANCE = 0.05
# The 80% interval's measured coverage on test listings (overall) must stay within this of nominal.
COVERAGE_SLACK = 0.10


def price_gate(metrics, forms, coverage: float = 0.8) -> GateDecision:
    """The candidate price model vs the published model and the TF-IDF recipe, on the listing
    metrics of the test split (core.listing_eval), form by form. ``metrics`` has one row per
    (model in {candidate, published}, form, source) with rmsle, recipe_rmsle and coverage."""
    cand = metrics[metrics["model"] == "candidate"]
    if cand.empty:
        return GateDecision(False, ["no candidate rows in regressor_metrics"])
    decision = GateDecision(True)
    for form in forms:
        for r in cand[cand["form"] == form].itertuples(index=False):
            pub = metrics[(metrics["model"] == "published") & (metrics["form"] == form) & (metrics["source"] == r.source)]
            scope = "all" if r.source == "all" else "source"
            pub_rmsle = float(pub["rmsle"].iloc[0]) if len(pub) else float("nan")
            if not math.isfinite(float(r.rmsle)) and not math.isfinite(pub_rmsle):
                # Neither model prices this form (e.g. photo only, trained without image embeddings).
                decision.reasons.append(f"{form} [{r.source}]: no listing priced by the candidate nor the "
                                        "published model: skipped")
                continue
            n_paired = float(pub["n_paired"].iloc[0]) if len(pub) and "n_paired" in pub.columns else float("nan")
            if scope == "source" and math.isfinite(n_paired) and n_paired < MIN_SOURCE_LISTINGS:
                decision.reasons.append(f"{form} [{r.source}]: {int(n_paired)} paired listings, fewer than "
                                        f"{MIN_SOURCE_LISTINGS} to judge a source alone: skipped (they count in "
                                        f"[{form}, all])")
                continue
            tol = PUBLISHED_TOLERANCE[scope]
            se = float(pub["rmsle_diff_se"].iloc[0]) if len(pub) and "rmsle_diff_se" in pub.columns else float("nan")
            if math.isfinite(se) and math.isfinite(pub_rmsle) and pub_rmsle > 0 \
                    and PUBLISHED_SE_MULTIPLIER * se / pub_rmsle > tol:
                tol = PUBLISHED_SE_MULTIPLIER * se / pub_rmsle
                decision.reasons.append(
                    f"{form} [{r.source}]: tolerance vs published {tol:.1%} = {PUBLISHED_SE_MULTIPLIER:g} standard "
                    f"errors ({se:.4f}) of the paired RMSLE difference on {int(pub['n_paired'].iloc[0])} listings "
                    f"(above the fixed {PUBLISHED_TOLERANCE[scope]:.0%})")
            refs = {f"published [{form}, {r.source}]": pub_rmsle if len(pub) else None}
            tols = {f"published [{form}, {r.source}]": tol}
            if r.source == "all":
                refs[f"recipe [{form}, all]"] = float(r.recipe_rmsle)
                tols[f"recipe [{form}, all]"] = RECIPE_TOLERANCE
            d = gate(float(r.rmsle), refs, metric="rmsle", tolerance=tols)
            decision.passed &= d.passed
            decision.reasons += [f"{form} [{r.source}]: {x}" for x in d.reasons]
            decision.comparisons += d.comparisons
            if r.source == "all" and math.isfinite(r.coverage):
                ok = abs(float(r.coverage) - coverage) <= COVERAGE_SLACK
                decision.comparisons.append({"reference": f"nominal coverage [{form}, all]", "metric": "coverage",
                                             "candidate": float(r.coverage), "reference_value": coverage,
                                             "allowed": COVERAGE_SLACK, "ok": ok})
                if not ok:
                    decision.passed = False
                    decision.reasons.append(f"{form}: interval coverage {r.coverage:.3f} is more than "
                                            f"{COVERAGE_SLACK:.2f} from nominal {coverage:.2f}")
    return decision
