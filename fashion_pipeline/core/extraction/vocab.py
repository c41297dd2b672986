"""Controlled vocabularies for product attributes, shared by every extraction backend.

Each vocabulary maps a canonical value to the surface forms (synonyms) that mean it.
`normalise_*` turns any surface form (from rules or an LLM) into the canonical value,
or None when the value is not in the vocabulary (the caller drops and counts it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Canonical material -> synonyms (lower case). Order matters only for display.
MATERIALS: dict[str, tuple[str, ...]] = {
    "cotton": ("cotton", "pure cotton", "organic cotton", "100% cotton", "khadi",
               "poplin", "twill", "chambray", "terry", "jersey cotton", "cambric", "voile"),
    "polyester": ("polyester", "poly", "recycled polyester", "polyster"),
    "nylon": ("nylon", "polyamide"),
    "elastane": ("elastane", "spandex", "lycra"),
    "viscose": ("viscose", "rayon", "viscose rayon", "lyocell", "tencel", "modal"),
    "wool": ("wool", "merino", "merino wool", "lambswool", "cashmere", "mohair", "alpaca", "woollen",
             "woolen"),
    "silk": ("silk", "art silk", "satin silk", "raw silk"),
    "linen": ("linen", "flax"),
    "denim": ("denim",),
    "leather": ("leather", "genuine leather", "real leather", "suede leather", "nubuck", "full grain leather"),
    "synthetic leather": ("synthetic leather", "faux leather", "pu leather", "pu", "polyurethane",
                          "leatherette", "vegan leather", "imitation leather", "artificial leather"),
    "suede": ("suede", "synthetic suede", "faux suede"),
    "canvas": ("canvas",),
    "synthetic": ("synthetic", "synthetics", "man-made", "man made", "manmade"),
    "acrylic": ("acrylic",),
    "rubber": ("rubber", "natural rubber"),
    "eva": ("eva", "ethylene vinyl acetate", "phylon"),
    "mesh": ("mesh", "air mesh"),
    "pvc": ("pvc", "vinyl"),
    "tpr": ("tpr", "thermoplastic rubber", "tpu"),
    "fleece": ("fleece", "polar fleece"),
    "velvet": ("velvet", "velour"),
    "satin": ("satin",),
    "chiffon": ("chiffon",),
    "georgette": ("georgette",),
    "crepe": ("crepe",),
    "lace": ("lace",),
    "knit": ("knit", "knitted", "rib knit", "fine knit"),
    "corduroy": ("corduroy",),
    "down": ("down", "feather down", "duck down", "down filling", "down-filled"),
    "jute": ("jute",),
    "bamboo": ("bamboo",),
    "hemp": ("hemp",),
    "metal": ("metal", "alloy", "brass", "stainless steel", "steel", "copper", "zinc alloy"),
    "silver": ("silver", "sterling silver", "silver plated", "silver-plated", "925 silver"),
    "gold": ("gold", "gold plated", "gold-plated", "18k gold", "22k gold"),
    "plastic": ("plastic", "polycarbonate", "resin"),
    "glass": ("glass", "mineral glass", "crystal"),
    "wood": ("wood", "wooden"),
    "blend": ("blend", "blended", "blended fabric", "mixed fibres", "mixed fibers"),
}

# Care instructions: canonical phrase -> regex patterns (matched on lower-cased text).
CARE: dict[str, tuple[str, ...]] = {
    "machine wash cold": (r"machine[- ]wash(?:able)?[^.\n;]{0,25}\b(?:cold|cool|30|40)\b",
                          r"machine[- ]wash(?:able)? cold", r"cold machine wash"),
    "machine wash": (r"machine[- ]wash(?:able)?", r"washing machine"),
    "hand wash": (r"hand[- ]?wash(?:able)?", r"wash by hand"),
    "wash separately": (r"wash (?:dark colou?rs? )?separately", r"separately"),
    "wash with similar colours": (r"(?:with|alike) (?:similar|like|same) colou?rs", r"like colou?rs"),
    "do not bleach": (r"do not [\w ,]{0,20}bleach", r"don'?t bleach", r"no bleach", r"non[- ]chlorine bleach",
                      r"without bleach"),
    "do not wring": (r"do not wring", r"don'?t wring"),
    "do not soak": (r"do not [\w ,]{0,20}soak", r"don'?t soak"),
    "tumble dry low": (r"tumble dry (?:on )?low", r"tumble dry(?:ing)? at low"),
    "do not tumble dry": (r"do not [\w ,]{0,25}tumble[- ]?dry", r"don'?t tumble[- ]?dry", r"no tumble[- ]?dry",
                          r"or tumble dry"),
    "tumble dry": (r"tumble[- ]dry",),
    "dry in shade": (r"dry in (?:the )?shade", r"shade dry", r"dry (?:flat )?in shade"),
    "line dry": (r"line dry", r"drip dry", r"hang (?:to )?dry"),
    "dry flat": (r"dry flat", r"lay flat to dry"),
    "dry clean": (r"dry[- ]clean(?:ing)?(?! only)", r"dry[- ]clean only"),
    "do not dry clean": (r"do not [\w ,]{0,25}dry[- ]clean", r"don'?t dry[- ]clean", r"no dry[- ]clean"),
    "iron low": (r"(?:cool|low|warm|mild|medium)(?: to \w+)? iron", r"iron (?:on|at) (?:low|medium|cool)",
                 r"low heat iron"),
    "iron": (r"\biron(?:ing)?\b",),
    "do not iron": (r"do not [\w ,]{0,20}\biron(?! (?:on|over|directly))", r"don'?t iron(?! (?:on|over))", r"no iron"),
    "do not iron on print": (r"(?:do not|don'?t) iron (?:on|over|directly on) (?:the )?(?:print|design|embellishment|logo|embroidery|motif)",),
    "wipe clean": (r"wipe (?:with|clean)", r"clean with a (?:dry|damp|soft) (?:cloth|brush)",
                   r"damp cloth", r"soft (?:dry )?cloth"),
    "wash inside out": (r"inside out",),
}

# Care phrases implied by a more specific one (dropped when the specific one is present).
CARE_IMPLIED_BY: dict[str, tuple[str, ...]] = {
    "machine wash": ("machine wash cold",),
    "iron": ("iron low", "do not iron", "do not iron on print"),
    "tumble dry": ("tumble dry low", "do not tumble dry"),
    "dry clean": ("do not dry clean",),
}

FITS: dict[str, tuple[str, ...]] = {
    "regular": ("regular", "regular fit", "comfort", "comfort fit", "classic fit", "standard fit",
                "straight fit", "true to size"),
    "slim": ("slim", "slim fit", "fitted", "tailored fit", "tailored", "narrow fit"),
    "skinny": ("skinny", "skinny fit", "super skinny", "tight fit", "tight-fitting", "tight"),
    "relaxed": ("relaxed", "relaxed fit", "loose", "loose fit", "loose-fitting", "oversized",
                "baggy", "boxy", "wide fit", "wide"),
}

PATTERNS: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain", "solid colour", "solid color", "single colour", "self coloured"),
    "printed": ("printed", "print", "graphic", "floral", "graphic print", "floral print", "printed design",
                "text print", "logo print", "all-over print"),
    "striped": ("striped", "stripes", "stripe", "pinstripe", "pinstriped", "stripy"),
    "checked": ("checked", "checks", "check", "plaid", "tartan", "gingham", "checkered"),
    "self design": ("self design", "self-design", "self designed", "jacquard", "dobby", "textured"),
    "embellished": ("embellished", "embroidered", "sequinned", "sequin", "embellishment", "beaded"),
    "washed": ("washed", "faded", "stonewashed", "acid wash", "distressed"),
    "colourblocked": ("colourblocked", "colour-blocked", "colorblock", "color block", "colourblock"),
}

OCCASIONS: dict[str, tuple[str, ...]] = {
    "casual": ("casual", "everyday", "daily", "daily wear", "leisure", "weekend", "everyday wear"),
    "formal": ("formal", "office", "work", "business", "semiformal", "semi-formal", "smart",
               "smart casual", "officewear"),
    "sports": ("sports", "sport", "sporty", "training", "running", "gym", "workout", "athletic"),
    "party": ("party", "evening", "festive", "partywear", "night out", "cocktail"),
    "ethnic": ("ethnic", "traditional", "festival"),
    "lounge": ("lounge", "home", "sleep", "nightwear", "loungewear", "sleepwear"),
    "beach": ("beach", "swim", "swimwear", "holiday", "resort"),
}

# Style details (neck, sleeve, silhouette). The `style` column is these joined by ", ".
STYLE_DETAILS: dict[str, tuple[str, ...]] = {
    "round neck": ("round neck", "crew neck", "crew-neck", "round-neck", "crewneck"),
    "v-neck": ("v-neck", "v neck", "v-neckline"),
    "polo collar": ("polo collar", "polo neck", "polo"),
    "shirt collar": ("shirt collar", "spread collar", "button-down collar", "mandarin collar",
                     "collared", "collar"),
    "hooded": ("hooded", "hood", "hoodie"),
    "high neck": ("high neck", "turtleneck", "turtle neck", "mock neck", "funnel neck"),
    "sleeveless": ("sleeveless", "strappy", "spaghetti straps"),
    "short sleeves": ("short sleeves", "short sleeve", "short-sleeved", "half sleeves", "cap sleeves"),
    "long sleeves": ("long sleeves", "long sleeve", "long-sleeved", "full sleeves"),
    "three-quarter sleeves": ("three-quarter sleeves", "3/4 sleeves", "three-quarter-length sleeves"),
    "a-line": ("a-line", "a line", "flared", "skater"),
    "high waist": ("high waist", "high-waisted", "high waisted", "high-rise"),
    "zip closure": ("zip", "zipper", "zipped", "zip fastening"),
    "button closure": ("buttons", "button placket", "buttoned", "button fastening"),
    "lace-up": ("lace-up", "lace up", "laces"),
    "slip-on": ("slip-on", "slip on", "elasticated gores"),
}


# Surface forms too ambiguous to match in free text (colours, "button-down", "lace-up", ...).
# They still normalise when an LLM emits them as a material.
AMBIGUOUS_IN_TEXT = frozenset({"gold", "silver", "down", "lace", "poly", "cord", "terry", "twill",
                               "crystal", "glass", "wood", "wooden", "plastic", "resin", "copper",
                               "brass", "steel", "poplin", "cambric", "voile", "alloy", "vinyl"})


# Constructions / weaves and trims: real materials, but a garment's catalogue fabric is the fibre.
# Rules list fibres first, then constructions, then trims.
CONSTRUCTIONS = frozenset({"knit", "mesh", "lace", "fleece", "velvet", "satin", "corduroy", "crepe", "chiffon",
                           "georgette", "down", "blend"})
TRIMS = frozenset({"metal", "silver", "gold", "plastic", "glass", "wood", "rubber", "eva", "tpr"})


def material_rank(canonical: str) -> int:
    return 2 if canonical in TRIMS else 1 if canonical in CONSTRUCTIONS else 0


def _surface_index(vocab: Mapping[str, Iterable[str]]) -> dict[str, str]:
    index: dict[str, str] = {}
    for canonical, synonyms in vocab.items():
        index[canonical] = canonical
        for s in synonyms:
            index.setdefault(s, canonical)
    return index


MATERIAL_INDEX = _surface_index(MATERIALS)
FIT_INDEX = _surface_index(FITS)
PATTERN_INDEX = _surface_index(PATTERNS)
OCCASION_INDEX = _surface_index(OCCASIONS)
STYLE_INDEX = _surface_index(STYLE_DETAILS)
CARE_INDEX = _surface_index({k: () for k in CARE})
# Extra care surface forms an LLM tends to write.
CARE_INDEX.update({
    "machine washable": "machine wash", "wash cold": "machine wash cold", "cold wash": "machine wash cold",
    "machine wash at 30": "machine wash cold", "handwash": "hand wash", "no bleach": "do not bleach",
    "low iron": "iron low", "cool iron": "iron low", "warm iron": "iron low", "iron on low": "iron low",
    "dry cleaning": "dry clean", "dry clean only": "dry clean", "do not tumble": "do not tumble dry",
    "tumble dry on low": "tumble dry low", "hang dry": "line dry", "drip dry": "line dry",
    "wipe with a damp cloth": "wipe clean",
})

MATERIAL_VALUES = tuple(MATERIALS)
CARE_VALUES = tuple(CARE)
FIT_VALUES = tuple(FITS)
PATTERN_VALUES = tuple(PATTERNS)
OCCASION_VALUES = tuple(OCCASIONS)
STYLE_VALUES = tuple(STYLE_DETAILS)


def _key(value: object) -> str:
    s = str(value).strip().lower()
    s = re.sub(r"[\s_]+", " ", s)
    return s.strip(" .,;:!-")


def _lookup(index: dict[str, str], value: object) -> str | None:
    if value is None:
        return None
    k = _key(value)
    if not k:
        return None
    if k in index:
        return index[k]
    # Tolerate trailing qualifiers ("cotton fabric", "slim fit jeans") without guessing wildly.
    for suffix in (" fabric", " fit", " pattern", " wear", " material", " style"):
        if k.endswith(suffix) and k[: -len(suffix)] in index:
            return index[k[: -len(suffix)]]
    return None


def normalise_material(value: object) -> str | None:
    return _lookup(MATERIAL_INDEX, value)


def normalise_care(value: object) -> str | None:
    return _lookup(CARE_INDEX, value)


def normalise_fit(value: object) -> str | None:
    return _lookup(FIT_INDEX, value)


def normalise_pattern(value: object) -> str | None:
    return _lookup(PATTERN_INDEX, value)


def normalise_occasion(value: object) -> str | None:
    return _lookup(OCCASION_INDEX, value)


def normalise_style(value: object) -> str | None:
    return _lookup(STYLE_INDEX, value)


def drop_implied_care(care: list[str]) -> list[str]:
    """Remove generic care phrases already implied by a more specific phrase in the list."""
    present = set(care)
    return [c for c in care if not any(s in present for s in CARE_IMPLIED_BY.get(c, ()))]
