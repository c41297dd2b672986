"""Scoring new listings with the published models (no Dagster imports).

A listing source is either
- a folder in one of the datasets' own layouts (Kaggle: styles.csv + images/; H&M: articles.csv
  + images/), read and cleaned by the same reader / cleaning code as the pipeline, or
- a JSON (list of objects, or {"listings": [...]}), JSON-lines or CSV file with title,
  description and image_path (relative paths are resolved against the file's folder); optional
  columns listing_id, brand, colour, category, gender, usage, source, price_usd (asking price).

Reading is forgiving about rows and strict about files. A row that cannot be a listing is
skipped and counted by reason in the caller's DropReport (``malformed_row``: a CSV row with
the wrong number of fields or that cannot be parsed; ``invalid_json_line``: a JSON-lines line
that is not JSON; ``not_an_object``: a JSON item or line that is not an object;
``empty_record``: no value at all; ``no_listing_fields``: values, but in none of the listing
fields). A file that cannot be read as listings at all (missing, unsupported suffix, invalid
JSON, wrong top-level shape, a folder in neither dataset layout or without its id / title
columns) raises `ListingsReadError`. Dataset-folder rows without labels (missing, blank or
unmapped category columns) are kept with null labels for the classifiers to fill.

Each listing goes through the same steps as training data: cleaning, attribute extraction,
embedding, the published attribute classifiers (category / gender / usage, the model of the
input regime the listing falls in: full, sparse = photo + title, image = photo only), then
`build_price_inputs` and the published price model. A category / gender / usage the listing
states itself is kept when it is a valid taxonomy value; otherwise the prediction fills it, and
the price model sees the filled value. Nothing is dropped: a listing that lacks something is
scored with what it has and carries a flag saying what.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_output
from .comparables import DEFAULT_K as COMPARABLES_K
from .comparables import comparables_columns
from .extraction.learned import STORE_NAME as EXTRACTOR_MODEL
from .model_store import ModelCorruptError, ModelNotFoundError
from .models.publishing import classifier_name
from .raw_prices import parse_price
from .pricing.features import SPARSE_TEXT, build_price_inputs, title_texts
from .pricing.listing_model import ABSTAIN_NO_INPUT, ABSTAIN_NO_MODEL, ABSTAIN_WIDE_INTERVAL
from .reports import DropReport
from .taxonomy import CATEGORIES, GENDERS, USAGES

log = logging.getLogger(__name__)

PRICE_MODEL_NAME = "price_regressor"
PRICE_MODEL_ASSET = "published_price_regressor"

# Extracted attributes in the scoring output (brand has its own column).
SCORED_ATTRIBUTE_COLUMNS = ("materials", "care", "fit", "pattern", "occasion", "style")
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
    *SCORED_ATTRIBUTE_COLUMNS, "price_usd", "price_low_usd", "price_high_usd", "price_form", "price_source",
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
# An asking price was given but is not a usable price (zero, negative, not a number, infinite);
# the listing is scored without it (asking_price_usd is null).
INVALID_ASKING_PRICE = "invalid_asking_price"
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
    """The listings path cannot be read as listings at all: missing, an unsupported file type,
    invalid JSON, a wrong top-level shape, or a folder in neither dataset layout."""


LISTING_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv")
# What records_to_listings returns, in this order (also when there are no records).
LISTING_COLUMNS = ("product_id", "title", "description", "image_path", "brand", "colour", "category", "gender",
                   "usage", "source", "asking_price_usd", "asking_price_invalid")
# Keys a listing record is read from (records_to_listings); a record with none of them is not a listing.
LISTING_FIELDS = ("listing_id", "id", "title", "description", "image_path", "image", "brand", "colour", "color",
                  "category", "gender", "usage", "source", "price_usd", "price")

# Reasons a record in a listings file is skipped (counted in the DropReport, see the module doc).
SKIP_MALFORMED_ROW = "malformed_row"
SKIP_INVALID_JSON_LINE = "invalid_json_line"
SKIP_NOT_AN_OBJECT = "not_an_object"
SKIP_EMPTY_RECORD = "empty_record"
SKIP_NO_LISTING_FIELDS = "no_listing_fields"


def _s(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def _asking_price(value: Any) -> tuple[float, bool]:
    """(price or NaN, invalid): absent or blank is NaN and not invalid; zero, negative,
    non-numeric or infinite is NaN and invalid (same rule as the catalogue's parse_price)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return np.nan, False
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return np.nan, False
    if isinstance(value, bool):  # json `true` is not a price
        return np.nan, True
    price, status = parse_price(value)
    return (float(price), False) if status == "ok" else (np.nan, status == "invalid")


def records_to_listings(records: list, base: Path, report: DropReport | None = None,
                        positions: list[int] | None = None) -> pd.DataFrame:
    """Listing records (dicts as in a JSON file) as a frame with LISTING_COLUMNS; relative image
    paths against ``base``.

    Items that are not objects, empty records and records with no listing field are skipped
    and counted in ``report`` (logged when there is none). A listing without an id is named
    ``listing-<i>``, ``i`` its position in the file: ``positions[k]`` for ``records[k]``
    (default: ``k``), so skipped rows do not shift the names of the others. An asking price that
    is given but not a usable price is nulled and marked in ``asking_price_invalid`` (scoring
    flags it).
    """
    skipped = report if report is not None else DropReport()
    rows = []
    for k, r in enumerate(records):
        i = positions[k] if positions is not None else k
        if not isinstance(r, dict):
            skipped.add(SKIP_NOT_AN_OBJECT, f"item {i}: {type(r).__name__}")
            continue
        if not any(_s(v) for v in r.values()):
            skipped.add(SKIP_EMPTY_RECORD, f"item {i}")
            continue
        if not any(_s(r.get(k)) for k in LISTING_FIELDS):
            skipped.add(SKIP_NO_LISTING_FIELDS, f"item {i}: keys {sorted(map(str, r))[:10]}")
            continue
        img = _s(r.get("image_path") or r.get("image"))
        if img and not os.path.isabs(img):
            img = str((base / img).resolve())
        price, price_invalid = _asking_price(r.get("price_usd", r.get("price")))
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
                "asking_price_usd": price,
                "asking_price_invalid": price_invalid,
            }
        )
    if report is None and skipped.total:
        log.warning("records_to_listings skipped %s", skipped.as_dict())
    frame = pd.DataFrame.from_records(rows, columns=list(LISTING_COLUMNS))
    frame["asking_price_usd"] = frame["asking_price_usd"].astype(float)
    frame["asking_price_invalid"] = frame["asking_price_invalid"].astype(bool)
    return frame


