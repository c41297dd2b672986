"""Benchmark of the comparables lookup (core.comparables): index build, save/load and search.

    PYTHONPATH=. .venv/bin/python benchmarks/comparables.py --n 10000 --catalogue 40000 \
        --out benchmarks/results/comparables.md

A catalogue of random vectors with the real embedding widths (EfficientNet-Lite0 image 1280,
MiniLM text 384), 5% of rows without a photo, and ``--n`` listing queries (5% text only). Times
`ComparablesIndex.build`, save + load, the bare faiss search, and `comparables_columns` (search +
the JSON the scoring output carries) at each thread count in ``--threads``. Random vectors have
no structure, which costs an exact (flat) index nothing: the timings hold for real embeddings.

``--coretype`` sets OPENBLAS_CORETYPE for faiss's bundled OpenBLAS before faiss loads ("auto":
what core.comparables picks from the CPU flags; "none": leave OpenBLAS to detect the CPU).
Appends a section to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _machine() -> str:
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = "?"
    try:
        kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem}, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="Listing queries (default 10000).")
    ap.add_argument("--catalogue", type=int, default=40000, help="Catalogue rows in the index (default 40000).")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="faiss/OpenMP thread counts to time the search with.")
    ap.add_argument("--coretype", default="auto", help="OPENBLAS_CORETYPE for faiss: auto, none, or a name.")
    ap.add_argument("--out", type=Path, default=None, help="Markdown file to append the results to.")
    args = ap.parse_args(argv)

    from fashion_pipeline.core import comparables as cmp

    if args.coretype == "none":  # faiss imported before core.comparables' hint can apply: OpenBLAS detects
        os.environ.pop("OPENBLAS_CORETYPE", None)
        import faiss  # noqa: F401
    elif args.coretype != "auto":
        os.environ["OPENBLAS_CORETYPE"] = args.coretype
    import numpy as np
    import pandas as pd

    faiss = cmp.load_faiss()
    coretype = os.environ.get("OPENBLAS_CORETYPE") or "(OpenBLAS detection)"
    from fashion_pipeline.core.pricing.features import IMAGE_DIM, TEXT_DIM

    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    n_cat, n_q = args.catalogue, args.n
    image = rng.standard_normal((n_cat, IMAGE_DIM), dtype=np.float32)
    text = rng.standard_normal((n_cat, TEXT_DIM), dtype=np.float32)
    image[rng.random(n_cat) < 0.05] = np.nan  # catalogue rows without a photo
    items = pd.DataFrame({"product_id": [f"p{i}" for i in range(n_cat)], "title": [f"product {i}" for i in range(n_cat)],
                          "price_usd": rng.uniform(3, 300, n_cat), "source": np.where(rng.random(n_cat) < 0.5, "kaggle", "hm")})
    q_image = rng.standard_normal((n_q, IMAGE_DIM), dtype=np.float32)
    q_text = rng.standard_normal((n_q, TEXT_DIM), dtype=np.float32)
    q_image[rng.random(n_q) < 0.05] = np.nan  # text-only listings

    rows = []
    t = time.perf_counter()
    index = cmp.ComparablesIndex.build(items, image, text)
    rows.append(("build (normalise + IndexFlatIP.add)", time.perf_counter() - t, ""))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        index.save(tmp)
        rows.append(("save (write_index + Parquet)", time.perf_counter() - t,
                     f"{sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20:.0f} MiB on disk"))
        t = time.perf_counter()
        index = cmp.ComparablesIndex.load(tmp)
        rows.append(("load (read_index + Parquet)", time.perf_counter() - t, ""))
    q, _ = index.query_vectors(q_image, q_text)
    for threads in [int(x) for x in args.threads.split(",") if x]:
        faiss.omp_set_num_threads(threads)
        t = time.perf_counter()
        index.index.search(q, args.k)
        dt = time.perf_counter() - t
        flops = 2.0 * n_q * n_cat * index.dimension
        rows.append((f"faiss search, {threads} thread(s)", dt, f"{flops / dt / 1e9:.0f} GFLOPS"))
        t = time.perf_counter()
        cols, counts = cmp.comparables_columns(index, q_image, q_text, n_q, args.k)
        dt = time.perf_counter() - t
        assert counts["with_comparables"] == n_q
        rows.append((f"comparables_columns (query vectors + search + JSON), {threads} thread(s)", dt,
                     f"{n_q / dt:.0f} listings/s"))
    load_after = os.getloadavg()

    lines = [
        f"### {n_q} queries, {n_cat} catalogue rows, k={args.k}, OPENBLAS_CORETYPE={coretype}",
        "",
        f"- machine: {_machine()}",
        f"- faiss {faiss.__version__}, numpy {np.__version__}; index {type(index.index).__name__}, "
        f"{index.size} rows x {index.dimension} dims (image {IMAGE_DIM} + text {TEXT_DIM})",
        f"- load average (1/5/15 min) before: {', '.join(f'{x:.1f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.1f}' for x in load_after)}",
        "",
        "| step | seconds | note |",
        "|---|---:|---|",
        *[f"| {name} | {sec:.2f} | {note} |" for name, sec, note in rows],
        "",
    ]
    text_out = "\n".join(lines)
    print(text_out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text_out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
