"""A CSV reader that survives real-world damage and counts every row it cannot use."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from fashion_pipeline.core.reports import DropReport

# Real descriptions can be long; the csv module's default 128 KiB field limit is not a good
# reason to lose a row. Fields beyond this are still rejected (counted), never a crash.
FIELD_SIZE_LIMIT = 8 * 1024 * 1024
csv.field_size_limit(min(sys.maxsize, FIELD_SIZE_LIMIT))


class DataRootError(FileNotFoundError):
    """A configured data path does not exist or is not laid out as the dataset's download."""


class MissingColumnError(ValueError):
    """A required column is absent from a source file."""


def decode_text(raw: bytes, report: DropReport, name: str) -> str:
    """Bytes to text: UTF-8 (BOM or not), or UTF-16 when the file starts with its BOM.

    Undecodable bytes become U+FFFD and are counted as ``encoding_repaired``.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16", errors="replace")
        if "\ufffd" in text:
            report.add("encoding_repaired", name, n=text.count("\ufffd"))
        return text
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
        report.add("encoding_repaired", name, n=text.count("\ufffd"))
    return text[1:] if text.startswith("\ufeff") else text


def read_csv_rows(
    path: Path,
    required: list[str],
    report: DropReport,
    merge_extra_into: str | None = None,
) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV file into dicts of strings, never raising on a bad row.

    - Missing file or missing required column: raises with the path / column named.
    - Undecodable bytes are replaced (counted as ``encoding_repaired``), NUL bytes removed
      (``nul_bytes_removed``); a UTF-16 file (with its BOM) is decoded as such.
    - One physical line is one record. Neither dataset has quoted fields spanning lines (checked
      on the full H&M articles.csv; Kaggle's styles.csv is unquoted), and parsing line by line
      means a stray quote costs its own row instead of swallowing the rest of the file into one
      "field".
    - A row with more fields than the header: if ``merge_extra_into`` names the last column
      (Kaggle's styles.csv has unquoted commas in productDisplayName), the surplus is joined
      back into it and counted as ``extra_commas_repaired``; otherwise rejected as
      ``malformed_row``. A row with too few fields, or that the csv module cannot parse (an
      unterminated quote, a field over FIELD_SIZE_LIMIT), is rejected as ``malformed_row``.
      Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataRootError(f"expected file not found: {path}")
    text = decode_text(path.read_bytes(), report, path.name)
    lines = text.split("\n")

    def parse(line: str) -> list[str]:
        return next(csv.reader([line]), [])

    def clean(line: str) -> str:
        line = line[:-1] if line.endswith("\r") else line
        if "\x00" in line:
            report.add("nul_bytes_removed")
            line = line.replace("\x00", "")
        return line

    try:
        header = [h.strip() for h in parse(clean(lines[0]))]
    except csv.Error as exc:
        raise MissingColumnError(f"{path}: unreadable header row ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise MissingColumnError(
            f"{path}: required column(s) {missing} missing; found columns {header[:40]}"
        )
    n = len(header)
    merge_idx = header.index(merge_extra_into) if merge_extra_into in header else None
    rows: list[dict[str, str]] = []
    for line_num, line in enumerate(lines[1:], start=2):
        line = clean(line)
        if not line.strip():
            continue
        try:
            fields = parse(line)
        except csv.Error as exc:
            report.add("malformed_row", f"line {line_num}: {exc}")
            continue
        if len(fields) > n and merge_idx == n - 1:
            fields = fields[: n - 1] + [",".join(fields[n - 1 :])]
            report.add("extra_commas_repaired", f"line {line_num}")
        if len(fields) != n:
            report.add("malformed_row", f"line {line_num}: {len(fields)} fields, expected {n}")
            continue
        rows.append(dict(zip(header, fields)))
    return header, rows
