"""Extraction quality and throughput against the Kaggle catalogue's own attributes.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/extraction_quality.py \
        [--data-root "$FASHION_DATA_ROOT"] [--warehouse path/with/clean_products.duckdb] \
        [--llm-sample 30] [--torch-threads 1]

Builds clean_products from the real data (the project's own ingest chain, in process) unless a
warehouse with that table is given; then scores the rules backend and the naive keyword baseline
on every Kaggle product with catalogue attributes, and the transformers backend (SmolLM2-135M,
constrained decoding) on a small random sample of them (with rules + baseline on the same
sample, for a like-for-like comparison). Writes benchmarks/out/extraction_quality.{md,json}.
The catalogue attributes are only used for scoring; extractors see title + description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fashion_pipeline.core.extraction import quality  # noqa: E402
from fashion_pipeline.core.extraction.pipeline import Extractor, ProductText, fill_rates  # noqa: E402
from fashion_pipeline.core.extraction.rules import NaiveKeywordBaseline, RulesExtractor  # noqa: E402
from fashion_pipeline.core.extraction.text import prepare  # noqa: E402


def load_clean_products(data_root: Path, warehouse: Path | None, var_dir: Path) -> pd.DataFrame:
    import duckdb

    if warehouse is None:
        os.environ["FASHION_VAR_DIR"] = str(var_dir)
        import dagster as dg

        from fashion_pipeline_tests.helpers import INGEST_CHAIN, materialize

        t0 = time.time()
        result = materialize(INGEST_CHAIN, data_root, var_dir)
        assert result.success
        print(f"clean_products built from {data_root} in {time.time() - t0:.0f}s", flush=True)
        warehouse = var_dir / "warehouse.duckdb"
        del dg
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute("select * from main.clean_products").df()


def products_of(df: pd.DataFrame) -> list[ProductText]:
    return [ProductText(p, t, d or "") for p, t, d in zip(df["product_id"], df["title"], df["description"].fillna(""))]


def score_frame(df: pd.DataFrame, results) -> dict:
    truths = [quality.catalogue_truth(v) for v in df["article_attributes"]]
    return quality.score(truths, [r.attributes for r in results] if results and hasattr(results[0], "attributes")
                         else results)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", type=Path, default=os.environ.get("FASHION_DATA_ROOT"), required="FASHION_DATA_ROOT" not in os.environ,
                    help="Folder with both datasets (default: $FASHION_DATA_ROOT)")
    ap.add_argument("--warehouse", type=Path, default=None)
    ap.add_argument("--llm-sample", type=int, default=30, help="products for the transformers backend (0: skip)")
    ap.add_argument("--llm-batch", type=int, default=6)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="1 avoids OpenMP spin-waits on a shared, oversubscribed CPU")
    ap.add_argument("--max-description-chars", type=int, default=2000)
    ap.add_argument("--llm-max-description-chars", type=int, default=800)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    var_dir = Path(tempfile.mkdtemp(prefix="extraction-bench-"))
    df = load_clean_products(args.data_root, args.warehouse, var_dir)
    kaggle = df[df["article_attributes"].notna()].reset_index(drop=True)
    print(f"{len(df)} products, {len(kaggle)} with Kaggle catalogue attributes", flush=True)

    brands = df["brand"].dropna().unique().tolist()
    rules_runner = Extractor(RulesExtractor(brands), max_description_chars=args.max_description_chars)
    rules_results, rules_stats = rules_runner.run(products_of(df))
    by_id = dict(zip(df["product_id"], rules_results))
    rules_k = [by_id[p] for p in kaggle["product_id"]]
    naive = NaiveKeywordBaseline()
    t0 = time.perf_counter()
    naive_k = [naive.extract(prepare(t, d, args.max_description_chars))
               for t, d in zip(kaggle["title"], kaggle["description"].fillna(""))]
    naive_s = time.perf_counter() - t0
    full = {"rules": score_frame(kaggle, rules_k), "naive keyword baseline": score_frame(kaggle, naive_k)}
    report = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores (shared)",
        "products": len(df), "kaggle_with_catalogue": len(kaggle),
        "rules": {**rules_stats.to_dict(), "fill_rates_all_products": fill_rates(rules_results)},
        "naive_rows_per_s": round(len(kaggle) / naive_s, 1),
        "full": {k: {a: vars(s) for a, s in v.items()} for k, v in full.items()},
    }
    md = ["# Extraction quality vs the Kaggle catalogue attributes", "",
          f"Machine: {report['machine']}. {len(df)} products ({len(kaggle)} Kaggle with catalogue attributes).", "",
          "## All Kaggle products with catalogue attributes", "",
          quality.markdown_table(full), "",
          f"Rules throughput: {rules_stats.rows_per_s:.0f} rows/s over {len(df)} products "
          f"({rules_stats.truncated} truncated, {rules_stats.empty_description} empty descriptions, "
          f"{rules_stats.non_english} flagged non-English).", ""]

    if args.llm_sample:
        import torch

        from fashion_pipeline.core.extraction.backends.transformers_backend import TransformersBackend
        from fashion_pipeline.core.extraction.model_files import ensure_smollm2_hf

        sample = kaggle[kaggle["description"].fillna("").str.len() > 0].sample(args.llm_sample, random_state=0)
        sample = sample.reset_index(drop=True)
        torch.set_num_threads(args.torch_threads)
        model_dir = ensure_smollm2_hf(ROOT / "var" / "cache" / "models")
        backend = TransformersBackend(model_dir, num_threads=args.torch_threads)
        runner = Extractor(RulesExtractor(brands), backend, None, max_description_chars=args.llm_max_description_chars,
                           batch_size=args.llm_batch, max_new_tokens=160)
        llm_results, llm_stats = runner.run(products_of(sample),
                                            progress=lambda d, n: print(f"  transformers {d}/{n}", flush=True))
        s_rules = [by_id[p] for p in sample["product_id"]]
        s_naive = [naive.extract(prepare(t, d, args.max_description_chars))
                   for t, d in zip(sample["title"], sample["description"])]
        small = {"transformers (SmolLM2-135M)": score_frame(sample, llm_results), "rules": score_frame(sample, s_rules),
                 "naive keyword baseline": score_frame(sample, s_naive)}
        report["transformers"] = {**llm_stats.to_dict(), "torch_threads": args.torch_threads,
                                  "sample": len(sample),
                                  "scores": {k: {a: vars(s) for a, s in v.items()} for k, v in small.items()}}
        md += [f"## Random sample of {len(sample)} Kaggle products (seed 0): transformers vs rules vs baseline", "",
               quality.markdown_table(small), "",
               f"transformers: {llm_stats.rows_per_s:.3f} rows/s, {llm_stats.output_tokens_per_s:.1f} output tok/s "
               f"({llm_stats.output_tokens} output / {llm_stats.prompt_tokens} prompt tokens, "
               f"torch threads {args.torch_threads}); failed validation {llm_stats.failed_validation}, "
               f"fell back {llm_stats.fell_back}.", ""]

    (args.out / "extraction_quality.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "extraction_quality.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
