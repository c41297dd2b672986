"""Scoring new listings with the published models (no Dagster imports).

A listing source is either
- a folder in one of the datasets' own layouts (Kaggle: styles.csv + images/; H&M: articles.csv
  + images/), read and cleaned by the same reader / cleaning code as the pipeline, or
- a JSON (list of objects, or {"listings": [...]}), JSON-lines or CSV file with title,
  description and image_path (relative paths are resolved against the file's folder); optional
  columns listing_id, brand, colour, category, gender, usage, source, price_usd (asking price).

Each listing goes through the same steps as training data: cleaning, attribute extraction,
embedding, the published attribute classifiers (category / gender / usage, the model of the
input regime the listing falls in: full, sparse = photo + title, image = photo only), then
`build_price_inputs` and the published price model. A category / gender / usage the listing
states itself is kept when it is a valid taxonomy value; otherwise the prediction fills it, and
the price model sees the filled value. Nothing is dropped: a listing that lacks something is
scored with what it has and carries a flag saying what.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .comparables import DEFAULT_K as COMPARABLES_K
from .comparables import comparables_columns
from .pricing.features import build_price_inputs
from .pricing.listing_model import ABSTAIN_NO_INPUT, ABSTAIN_NO_MODEL, ABSTAIN_WIDE_INTERVAL
from .taxonomy import CATEGORIES, GENDERS, USAGES

log = logging.getLogger(__name__)

PRICE_MODEL_NAME = "price_regressor"
PRICE_MODEL_ASSET = "published_price_regressor"

ATTRIBUTE_COLUMNS = ("materials", "care", "fit", "pattern", "occasion", "style")
CLASSIFIER_TASKS = ("category", "gender", "usage")
CLASSIFIER_ASSET = "published_classifiers"
# Which published model serves a listing, by what the listing shows; later entries are fallbacks
# when a regime's model was not trained / published.
REGIME_PREFERENCE = {"full": ("full", "sparse", "image"), "sparse": ("sparse", "full", "image"),
                     "image": ("image", "sparse", "full")}
OUTPUT_COLUMNS = (
    "listing_id", "title", "source", "category", "gender", "usage",
    "category_predicted", "category_confidence", "gender_predicted", "gender_confidence",
    "usage_predicted", "usage_confidence", "classifier_regime", "brand", "colour",
    *ATTRIBUTE_COLUMNS, "price_usd", "price_low_usd", "price_high_usd", "price_form", "price_source",
    "price_abstained", "asking_price_usd", "price_model_version", "flags",
)
# The k most similar catalogue products (core.comparables) as evidence, and their median price.
COMPARABLES_COLUMNS = ("comparables", "comparables_median_price_usd")
OUTPUT_COLUMNS = (*OUTPUT_COLUMNS, *COMPARABLES_COLUMNS)

# Flags (a listing may carry several, joined with ';').
NO_IMAGE = "no_image"
UNREADABLE_IMAGE = "unreadable_image"
NO_DESCRIPTION = "no_description"
NO_TITLE = "no_title"
UNKNOWN_CATEGORY = "unknown_category"
ASKING_PRICE_OUTSIDE_RANGE = "asking_price_outside_training_range"
# The model's point estimate fell outside the training price range and was clipped into it.
PRICE_CLIPPED = "price_clipped_to_training_range"
# No price: nothing the model can read (no title, no description, no readable photo) ...
PRICE_ABSTAINED_NO_INPUT = "no_price_no_usable_input"
# ... or the interval for what the listing shows is too wide to be advice ...
PRICE_ABSTAINED_WIDE = "no_price_interval_too_wide"
# ... or the published model has no model for what the listing shows (e.g. photo only, and the
# model was trained without image embeddings).
PRICE_ABSTAINED_NO_MODEL = "no_price_no_model_for_listing_form"
# The model was trained with embeddings but this run computed none (encoder not available or off).
NO_EMBEDDINGS = "scored_without_embeddings"
# No published classifier could serve this listing (materialize published_classifiers).
NOT_CLASSIFIED = "not_classified"


# Image errors (from readers.images.image_status or the encoder's image reader) that mean
# "there is no image", as opposed to "there is a file but it cannot be decoded".
_ABSENT_IMAGE = {"missing", "no_image_path", "file_not_found"}


class NoPublishedModelError(RuntimeError):
    """Raised when scoring is asked for before any price model was published."""


class ListingsReadError(ValueError):
    """The listings path is neither a supported file nor a dataset folder."""


def _s(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def records_to_listings(records: list[dict], base: Path) -> pd.DataFrame:
    """Listing records (dicts as in a JSON file) as a frame; relative image paths against ``base``."""
    rows = []
    for i, r in enumerate(records):
        img = _s(r.get("image_path") or r.get("image"))
        if img and not os.path.isabs(img):
            img = str((base / img).resolve())
        price = pd.to_numeric(pd.Series([r.get("price_usd", r.get("price"))]), errors="coerce").iloc[0]
        rows.append(
            {
                "product_id": _s(r.get("listing_id") or r.get("id")) or f"listing-{i}",
                "title": _s(r.get("title")),
                "description": _s(r.get("description")),
                "image_path": img or None,
                "brand": _s(r.get("brand")) or None,
                "colour": _s(r.get("colour") or r.get("color")) or None,
                "category": _s(r.get("category")) or None,
                "gender": _s(r.get("gender")) or None,
                "usage": _s(r.get("usage")) or None,
                "source": _s(r.get("source")) or None,
                "asking_price_usd": float(price) if pd.notna(price) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def read_listings(path: str | os.PathLike, dataset_reader: Callable[[Path], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Listings as a frame with the clean_products columns scoring needs (see module doc)."""
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".csv":
            records = pd.read_csv(p, dtype=str, keep_default_na=False).to_dict(orient="records")
        elif suffix in (".jsonl", ".ndjson"):
            records = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            records = data.get("listings", []) if isinstance(data, dict) else data
        else:
            raise ListingsReadError(f"{p}: unsupported listings file type {suffix!r} (use .json, .jsonl or .csv)")
        return records_to_listings(list(records), p.parent)
    if p.is_dir():
        reader = dataset_reader or read_dataset_folder
        frame = reader(p)
        frame = frame.rename(columns={"price_usd": "asking_price_usd"})
        if "asking_price_usd" not in frame.columns:
            frame["asking_price_usd"] = np.nan
        return frame.reset_index(drop=True)
    raise ListingsReadError(f"{p}: no such file or folder")