def _read_text(p: Path, report: DropReport) -> str:
    """A listings file's text: UTF-8 (with or without BOM) or UTF-16 with BOM; undecodable bytes
    are replaced and counted (``encoding_repaired``), NUL bytes removed (``nul_bytes_removed``)."""
    from .readers.common import decode_text

    text = decode_text(p.read_bytes(), report, p.name)
    if "\x00" in text:
        report.add("nul_bytes_removed", p.name, n=text.count("\x00"))
        text = text.replace("\x00", "")
    return text


def _csv_records(text: str, report: DropReport) -> tuple[list[dict[str, str]], list[int]]:
    """CSV records as dicts (header = first row), and each one's data-row position (counting
    skipped rows, not blank lines). Quoted fields may span lines. A row with a
    different number of fields than the header, or that the csv module rejects, is skipped and
    counted as ``malformed_row``; when such a row spans several lines (a stray quote that opened
    a field), its lines are read one by one, so the stray quote costs its own line only. Blank
    lines are ignored."""
    lines = io.StringIO(text, newline="").readlines()
    reader = csv.reader(lines)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], []
    except csv.Error as e:
        raise ListingsReadError(f"unreadable CSV header ({e})") from None
    n = len(header)
    records: list[dict[str, str]] = []
    positions: list[int] = []
    row = 0  # data rows seen, kept or skipped

    def take(fields: list[str], line: int) -> None:
        nonlocal row
        if len(fields) == n:
            records.append(dict(zip(header, fields)))
            positions.append(row)
        else:
            report.add(SKIP_MALFORMED_ROW, f"line {line}: {len(fields)} fields, expected {n}")
        row += 1

    def one_line(k: int) -> None:
        nonlocal row
        try:
            fields = next(csv.reader([lines[k]]), [])
        except csv.Error as e:
            report.add(SKIP_MALFORMED_ROW, f"line {k + 1}: {e}")
            row += 1
            return
        if fields:
            take(fields, k + 1)

    start = reader.line_num  # physical lines consumed so far
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            report.add(SKIP_MALFORMED_ROW, f"line {start + 1}: {e}")
            row += 1
            start = reader.line_num
            continue
        end = reader.line_num
        if not fields:
            pass  # a blank line
        elif len(fields) != n and end - start > 1:
            for k in range(start, end):
                one_line(k)
        else:
            take(fields, start + 1)
        start = end
    return records, positions


