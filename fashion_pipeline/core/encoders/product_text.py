"""Building the text that is embedded for a product.

The text is title, then extracted attributes, then description: attributes go before the
description because the text encoders truncate long inputs (MiniLM at 256 word pieces) and
the short attribute phrase carries more signal per token than the tail of a description.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

# Columns of the product_attributes table (CONTRACT) used in the text, in this order.
EMBEDDED_ATTRIBUTE_COLUMNS: tuple[str, ...] = ("brand", "materials", "care", "fit", "pattern", "occasion", "style")
# Columns of clean_products that are used when present.
PRODUCT_ATTRIBUTE_COLUMNS: tuple[str, ...] = ("colour",)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return value is pd.NA or value is pd.NaT


def _attribute_text(value: Any) -> str:
    """Render one attribute value: JSON lists (materials, care) become comma lists."""
    if isinstance(value, str):
        return _string_attribute_text(value)
    if _is_missing(value):
        return ""
    if isinstance(value, Sequence) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else list(value)
        return ", ".join(str(v).strip() for v in items if not _is_missing(v) and str(v).strip())
    return str(value).strip()


@functools.lru_cache(maxsize=65536)
def _string_attribute_text(value: str) -> str:
    """`_attribute_text` of a string (a few hundred distinct values repeat over the catalogue: each JSON
    list is parsed once per process)."""
    stripped = value.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            return stripped
        return _attribute_text(parsed)
    return stripped


def build_product_text(
    title: Any,
    description: Any = None,
    attributes: Mapping[str, Any] | None = None,
) -> str:
    """Text for one product: ``title. attr: value; ... . description`` (empty parts skipped).

    ``attributes`` maps attribute names (e.g. the product_attributes columns plus colour) to
    values; missing / null / empty values are left out, JSON lists are joined with commas.
    Returns '' when every part is empty; the caller decides what an empty text means.
    """
    parts: list[str] = []
    t = "" if _is_missing(title) else str(title).strip()
    if t:
        parts.append(t)
    if attributes:
        rendered = []
        for name, value in attributes.items():
            text = _attribute_text(value)
            if text:
                rendered.append(f"{name}: {text}")
        if rendered:
            parts.append("; ".join(rendered))
    d = "" if _is_missing(description) else " ".join(str(description).split())
    if d:
        parts.append(d)
    return ". ".join(parts)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_texts(products, attributes=None) -> list[str]:
    """Texts for every row of a products frame, in row order.

    ``products`` needs product_id and title; description and colour are used when present.
    ``attributes`` is an optional frame keyed by product_id (the product_attributes table, or any
    subset of its columns); products without a row there get title + description only, so the
    embedding stage works before, and without, attribute extraction.
    """
    attr_by_id: dict[str, dict[str, Any]] = {}
    if attributes is not None and len(attributes) and "product_id" in attributes.columns:
        cols = [c for c in EMBEDDED_ATTRIBUTE_COLUMNS if c in attributes.columns]
        if cols:
            dedup = attributes.drop_duplicates("product_id", keep="last").set_index("product_id")[cols]
            attr_by_id = dedup.to_dict(orient="index")
    product_cols = [c for c in PRODUCT_ATTRIBUTE_COLUMNS if c in products.columns]
    descriptions = products["description"] if "description" in products.columns else [None] * len(products)
    values = {c: products[c].to_numpy() for c in product_cols}  # what .iat gives, without its per-call cost
    texts = []
    for i, (pid, title, desc) in enumerate(zip(products["product_id"], products["title"], descriptions)):
        attrs: dict[str, Any] = {}
        extracted = attr_by_id.get(pid, {})
        for c in EMBEDDED_ATTRIBUTE_COLUMNS:
            if c in extracted:
                attrs[c] = extracted[c]
        for c in product_cols:
            attrs.setdefault(c, values[c][i])
        texts.append(build_product_text(title, desc, attrs))
    return texts
