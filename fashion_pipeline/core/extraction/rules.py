"""Deterministic rules extractor: vocabularies + section-aware patterns.

Default backend and the fallback for rows whose LLM output fails validation. Myntra (Kaggle)
descriptions are sectioned ("Composition", "Wash care", "Fitting", "Upper", "Outsole", ...);
H&M descriptions are one paragraph. Section-awareness matters: a shoe's outsole "rubber" is
not its material, and a care section's "iron" is not a colour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fashion_pipeline.core.extraction import vocab
from fashion_pipeline.core.extraction.schema import (MAX_CARE, MAX_MATERIALS, MAX_STYLE, Attributes)
from fashion_pipeline.core.extraction.prepared_text import PreparedText

# Section header -> role. Headers are matched as whole short lines or as "Header:" prefixes.
_SECTION_ROLES: dict[str, str] = {
    "composition": "material", "material": "material", "materials": "material", "fabric": "material",
    "material and care": "material_care", "materials and care": "material_care",
    "material & care": "material_care", "fabric and care": "material_care", "fabric & care": "material_care",
    "upper": "material", "upper material": "material", "lining": "other", "sole": "sole",
    "outsole": "sole", "midsole": "sole", "insole": "sole", "footbed": "sole",
    "wash care": "care", "washcare": "care", "care": "care", "care instructions": "care",
    "shoe care": "care", "sandal care": "care", "bag care": "care", "slipper care": "care",
    "wash care instructions": "care", "caution": "care",
    "fit": "fit", "fitting": "fit", "size and fit": "fit", "size & fit": "fit",
    "style note": "other", "product details": "details", "product description": "details",
    "model statistics": "other", "size": "other", "warranty": "other", "dimensions": "other",
    "height": "other", "width": "other", "depth": "other", "length": "other", "heel": "other",
    "style": "other", "features": "details", "highlights": "details",
}
# Inline headers in text whose line breaks were lost ("... Wash care Machine wash ...").
_INLINE_HEADER = re.compile(
    r"(?<![a-z])(Composition|Material and Care|Materials and Care|Material & Care|Wash [Cc]are|Washcare|"
    r"Fitting|Size and Fit|Size & Fit|Style Note|Product Details|Model statistics|Outsole|Midsole|"
    r"Upper|Shoe care|Sandal care|Bag care|Care)\b:?")


def split_sections(description: str) -> list[tuple[str, str]]:
    """Split a description into (role, text) chunks; role "body" for unsectioned text."""
    chunks: list[tuple[str, str]] = []
    role, buf = "body", []
    lines = description.split("\n")
    if len(lines) <= 2 and _INLINE_HEADER.search(description):
        lines = [p for p in _INLINE_HEADER.sub(lambda m: "\n" + m.group(1) + "\n", description).split("\n")]
    for line in lines:
        s = line.strip()
        if not s:
            continue
        key = s.lower().rstrip(":").strip()
        if key in _SECTION_ROLES:
            if buf:
                chunks.append((role, "\n".join(buf)))
            role, buf = _SECTION_ROLES[key], []
            continue
        m = re.match(r"^([A-Za-z &]{3,25}):\s*(.+)$", s)
        if m and m.group(1).lower().strip() in _SECTION_ROLES:
            if buf:
                chunks.append((role, "\n".join(buf)))
            chunks.append((_SECTION_ROLES[m.group(1).lower().strip()], m.group(2)))
            role, buf = "body", []
            continue
        buf.append(s)
    if buf:
        chunks.append((role, "\n".join(buf)))
    return chunks


def _surface_regex(index: dict[str, str], skip: Iterable[str] = ()) -> re.Pattern:
    skip = set(skip)
    forms = sorted((f for f in index if f not in skip), key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(f) for f in forms) + r")(?![\w-])")


_MATERIAL_RE = _surface_regex(vocab.MATERIAL_INDEX, vocab.AMBIGUOUS_IN_TEXT)
_LACE_RE = re.compile(r"(?<![\w-])lace(?![\w-])(?! up)")
_PERCENT_RE = re.compile(r"(\d{1,3}(?:\.\d+)?)\s?%\s*(?:of\s+)?([a-z][a-z -]{1,30})")
_FIT_RE = re.compile(r"(?<![\w-])(regular|slim|skinny|relaxed|loose|comfort|tailored|oversized|straight|classic)"
                     r"[- ]fit(?:ting)?\b|(?<![\w-])(fitted|oversized|loose-fitting|tight-fitting|baggy)\b")
_PATTERN_RE = _surface_regex(vocab.PATTERN_INDEX, {"textured", "sequin", "embroidered"})
_OCCASION_RE = _surface_regex(vocab.OCCASION_INDEX, {"work", "home", "smart", "festival", "sleep", "swim",
                                                     "holiday", "weekend", "evening", "daily"})
_STYLE_RE = _surface_regex(vocab.STYLE_INDEX, {"polo", "collar", "hood", "zip", "laces", "wide"})
_CARE_RES = {c: [re.compile(p) for p in pats] for c, pats in vocab.CARE.items()}
_NEGATION = re.compile(r"\b(?:do not|don'?t|never|avoid|no)\b")


def _negated(text: str, start: int) -> bool:
    """True when the clause before `start` negates it ("do not bleach, iron or dry clean")."""
    clause_start = max(text.rfind(c, 0, start) for c in ".;\n") + 1
    return bool(_NEGATION.search(text, clause_start, start))


_STYLING = re.compile(r"\b(?:team|pair|wear|style|match|combine)\s+(?:it|this|them|these|those|the\s+\w+(?:\s+\w+)?)"
                      r"\s+with\b[^.\n]*")


def _materials_in(text: str) -> list[tuple[int, str]]:
    """(position, canonical) for material mentions; percentages reorder by share. Styling advice
    ("pair it with leather boots") names other garments' materials and is blanked out first."""
    text = _STYLING.sub(lambda m: " " * len(m.group(0)), text)
    found = [(m.start(), vocab.MATERIAL_INDEX[m.group(1)]) for m in _MATERIAL_RE.finditer(text)]
    found += [(m.start(), "lace") for m in _LACE_RE.finditer(text)]
    shares: dict[str, float] = {}
    for m in _PERCENT_RE.finditer(text):
        hit = _MATERIAL_RE.match(m.group(2))
        if hit:
            c = vocab.MATERIAL_INDEX[hit.group(1)]
            shares[c] = max(shares.get(c, 0.0), float(m.group(1)))
    found.sort()
    if shares:
        # Higher share first; unshared mentions keep their text order after.
        found.sort(key=lambda pc: -shares.get(pc[1], -1.0))
    return found