def _json_records(text: str, p: Path) -> list:
    """The items of a JSON listings file: a list, or {"listings": [...]}; blank means none."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ListingsReadError(f"{p}: not valid JSON ({e})") from None
    shape = 'expected a list of listing objects or {"listings": [...]}'
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if "listings" not in data:
            keys = ", ".join(sorted(map(str, data))[:10])
            raise ListingsReadError(f'{p}: {shape}; got an object without "listings" (keys: {keys})')
        if not isinstance(data["listings"], list):
            raise ListingsReadError(f'{p}: {shape}; "listings" is {type(data["listings"]).__name__}, not a list')
        return data["listings"]
    raise ListingsReadError(f"{p}: {shape}; got {type(data).__name__}")


def _jsonl_records(text: str, report: DropReport) -> tuple[list, list[int]]:
    """The parsed lines, and each one's position among the non-blank lines (counting invalid ones)."""
    records, positions = [], []
    row = 0
    for k, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
            positions.append(row)
        except (ValueError, RecursionError) as e:
            report.add(SKIP_INVALID_JSON_LINE, f"line {k + 1}: {e}")
        row += 1
    return records, positions


def read_listings(path: str | os.PathLike, dataset_reader: Callable[[Path], pd.DataFrame] | None = None,
                  report: DropReport | None = None) -> pd.DataFrame:
    """Listings as a frame with the clean_products columns scoring needs (see module doc).

    Skipped rows are counted in ``report`` (and, for a dataset folder read by the default
    reader, so are the readers' and cleaning's drops). Raises `ListingsReadError` when the
    path cannot be read as listings at all; an empty file is no listings, not an error.
    """
    report = report if report is not None else DropReport()
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix not in LISTING_FILE_SUFFIXES:
            raise ListingsReadError(
                f"{p}: unsupported listings file type {suffix or '(no suffix)'!r} (use .json, .jsonl or .csv)")
        text = _read_text(p, report)
        if suffix == ".csv":
            records, positions = _csv_records(text, report)
        elif suffix == ".json":
            records, positions = _json_records(text, p), None
        else:
            records, positions = _jsonl_records(text, report)
        return records_to_listings(records, p.parent, report, positions)
    if p.is_dir():
        frame = dataset_reader(p) if dataset_reader is not None else read_dataset_folder(p, report)
        frame = frame.rename(columns={"price_usd": "asking_price_usd"})
        if "asking_price_usd" not in frame.columns:
            frame["asking_price_usd"] = np.nan
        # A catalogue price the dataset gives but that is no price (0, negative, text) is flagged.
        status = frame["price_status"] if "price_status" in frame.columns else pd.Series("", index=frame.index)
        frame["asking_price_invalid"] = (status == "invalid").to_numpy(dtype=bool)
        return frame.reset_index(drop=True)
    raise ListingsReadError(f"{p}: no such file or folder")


def read_dataset_folder(folder: Path, report=None) -> pd.DataFrame:
    """A folder in the Kaggle or H&M layout, read and mapped to the shared taxonomy by the
    pipeline's own readers and cleaning code. Rows cleaning drops (out-of-scope category,
    bad or repeated id, malformed CSV row) are counted in ``report``, not silently lost.
    Unlike ingest, rows without usable labels (label columns missing, blank or unmapped) are
    kept with null labels: the published classifiers predict them at scoring time."""
    from .cleaning import CleaningSettings, hm_to_products, kaggle_to_products
    from .readers import DataRootError, MissingColumnError, read_hm_articles, read_hm_prices, read_kaggle_products

    folder = Path(folder)
    report = report if report is not None else DropReport()
    settings = CleaningSettings()
    try:
        if (folder / "styles.csv").exists():
            # Images are checked at scoring time, so a corrupt one is flagged as unreadable, not as absent.
            kaggle = read_kaggle_products(folder, report, check_image_files=False, keep_unlabelled=True)
            frame = kaggle_to_products(kaggle, settings, report, keep_unlabelled=True)
        elif (folder / "articles.csv").exists():
            articles = read_hm_articles(folder, report, check_image_files=False, keep_unlabelled=True)
            prices = read_hm_prices(folder, articles["article_id"], report)
            frame = hm_to_products(articles, prices, settings, report, keep_unlabelled=True)
        else:
            raise ListingsReadError(
                f"{folder}: not a listings folder (expected styles.csv [Kaggle layout] or articles.csv [H&M layout])"
            )
    except (MissingColumnError, DataRootError) as e:
        raise ListingsReadError(str(e)) from e
    return frame.drop(columns=["price_local", "currency"], errors="ignore")


Embedder = Callable[[pd.DataFrame, "pd.DataFrame | None"], tuple[list[str], np.ndarray, np.ndarray, list[str | None]]]


def recorded_encoder(info: dict) -> dict | None:
    """The encoder record (``core.encoders.record``) a model's features_spec carries, if any."""
    return (info.get("features_spec") or {}).get("encoder")


