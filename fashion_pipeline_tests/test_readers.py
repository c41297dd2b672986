"""Readers on the real sample and on real, damaged copies of its files."""

import json
import shutil

import pandas as pd
import pytest

from fashion_pipeline.core.readers import (
    DataRootError, MissingColumnError, read_hm_articles, read_hm_prices, read_kaggle_products,
)
from fashion_pipeline.core.readers.hm import normalise_article_id
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline_tests.conftest import HM, KAGGLE, SAMPLE_ROOT


def _styles_lines(root):
    return (root / KAGGLE / "styles.csv").read_text(encoding="utf-8").splitlines(keepends=True)


def test_kaggle_reader_on_the_sample():
    report = DropReport()
    df = read_kaggle_products(SAMPLE_ROOT / KAGGLE, report)
    n_lines = len(_styles_lines(SAMPLE_ROOT)) - 1
    assert len(df) == n_lines                                  # every row kept
    assert df["id"].is_unique
    assert (df["json_status"] == "ok").all()
    assert df["price_raw"].notna().all() and df["brand"].notna().mean() > 0.95
    assert not df["description"].str.contains("<p>|<br", regex=True).any()   # HTML stripped
    assert df["image_path"].notna().sum() == len(list((SAMPLE_ROOT / KAGGLE / "images").glob("*.jpg")))
    assert report.counts.get("image_missing", 0) == df["image_path"].isna().sum()


def test_titles_with_unquoted_commas_are_repaired_not_dropped(sample_copy):
    path = sample_copy / KAGGLE / "styles.csv"
    lines = _styles_lines(sample_copy)
    fields = lines[1].rstrip("\n").split(",")
    lines[1] = ",".join(fields[:9] + [fields[9] + ", Pack of 2, Blue"]) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    report = DropReport()
    df = read_kaggle_products(sample_copy / KAGGLE, report, check_image_files=False)
    assert len(df) == len(lines) - 1
    assert df.loc[df["id"] == fields[0], "title"].item().endswith("Pack of 2, Blue")
    assert report.counts["extra_commas_repaired"] >= 1


def test_damaged_styles_csv_rows_are_counted_and_good_rows_kept(sample_copy):
    path = sample_copy / KAGGLE / "styles.csv"
    lines = _styles_lines(sample_copy)
    n_good = len(lines) - 1
    first_id = lines[1].split(",")[0]
    damaged = lines + [
        "12345,Men,Apparel\n",                       # too few fields
        lines[1],                                    # duplicated id
        "notanid," + lines[2].split(",", 1)[1],     # non-numeric id
        "\n",                                        # blank line (ignored)
    ]
    damaged[3] = damaged[3].replace("a", "a\x00", 1)  # a NUL byte inside a good row
    path.write_text("".join(damaged), encoding="utf-8")
    report = DropReport()
    df = read_kaggle_products(sample_copy / KAGGLE, report, check_image_files=False)
    assert len(df) == n_good
    assert report.counts["malformed_row"] == 1
    assert report.counts["duplicate_id"] == 1
    assert report.counts["bad_id"] == 1
    assert report.counts["nul_bytes_removed"] == 1
    assert first_id in set(df["id"])


def test_invalid_json_keeps_the_row_without_its_price(sample_copy):
    some_id = _styles_lines(sample_copy)[5].split(",")[0]
    other_id = _styles_lines(sample_copy)[6].split(",")[0]
    (sample_copy / KAGGLE / "styles" / f"{some_id}.json").write_text('{"data": {"price": 12', encoding="utf-8")
    (sample_copy / KAGGLE / "styles" / f"{other_id}.json").unlink()
    report = DropReport()
    df = read_kaggle_products(sample_copy / KAGGLE, report, check_image_files=False).set_index("id")
    assert df.loc[some_id, "json_status"] == "invalid" and df.loc[some_id, "price_raw"] is None
    assert df.loc[other_id, "json_status"] == "missing"
    assert report.counts["json_invalid"] == 1 and report.counts["json_missing"] == 1


def test_small_kaggle_download_without_json_is_supported(sample_copy):
    shutil.rmtree(sample_copy / KAGGLE / "styles")
    df = read_kaggle_products(sample_copy / KAGGLE, DropReport(), check_image_files=False)
    assert len(df) == len(_styles_lines(sample_copy)) - 1
    assert df["price_raw"].isna().all() and (df["json_status"] == "no_json_dir").all()