def read_dataset_folder(folder: Path, report=None) -> pd.DataFrame:
    """A folder in the Kaggle or H&M layout, read and mapped to the shared taxonomy by the
    pipeline's own readers and cleaning code. Rows cleaning cannot map (unmapped or
    out-of-scope category) are counted in ``report``, not silently lost."""
    from .cleaning import CleaningSettings, hm_to_products, kaggle_to_products
    from .readers import read_hm_articles, read_hm_prices, read_kaggle_products
    from .reports import DropReport

    report = report if report is not None else DropReport()
    settings = CleaningSettings()
    if (folder / "styles.csv").exists():
        # Images are checked at scoring time, so a corrupt one is flagged as unreadable, not as absent.
        frame = kaggle_to_products(read_kaggle_products(folder, report, check_image_files=False), settings, report)
    elif (folder / "articles.csv").exists():
        articles = read_hm_articles(folder, report, check_image_files=False)
        frame = hm_to_products(articles, read_hm_prices(folder, articles["article_id"], report), settings, report)
    else:
        raise ListingsReadError(
            f"{folder}: not a listings folder (expected styles.csv [Kaggle layout] or articles.csv [H&M layout])"
        )
    return frame.drop(columns=["price_local", "currency"], errors="ignore")


Embedder = Callable[[pd.DataFrame, "pd.DataFrame | None"], tuple[list[str], np.ndarray, np.ndarray, list[str | None]]]