def models_encoder(info: dict, classifiers: dict | None = None) -> dict | None:
    """The one encoder the published price model and classifiers were trained on (None when none
    records one: models trained before encoders were recorded). Raises EncoderMismatchError when
    two of them record different encoders — scoring could not serve both."""
    from .encoders.record import EncoderMismatchError, differences

    records = [("the published price model", recorded_encoder(info))]
    records += [(f"the published {classifier_name(t, r)}", recorded_encoder(ci))
                for (t, r), (_, ci) in sorted((classifiers or {}).items())]
    known = [(name, rec) for name, rec in records if rec]
    if not known:
        return None
    first_name, first = known[0]
    for name, rec in known[1:]:
        diff = differences(first, rec)
        if diff:
            raise EncoderMismatchError(f"{first_name} and {name} were trained on different encoders "
                                       f"({'; '.join(diff)}); retrain and publish them on the same embeddings")
    return first


def encoder_embedder(backend: str | None = None, batch_size: int = 32, record: dict | None = None,
                     cache_dir: str | os.PathLike | None = None, **options) -> Embedder:
    """Embeddings for listings with the encoder stage's own backend, text building and image
    decoding, so a listing's vectors are computed exactly like a catalogue product's.

    ``record`` (see ``models_encoder``): build the encoder the models were trained on (its backend
    and options; ``options`` given here override, e.g. ``device``) and raise EncoderMismatchError
    when the loaded encoder is another one; ``backend`` defaults to the record's, else "offline".
    The default batch of 32 was the fastest for both offline encoders on 2 CPU cores (1,000 catalogue
    listings, bf16: images ~31 s vs ~46 s per 10k at 64 and ~40 s at 16; texts ~45 s vs ~52 s at 64).
    ``cache_dir``: the embedding stage's content-addressed cache (``core.encoders.cache``): a text or
    image file whose bytes that encoder embedded before is read from it, and new vectors are added —
    the listing evaluation's photos are the catalogue's; a photo the stage keyed (its ``image_keys.parquet``)
    and unchanged since is looked up by that key without being read.

    Returns a function: listings -> (ids, image [n, d] (NaN rows where no image could be used),
    text [n, d], and per row the image error (None when the image was embedded)). Its ``encoder``
    attribute is the record of the encoder it runs (``core.encoders.record.encoder_record``); ``counts``
    says how many texts / images it encoded and how many came from the cache; ``encode_texts`` (texts ->
    [n, d], NaN rows for empty texts) encodes any texts with the same encoder, memo and cache (the price
    model's title vectors, ``core.pricing.features.title_texts``).
    """
    import torch

    from .encoders import build_backend
    from .encoders.base import short_text_batch
    from .encoders.images import ImageBytes, decode_image, read_image_bytes
    from .encoders.record import EncoderMismatchError, check_encoder, encoder_record
    from .encoders.product_text import build_texts, text_sha256

    if record is not None:
        if backend is not None and backend != record["backend"]:
            raise EncoderMismatchError(f"encoder backend {backend!r} requested, but the models were trained on "
                                       f"{record['backend']!r} embeddings")
        backend, options = record["backend"], {**record.get("options", {}), **options}
    be = build_backend(backend or "offline", **options)
    if record is not None:
        check_encoder(record, be.describe(), "the published models")
    transform = be.image_transform()
    # Within one embedder, a text or an image file seen before is not encoded again (the listing
    # evaluation scores the same products in several forms; a listings file may repeat a photo).
    text_memo: dict[str, np.ndarray] = {}
    image_memo: dict[str, tuple[np.ndarray | None, str | None]] = {}

    caches = None
    if cache_dir is not None:  # the embedding stage's content-addressed caches for this encoder
        from .encoders.cache import EmbeddingCache
        from .encoders.pipeline import IMAGE_KEY_KIND, image_key_memo

        caches = {"text": EmbeddingCache(cache_dir, "text", be.text.identity, be.text.dim),
                  "image": EmbeddingCache(cache_dir, "image", be.image.identity, be.image.dim)}
        # The embedding stage's photo keys: a photo it keyed, unchanged since (size and mtime), is looked up
        # in the cache by that key without being read (on the development data's shared folder a read costs
        # ~1 ms a photo: ~4 s for the listing evaluation's test photos); it is read only when its vector is
        # not there.
        key_memo = image_key_memo(cache_dir)
    embed_counts = {"text_encoded": 0, "text_from_cache": 0, "image_encoded": 0, "image_from_cache": 0,
                    "image_keys_from_memo": 0}

    def photo(path) -> ImageBytes:
        """The photo's bytes and key, or only its key when the stage's memo knows it (``data`` None)."""
        if caches is not None and isinstance(path, (str, os.PathLike)) and str(path).strip():
            sha = key_memo.known(IMAGE_KEY_KIND, path)
            if sha is not None:
                embed_counts["image_keys_from_memo"] += 1
                return ImageBytes(None, sha, None)
        return read_image_bytes(path)

    def encode_texts(texts: list[str]) -> np.ndarray:
        """[len(texts), d] vectors of ``texts`` (NaN rows for empty ones), each distinct text encoded once
        per embedder and looked up in the stage's cache first."""
        out = np.full((len(texts), be.text.dim), np.nan, dtype=np.float32)
        # Longest first, as the embedding stage does: each batch holds texts of similar length and
        # pads little. Measured: listing texts without attributes (half under 64 tokens) encode ~20%
        # faster than in alphabetical order; with extracted attributes most reach the 64-token cap
        # and the order makes no difference.
        todo = sorted({t for t in texts if t and t not in text_memo}, key=lambda t: (-len(t), t))
        key_of = {t: text_sha256(t) for t in todo} if caches is not None else {}
        if key_of:
            hits = caches["text"].get_many(key_of.values())
            text_memo.update({t: hits[k] for t, k in key_of.items() if k in hits})
            embed_counts["text_from_cache"] += len(hits)
            todo = [t for t in todo if t not in text_memo]
        s = 0
        while s < len(todo):
            # Short texts (titles) in wider chunks: their cost is mostly per call (`short_text_batch`).
            chunk = todo[s : s + short_text_batch(len(todo[s]), base=batch_size)]
            s += len(chunk)
            vecs = be.encode_text_batch(chunk)
            text_memo.update(zip(chunk, vecs))
            if caches is not None:
                caches["text"].put_many([key_of[t] for t in chunk], vecs)
        embed_counts["text_encoded"] += len(todo)
        for i, t in enumerate(texts):
            if t:
                out[i] = text_memo[t]
        return out

    def embed(products: pd.DataFrame, attributes: pd.DataFrame | None):
        n = len(products)
        text = encode_texts(build_texts(products, attributes))
        image = np.full((n, be.image.dim), np.nan, dtype=np.float32)
        paths = list(products["image_path"]) if "image_path" in products else [None] * n
        raws = {str(p): photo(p) for p in dict.fromkeys(paths) if str(p) not in image_memo}
        hits = caches["image"].get_many({r.sha256 for r in raws.values() if r.sha256}) if caches and raws else {}
        embed_counts["image_from_cache"] += len(hits)
        pixels, keys = [], []
        for key, raw in raws.items():
            if raw.error:
                image_memo[key] = (None, raw.error)
            elif raw.sha256 in hits:  # these very bytes were embedded before by this encoder
                image_memo[key] = (hits[raw.sha256], None)
            else:
                if raw.data is None:  # keyed by the memo, but its vector is not cached: read it now
                    raw = raws[key] = read_image_bytes(key)
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
            if caches is not None:
                caches["image"].put_many([raws[k].sha256 for k in keys[s : s + batch_size]], vecs)
        embed_counts["image_encoded"] += len(keys)
        errors: list[str | None] = []
        for i, path in enumerate(paths):
            vec, err = image_memo[str(path)]
            errors.append(err)
            if vec is not None:
                image[i] = vec
        return products["product_id"].tolist(), image, text, errors

    embed.encoder = encoder_record(be.describe())  # what a model trained on these vectors records
    embed.counts = embed_counts  # encoded vs served from the cache, so far
    embed.encode_texts = encode_texts  # any texts (the price model's title vectors), with the same memo and cache
    return embed