def test_missing_and_corrupt_images_are_counted(sample_copy):
    images = sorted((sample_copy / KAGGLE / "images").glob("*.jpg"))
    data = images[0].read_bytes()
    images[0].write_bytes(data[: len(data) // 2])          # truncated JPEG
    images[1].write_bytes(b"this is not a jpeg")            # not an image
    images[2].unlink()                                      # missing
    report = DropReport()
    df = read_kaggle_products(sample_copy / KAGGLE, report).set_index("id")
    assert df.loc[images[0].stem, "image_path"] is None
    assert df.loc[images[1].stem, "image_path"] is None
    assert df.loc[images[2].stem, "image_path"] is None
    assert report.counts["image_corrupt"] == 2
    assert df.loc[images[3].stem, "image_path"] == str(images[3])


def test_missing_data_root_and_missing_column_name_the_problem(tmp_path, sample_copy):
    with pytest.raises(DataRootError, match=str(tmp_path / "nowhere")):
        read_kaggle_products(tmp_path / "nowhere", DropReport())
    path = sample_copy / KAGGLE / "styles.csv"
    lines = _styles_lines(sample_copy)
    lines[0] = lines[0].replace("productDisplayName", "name")
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(MissingColumnError, match="productDisplayName"):
        read_kaggle_products(sample_copy / KAGGLE, DropReport())


def test_hm_articles_keep_zero_padded_ids():
    df = read_hm_articles(SAMPLE_ROOT / HM, DropReport(), check_image_files=False)
    assert df["article_id"].str.fullmatch(r"\d{10}").all()
    assert df["article_id"].str.startswith("0").all()
    assert normalise_article_id("108775015") == "0108775015"
    assert normalise_article_id("x12") is None


def test_hm_prices_are_per_article_medians_of_known_articles():
    report = DropReport()
    articles = read_hm_articles(SAMPLE_ROOT / HM, report, check_image_files=False)
    prices = read_hm_prices(SAMPLE_ROOT / HM, articles["article_id"], report)
    tx = pd.read_csv(SAMPLE_ROOT / HM / "transactions_train.csv", dtype={"article_id": str})
    known = tx[tx["article_id"].isin(articles["article_id"])]
    expected = known.groupby("article_id")["price"].median()
    got = prices.set_index("article_id")["price_median"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    assert report.counts["tx_unknown_article"] == len(tx) - len(known) > 0


def test_damaged_transactions_are_counted(sample_copy):
    path = sample_copy / HM / "transactions_train.csv"
    lines = path.read_text().splitlines(keepends=True)
    aid = lines[1].split(",")[2]
    lines += [
        f"2020-01-01,cust,{aid},not-a-price,2\n",
        f"2020-01-01,cust,{aid},-0.5,2\n",
        "2020-01-01,cust,ABC,0.01,2\n",
        "garbage line without enough fields\n",
    ]
    path.write_text("".join(lines))
    report = DropReport()
    articles = read_hm_articles(sample_copy / HM, report, check_image_files=False)
    prices = read_hm_prices(sample_copy / HM, articles["article_id"], report)
    assert report.counts["tx_non_numeric_price"] == 1
    assert report.counts["tx_non_positive_price"] == 1
    assert report.counts["tx_bad_article_id"] == 1
    assert report.counts["tx_malformed_row"] == 1
    assert prices.set_index("article_id").loc[aid, "price_median"] > 0


def test_transactions_missing_a_required_column_is_a_clear_error(sample_copy):
    path = sample_copy / HM / "transactions_train.csv"
    text = path.read_text().replace("price", "cost", 1)
    path.write_text(text)
    articles = read_hm_articles(sample_copy / HM, DropReport(), check_image_files=False)
    with pytest.raises(MissingColumnError, match="price"):
        read_hm_prices(sample_copy / HM, articles["article_id"], DropReport())


def test_label_columns_are_required_for_ingest_and_optional_with_keep_unlabelled(sample_copy):
    """Ingest (the default) still rejects a styles.csv / articles.csv without its label columns;
    scoring new listings (keep_unlabelled=True) reads the rows with null labels."""
    styles = sample_copy / KAGGLE / "styles.csv"
    # productDisplayName (last) has unquoted commas: split off the first nine fields only.
    rows = [line.rstrip("\n").split(",", 9) for line in _styles_lines(sample_copy)]
    assert rows[0][2:5] == ["masterCategory", "subCategory", "articleType"]
    styles.write_text("".join(",".join(r[:2] + r[5:]) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(MissingColumnError, match="masterCategory"):
        read_kaggle_products(sample_copy / KAGGLE, DropReport(), check_image_files=False)
    k = read_kaggle_products(sample_copy / KAGGLE, DropReport(), check_image_files=False, keep_unlabelled=True)
    assert len(k) == len(rows) - 1 and k[["master_category", "sub_category", "article_type"]].isna().all().all()

    articles = sample_copy / HM / "articles.csv"
    a = pd.read_csv(articles, dtype=str, keep_default_na=False)
    a.drop(columns=["product_code", "product_type_name", "product_group_name"]).to_csv(articles, index=False)
    with pytest.raises(MissingColumnError, match="product_code"):
        read_hm_articles(sample_copy / HM, DropReport(), check_image_files=False)
    h = read_hm_articles(sample_copy / HM, DropReport(), check_image_files=False, keep_unlabelled=True)
    assert len(h) == a["article_id"].nunique()
    assert h[["product_type_name", "product_group_name"]].isna().all().all()
    assert (h["product_code"] == h["article_id"].str[:7]).all()


# ---- the file memo: a re-read parses and decodes only new or changed files ---------------------

def test_a_re_read_with_the_file_memo_reads_only_changed_files_and_gives_the_same_table(sample_copy, tmp_path):
    import os

    from fashion_pipeline.core.readers.file_memo import FileMemo

    root = sample_copy / KAGGLE
    memo_path = tmp_path / "memo" / "kaggle_files.parquet"
    n_files = len(list((root / "styles").glob("*.json"))) + len(list((root / "images").glob("*.jpg")))
    first = FileMemo(memo_path, "v1")
    a = read_kaggle_products(root, DropReport(), memo=first)
    first.save()
    assert (first.read, first.reused) == (n_files, 0)
    pd.testing.assert_frame_equal(a, read_kaggle_products(root, DropReport()))

    # One product JSON edited, one photo damaged; everything else as before.
    edited, damaged = a["id"].iloc[0], a["id"].iloc[1]
    doc = json.loads((root / "styles" / f"{edited}.json").read_text(encoding="utf-8"))
    doc["data"]["brandName"] = "Memo Test Brand"
    (root / "styles" / f"{edited}.json").write_text(json.dumps(doc), encoding="utf-8")
    (root / "images" / f"{damaged}.jpg").write_bytes(b"not a jpeg")
    expected_report = DropReport()
    expected = read_kaggle_products(root, expected_report)  # what a reader without the memo says

    again = FileMemo(memo_path, "v1")
    report = DropReport()
    b = read_kaggle_products(root, report, memo=again)
    again.save()
    assert (again.read, again.reused) == (2, n_files - 2)
    pd.testing.assert_frame_equal(b, expected)
    assert report.as_dict() == expected_report.as_dict()
    row = b.set_index("id")
    assert row.loc[edited, "brand"] == "Memo Test Brand"
    assert row.loc[damaged, "image_path"] is None and report.counts["image_corrupt"] >= 1

    # A file touched (same size, a new modification time) is read again.
    path = root / "styles" / f"{edited}.json"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = FileMemo(memo_path, "v1")
    read_kaggle_products(root, DropReport(), memo=third)
    assert third.read == 1

    # Other code: nothing is trusted.
    other = FileMemo(memo_path, "v2")
    pd.testing.assert_frame_equal(read_kaggle_products(root, DropReport(), memo=other), expected)
    assert other.reused == 0 and "other code" in other.note


def test_a_damaged_file_memo_costs_one_full_read_not_a_wrong_table(sample_copy, tmp_path):
    from fashion_pipeline.core.readers.file_memo import FileMemo

    root = sample_copy / HM
    memo_path = tmp_path / "hm_files.parquet"
    memo_path.write_bytes(b"PAR1 garbage")
    killed = tmp_path / ".hm_files.parquet.tmp-999999999"  # a save killed half-way (no such process)
    killed.write_bytes(b"half")
    memo = FileMemo(memo_path, "v1")
    assert "unreadable" in memo.note
    df = read_hm_articles(root, DropReport(), memo=memo)
    memo.save()
    assert not killed.exists()
    pd.testing.assert_frame_equal(df, read_hm_articles(root, DropReport()))
    n_images = len(list((root / "images").rglob("*.jpg")))
    assert (memo.read, memo.reused) == (n_images, 0)
    memo = FileMemo(memo_path, "v1")  # rewritten whole by the save
    pd.testing.assert_frame_equal(read_hm_articles(root, DropReport(), memo=memo), df)
    assert (memo.read, memo.reused) == (0, n_images)
    # A memo that cannot be written is reported, not raised.
    blocked = FileMemo(tmp_path / "a-file" / "hm_files.parquet", "v1")
    (tmp_path / "a-file").write_text("not a folder")
    pd.testing.assert_frame_equal(read_hm_articles(root, DropReport(), memo=blocked), df)
    assert blocked.save() is False and "not saved" in blocked.note


def test_map_chunked_keeps_item_order_across_chunks_and_threads_and_raises_a_worker_error():
    """The photo checks and the photo keys map a cheap function over ~44k paths in chunks on threads:
    the results must come back in the paths' order whatever the chunk size and thread count, and a
    failure inside a chunk must reach the caller, not vanish with its thread."""
    from fashion_pipeline.core.threads import map_chunked

    items = list(range(1000))
    assert map_chunked(lambda x: x * x, items, workers=4, chunk=7) == [x * x for x in items]
    assert map_chunked(lambda x: x * x, items, workers=1) == [x * x for x in items]
    assert map_chunked(lambda x: x * x, [], workers=2) == []

    def fail_on_500(x):
        if x == 500:
            raise ValueError("item 500")
        return x

    with pytest.raises(ValueError, match="item 500"):
        map_chunked(fail_on_500, items, workers=3, chunk=64)