def encoder_embedder(backend: str = "offline", batch_size: int = 64, **options) -> Embedder:
    """Embeddings for listings with the encoder stage's own backend, text building and image
    decoding, so a listing's vectors are computed exactly like a catalogue product's.

    Returns ids, image [n, d] (NaN rows where no image could be used), text [n, d], and per row
    the image error (None when the image was embedded).
    """
    import torch

    from .encoders import build_backend
    from .encoders.images import decode_image, read_image_bytes
    from .encoders.text import build_texts

    be = build_backend(backend, **options)
    transform = be.image_transform()
    # Within one embedder, a text or an image file seen before is not encoded again (the listing
    # evaluation scores the same products in several forms; a listings file may repeat a photo).
    text_memo: dict[str, np.ndarray] = {}
    image_memo: dict[str, tuple[np.ndarray | None, str | None]] = {}

    def embed(products: pd.DataFrame, attributes: pd.DataFrame | None):
        n = len(products)
        texts = build_texts(products, attributes)
        text = np.full((n, be.text.dim), np.nan, dtype=np.float32)
        todo = sorted({t for t in texts if t and t not in text_memo})
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            text_memo.update(zip(chunk, be.encode_text_batch(chunk)))
        for i, t in enumerate(texts):
            if t:
                text[i] = text_memo[t]
        image = np.full((n, be.image.dim), np.nan, dtype=np.float32)
        paths = list(products["image_path"]) if "image_path" in products else [None] * n
        pixels, keys = [], []
        for path in dict.fromkeys(paths):
            key = str(path)
            if key in image_memo:
                continue
            raw = read_image_bytes(path)
            if raw.error:
                image_memo[key] = (None, raw.error)
                continue
            im, _, err = decode_image(raw.data)
            image_memo[key] = (None, err)
            if im is not None:
                pixels.append(transform(im))
                keys.append(key)
        for s in range(0, len(keys), batch_size):
            vecs = be.encode_image_batch(torch.stack(pixels[s : s + batch_size]))
            for key, v in zip(keys[s : s + batch_size], vecs):
                image_memo[key] = (v, image_memo[key][1])
        errors: list[str | None] = []
        for i, path in enumerate(paths):
            vec, err = image_memo[str(path)]
            errors.append(err)
            if vec is not None:
                image[i] = vec
        return products["product_id"].tolist(), image, text, errors

    return embed


