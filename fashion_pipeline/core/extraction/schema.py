"""The attribute JSON schema every backend must produce, and its validation + normalisation.

The schema's enums are the controlled vocabularies, so constrained decoding (xgrammar in
transformers, structured outputs in vLLM) can only emit canonical values. Validation still runs
on every output: it catches truncated JSON (max_tokens), unconstrained backends and synonyms.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from fashion_pipeline.core.extraction import vocab

MAX_MATERIALS = 4
MAX_CARE = 6
MAX_STYLE = 4
MAX_BRAND_CHARS = 40


def _nullable_enum(values: tuple[str, ...]) -> dict:
    return {"anyOf": [{"type": "string", "enum": list(values)}, {"type": "null"}]}


ATTRIBUTE_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "brand": {"anyOf": [{"type": "string", "maxLength": MAX_BRAND_CHARS}, {"type": "null"}]},
        "materials": {"type": "array", "items": {"type": "string", "enum": list(vocab.MATERIAL_VALUES)},
                      "maxItems": MAX_MATERIALS},
        "care": {"type": "array", "items": {"type": "string", "enum": list(vocab.CARE_VALUES)},
                 "maxItems": MAX_CARE},
        "fit": _nullable_enum(vocab.FIT_VALUES),
        "pattern": _nullable_enum(vocab.PATTERN_VALUES),
        "occasion": _nullable_enum(vocab.OCCASION_VALUES),
        "style": {"type": "array", "items": {"type": "string", "enum": list(vocab.STYLE_VALUES)},
                  "maxItems": MAX_STYLE},
    },
    "required": ["brand", "materials", "care", "fit", "pattern", "occasion", "style"],
    "additionalProperties": False,
}

SCHEMA_JSON = json.dumps(ATTRIBUTE_SCHEMA, sort_keys=True)


@dataclass
class Attributes:
    brand: str | None = None
    materials: list[str] = field(default_factory=list)
    care: list[str] = field(default_factory=list)
    fit: str | None = None
    pattern: str | None = None
    occasion: str | None = None
    style: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Attributes":
        return cls(**{k: d.get(k) if k in ("brand", "fit", "pattern", "occasion") else list(d.get(k) or [])
                      for k in ATTRIBUTE_SCHEMA["properties"]})

    def is_empty(self) -> bool:
        return not (self.brand or self.materials or self.care or self.fit or self.pattern
                    or self.occasion or self.style)


class SchemaViolation(ValueError):
    """LLM output that is not JSON or does not have the schema's shape."""


@dataclass
class NormaliseReport:
    """Values dropped because they are outside the controlled vocabularies."""

    unknown: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_unknown(self) -> int:
        return sum(len(v) for v in self.unknown.values())


def parse_json(raw: str) -> dict:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise SchemaViolation(f"not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise SchemaViolation(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_shape(obj: dict) -> None:
    props = ATTRIBUTE_SCHEMA["properties"]
    missing = [k for k in ATTRIBUTE_SCHEMA["required"] if k not in obj]
    if missing:
        raise SchemaViolation(f"missing keys: {missing}")
    extra = [k for k in obj if k not in props]
    if extra:
        raise SchemaViolation(f"unexpected keys: {extra}")
    for k in ("brand", "fit", "pattern", "occasion"):
        if obj[k] is not None and not isinstance(obj[k], str):
            raise SchemaViolation(f"{k} must be a string or null, got {type(obj[k]).__name__}")
    for k in ("materials", "care", "style"):
        v = obj[k]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise SchemaViolation(f"{k} must be a list of strings")


def normalise(obj: dict, report: NormaliseReport | None = None) -> Attributes:
    """Map synonyms to canonical values; drop (and record) values outside the vocabularies.

    Enum membership is deliberately not a schema violation here: an unknown value is a
    normalisation drop (counted), not a reason to throw away the rest of the row.
    """
    report = report if report is not None else NormaliseReport()

    def one(key, fn):
        v = obj.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        c = fn(v)
        if c is None:
            report.unknown.setdefault(key, []).append(str(v))
        return c

    def many(key, fn, limit):
        out: list[str] = []
        for v in obj.get(key) or []:
            c = fn(v)
            if c is None:
                report.unknown.setdefault(key, []).append(str(v))
            elif c not in out:
                out.append(c)
        return out[:limit]

    brand = obj.get("brand")
    brand = " ".join(str(brand).split())[:MAX_BRAND_CHARS] if brand else None
    if brand and brand.lower() in {"null", "none", "unknown", "n/a", "na", "brand"}:
        brand = None
    return Attributes(
        brand=brand or None,
        materials=many("materials", vocab.normalise_material, MAX_MATERIALS),
        care=vocab.drop_implied_care(many("care", vocab.normalise_care, MAX_CARE)),
        fit=one("fit", vocab.normalise_fit),
        pattern=one("pattern", vocab.normalise_pattern),
        occasion=one("occasion", vocab.normalise_occasion),
        style=many("style", vocab.normalise_style, MAX_STYLE),
    )


def validate_output(raw: str, report: NormaliseReport | None = None) -> Attributes:
    """Parse + shape-check + normalise one LLM output. Raises SchemaViolation."""
    obj = parse_json(raw)
    _check_shape(obj)
    return normalise(obj, report)
