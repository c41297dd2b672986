"""A CSV reader that survives real-world damage and counts every row it cannot use."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
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


def _lines_without_nul(handle: io.TextIOBase, report: DropReport) -> Iterator[str]:
    for line in handle:
        if "\x00" in line:
            report.add("nul_bytes_removed")
            line = line.replace("\x00", "")
        yield line


def read_csv_rows(
    path: Path,
    required: list[str],
    report: DropReport,
    merge_extra_into: str | None = None,
) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV file into dicts of strings, never raising on a bad row.

    - Missing file or missing required column: raises with the path / column named.
    - Undecodable bytes are replaced (counted as ``encoding_repaired``), NUL bytes removed.
    - A row with more fields than the header: if ``merge_extra_into`` names the last column
      (Kaggle's styles.csv has unquoted commas in productDisplayName), the surplus is joined
      back into it and counted as ``extra_commas_repaired``; otherwise rejected as
      ``malformed_row``. A row with too few fields, or that the csv module cannot parse, is
      rejected as ``malformed_row``. Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataRootError(f"expected file not found: {path}")
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
        report.add("encoding_repaired", path.name, n=text.count("\ufffd"))
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(_lines_without_nul(io.StringIO(text, newline=""), report))
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error) as exc:
        raise MissingColumnError(f"{path}: no header row ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise MissingColumnError(
            f"{path}: required column(s) {missing} missing; found columns {header}"
        )
    n = len(header)
    merge_idx = header.index(merge_extra_into) if merge_extra_into in header else None
    rows: list[dict[str, str]] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            report.add("malformed_row", f"line {reader.line_num}: {exc}")
            continue
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) > n and merge_idx == n - 1:
            fields = fields[: n - 1] + [",".join(fields[n - 1 :])]
            report.add("extra_commas_repaired", f"line {reader.line_num}")
        if len(fields) != n:
            report.add("malformed_row", f"line {reader.line_num}: {len(fields)} fields, expected {n}")
            continue
        rows.append(dict(zip(header, fields)))
    return header, rows
