"""Structured product attributes (brand, materials, care, fit, pattern, occasion, style)
extracted from title + description; the logic lives in fashion_pipeline.core.extraction."""

import dagster as dg
import pandas as pd

from fashion_pipeline import metadata as md
from fashion_pipeline.core.extraction import quality
from fashion_pipeline.core.extraction.pipeline import ProductText, fill_rates, results_to_records
from fashion_pipeline.core.extraction.prompt import PROMPT_VERSION, prompt_fingerprint
from fashion_pipeline.core.extraction.rules import NaiveKeywordBaseline
from fashion_pipeline.core.extraction.text import prepare
from fashion_pipeline.gpu import gpu_declarations
from fashion_pipeline.resources.extraction import ExtractorResource

GROUP = "attributes"


def quality_report(clean_products: pd.DataFrame, results: list, backend: str,
                   max_description_chars: int) -> tuple[str, dict]:
    """Score against Kaggle's catalogue attributes (never shown to the extractor), next to the naive baseline."""
    has_truth = clean_products["article_attributes"].notna().to_numpy()
    truths = [quality.catalogue_truth(v) for v in clean_products["article_attributes"][has_truth]]
    preds = [r.attributes for r, keep in zip(results, has_truth) if keep]
    naive = NaiveKeywordBaseline()
    base = [naive.extract(prepare(t, d, max_description_chars))
            for t, d in zip(clean_products["title"][has_truth], clean_products["description"][has_truth])]
    scores = {backend: quality.score(truths, preds), "naive keyword baseline": quality.score(truths, base)}
    table = quality.markdown_table(scores, note=f"{len(truths)} Kaggle products with catalogue attributes.")
    return table, scores


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas"},
          description="Attributes from title + description, JSON-schema validated and normalised to "
                      "controlled vocabularies; backend (rules | transformers | vllm) set on the extractor resource.",
          **gpu_declarations("product_attributes"))
def product_attributes(context: dg.AssetExecutionContext, clean_products: pd.DataFrame,
                       extractor: ExtractorResource) -> dg.Output[pd.DataFrame]:
    brands = clean_products["brand"].dropna().unique().tolist()
    runner = extractor.build(brands)
    products = [ProductText(pid, title, desc or "", brand if isinstance(brand, str) and brand else None)
                for pid, title, desc, brand in zip(clean_products["product_id"], clean_products["title"],
                                                   clean_products["description"].fillna(""), clean_products["brand"])]

    def progress(done: int, total: int) -> None:
        if done == total or done % (runner.batch_size * 10) == 0:
            context.log.info(f"extracted {done}/{total} uncached products")

    results, stats = runner.run(products, progress=progress)
    df = pd.DataFrame(results_to_records(results, runner.backend, runner.model))
    table, scores = quality_report(clean_products, results, runner.backend, extractor.max_description_chars)
    if stats.fell_back:
        context.log.warning(f"{stats.fell_back} rows fell back to rules; e.g. {stats.failure_examples[:2]}")
    meta = {
        "backend": runner.backend,
        "model": runner.model,
        "prompt_version": f"{PROMPT_VERSION} ({prompt_fingerprint()})",
        "rows": stats.rows,
        "rows_cached": stats.cached,
        "rows_computed": stats.computed,
        "rows_failed_validation": stats.failed_validation,
        "rows_hit_max_tokens": stats.hit_max_tokens,
        "rows_fell_back_to_rules": stats.fell_back,
        "rows_truncated": stats.truncated,
        "rows_empty_description": stats.empty_description,
        "rows_non_english": stats.non_english,
        "unknown_values_dropped": stats.unknown_values_dropped,
        "cache_entries_corrupted": stats.cache_corrupted,
        "seconds": round(stats.seconds, 2),
        "rows_per_s": dg.MetadataValue.float(float(stats.rows_per_s) if stats.computed else 0.0),
        "output_tokens_per_s": dg.MetadataValue.float(
            float(stats.output_tokens_per_s) if stats.output_tokens else 0.0),
        "fill_rates": dg.MetadataValue.json(fill_rates(results)),
        "status_counts": md.counts_table(df["status"], "status"),
        "quality_vs_catalogue": dg.MetadataValue.md(table),
        "material_accuracy": dg.MetadataValue.float(float(scores[runner.backend]["material"].accuracy)
                                                    if scores[runner.backend]["material"].n_truth else 0.0),
        "preview": md.preview(df),
    }
    return dg.Output(df, metadata=meta)
