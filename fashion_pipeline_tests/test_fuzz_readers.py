"""Property-based damage to the real sample files: every reader either counts what it rejects
or raises a clear, typed error; it never crashes and never loses a row that was not damaged.

Inputs are derived from the embedded sample (data/). Example counts are bounded so the file
runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashion_pipeline.core.readers import (
    DataRootError, MissingColumnError, read_hm_articles, read_hm_prices, read_kaggle_products,
)
from fashion_pipeline.core.readers.images import check_images, image_status
from fashion_pipeline.core.readers.kaggle import _json_fields
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline_tests.conftest import HM, KAGGLE, SAMPLE_ROOT

# 40 examples per property in CI; FASHION_FUZZ_EXAMPLES=500 for a deeper local search.
FUZZ = settings(max_examples=int(os.environ.get("FASHION_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

STYLES = (SAMPLE_ROOT / KAGGLE / "styles.csv").read_bytes()
ARTICLES = (SAMPLE_ROOT / HM / "articles.csv").read_bytes()
TRANSACTIONS = (SAMPLE_ROOT / HM / "transactions_train.csv").read_bytes()
JPEG = next(iter(sorted((SAMPLE_ROOT / KAGGLE / "images").glob("*.jpg")))).read_bytes()
JSON_DOC = next(iter(sorted((SAMPLE_ROOT / KAGGLE / "styles").glob("*.json")))).read_bytes()

# Errors a reader may raise on a file too damaged to read at all (its header): all typed.
CLEAR_ERRORS = (DataRootError, MissingColumnError)


def _lines(raw: bytes) -> list[bytes]:
    return raw.splitlines(keepends=True)


@st.composite
def damaged_line(draw, source: bytes) -> bytes:
    """One line of damage, built from a real line of ``source`` or from nothing."""
    real = draw(st.sampled_from(_lines(source)[1:]))
    text = real.decode("utf-8").rstrip("\r\n")
    kind = draw(st.sampled_from([
        "random", "latin1", "utf16", "nul", "extra_cols", "missing_cols", "quote", "huge", "header",
        "cut",
    ]))
    if kind == "random":
        body = draw(st.binary(min_size=1, max_size=120))
    elif kind == "latin1":
        body = (text + " Café Señora").encode("latin-1", errors="replace")
    elif kind == "utf16":
        body = text.encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"])))
    elif kind == "nul":
        pos = draw(st.integers(0, len(text)))
        body = (text[:pos] + "\x00" * draw(st.integers(1, 5)) + text[pos:]).encode()
    elif kind == "extra_cols":
        body = (text + ",x" * draw(st.integers(1, 30))).encode()
    elif kind == "missing_cols":
        fields = text.split(",")
        body = ",".join(fields[: draw(st.integers(0, max(0, len(fields) - 1)))]).encode()
    elif kind == "quote":
        pos = draw(st.integers(0, len(text)))
        body = (text[:pos] + draw(st.sampled_from(['"', '""', '"""', "'"])) + text[pos:]).encode()
    elif kind == "huge":
        body = (text + "x" * draw(st.integers(10_000, 200_000))).encode()
    elif kind == "header":
        body = _lines(source)[0].rstrip(b"\r\n")
    else:  # a line cut short, as by a truncated copy
        body = text[: draw(st.integers(0, len(text)))].encode()
    return body + draw(st.sampled_from([b"\n", b"\r\n", b""]))