def _dedupe(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


class RulesExtractor:
    """Extract attributes with vocabularies and section-aware patterns.

    brands: known brand names (e.g. learned from the catalogue's brand column); the brand is the
    longest known brand that the title starts with. Without a match the brand is null: guessing
    from capitalised title words invents brands ("Men", "Blue") too often.
    """

    name = "rules"

    def __init__(self, brands: Iterable[str] = ()):
        by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for b in {b.strip() for b in brands if b and str(b).strip()}:
            toks = tuple(b.lower().split())
            by_first.setdefault(toks[0], []).append((toks, b))
        for v in by_first.values():
            v.sort(key=lambda tb: len(tb[0]), reverse=True)
        self._brands = by_first

    def brand(self, title: str) -> str | None:
        toks = title.lower().split()
        if not toks:
            return None
        for btoks, b in self._brands.get(toks[0], ()):
            if tuple(toks[: len(btoks)]) == btoks:
                return b
        return None

    def extract(self, text: PreparedText) -> Attributes:
        title = text.title.lower()
        sections = [(r, t.lower()) for r, t in split_sections(text.description)]
        # Materials: material sections first, then body/details, never sole sections.
        # Care sections come last: Myntra's free-text paragraph (often naming the fabric) follows them.
        mat_order = {"material": 0, "material_care": 0, "details": 1, "body": 2, "fit": 3, "care": 4}
        mats: list[tuple[int, int, str]] = []
        for i, (role, t) in enumerate(sections):
            if role in mat_order:
                mats += [(mat_order[role], vocab.material_rank(c), i * 100000 + k, c)
                         for k, (_, c) in enumerate(_materials_in(t))]
        mats.sort()
        materials = _dedupe([m[-1] for m in mats])
        if not materials:
            materials = _dedupe(c for _, c in _materials_in(title))
        if "blend" not in materials and any(re.search(r"\bblend(?:ed)?\b", t) for _, t in sections):
            materials.append("blend")

        care_text = "\n".join(t for r, t in sections if r in ("care", "material_care"))
        care_text = care_text or "\n".join(t for _, t in sections)
        care_hits: list[tuple[int, str]] = []
        for c, pats in _CARE_RES.items():
            pos = [m.start() for p in pats for m in p.finditer(care_text)
                   if c.startswith("do not") or not _negated(care_text, m.start())]
            if pos:
                care_hits.append((min(pos), c))
        care = vocab.drop_implied_care([c for _, c in sorted(care_hits)])

        fit = None
        for role, t in [("title", title)] + [s for s in sections if s[0] == "fit"] + sections:
            if role == "fit" and t.strip():
                fit = vocab.normalise_fit(t.split(".")[0].strip()) or fit
            if fit is None:
                m = _FIT_RE.search(t)
                if m:
                    fit = vocab.normalise_fit((m.group(1) or m.group(2)))
            if fit:
                break

        def first(regex: re.Pattern, index: dict[str, str], roles: tuple[str, ...]) -> str | None:
            for t in [title] + [t for r, t in sections if r in roles]:
                m = regex.search(t)
                if m:
                    return index[m.group(1)]
            return None

        pattern = first(_PATTERN_RE, vocab.PATTERN_INDEX, ("material", "material_care", "details", "body"))
        # Myntra's style paragraph often follows the care lines without a header: search everything.
        occasion = first(_OCCASION_RE, vocab.OCCASION_INDEX, tuple(_SECTION_ROLES.values()) + ("body",))
        style_hits = sorted((m.start(), vocab.STYLE_INDEX[m.group(1)])
                            for t in [title] + [t for r, t in sections if r in ("material", "details", "body")]
                            for m in [*_STYLE_RE.finditer(t)])
        style = _dedupe(c for _, c in style_hits)

        return Attributes(
            brand=self.brand(text.title),
            materials=materials[:MAX_MATERIALS],
            care=care[:MAX_CARE],
            fit=fit,
            pattern=pattern,
            occasion=occasion,
            style=style[:MAX_STYLE],
        )


# Naive baseline (reference in environment.md): first of the ~40 canonical material words
# found in name + description. Kept here so quality reports can show both side by side.
_NAIVE_MATERIAL_RE = re.compile(r"\b(" + "|".join(re.escape(m) for m in sorted(vocab.MATERIAL_VALUES, key=len,
                                                                               reverse=True)) + r")\b")
_NAIVE = {
    "fit": re.compile(r"\b(" + "|".join(vocab.FIT_VALUES) + r")\b"),
    "pattern": re.compile(r"\b(" + "|".join(vocab.PATTERN_VALUES) + r")\b"),
    "occasion": re.compile(r"\b(" + "|".join(vocab.OCCASION_VALUES) + r")\b"),
}


class NaiveKeywordBaseline:
    """First canonical vocabulary word found anywhere in title + description, per attribute."""

    name = "naive-keyword"

    def extract(self, text: PreparedText) -> Attributes:
        t = f"{text.title} {text.description}".lower()
        m = _NAIVE_MATERIAL_RE.search(t)
        care = [c for c in vocab.CARE_VALUES if c in t][:1]
        vals = {k: (r.search(t).group(1) if r.search(t) else None) for k, r in _NAIVE.items()}
        return Attributes(materials=[m.group(1)] if m else [], care=care, **vals)
