"""Versioned prompt shared by the LLM backends. Bump PROMPT_VERSION whenever the text,
the schema or the vocabularies change: it is part of every cache key."""

from __future__ import annotations

import hashlib

from fashion_pipeline.core.extraction import vocab
from fashion_pipeline.core.extraction.schema import SCHEMA_JSON
from fashion_pipeline.core.extraction.prepared_text import PreparedText

PROMPT_VERSION = "attr-v1"

SYSTEM_PROMPT = (
    "You extract product attributes from fashion listings. Answer with one JSON object only. "
    "Use only facts stated in the listing; use null or [] when the listing does not say. "
    "brand: the brand name as written in the title, or null. "
    "materials: fabrics/materials, main one first, from: " + ", ".join(vocab.MATERIAL_VALUES) + ". "
    "care: care instructions from: " + ", ".join(vocab.CARE_VALUES) + ". "
    "fit: one of " + ", ".join(vocab.FIT_VALUES) + " or null. "
    "pattern: one of " + ", ".join(vocab.PATTERN_VALUES) + " or null. "
    "occasion: one of " + ", ".join(vocab.OCCASION_VALUES) + " or null. "
    "style: neck/sleeve/silhouette details from: " + ", ".join(vocab.STYLE_VALUES) + "."
)

# A short worked example steers small models towards copying facts instead of inventing them.
_EXAMPLE_USER = ("Title: Roadster Men Blue Slim Fit Checked Shirt\n"
                 "Description: Blue checked casual shirt made of 100% cotton, has a spread collar, "
                 "long sleeves. Wash care: machine wash cold, do not bleach.")
_EXAMPLE_ASSISTANT = ('{"brand":"Roadster","materials":["cotton"],"care":["machine wash cold","do not bleach"],'
                      '"fit":"slim","pattern":"checked","occasion":"casual","style":["shirt collar","long sleeves"]}')


def build_messages(text: PreparedText) -> list[dict[str, str]]:
    """Chat messages for one product (OpenAI/HF chat format)."""
    user = f"Title: {text.title}\nDescription: {text.description or '(none)'}"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": _EXAMPLE_USER},
        {"role": "assistant", "content": _EXAMPLE_ASSISTANT},
        {"role": "user", "content": user},
    ]


def prompt_fingerprint() -> str:
    """Hash of prompt text + schema, recorded next to PROMPT_VERSION in metadata."""
    h = hashlib.sha256((PROMPT_VERSION + SYSTEM_PROMPT + _EXAMPLE_USER + _EXAMPLE_ASSISTANT + SCHEMA_JSON).encode())
    return h.hexdigest()[:12]