def rules_extractor(brands=(), max_chars: int = 2000) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Attribute extraction for listings with the extraction stage's rules backend (the
    backend that runs everywhere; an LLM backend needs a GPU or minutes per batch)."""
    from .extraction.rules import RulesExtractor
    from .extraction.text import prepare

    rules = RulesExtractor(brands=brands)

    def extract(products: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for pid, title, desc in zip(products["product_id"], products["title"], products["description"]):
            a = rules.extract(prepare(_s(title), _s(desc), max_chars)).to_dict()
            rows.append({
                "product_id": pid,
                **{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in a.items()},
            })
        return pd.DataFrame(rows)

    return extract


def _flags(row: pd.Series, image_error: str | None, price_range: tuple[float, float] | None) -> str:
    f = []
    if not _s(row.get("image_path")) or image_error in _ABSENT_IMAGE:
        f.append(NO_IMAGE)
    elif image_error:
        f.append(UNREADABLE_IMAGE)
    if not _s(row.get("title")):
        f.append(NO_TITLE)
    if not _s(row.get("description")):
        f.append(NO_DESCRIPTION)
    if _s(row.get("category")) not in CATEGORIES:
        f.append(UNKNOWN_CATEGORY)
    if price_range is not None:
        lo, hi = price_range
        ask = row.get("asking_price_usd")
        if ask is not None and pd.notna(ask) and not (lo <= float(ask) <= hi):
            f.append(ASKING_PRICE_OUTSIDE_RANGE)
    if bool(row.get("price_clipped")):
        f.append(PRICE_CLIPPED)
    abstained = row.get("price_abstained")
    if abstained == ABSTAIN_NO_INPUT:
        f.append(PRICE_ABSTAINED_NO_INPUT)
    elif abstained == ABSTAIN_WIDE_INTERVAL:
        f.append(PRICE_ABSTAINED_WIDE)
    elif abstained == ABSTAIN_NO_MODEL:
        f.append(PRICE_ABSTAINED_NO_MODEL)
    return ";".join(f)


def load_published_price_model(store) -> tuple[Any, dict]:
    info = store.published(PRICE_MODEL_NAME)
    if info is None:
        raise NoPublishedModelError(
            f"No published '{PRICE_MODEL_NAME}' in the model store at {getattr(store, 'root', '?')}. "
            f"Materialize the asset '{PRICE_MODEL_ASSET}' first "
            f"(e.g. `dagster asset materialize -m fashion_pipeline.definitions --select +{PRICE_MODEL_ASSET}`)."
        )
    model, info = store.load(PRICE_MODEL_NAME)
    if not hasattr(model, "forms"):
        raise NoPublishedModelError(
            f"The published '{PRICE_MODEL_NAME}' {info.get('version')} is a {type(model).__name__}, trained by an "
            f"older version that priced catalogue rows, not listings. Re-materialize '{PRICE_MODEL_ASSET}'."
        )
    return model, info


def classifier_name(task: str, regime: str) -> str:
    """Model store name of the serving classifier (same naming as the classifier assets)."""
    return f"{task}_classifier" if regime == "full" else f"{task}_classifier_{regime}"


def load_published_classifiers(store) -> dict[tuple[str, str], tuple[Any, dict]]:
    """{(task, regime): (classifier, info)} for every published serving classifier (may be empty)."""
    out = {}
    for task in CLASSIFIER_TASKS:
        for regime in REGIME_PREFERENCE:
            name = classifier_name(task, regime)
            if store.published(name) is not None:
                out[(task, regime)] = store.load(name)
    return out


def listing_regime(title: Any, description: Any, has_image: bool) -> str | None:
    """full: title + description; sparse: title only (with or without a photo); image: photo only."""
    if _s(title) and _s(description):
        return "full"
    if _s(title):
        return "sparse"
    return "image" if has_image else None


def classify_listings(df: pd.DataFrame, classifiers: dict, embeddings=None, attributes: pd.DataFrame | None = None,
                      has_image: list[bool] | None = None) -> pd.DataFrame:
    """Per listing: ``<task>_predicted`` / ``<task>_confidence`` for category, gender, usage and
    the ``classifier_regime`` whose published model served it (None where none could)."""
    from .features import ATTRIBUTE_COLUMNS as CLASSIFIER_ATTRIBUTES
    from .features import LIST_ATTRIBUTE_COLUMNS, with_embeddings

    n = len(df)
    out = pd.DataFrame(index=df.index)
    for task in CLASSIFIER_TASKS:
        out[f"{task}_predicted"] = pd.Series([None] * n, index=df.index, dtype=object)
        out[f"{task}_confidence"] = np.nan
    out["classifier_regime"] = pd.Series([None] * n, index=df.index, dtype=object)
    if not n or not classifiers:
        return out
    frame = df.copy()
    if attributes is not None and len(attributes):
        a = attributes.drop_duplicates("product_id").set_index("product_id").reindex(frame["product_id"])
        for c in (*LIST_ATTRIBUTE_COLUMNS, *CLASSIFIER_ATTRIBUTES):  # what the classifiers' featurizer reads
            if c in a.columns:
                frame[c] = a[c].to_numpy()
    ids, image, text = embeddings if embeddings is not None else (list(frame["product_id"]), None, None)
    frame = with_embeddings(frame, ids, image, text)
    if has_image is None:
        has_image = [v is not None for v in frame["image_embedding"]]
    wanted = [listing_regime(t, d, h) for t, d, h in zip(frame["title"], frame["description"], has_image)]
    for task in CLASSIFIER_TASKS:
        served = [next((r for r in REGIME_PREFERENCE[w] if (task, r) in classifiers), None) if w else None
                  for w in wanted]
        for regime in sorted({r for r in served if r}):
            rows = np.array([r == regime for r in served])
            clf, _ = classifiers[(task, regime)]
            pred = clf.predict(frame.loc[rows])
            out.loc[rows, f"{task}_predicted"] = pred["label"].to_numpy()
            out.loc[rows, f"{task}_confidence"] = pred["confidence"].to_numpy(dtype=float)
            if task == "category":
                out.loc[rows, "classifier_regime"] = regime
    return out


def score_listings(
    listings: pd.DataFrame,
    price_model,
    model_info: dict | None = None,
    embedder: Embedder | None = None,
    extractor: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    classifiers: dict | None = None,
    comparables_index=None,
    comparables_k: int = COMPARABLES_K,
) -> tuple[pd.DataFrame, dict]:
    """Score cleaned listings; returns (scores with OUTPUT_COLUMNS, counts by flag).

    ``extractor`` maps listings to a product_attributes-like frame (product_id + attribute
    columns); ``embedder`` see `encoder_embedder`; ``classifiers`` see
    `load_published_classifiers`; ``comparables_index`` a `core.comparables.ComparablesIndex`
    (see `load_for_price_model`) searched for ``comparables_k`` products per listing. Any may be None: the listing is then scored with what it has
    (text features and the metadata it states), and the output says so in the flags and counts.
    """
    df = listings.reset_index(drop=True).copy()
    for col in ("title", "description", "image_path", "category", "gender", "usage", "brand", "colour", "source"):
        if col not in df.columns:
            df[col] = None
    if "asking_price_usd" not in df.columns:
        df["asking_price_usd"] = np.nan
    attributes = extractor(df) if extractor is not None and len(df) else None
    image_errors: list[str | None] = [None] * len(df)
    embeddings = None
    if embedder is not None and len(df):
        ids, image, text, image_errors = embedder(df, attributes)
        embeddings = (ids, image, text)
    else:
        from .readers.images import image_status

        image_errors = [None if (s := image_status(p if _s(p) else None)) == "ok" else s for p in df["image_path"]]
    has_image = [e is None and bool(_s(p)) for e, p in zip(image_errors, df["image_path"])]
    predicted = classify_listings(df, classifiers or {}, embeddings, attributes, has_image)
    valid = {"category": set(CATEGORIES), "gender": set(GENDERS), "usage": set(USAGES)}
    for task in CLASSIFIER_TASKS:  # a valid stated value wins; the prediction fills the rest
        stated = df[task].map(_s)
        df[task] = [v if v in valid[task] else (p if p is not None else (v or None))
                    for v, p in zip(stated, predicted[f"{task}_predicted"])]
    inputs = build_price_inputs(df, embeddings, attributes)
    pred = price_model.predict(inputs)
    out = inputs.frame.copy()
    out["listing_id"] = out["product_id"]
    for c in pred.columns:
        out[c] = pred[c].to_numpy()
    for c in predicted.columns:
        out[c] = predicted[c].to_numpy()
    for c in ATTRIBUTE_COLUMNS:
        out[c] = None
    if attributes is not None and len(attributes):
        a = attributes.drop_duplicates("product_id").set_index("product_id").reindex(out["product_id"])
        for c in ATTRIBUTE_COLUMNS:
            if c in a.columns:
                out[c] = a[c].to_numpy()
    price_range = getattr(price_model, "price_range_", None)
    trained_with_embeddings = str(((model_info or {}).get("features_spec") or {}).get("embeddings", "")).startswith("read")
    out["flags"] = pd.Series([_flags(r, e, price_range) for (_, r), e in zip(out.iterrows(), image_errors)],
                             index=out.index, dtype=object)
    if embedder is None and trained_with_embeddings and len(out):
        out["flags"] = [";".join(x for x in (f, NO_EMBEDDINGS) if x) for f in out["flags"]]
    if len(out):
        out["flags"] = [";".join(x for x in (f, NOT_CLASSIFIED if r is None else "") if x)
                        for f, r in zip(out["flags"], out["classifier_regime"])]
    out["price_model_version"] = (model_info or {}).get("version")
    cmp, cmp_counts = comparables_columns(comparables_index, inputs.image if embeddings is not None else None,
                                          inputs.text if embeddings is not None else None, len(out), comparables_k)
    for c in COMPARABLES_COLUMNS:
        out[c] = cmp[c].to_numpy()
    counts = {"listings": int(len(out))}
    for flag in (NO_IMAGE, UNREADABLE_IMAGE, NO_TITLE, NO_DESCRIPTION, UNKNOWN_CATEGORY,
                 ASKING_PRICE_OUTSIDE_RANGE, PRICE_CLIPPED, PRICE_ABSTAINED_NO_INPUT, PRICE_ABSTAINED_WIDE,
                 PRICE_ABSTAINED_NO_MODEL,
                 NO_EMBEDDINGS, NOT_CLASSIFIED):
        counts[flag] = sum(flag in fs.split(";") for fs in out["flags"])
    counts["embedded"] = embedder is not None
    counts["attributes_extracted"] = attributes is not None
    counts["classifiers_published"] = len(classifiers or {})
    counts["classified_by_regime"] = {str(k): int(v) for k, v in out["classifier_regime"].value_counts().items()}
    counts["comparables"] = cmp_counts
    counts["priced_by_form"] = {str(k): int(v) for k, v in out.loc[out["price_usd"].notna(), "price_form"]
                                .value_counts().items()}
    return out[list(OUTPUT_COLUMNS)], counts


def write_scores(scores: pd.DataFrame, output: str | os.PathLike) -> Path:
    """Parquet or CSV by suffix, written atomically (temp name + os.replace)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".csv":
        scores.to_csv(tmp, index=False)
    elif out.suffix.lower() == ".parquet":
        scores.to_parquet(tmp, index=False)
    else:
        raise ValueError(f"{out}: output must end in .parquet or .csv")
    os.replace(tmp, out)
    return out