def comparables_index_for(store, price_model_version: str | None, embedder) -> tuple[Any, str]:
    """The comparables index built for the published price model, loaded once per run, and a note;
    None (with the reason in the note) when there is none, or when it was built from another
    encoder's embeddings than ``embedder`` gives (its neighbours would be meaningless)."""
    from . import comparables
    from .encoders.record import differences

    index, index_info, note = comparables.load_for_price_model(store, price_model_version)
    built_on, listings_on = recorded_encoder(index_info or {}), getattr(embedder, "encoder", None)
    diff = differences(built_on, listings_on) if index is not None and built_on and listings_on else []
    if diff:
        return None, f"not used: built from other embeddings ({'; '.join(diff)})"
    return index, note


def listing_extractor(store, brands=(), max_chars: int = 2000
                      ) -> tuple[Callable[[pd.DataFrame], pd.DataFrame], str]:
    """Attribute extraction for listings, with the extraction stage's CPU backend: the published
    learned model (`attribute_extractor`) when the store has an intact one, else the rules.

    Returns (extract, note); the note names the backend, or why the learned model was not used
    (missing, or a damaged file named in the message). ``extract`` extracts each distinct (title,
    description) once for as long as it lives (the listing evaluation scores the same texts in several
    listing forms; a listings file may repeat a listing): its ``counts`` say how many distinct texts
    were extracted and how many listings were answered from a text extracted before."""
    from .extraction.learned import LearnedAttributeModel
    from .extraction.pipeline import Extractor, ProductText
    from .extraction.rules import RulesExtractor

    learned, note = None, "learned"
    try:
        learned, info = store.load(EXTRACTOR_MODEL)
        if not isinstance(learned, LearnedAttributeModel):
            raise ModelCorruptError(f"{EXTRACTOR_MODEL} {info.get('version')} is not a learned attribute model")
        note = f"learned ({EXTRACTOR_MODEL} {info.get('version')})"
    except ModelNotFoundError:
        note = f"rules (no published {EXTRACTOR_MODEL} in {store.root}: materialize it for the learned extractor)"
    except ModelCorruptError as e:
        note = f"rules ({EXTRACTOR_MODEL} unusable: {e})"
    runner = Extractor(RulesExtractor(brands), learned=learned, max_description_chars=max_chars)
    # (title, description) -> attribute columns. What the runner returns depends on nothing else:
    # no catalogue brand is given for a listing, and the runner's models and brand list are fixed.
    memo: dict[tuple[str, str], dict] = {}
    counts = {"extracted": 0, "remembered": 0}

    def extract(products: pd.DataFrame) -> pd.DataFrame:
        texts = [(_s(title), _s(desc)) for title, desc in zip(products["title"], products["description"])]
        todo = [t for t in dict.fromkeys(texts) if t not in memo]
        results, _ = runner.run([ProductText(str(i), title, desc) for i, (title, desc) in enumerate(todo)])
        for t, r in zip(todo, results):
            memo[t] = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.attributes.to_dict().items()}
        counts["extracted"] += len(todo)
        counts["remembered"] += len(texts) - len(todo)
        return pd.DataFrame([{"product_id": pid, **memo[t]} for pid, t in zip(products["product_id"], texts)])

    extract.counts = counts
    return extract, note