def _write(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def _kaggle(folder: Path, styles: bytes) -> tuple[pd.DataFrame, DropReport]:
    """styles.csv alone (the 'small' download layout): the CSV reader is what is fuzzed here."""
    _write(folder, "styles.csv", styles)
    report = DropReport()
    return read_kaggle_products(folder, report, check_image_files=False), report


def _hm(folder: Path, articles: bytes) -> tuple[pd.DataFrame, DropReport]:
    _write(folder, "articles.csv", articles)
    report = DropReport()
    return read_hm_articles(folder, report, check_image_files=False), report


class Rows(dict):
    """Rows by id; a short repr keeps Hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} rows>"


def _rows_by_id(df: pd.DataFrame, key: str) -> Rows:
    # image_path is derived from the folder the copy lives in, not read from the file.
    df = df.drop(columns=["image_path"], errors="ignore")
    return Rows((r[key], r) for r in df.astype(object).where(df.notna(), None).to_dict("records"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def clean_kaggle(work):
    return _rows_by_id(_kaggle(work / "clean-kaggle", STYLES)[0], "id")


@pytest.fixture(scope="module")
def clean_hm(work):
    return _rows_by_id(_hm(work / "clean-hm", ARTICLES)[0], "article_id")


def _assert_kept(clean: dict[str, dict], got: dict[str, dict], except_ids: set[str] = frozenset()) -> None:
    lost = [k for k in clean if k not in except_ids and got.get(k) != clean[k]]
    assert not lost, f"{len(lost)} undamaged rows lost or altered, e.g. {lost[:3]}: {[got.get(k) for k in lost[:1]]}"


def _line_ids(raw_line: bytes, width: int | None = None) -> set[str]:
    """The ids a damaged line could legitimately claim (its first field, as the reader normalises it)."""
    first = raw_line.split(b",", 1)[0].decode("utf-8", "replace").replace("\x00", "").strip()
    ids = {first}
    if first.isdigit():
        ids |= {str(int(first)), first.zfill(width or 0)}
    return ids


# ------------------------------------------------------------------ Kaggle styles.csv

@FUZZ
@given(junk=st.lists(damaged_line(STYLES), min_size=1, max_size=6))
def test_styles_csv_appended_damage_is_counted_and_loses_no_good_row(work, clean_kaggle, junk):
    df, report = _kaggle(work / "k-append", STYLES + b"".join(junk))
    _assert_kept(clean_kaggle, _rows_by_id(df, "id"))
    if b"".join(junk).strip():                               # (blank lines are no rows: nothing to count)
        assert len(df) - len(clean_kaggle) + report.total >= 1   # the damage was either a row or counted


@FUZZ
@given(data=st.data())
def test_styles_csv_one_damaged_line_costs_at_most_that_row(work, clean_kaggle, data):
    lines = _lines(STYLES)
    i = data.draw(st.integers(1, len(lines) - 1))
    bad = data.draw(damaged_line(STYLES))
    if not bad.endswith(b"\n"):
        bad += b"\n"  # damage inside one line; a lost newline is the truncation test's business
    damaged = b"".join(lines[:i] + [bad] + lines[i + 1:])
    df, report = _kaggle(work / "k-one", damaged)
    victim = lines[i].split(b",", 1)[0].decode()
    _assert_kept(clean_kaggle, _rows_by_id(df, "id"), except_ids={victim} | _line_ids(bad))
    if victim not in set(df["id"]) and bad.strip():  # (a blank line is a deleted row: nothing to count)
        assert report.total >= 1                             # a lost row is a counted row


@FUZZ
@given(cut=st.integers(0, len(STYLES)))
def test_styles_csv_truncated_anywhere_keeps_every_complete_row(work, clean_kaggle, cut):
    data = STYLES[:cut]
    header_len = len(_lines(STYLES)[0])
    try:
        df, _ = _kaggle(work / "k-cut", data)
    except CLEAR_ERRORS:
        assert cut < header_len                               # only a cut header may stop the read
        return
    complete = {ln.split(b",", 1)[0].decode() for ln in _lines(data)[1:] if ln.endswith(b"\n")}
    got = _rows_by_id(df, "id")
    _assert_kept({k: v for k, v in clean_kaggle.items() if k in complete}, got)


def test_styles_csv_with_a_field_beyond_the_size_limit_counts_only_that_row(work, clean_kaggle):
    lines = _lines(STYLES)
    lines.insert(5, lines[5].rstrip(b"\n") + b"x" * (9 * 1024 * 1024) + b"\n")  # > 8 MiB field
    df, report = _kaggle(work / "k-huge", b"".join(lines))
    _assert_kept(clean_kaggle, _rows_by_id(df, "id"))
    assert report.total >= 1


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "utf-8-sig"])
def test_styles_csv_in_another_encoding_is_read_or_repaired_never_lost(work, clean_kaggle, encoding):
    text = STYLES.decode("utf-8") + "99999001,Women,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Café Señora Tee\n"
    df, report = _kaggle(work / f"k-{encoding}", text.encode(encoding, errors="replace"))
    got = _rows_by_id(df, "id")
    assert set(clean_kaggle) <= set(got)                      # every row survives
    if encoding == "latin-1":
        assert report.counts["encoding_repaired"] >= 1        # the accents were repaired, and said so
    else:
        _assert_kept(clean_kaggle, got)
        assert got["99999001"]["title"] == "Café Señora Tee"


# ------------------------------------------------------------------ Kaggle styles/<id>.json

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(mode=st.sampled_from(["cut", "flip", "random", "mutate"]), data=st.data())
def test_style_json_damage_gives_invalid_or_clean_fields_never_an_exception(work, mode, data):
    raw = JSON_DOC
    if mode == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif mode == "flip":
        raw = bytearray(raw)
        for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[pos] = data.draw(st.integers(0, 255))
        raw = bytes(raw)
    elif mode == "random":
        raw = data.draw(st.binary(max_size=300))
    else:  # valid JSON whose values have the wrong types or shapes
        doc = json.loads(JSON_DOC)
        key = data.draw(st.sampled_from(["price", "brandName", "articleAttributes", "productDescriptors",
                                         "ageGroup", "discountedPrice", None]))
        if key is None:
            doc["data"] = data.draw(json_values)
        else:
            doc["data"][key] = data.draw(json_values)
        raw = json.dumps(doc).encode()
    path = work / "json" / "1.json"
    _write(path.parent, path.name, raw)
    status, fields = _json_fields(path)
    assert status in {"ok", "invalid"}
    for name, value in fields.items():
        assert value is None or isinstance(value, str), (name, value)


def test_deeply_nested_style_json_is_invalid_not_a_recursion_crash(work):
    path = work / "json" / "deep.json"
    _write(path.parent, path.name, b'{"data": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    assert _json_fields(path)[0] == "invalid"


# ------------------------------------------------------------------ H&M articles.csv

@FUZZ
@given(junk=st.lists(damaged_line(ARTICLES), min_size=1, max_size=6))
def test_articles_csv_appended_damage_is_counted_and_loses_no_good_row(work, clean_hm, junk):
    df, report = _hm(work / "h-append", ARTICLES + b"".join(junk))
    _assert_kept(clean_hm, _rows_by_id(df, "article_id"))
    if b"".join(junk).strip():
        assert len(df) - len(clean_hm) + report.total >= 1


@FUZZ
@given(data=st.data())
def test_articles_csv_one_damaged_line_costs_at_most_that_row(work, clean_hm, data):
    lines = _lines(ARTICLES)
    i = data.draw(st.integers(1, len(lines) - 1))
    bad = data.draw(damaged_line(ARTICLES))
    if not bad.endswith(b"\n"):
        bad += b"\r\n"
    df, report = _hm(work / "h-one", b"".join(lines[:i] + [bad] + lines[i + 1:]))
    victim = lines[i].split(b",", 1)[0].decode()
    _assert_kept(clean_hm, _rows_by_id(df, "article_id"), except_ids={victim} | _line_ids(bad, 10))
    if victim not in set(df["article_id"]) and bad.strip():  # (a blank line is a deleted row: nothing to count)
        assert report.total >= 1


@FUZZ
@given(cut=st.integers(0, len(ARTICLES)))
def test_articles_csv_truncated_anywhere_keeps_every_complete_row(work, clean_hm, cut):
    data = ARTICLES[:cut]
    try:
        df, _ = _hm(work / "h-cut", data)
    except CLEAR_ERRORS:
        assert cut < len(_lines(ARTICLES)[0])
        return
    complete = {ln.split(b",", 1)[0].decode() for ln in _lines(data)[1:] if ln.endswith(b"\n")}
    _assert_kept({k: v for k, v in clean_hm.items() if k in complete}, _rows_by_id(df, "article_id"))


# ------------------------------------------------------------------ H&M transactions_train.csv

@pytest.fixture(scope="module")
def known_articles(clean_hm) -> pd.Series:
    return pd.Series(sorted(clean_hm))


@pytest.fixture(scope="module")
def clean_prices(work, known_articles) -> pd.DataFrame:
    df = _prices(work / "t-clean", TRANSACTIONS, known_articles)[0]
    assert len(df) > 300
    return df


def _prices(folder: Path, data: bytes, known: pd.Series) -> tuple[pd.DataFrame, DropReport]:
    _write(folder, "transactions_train.csv", data)
    report = DropReport()
    return read_hm_prices(folder, known, report), report


def _assert_prices_kept(clean: pd.DataFrame, got: pd.DataFrame, damage: bytes, victim: str | None = None) -> None:
    """Every article keeps its price (but ``victim``, whose line was destroyed, may lose it);
    only articles named in the damage may see their median change."""
    text = damage.decode("utf-8", "replace").replace("\x00", "")
    merged = clean.merge(got, on="article_id", how="left", suffixes=("", "_got"))
    lost = merged[merged["price_median_got"].isna() & (merged["article_id"] != victim)]
    assert lost.empty, f"prices lost for {lost['article_id'].tolist()[:5]}"
    merged = merged[merged["article_id"] != victim]
    untouched = merged[[aid.lstrip("0") not in text for aid in merged["article_id"]]]
    pd.testing.assert_series_equal(untouched["price_median"], untouched["price_median_got"], check_names=False)
    assert (untouched["n_transactions"] == untouched["n_transactions_got"]).all()


@FUZZ
@given(junk=st.lists(damaged_line(TRANSACTIONS), min_size=1, max_size=6))
def test_transactions_appended_damage_is_counted_and_loses_no_price(work, known_articles, clean_prices, junk):
    damage = b"".join(junk)
    got, report = _prices(work / "t-append", TRANSACTIONS + damage, known_articles)
    _assert_prices_kept(clean_prices, got, damage)


@FUZZ
@given(data=st.data())
def test_transactions_one_damaged_line_costs_at_most_that_transaction(work, known_articles, clean_prices, data):
    lines = _lines(TRANSACTIONS)
    i = data.draw(st.integers(1, len(lines) - 1))
    bad = data.draw(damaged_line(TRANSACTIONS))
    if not bad.endswith(b"\n"):
        bad += b"\r\n"
    got, report = _prices(work / "t-one", b"".join(lines[:i] + [bad] + lines[i + 1:]), known_articles)
    victim = lines[i].split(b",")[2]
    _assert_prices_kept(clean_prices, got, bad + b"," + victim, victim=victim.decode())
    if bad.strip() and victim.decode() not in set(got["article_id"]) and victim.decode() in set(known_articles):
        assert report.total >= 1


@FUZZ
@given(cut=st.integers(0, len(TRANSACTIONS)))
def test_transactions_truncated_anywhere_never_crash(work, known_articles, clean_prices, cut):
    data = TRANSACTIONS[:cut]
    try:
        got, report = _prices(work / "t-cut", data, known_articles)
    except CLEAR_ERRORS:
        assert cut < len(_lines(TRANSACTIONS)[0])
        return
    complete = _lines(data)[1:]
    complete = [ln for ln in complete if ln.endswith(b"\n")]
    expected = {ln.split(b",")[2].decode() for ln in complete} & set(known_articles)
    assert expected <= set(got["article_id"])


# ------------------------------------------------------------------ images

@FUZZ
@given(cut=st.integers(0, len(JPEG)), flips=st.lists(st.tuples(st.integers(0, len(JPEG) - 1), st.integers(0, 255)),
                                                     max_size=10))
def test_damaged_jpeg_is_ok_or_corrupt_never_an_exception(work, cut, flips):
    raw = bytearray(JPEG)
    for pos, value in flips:
        raw[pos] = value
    raw = bytes(raw[:cut] if cut else raw)
    path = work / "img" / "x.jpg"
    _write(path.parent, path.name, raw)
    status = image_status(path)
    assert status in {"ok", "corrupt"}
    if cut and cut < len(JPEG) - 2 and not flips:
        assert status == "corrupt"                            # a truncated photo is never passed as good
    report = DropReport()
    out = check_images([str(path), None], report)
    assert out[0] == (str(path) if status == "ok" else None) and out[1] is None
    assert report.counts["image_missing"] == 1 and report.counts.get("image_corrupt", 0) == (status == "corrupt")
