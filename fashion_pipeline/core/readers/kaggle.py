"""Kaggle "Fashion Product Images" (Myntra) in its download layout.

    <root>/styles.csv          10 columns: id, gender, masterCategory, subCategory, articleType,
                               baseColour, season, year, usage, productDisplayName
    <root>/styles/<id>.json    optional (absent in the "small" download): price, discountedPrice,
                               brandName, ageGroup, articleAttributes, description HTML
    <root>/images/<id>.jpg
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fashion_pipeline.core.readers.common import DataRootError, read_csv_rows
from fashion_pipeline.core.readers.file_memo import FileMemo
from fashion_pipeline.core.readers.images import check_images
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline.core.text_cleaning import normalise_space, strip_html

STYLES_COLUMNS = [
    "id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season",
    "year", "usage", "productDisplayName",
]
REQUIRED_COLUMNS = ["id", "masterCategory", "subCategory", "articleType", "productDisplayName"]
# The label columns; optional when the caller keeps unlabelled rows (scoring new listings).
LABEL_COLUMNS = ["masterCategory", "subCategory", "articleType"]

KAGGLE_COLUMNS = [
    "id", "gender", "master_category", "sub_category", "article_type", "colour", "season",
    "year", "usage", "title", "price_raw", "discounted_price_raw", "brand", "age_group",
    "article_attributes", "description", "json_status", "image_path",
]


@dataclass(frozen=True)
class KaggleLayout:
    root: Path

    @property
    def styles_csv(self) -> Path:
        return self.root / "styles.csv"

    @property
    def styles_dir(self) -> Path:
        return self.root / "styles"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image_path(self, product_id: str) -> Path:
        return self.images_dir / f"{product_id}.jpg"

    def validate(self) -> None:
        if not self.root.is_dir():
            raise DataRootError(f"Kaggle data folder not found: {self.root}")
        if not self.styles_csv.is_file():
            raise DataRootError(
                f"{self.styles_csv} not found: expected the Kaggle 'Fashion Product Images' "
                "layout (styles.csv, styles/<id>.json, images/<id>.jpg)"
            )


def _json_fields(path: Path) -> tuple[str, dict]:
    """('ok' | 'missing' | 'invalid', fields) for one styles/<id>.json."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "missing", {}
    except OSError:
        return "invalid", {}
    try:
        doc = json.loads(raw.decode("utf-8", errors="replace"))
        data = doc["data"]
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: absurdly deep nesting
        return "invalid", {}

    def text(value: object) -> str | None:
        if value is None or isinstance(value, (dict, list)):
            return None
        value = normalise_space(str(value))
        return value or None

    descriptors = data.get("productDescriptors")
    description = ""
    if isinstance(descriptors, dict):
        desc = descriptors.get("description")
        if isinstance(desc, dict):
            description = strip_html(desc.get("value"))
    attrs = data.get("articleAttributes")
    attrs = {str(k): str(v) for k, v in attrs.items()} if isinstance(attrs, dict) else None
    return "ok", {
        "price_raw": text(data.get("price")),
        "discounted_price_raw": text(data.get("discountedPrice")),
        "brand": text(data.get("brandName")),
        "age_group": text(data.get("ageGroup")),
        "article_attributes": json.dumps(attrs, ensure_ascii=False, sort_keys=True) if attrs else None,
        "description": description,
    }


def read_kaggle_products(
    root: Path, report: DropReport, check_image_files: bool = True, log=None, keep_unlabelled: bool = False,
    memo: FileMemo | None = None,
) -> pd.DataFrame:
    """One row per usable styles.csv row, enriched from its JSON when the JSON exists.

    Rows are never dropped for a bad JSON or image: the row is kept and the problem counted
    (``json_invalid``, ``json_missing``, ``image_missing``, ``image_corrupt``). Rows whose id
    is not an integer (``bad_id``) or that repeat an id (``duplicate_id``) are dropped.

    ``keep_unlabelled`` (scoring new listings): the label columns (masterCategory, subCategory,
    articleType) are optional; a file without them reads with null labels. The pipeline's ingest
    leaves it False, so a styles.csv without its labels is an error there.

    ``memo`` (core.readers.file_memo): a product JSON or image unchanged since the last read is
    taken from it instead of being parsed / decoded again; the result is the same.
    """
    layout = KaggleLayout(Path(root))
    layout.validate()
    required = [c for c in REQUIRED_COLUMNS if not (keep_unlabelled and c in LABEL_COLUMNS)]
    _, rows = read_csv_rows(layout.styles_csv, required, report, merge_extra_into="productDisplayName")
    has_json_dir = layout.styles_dir.is_dir()
    records: list[dict] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        pid = row.get("id", "").strip()
        if not pid.isdigit():
            report.add("bad_id", pid or f"row {i + 2}")
            continue
        pid = str(int(pid))
        if pid in seen:
            report.add("duplicate_id", pid)
            continue
        seen.add(pid)
        rec = {
            "id": pid,
            "gender": normalise_space(row.get("gender")) or None,
            "master_category": normalise_space(row.get("masterCategory")) or None,
            "sub_category": normalise_space(row.get("subCategory")) or None,
            "article_type": normalise_space(row.get("articleType")) or None,
            "colour": normalise_space(row.get("baseColour")) or None,
            "season": normalise_space(row.get("season")) or None,
            "year": normalise_space(row.get("year")) or None,
            "usage": normalise_space(row.get("usage")) or None,
            "title": normalise_space(row.get("productDisplayName")),
            "price_raw": None, "discounted_price_raw": None, "brand": None, "age_group": None,
            "article_attributes": None, "description": "",
            "json_status": "no_json_dir",
            "image_path": str(layout.image_path(pid)),
        }
        if has_json_dir:
            path = layout.styles_dir / f"{pid}.json"
            status, fields = (_json_fields(path) if memo is None
                              else memo.lookup("json", path, lambda: list(_json_fields(path))))
            rec["json_status"] = status
            rec.update(fields)
            if status != "ok":
                report.add(f"json_{status}", pid)
        records.append(rec)
        if log and (i + 1) % 10000 == 0:
            log(f"kaggle: read {i + 1}/{len(rows)} rows")
    df = pd.DataFrame.from_records(records, columns=KAGGLE_COLUMNS)
    if check_image_files and len(df):
        df["image_path"] = check_images(df["image_path"].tolist(), report, memo=memo)
    return df