@dataclass
class Serving:
    """What scoring listings needs besides the price model, loaded once per run: the published
    classifiers, the embedder of the encoder the models record, the listing attribute extractor and
    the comparables index. ``notes`` say per stage what is used or why not; ``warnings`` are what a
    user should be told (the CLI prints them, the asset logs them)."""

    classifiers: dict = field(default_factory=dict)
    embedder: Any = None
    extractor: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    index: Any = None
    notes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def load_serving(store, model, info: dict, *, classify: bool = True, embed: bool = True, extract: bool = True,
                 comparables_k: int = COMPARABLES_K, encoder_backend: str | None = None) -> Serving:
    """Everything `score_listings` serves beside the published price model (``model``, ``info``).

    Raises `encoders.record.EncoderMismatchError` when the encoder asked for (``encoder_backend``)
    or the models' records disagree: scoring with other embeddings than the models learned from is
    refused. Everything else missing degrades, with a note and a warning: no classifiers (the
    listings' own values), no encoder stage (text and metadata only), no learned extractor (rules),
    no comparables index."""
    out = Serving(notes={"classifiers": "off", "embeddings": "off", "attributes": "off"})
    if classify:
        out.classifiers = load_published_classifiers(store)
        out.notes["classifiers"] = f"{len(out.classifiers)} published"
        if not out.classifiers:
            out.notes["classifiers"] = f"none published: materialize '{CLASSIFIER_ASSET}'"
            out.warnings.append(f"no published classifiers in {getattr(store, 'root', '?')}; category / gender / usage "
                                f"are taken from the listings as given (materialize '{CLASSIFIER_ASSET}' to predict them)")
    if embed:
        try:
            record = models_encoder(info, out.classifiers)
            out.embedder = encoder_embedder(encoder_backend, record=record)
        except ImportError as e:  # the encoder stage is not installed: price from text + metadata, and say so
            out.notes["embeddings"] = f"unavailable: {e}"
            out.warnings.append(f"no embeddings ({e}); prices use text and metadata only")
        else:
            out.notes["embeddings"] = (f"{record['backend']}, as the published models record" if record else
                                       "the published models record no encoder (older version): unchecked")
            if record is None:
                out.warnings.append("the published models record no encoder (trained by an older version); "
                                    f"embedding with {encoder_backend or 'offline'!r}, unchecked")
    if extract:
        out.extractor, out.notes["attributes"] = listing_extractor(store, model.known_brands())
        if not out.notes["attributes"].startswith("learned"):
            out.warnings.append(f"attribute extraction with {out.notes['attributes']}")
    if comparables_k <= 0:
        out.notes["comparables"] = "disabled (k = 0)"
    elif out.embedder is None:
        out.notes["comparables"] = "not loaded: listings are not embedded"
    else:
        try:
            out.index, out.notes["comparables"] = comparables_index_for(store, info.get("version"), out.embedder)
        except ImportError as e:  # faiss is a main dependency; a broken install still gets one line
            out.notes["comparables"] = f"unavailable: {e}"
        if out.index is None:
            out.warnings.append(f"no comparables: {out.notes['comparables']}")
    return out


