"""H&M Personalized Fashion Recommendations in its download layout.

    <root>/articles.csv                 25 columns; article_id keeps its leading zero
    <root>/transactions_train.csv       t_dat, customer_id, article_id, price, sales_channel_id
    <root>/images/<first 3 digits>/<article_id>.jpg
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from fashion_pipeline.core.readers.common import DataRootError, MissingColumnError, read_csv_rows
from fashion_pipeline.core.readers.file_memo import FileMemo
from fashion_pipeline.core.readers.images import check_images
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline.core.text_cleaning import normalise_space, strip_html

ARTICLE_COLUMNS = [
    "article_id", "product_code", "prod_name", "product_type_name", "product_group_name",
    "colour_group_name", "index_name", "index_group_name", "section_name",
    "garment_group_name", "detail_desc",
]
REQUIRED_ARTICLE_COLUMNS = ["article_id", "product_code", "prod_name", "product_type_name", "product_group_name"]
# Required even when the caller keeps unlabelled rows (scoring new listings): product_code
# defaults to the article id's first 7 digits, and the label columns may be absent.
REQUIRED_UNLABELLED_COLUMNS = ["article_id", "prod_name"]
TRANSACTION_COLUMNS = ["article_id", "price"]
ARTICLE_ID_WIDTH = 10


@dataclass(frozen=True)
class HMLayout:
    root: Path

    @property
    def articles_csv(self) -> Path:
        return self.root / "articles.csv"

    @property
    def transactions_csv(self) -> Path:
        return self.root / "transactions_train.csv"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image_path(self, article_id: str) -> Path:
        return self.images_dir / article_id[:3] / f"{article_id}.jpg"

    def validate(self) -> None:
        if not self.root.is_dir():
            raise DataRootError(f"H&M data folder not found: {self.root}")
        if not self.articles_csv.is_file():
            raise DataRootError(
                f"{self.articles_csv} not found: expected the H&M Kaggle layout "
                "(articles.csv, transactions_train.csv, images/0XX/<article_id>.jpg)"
            )


def normalise_article_id(value: object) -> str | None:
    """'111565001' and '0111565001' are the same article; anything non-numeric is None."""
    text = str(value).strip() if value is not None else ""
    if not text.isdigit() or len(text) > ARTICLE_ID_WIDTH:
        return None
    return text.zfill(ARTICLE_ID_WIDTH)


def read_hm_articles(root: Path, report: DropReport, check_image_files: bool = True,
                     keep_unlabelled: bool = False, memo: FileMemo | None = None) -> pd.DataFrame:
    """One row per usable articles.csv row (bad or repeated ids dropped and counted).

    ``keep_unlabelled`` (scoring new listings): product_code and the label columns
    (product_type_name, product_group_name) are optional; missing ones read as null. The
    pipeline's ingest leaves it False. ``memo``: images unchanged since the last check are not
    decoded again (core.readers.file_memo).
    """
    layout = HMLayout(Path(root))
    layout.validate()
    required = REQUIRED_UNLABELLED_COLUMNS if keep_unlabelled else REQUIRED_ARTICLE_COLUMNS
    _, rows = read_csv_rows(layout.articles_csv, required, report)
    records: list[dict] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        aid = normalise_article_id(row.get("article_id"))
        if aid is None:
            report.add("bad_id", row.get("article_id") or f"row {i + 2}")
            continue
        if aid in seen:
            report.add("duplicate_id", aid)
            continue
        seen.add(aid)
        rec = {c: normalise_space(row.get(c)) or None for c in ARTICLE_COLUMNS}
        rec["article_id"] = aid
        rec["product_code"] = rec["product_code"] or aid[:7]
        rec["detail_desc"] = strip_html(row.get("detail_desc"))
        rec["prod_name"] = rec["prod_name"] or ""
        rec["image_path"] = str(layout.image_path(aid))
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=ARTICLE_COLUMNS + ["image_path"])
    if check_image_files and len(df):
        df["image_path"] = check_images(df["image_path"].tolist(), report, memo=memo)
    return df


def _csv_header(path: Path) -> tuple[list[str], str]:
    """The header's column names and the file's encoding as DuckDB names it."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    encoding = "utf-16" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8"
    text = head.decode("utf-16" if encoding == "utf-16" else "utf-8-sig", errors="replace")
    first = text.split("\n", 1)[0].rstrip("\r").replace("\x00", "")
    try:
        names = [h.strip() for h in next(csv.reader([first]), [])]
    except csv.Error as exc:
        raise MissingColumnError(f"{path}: unreadable header row ({exc})") from None
    return names, encoding


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_hm_prices(
    root: Path, known_article_ids: pd.Series, report: DropReport,
    memory_limit: str | None = None, temp_directory: str | Path | None = None, threads: int | None = None,
) -> pd.DataFrame:
    """One price per article: the **median** of its transaction prices.

    The median, not the mean, because H&M transactions include sale prices; the median is the
    price most customers paid and is robust to a few markdowns. Scans with DuckDB so a full
    31M-row download is a few seconds, not minutes. Counted, never fatal: unparseable lines
    (``tx_malformed_row``), non-numeric prices (``tx_non_numeric_price``), non-positive prices
    (``tx_non_positive_price``), bad article ids (``tx_bad_article_id``) and transactions
    for articles not in articles.csv (``tx_unknown_article``). A missing file means no prices
    (counted as ``tx_file_missing``): articles are still usable for classification.

    The CSV dialect is fixed (comma, no quoting: the download quotes nothing), not sniffed, so a
    damaged line can neither change how the whole file is read nor, through a stray quote, swallow
    the lines after it. ``memory_limit`` (DuckDB syntax, e.g. ``'2GB'``) caps the scan's memory;
    above it DuckDB spills to ``temp_directory`` (default: the system temporary folder), so a
    file larger than memory still aggregates.
    """
    layout = HMLayout(Path(root))
    empty = pd.DataFrame({"article_id": pd.Series(dtype=str), "price_median": pd.Series(dtype=float),
                          "n_transactions": pd.Series(dtype="int64")})
    if not layout.transactions_csv.is_file():
        report.add("tx_file_missing", layout.transactions_csv)
        return empty
    path = str(layout.transactions_csv)
    header, encoding = _csv_header(layout.transactions_csv)
    missing = [c for c in TRANSACTION_COLUMNS if c not in header]
    if missing:
        raise MissingColumnError(f"{path}: required column(s) {missing} missing; found columns {header[:40]}")
    # Unnamed or repeated header cells still need distinct names for DuckDB.
    names = [h if h and h not in header[:i] else f"column{i}" for i, h in enumerate(header)]
    columns = "{" + ", ".join(f"{_sql_str(c)}: 'VARCHAR'" for c in names) + "}"
    con = duckdb.connect()
    try:
        if memory_limit:
            con.execute(f"SET memory_limit = {_sql_str(memory_limit)}")
        con.execute(f"SET temp_directory = {_sql_str(str(temp_directory or tempfile.gettempdir()))}")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.execute("SET preserve_insertion_order = false")  # lets the scan stream within the limit
        con.execute(
            f"""CREATE TEMP TABLE txn AS SELECT
                  CASE WHEN regexp_full_match(trim(article_id), '[0-9]{{1,{ARTICLE_ID_WIDTH}}}')
                       THEN lpad(trim(article_id), {ARTICLE_ID_WIDTH}, '0') END AS aid,
                  TRY_CAST(trim(price) AS DOUBLE) AS p
                FROM read_csv(?, header=true, auto_detect=false, delim=',', quote='', escape='',
                              columns={columns}, encoding='{encoding}', strict_mode=false,
                              ignore_errors=true, store_rejects=true, rejects_table='tx_rejects',
                              rejects_scan='tx_scan', parallel=false)""",
            [path],
        )
        n_rejected = con.execute("SELECT count(DISTINCT line) FROM tx_rejects").fetchall()[0][0]
        if n_rejected:
            report.add("tx_malformed_row", path, n=int(n_rejected))
        con.register("known", pd.DataFrame({"article_id": known_article_ids.astype(str)}))
        counts = con.execute(
            """SELECT
                 count(*) FILTER (WHERE aid IS NULL),
                 count(*) FILTER (WHERE aid IS NOT NULL AND (p IS NULL OR isnan(p) OR isinf(p))),
                 count(*) FILTER (WHERE aid IS NOT NULL AND p IS NOT NULL AND NOT isnan(p)
                                  AND NOT isinf(p) AND p <= 0),
                 count(*) FILTER (WHERE aid IS NOT NULL AND aid NOT IN (SELECT article_id FROM known))
               FROM txn"""
        ).fetchall()[0]
        for reason, n in zip(
            ["tx_bad_article_id", "tx_non_numeric_price", "tx_non_positive_price", "tx_unknown_article"], counts
        ):
            if n:
                report.add(reason, n=int(n))
        prices = con.execute(
            """SELECT aid AS article_id, median(p) AS price_median, count(*) AS n_transactions
               FROM txn
               WHERE aid IN (SELECT article_id FROM known) AND p > 0 AND NOT isnan(p) AND NOT isinf(p)
               GROUP BY aid ORDER BY aid"""
        ).df()
    finally:
        con.close()
    return prices if len(prices) else empty
