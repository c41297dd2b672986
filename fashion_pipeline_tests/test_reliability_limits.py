"""Resource limits: the H&M transaction scan streams a file far larger than its memory limit
(DuckDB spills to disk) and still aggregates exactly."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from fashion_pipeline.core.readers import read_hm_articles, read_hm_prices
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline_tests.conftest import HM, SAMPLE_ROOT

REPEATS = 2650            # x 1131 real sample rows = 3.0M transactions, ~330 MB of CSV
MEMORY_LIMIT_MB = 100


class _DirPeak(threading.Thread):
    """Polls a folder's total size: DuckDB's spill files appear there only while it spills."""

    def __init__(self, folder):
        super().__init__(daemon=True)
        self.folder, self.peak, self.stop = folder, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                size = sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())
            except FileNotFoundError:
                size = 0
            self.peak = max(self.peak, size)
            time.sleep(0.02)


@pytest.mark.slow
def test_transactions_far_larger_than_the_memory_limit_spill_and_aggregate_exactly(tmp_path):
    src = SAMPLE_ROOT / HM
    known = read_hm_articles(src, DropReport(), check_image_files=False)["article_id"]
    small_report = DropReport()
    small = read_hm_prices(src, known, small_report)

    header, body = (src / "transactions_train.csv").read_bytes().split(b"\n", 1)
    big = tmp_path / "hm"
    big.mkdir()
    with open(big / "transactions_train.csv", "wb") as fh:
        fh.write(header + b"\n")
        for _ in range(REPEATS):
            fh.write(body)
    size_mb = (big / "transactions_train.csv").stat().st_size / 2**20
    assert size_mb > 3 * MEMORY_LIMIT_MB

    spill = tmp_path / "spill"
    spill.mkdir()
    watcher = _DirPeak(spill)
    watcher.start()
    report = DropReport()
    try:
        prices = read_hm_prices(big, known, report, memory_limit=f"{MEMORY_LIMIT_MB}MB", temp_directory=spill,
                                threads=1)
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.peak > 0, "DuckDB never spilled: the limit did not bind, the test proves nothing"
    # Every article's median is unchanged (a median of k copies of a multiset is its median)...
    pd.testing.assert_series_equal(prices["price_median"], small["price_median"], check_exact=False, rtol=1e-12)
    assert prices["article_id"].tolist() == small["article_id"].tolist()
    # ...and every transaction was counted, none lost to the limit.
    assert (prices["n_transactions"] == small["n_transactions"] * REPEATS).all()
    assert report.as_dict() == {k: v * REPEATS for k, v in small_report.as_dict().items()}
