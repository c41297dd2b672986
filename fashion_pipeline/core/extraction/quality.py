"""Score extracted attributes against the Kaggle catalogue's own `articleAttributes`.

The catalogue attributes were written by the retailer, not by us, and are never shown to the
extractor. Catalogue values are mapped onto the same controlled vocabularies; a catalogue
value outside them (e.g. Occasion "Western") leaves that product out of that attribute's score.
Matching rules (identical for every extractor, baseline included):
- material: catalogue Fabric (or Material for footwear/bags) vs the *first* extracted material.
  Catalogue "Blended" is matched by a first material "blend" or by 2+ extracted materials;
  catalogue "Synthetic" is matched by a first material that is a synthetic fibre.
- care: catalogue Wash Care (Machine Wash / Hand Wash / Dry Clean) must appear in the list
  ("machine wash cold" counts as machine wash).
- fit / pattern / occasion: equality after normalisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fashion_pipeline.core.extraction import vocab
from fashion_pipeline.core.extraction.schema import Attributes

ATTRIBUTES = ("material", "care", "fit", "pattern", "occasion")
SYNTHETIC_FAMILY = frozenset({"synthetic", "polyester", "nylon", "acrylic", "elastane", "pvc", "tpr", "eva"})
_CARE_FAMILY = {
    "machine wash": {"machine wash", "machine wash cold"},
    "hand wash": {"hand wash"},
    "dry clean": {"dry clean"},
}


def catalogue_truth(article_attributes: str | dict | None) -> dict[str, str]:
    """Canonical ground-truth values from a Kaggle articleAttributes object (JSON string or dict)."""
    if not article_attributes:
        return {}
    aa = json.loads(article_attributes) if isinstance(article_attributes, str) else article_attributes
    if not isinstance(aa, dict):
        return {}
    truth: dict[str, str] = {}
    fabric = aa.get("Fabric") or aa.get("Material")
    if fabric and fabric != "NA":
        c = vocab.normalise_material(fabric)
        if c is None and "blend" in str(fabric).lower():
            c = "blend"
        if c:
            truth["material"] = c
    care = str(aa.get("Wash Care") or "").strip().lower()
    if care in _CARE_FAMILY:
        truth["care"] = care
    for key, fn in (("fit", vocab.normalise_fit), ("pattern", vocab.normalise_pattern),
                    ("occasion", vocab.normalise_occasion)):
        v = aa.get(key.capitalize())
        if key == "pattern" and not v:
            v = aa.get("Print or Pattern Type")
        c = fn(v) if v and v != "NA" else None
        if c:
            truth[key] = c
    return truth


def raw_values(article_attributes: str | dict | None, keys: tuple[str, ...]) -> list[str]:
    """The catalogue's non-empty, non-"NA" values under these keys."""
    if not article_attributes:
        return []
    aa = json.loads(article_attributes) if isinstance(article_attributes, str) else article_attributes
    if not isinstance(aa, dict):
        return []
    return [str(aa[k]) for k in keys if aa.get(k) and aa.get(k) != "NA"]


def _predicted(attr: str, a: Attributes) -> bool:
    return bool(a.materials if attr == "material" else a.care if attr == "care" else getattr(a, attr))


def _correct(attr: str, truth: str, a: Attributes) -> bool:
    if attr == "material":
        if not a.materials:
            return False
        first = a.materials[0]
        if truth == "blend":
            return first == "blend" or len(a.materials) >= 2
        if truth == "synthetic":
            return first in SYNTHETIC_FAMILY
        return first == truth
    if attr == "care":
        return bool(_CARE_FAMILY[truth] & set(a.care))
    return getattr(a, attr) == truth


@dataclass
class AttributeScore:
    """One extractor on one attribute, over the products with a catalogue value for it."""

    attribute: str
    n_truth: int
    n_predicted: int  # answered (not "unknown")
    n_correct: int
    macro_f1: float = float("nan")  # over the catalogue's values; set where the predictions are single values

    @property
    def coverage(self) -> float:
        return self.n_predicted / self.n_truth if self.n_truth else float("nan")

    @property
    def precision(self) -> float:
        return self.n_correct / self.n_predicted if self.n_predicted else float("nan")

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_truth if self.n_truth else float("nan")


def score(truths: list[dict[str, str]], predictions: list[Attributes]) -> dict[str, AttributeScore]:
    """Per attribute over products that have a catalogue value: coverage (something predicted),
    precision (right among predicted) and accuracy (right among all with a catalogue value)."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths vs {len(predictions)} predictions")
    out = {a: AttributeScore(a, 0, 0, 0) for a in ATTRIBUTES}
    for truth, pred in zip(truths, predictions):
        for attr, value in truth.items():
            s = out[attr]
            s.n_truth += 1
            if _predicted(attr, pred):
                s.n_predicted += 1
                s.n_correct += _correct(attr, value, pred)
    return out


def markdown_table(scores_by_extractor: dict[str, dict[str, AttributeScore]], note: str = "") -> str:
    lines = ["| extractor | attribute | n (catalogue) | coverage | right when covered | accuracy |",
             "|---|---|---:|---:|---:|---:|"]
    for name, scores in scores_by_extractor.items():
        for s in scores.values():
            lines.append(f"| {name} | {s.attribute} | {s.n_truth} | {s.coverage:.1%} | {s.precision:.1%} "
                         f"| {s.accuracy:.1%} |")
    if note:
        lines += ["", note]
    return "\n".join(lines)
