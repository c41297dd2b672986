"""Counting what was dropped or repaired, with reasons, so nothing is lost silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DropReport:
    """Per-reason counts plus a few example keys per reason (for the UI and for debugging)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, example: object = None, n: int = 1) -> None:
        self.counts[reason] += n
        if example is not None:
            bucket = self.examples.setdefault(reason, [])
            if len(bucket) < self.max_examples:
                bucket.append(str(example)[:200])

    def merge(self, other: "DropReport", prefix: str = "") -> "DropReport":
        for reason, n in other.counts.items():
            self.counts[prefix + reason] += n
            for ex in other.examples.get(reason, []):
                bucket = self.examples.setdefault(prefix + reason, [])
                if len(bucket) < self.max_examples:
                    bucket.append(ex)
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def to_markdown(self) -> str:
        if not self.counts:
            return "_nothing dropped or repaired_"
        lines = ["| reason | rows | examples |", "|---|---:|---|"]
        for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            ex = ", ".join(self.examples.get(reason, [])).replace("|", "/")
            lines.append(f"| {reason} | {n} | {ex} |")
        return "\n".join(lines)