# The columns `_flags` reads.
FLAG_INPUTS = ("image_path", "title", "description", "category", "asking_price_invalid", "asking_price_usd",
               "price_clipped", "price_abstained")


def _flags(row: dict, image_error: str | None, price_range: tuple[float, float] | None) -> str:
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
    if bool(row.get("asking_price_invalid")):
        f.append(INVALID_ASKING_PRICE)
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
            f"(e.g. `dg launch --assets '+{PRICE_MODEL_ASSET}' -m fashion_pipeline.definitions`)."
        )
    model, info = store.load(PRICE_MODEL_NAME)
    if not hasattr(model, "forms"):
        raise NoPublishedModelError(
            f"The published '{PRICE_MODEL_NAME}' {info.get('version')} is a {type(model).__name__}, trained by an "
            f"older version that priced catalogue rows, not listings. Re-materialize '{PRICE_MODEL_ASSET}'."
        )
    return model, info


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
    from .features import CLASSIFIER_ATTRIBUTE_COLUMNS
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
        for c in (*LIST_ATTRIBUTE_COLUMNS, *CLASSIFIER_ATTRIBUTE_COLUMNS):  # what the classifiers' featurizer reads
            if c in a.columns:
                frame[c] = a[c].to_numpy()
    ids, image, text = embeddings if embeddings is not None else (list(frame["product_id"]), None, None)
    frame = with_embeddings(frame, ids, image, text)
    if has_image is None:
        has_image = [v is not None for v in frame["image_embedding"]]
    wanted = [listing_regime(t, d, h) for t, d, h in zip(frame["title"], frame["description"], has_image)]
    # The tasks' classifiers usually serve the same rows per regime: one sub-frame per set of rows, and
    # one feature transform per featurizer they share (features.shared_transform).
    parts: dict[bytes, pd.DataFrame] = {}
    memo: dict = {}
    for task in CLASSIFIER_TASKS:
        served = [next((r for r in REGIME_PREFERENCE[w] if (task, r) in classifiers), None) if w else None
                  for w in wanted]
        for regime in sorted({r for r in served if r}):
            rows = np.array([r == regime for r in served])
            clf, _ = classifiers[(task, regime)]
            key = rows.tobytes()
            if key not in parts:
                parts[key] = frame.loc[rows]
            part = parts[key]
            pred = clf.predict(part, memo=memo)
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
    `load_published_classifiers`. Any may be None: the listing is then scored with what it has
    (text features and the metadata it states), and the output says so in the flags and counts.

    ``comparables_index`` (a `core.comparables.ComparablesIndex`, see `load_for_price_model`) is
    searched for the ``comparables_k`` most similar catalogue products per embedded listing.

    The same as `price_listing_reads` of `listing_reads`: a caller pricing the same listings with
    several price models reads them once.
    """
    return price_listing_reads(listing_reads(listings, embedder, extractor, classifiers), price_model, model_info,
                               comparables_index, comparables_k)


@dataclass(frozen=True)
class ListingReads:
    """What scoring reads from listings before a price model sees them (`listing_reads`): the cleaned
    rows with the classifiers' values filled in, the extracted attributes, the embeddings, each
    listing's image error and the classifier columns. It depends on the listings, the embedder, the
    extractor and the classifiers, not on the price model. `price_listing_reads` does not modify it."""
    frame: pd.DataFrame
    attributes: pd.DataFrame | None
    embeddings: tuple | None
    image_errors: list
    predicted: pd.DataFrame
    embedded: bool
    classifiers_published: int
    # Title vectors (`features.title_texts`) of the listings without a description (the sparse form's),
    # NaN rows for the others; None without an embedder.
    title_text: np.ndarray | None = None


def listing_reads(
    listings: pd.DataFrame,
    embedder: Embedder | None = None,
    extractor: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    classifiers: dict | None = None,
) -> ListingReads:
    """The first half of `score_listings`: clean the asking prices, extract attributes, embed, classify."""
    df = listings.reset_index(drop=True).copy()
    for col in ("title", "description", "image_path", "category", "gender", "usage", "brand", "colour", "source"):
        if col not in df.columns:
            df[col] = None
    if "asking_price_usd" not in df.columns:
        df["asking_price_usd"] = np.nan
    # Zero, negative, non-numeric or infinite asking prices are nulled and flagged, never used.
    asking = [_asking_price(v) for v in df["asking_price_usd"]]
    given_invalid = (df["asking_price_invalid"].map(lambda v: bool(v) if pd.notna(v) else False).to_numpy(dtype=bool)
                     if "asking_price_invalid" in df.columns else np.zeros(len(df), dtype=bool))
    df["asking_price_usd"] = pd.Series([a for a, _ in asking], index=df.index, dtype=float)
    df["asking_price_invalid"] = given_invalid | np.array([bad for _, bad in asking], dtype=bool)
    attributes = extractor(df) if extractor is not None and len(df) else None
    image_errors: list[str | None] = [None] * len(df)
    embeddings = title_text = None
    if embedder is not None and len(df):
        ids, image, text, image_errors = embedder(df, attributes)
        embeddings = (ids, image, text)
        # Only the rows the sparse form prices: a listing with a description is priced by the full form.
        titled = [t if not _s(d) else "" for t, d in zip(title_texts(df["title"]), df["description"])]
        title_text = embedder.encode_texts(titled) if hasattr(embedder, "encode_texts") else None
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
    return ListingReads(df, attributes, embeddings, image_errors, predicted, embedder is not None,
                        len(classifiers or {}), title_text)


def price_listing_reads(
    read: ListingReads,
    price_model,
    model_info: dict | None = None,
    comparables_index=None,
    comparables_k: int = COMPARABLES_K,
) -> tuple[pd.DataFrame, dict]:
    """The second half of `score_listings`: price read listings, flag them, find comparables."""
    df, attributes, embeddings, image_errors, predicted = (read.frame, read.attributes, read.embeddings,
                                                           read.image_errors, read.predicted)
    # The price model reads extracted attributes only if it was trained with them (features_spec);
    # giving attribute words to a model trained without them would be train/serve skew.
    spec = (model_info or {}).get("features_spec") or {}
    uses_attributes = bool(spec.get("uses_attributes"))
    # Likewise the title vectors: only a model whose sparse form was trained on them gets them.
    title_text = read.title_text if spec.get("sparse_text") == SPARSE_TEXT else None
    inputs = build_price_inputs(df, embeddings, attributes if uses_attributes else None, title_text)
    pred = price_model.predict(inputs)
    out = inputs.frame.copy()
    out["listing_id"] = out["product_id"]
    for c in pred.columns:
        out[c] = pred[c].to_numpy()
    for c in predicted.columns:
        out[c] = predicted[c].to_numpy()
    for c in SCORED_ATTRIBUTE_COLUMNS:
        out[c] = None
    if attributes is not None and len(attributes):
        a = attributes.drop_duplicates("product_id").set_index("product_id").reindex(out["product_id"])
        for c in SCORED_ATTRIBUTE_COLUMNS:
            if c in a.columns:
                out[c] = a[c].to_numpy()
    price_range = getattr(price_model, "price_range_", None)
    trained_with_embeddings = str(((model_info or {}).get("features_spec") or {}).get("embeddings", "")).startswith("read")
    # Rows as dicts (`_flags` reads them with .get): iterrows built a Series per listing, ~45 us each; only
    # the columns it reads (a column the frame lacks stays absent: .get gives None, as before).
    flag_rows = out[[c for c in FLAG_INPUTS if c in out.columns]].to_dict("records")
    out["flags"] = pd.Series([_flags(r, e, price_range) for r, e in zip(flag_rows, image_errors)],
                             index=out.index, dtype=object)
    if not read.embedded and trained_with_embeddings and len(out):
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
                 INVALID_ASKING_PRICE, ASKING_PRICE_OUTSIDE_RANGE, PRICE_CLIPPED, PRICE_ABSTAINED_NO_INPUT, PRICE_ABSTAINED_WIDE,
                 PRICE_ABSTAINED_NO_MODEL,
                 NO_EMBEDDINGS, NOT_CLASSIFIED):
        counts[flag] = sum(flag in fs.split(";") for fs in out["flags"])
    counts["embedded"] = read.embedded
    counts["attributes_extracted"] = attributes is not None
    counts["classifiers_published"] = read.classifiers_published
    counts["classified_by_regime"] = {str(k): int(v) for k, v in out["classifier_regime"].value_counts().items()}
    counts["comparables"] = cmp_counts
    counts["priced_by_form"] = {str(k): int(v) for k, v in out.loc[out["price_usd"].notna(), "price_form"]
                                .value_counts().items()}
    return out[list(OUTPUT_COLUMNS)], counts


def write_scores(scores: pd.DataFrame, output: str | os.PathLike) -> Path:
    """Parquet or CSV by suffix, written atomically (core.atomic: temp name, fsync, os.replace)."""
    out = Path(output)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"{out}: output must end in .parquet or .csv")
    with atomic_output(out) as tmp:
        if out.suffix.lower() == ".csv":
            scores.to_csv(tmp, index=False)
        else:
            scores.to_parquet(tmp, index=False)
    return out
