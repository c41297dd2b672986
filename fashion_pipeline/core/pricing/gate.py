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
