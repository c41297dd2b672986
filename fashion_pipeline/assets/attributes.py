"""Structured product attributes (brand, materials, care, fit, pattern, occasion, style)
extracted from title + description; the logic lives in fashion_pipeline.core.extraction."""

import json
import time
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from fashion_pipeline import metadata as md
from fashion_pipeline import reuse
from fashion_pipeline.core.fingerprint import code_digest, combine, frame_digest
from fashion_pipeline.core.model_store import ModelCorruptError
from fashion_pipeline.core.extraction import brands as brandmod
from fashion_pipeline.core.extraction import learned, quality
from fashion_pipeline.core.extraction.pipeline import ProductText, fill_rates, results_to_records
from fashion_pipeline.core.extraction.prompt import PROMPT_VERSION, prompt_fingerprint
from fashion_pipeline.core.extraction.rules import NaiveKeywordBaseline
from fashion_pipeline.core.extraction.prepared_text import PreparedTextStore, prepare
from fashion_pipeline.core.threads import WorkerPool, resolve_threads
from fashion_pipeline.core.token_counts import TokenCaches
from fashion_pipeline.gpu import gpu_declarations
from fashion_pipeline.paths import token_cache_dir
from fashion_pipeline.resources.extraction import ExtractorResource
from fashion_pipeline.resources.model_store import ModelStoreResource
from fashion_pipeline.resources.warehouse import WarehouseResource

GROUP = "attributes"
EXTRACTOR_MODEL = learned.STORE_NAME
# What the extractor's training reads from clean_products (its input fingerprint).
TRAINING_COLUMNS = ["product_id", "title", "description", "article_attributes", "source_category", "split", "brand"]


class AttributeExtractorConfig(dg.Config):
    mode: Literal["retrain", "select"] = Field(default="retrain", description=(
        "retrain (the weekly schedule, the sensor): each attribute refits with the C the published extractor "
        "chose on validation; an attribute it lacks, or a store with no extractor, searches `c_grid`. select "
        "(model_selection_job): every attribute searches `c_grid` on validation."))
    min_precision: float = Field(default=0.5, gt=0, lt=1, description=(
        "Answer 'unknown' below the confidence where validation guesses are right less often than this."))
    c_grid: list[float] = Field(default=list(learned.DEFAULT_C_GRID), description=(
        "LinearSVC regularisation values tried per attribute; the best on validation rows is kept."))
    max_description_chars: int = Field(default=2000, description="Descriptions are cut to this many characters.")
    publish_margin_se: float = Field(default=2.0, ge=0, description=(
        "mode retrain: the refitted extractor replaces the published one only when its validation accuracy (as "
        "shipped, pooled over attributes) is higher by more than this many paired standard errors; otherwise it is "
        "stored unpublished and the published one keeps serving, so product_attributes recomputes and "
        "product_embeddings re-encodes only new products. 0: publish whenever it is better at all. "
        "model_selection_job (mode select) always publishes."))
    processes: int | None = Field(default=None, ge=1, description=(
        "Worker processes for the LinearSVC fits (every C and attribute, and the recipe's, is its own fit; "
        "liblinear is single-threaded and cannot share a process's threads reproducibly); default: the cores "
        "available to the run's process. The fitted extractor is the same with any number. 1: in the run's "
        "own process."))


@dg.asset(group_name=GROUP, kinds={"scikitlearn", "duckdb"},
          description="Learned attribute extractor: TF-IDF + calibrated LinearSVC per attribute (material, care, fit, "
                      "pattern, occasion) trained on the Kaggle catalogue's own articleAttributes (train split; C chosen "
                      "on validation by model selection and reused by the weekly retrain, the 'unknown' threshold "
                      "on validation every run), plus the brand matcher. Saved to the model store and "
                      "published (by a retrain only when measurably better on validation than the published "
                      "one); the table is its test-split report next to the TF-IDF + LinearSVC recipe.")
def attribute_extractor(context: dg.AssetExecutionContext, config: AttributeExtractorConfig,
                        clean_products: pd.DataFrame, model_store: ModelStoreResource,
                        warehouse: WarehouseResource) -> dg.Output[pd.DataFrame]:
    store = model_store.store()
    tuned_c, mode_note = retrain_c(store, config)
    context.log.info(f"mode {config.mode}: {mode_note}")
    fingerprint = combine({"products": frame_digest(clean_products[TRAINING_COLUMNS]),
                           "config": config.model_dump(), "tuned_c": tuned_c, "code": code_digest()})

    def serving(metadata) -> str:  # what that run published: its candidate, or the extractor it kept
        return str((metadata.get(PUBLISHED_KEY) or metadata["store_version"]).value)

    def still_there(event) -> bool:
        meta = event.asset_materialization.metadata
        return {str(meta["store_version"].value), serving(meta)} <= set(store.versions(EXTRACTOR_MODEL))

    if (previous := reuse.reused_table(context, "attribute_extractor", fingerprint, warehouse.read_table,
                                       still_there=still_there)) is not None:
        store.publish(EXTRACTOR_MODEL, serving(previous.metadata))  # serve what that run decided to serve
        return previous
    t0 = time.perf_counter()
    # The last run's prepared catalogue texts (HTML stripped, cut, language-checked): only new and edited
    # texts are prepared again, here and in the steps after this one in the process (product_attributes).
    prepared_store = PreparedTextStore(token_cache_dir() / "extractor_prepared_texts.pkl")
    prepared_store.load()
    calls = [(t, d, config.max_description_chars)
             for t, d in zip(clean_products["title"], clean_products["description"].fillna(""))]
    texts = [prepare(*c) for c in calls]
    prepared_store.save(calls, texts)
    context.log.info(f"prepared {len(texts)} catalogue texts ({prepared_store.note})")
    truths = [quality.catalogue_truth(v) for v in clean_products["article_attributes"]]
    unknown_gold = _unknown_gold_values(clean_products["article_attributes"], truths)
    splits = clean_products["split"].tolist()
    # The model, the recipe and the report tokenise each text once; a text the last run counted, not at all.
    caches = TokenCaches(token_cache_dir(), "extractor")
    tokens = caches.memo_for(learned.text_vectorizer())
    with WorkerPool(resolve_threads(config.processes)) as pool:  # the model's and the recipe's LinearSVC fits
        try:
            model = learned.fit(texts, truths, clean_products["source_category"].tolist(), splits,
                                clean_products["title"].tolist(), clean_products["brand"].tolist(),
                                min_precision=config.min_precision, c_grid=config.c_grid,
                                progress=lambda m: context.log.info(m), tuned_c=tuned_c, tokens=tokens,
                                processes=pool)
        except ValueError as e:
            raise dg.Failure(description=f"attribute_extractor cannot be trained: {e}") from e
        train_s = time.perf_counter() - t0
        test = [s == "test" for s in splits]
        test_texts = [t for t, m in zip(texts, test) if m]
        test_truths = [t for t, m in zip(truths, test) if m]
        recipe = learned.reference_recipe(texts, truths, [s == "train" for s in splits], test, tokens=tokens,
                                          processes=pool)
    report = pd.DataFrame(learned.evaluate(model, test_texts, test_truths, recipe, tokens=tokens))
    context.log.info(f"text tokenisation: {tokens.counts['texts_tokenised']} distinct texts tokenised and "
                     f"{tokens.counts['texts_from_cache']} counted by the last run for {tokens.counts['texts_requested']} "
                     f"fitted or transformed (cache {tokens.cache_note})")
    caches.save()
    report.insert(0, "split", "test")
    brand = brandmod.score_titles(model.brands.find, model.brands.brands, clean_products["title"][test], clean_products["brand"][test])
    metrics = {"test": report.to_dict("records"), "brand_test": brand, "train_seconds": round(train_s, 1)}
    version = store.save(EXTRACTOR_MODEL, model, metrics,
                         {"input": "title + description (HTML stripped)", **model.describe()})
    val = [s == "validation" for s in splits]
    publish, why, comparison = publish_decision(store, config, model, [t for t, m in zip(texts, val) if m],
                                                [t for t, m in zip(truths, val) if m])
    serving = version if publish else comparison["published_before"]
    store.publish(EXTRACTOR_MODEL, serving)
    shipped = report[report["extractor"] == "learned"].set_index("attribute")
    context.log.info(f"attribute_extractor {version} ({model.version}) trained in {train_s:.0f}s; "
                     + (f"published: {why}" if publish else f"{serving} stays published: {why}"))
    return dg.Output(report, metadata={
        "store_version": version,
        PUBLISHED_KEY: serving,
        "publish_decision": why,
        "validation_vs_published": dg.MetadataValue.json(comparison),
        "model_version": model.version,
        "mode": mode_note,
        "train_seconds": round(train_s, 1),
        "report": dg.MetadataValue.md(report.to_markdown(index=False, floatfmt=".3f")),
        **{f"test_accuracy_{a}": dg.MetadataValue.float(float(shipped.loc[a, "accuracy"]))
           for a in shipped.index if shipped.loc[a, "n"]},
        "brand_found_in_titles": dg.MetadataValue.float(float(brand["found"]) if brand["titles_with_known_brand"] else 0.0),
        "brand_wrong_in_titles": dg.MetadataValue.float(float(brand["wrong"]) if brand["titles_with_known_brand"] else 0.0),
        "brand_titles_scored": brand["titles_with_known_brand"],
        "gold_values_outside_vocabulary": dg.MetadataValue.json(unknown_gold),
        "thresholds": dg.MetadataValue.json({a: h["threshold"] for a, h in model.describe()["heads"].items()}),
        "brands": dg.MetadataValue.json(model.brands.describe()),
        "text_tokenisation": dg.MetadataValue.json(caches.describe()),
        "prepared_texts": prepared_store.note,
        reuse.FINGERPRINT_KEY: fingerprint,
    })


PUBLISHED_KEY = "published_version"


def publish_decision(store, config: AttributeExtractorConfig, candidate: learned.LearnedAttributeModel,
                     val_texts: list, val_truths: list[dict]) -> tuple[bool, str, dict]:
    """(publish the candidate?, why, the validation comparison). A selection publishes its winner; a
    retrain replaces the published extractor only when it is measurably better on validation
    (`learned.replaces_published`), or when there is none to keep (nothing published, unreadable,
    other attributes)."""
    if config.mode == "select":
        return True, "model selection publishes its choice", {}
    try:
        info = store.published(EXTRACTOR_MODEL)
        if info is None:
            return True, "nothing published before", {}
        published, _ = store.load(EXTRACTOR_MODEL, str(info["version"]))
    except Exception as e:  # a damaged or foreign model: nothing worth keeping
        return True, f"the published {EXTRACTOR_MODEL} could not be loaded ({type(e).__name__}: {e})", {}
    if sorted(getattr(published, "heads", {})) != sorted(candidate.heads):
        return True, (f"the candidate has heads for {sorted(candidate.heads)}, the published {info['version']} for "
                      f"{sorted(getattr(published, 'heads', {}))}"), {}
    comparison = learned.paired_accuracy(candidate, published, val_texts, val_truths)
    publish, why = learned.replaces_published(comparison, config.publish_margin_se)
    return publish, why, {"published_before": str(info["version"]), **comparison}


def retrain_c(store, config: AttributeExtractorConfig) -> tuple[dict[str, float], str]:
    """{attribute: C} the retrain reuses — the published extractor's choices among the configured
    grid (recorded in its info.json) — or {} to search; and why."""
    if config.mode == "select":
        return {}, f"searching C in {config.c_grid} per attribute on validation"
    try:
        info = store.published(EXTRACTOR_MODEL)
    except ModelCorruptError as e:
        return {}, f"published {EXTRACTOR_MODEL} unreadable ({e}): searching C in {config.c_grid}"
    heads = ((info or {}).get("features_spec") or {}).get("heads") or {}
    tuned = {a: float(h["C"]) for a, h in heads.items() if isinstance(h, dict) and h.get("C") in config.c_grid}
    if not tuned:
        why = "nothing published" if info is None else f"{EXTRACTOR_MODEL} {info['version']} records no C from this grid"
        return {}, f"{why}: searching C in {config.c_grid} per attribute on validation"
    return tuned, (f"refitting with the C the published {EXTRACTOR_MODEL} {info['version']} chose {tuned} "
                   "(model_selection_job searches again)")


def _unknown_gold_values(article_attributes: pd.Series, truths: list[dict]) -> dict[str, int]:
    """Catalogue values that map to no vocabulary entry (left out of training), counted per field.
    ``truths``: `quality.catalogue_truth` of each row (each object is parsed once)."""
    counts: dict[str, int] = {}
    for v, truth in zip(article_attributes, truths):
        if not isinstance(v, (str, dict)):  # missing (None, NaN): no catalogue values
            continue
        v = json.loads(v) if isinstance(v, str) and v else v  # (catalogue_truth parsed it already)
        for field, keys in (("material", ("Fabric", "Material")), ("care", ("Wash Care",)), ("fit", ("Fit",)),
                            ("pattern", ("Pattern", "Print or Pattern Type")), ("occasion", ("Occasion",))):
            raw = quality.raw_values(v, keys)
            if raw and field not in truth:
                counts[field] = counts.get(field, 0) + 1
    return counts


def quality_report(clean_products: pd.DataFrame, results: list, backend: str,
                   max_description_chars: int) -> tuple[str, dict]:
    """Score against Kaggle's catalogue attributes (never shown to the extractor), next to the naive
    baseline, on the test split (the learned extractor trained on the train split)."""
    has_truth = (clean_products["article_attributes"].notna() & (clean_products["split"] == "test")).to_numpy()
    truths = [quality.catalogue_truth(v) for v in clean_products["article_attributes"][has_truth]]
    preds = [r.attributes for r, keep in zip(results, has_truth) if keep]
    naive = NaiveKeywordBaseline()
    base = [naive.extract(prepare(t, d, max_description_chars))
            for t, d in zip(clean_products["title"][has_truth], clean_products["description"][has_truth])]
    scores = {backend: quality.score(truths, preds), "naive keyword baseline": quality.score(truths, base)}
    table = quality.markdown_table(scores, note=f"{len(truths)} test-split Kaggle products with catalogue attributes.")
    return table, scores


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas"},
          description="Attributes from title + description, JSON-schema validated and normalised to "
                      "controlled vocabularies; backend (learned | rules | transformers | vllm) set on the extractor "
                      "resource.",
          **gpu_declarations("product_attributes"))
def product_attributes(context: dg.AssetExecutionContext, clean_products: pd.DataFrame,
                       attribute_extractor: pd.DataFrame, extractor: ExtractorResource,
                       model_store: ModelStoreResource, warehouse: WarehouseResource) -> dg.Output[pd.DataFrame]:
    published = model_store.store().published(EXTRACTOR_MODEL) if extractor.backend == "learned" else None
    fingerprint = combine({
        "products": frame_digest(clean_products[["product_id", "title", "description", "brand",
                                                 "article_attributes", "split"]]),
        "extractor": reuse.resource_config(extractor, exclude=("cache_retention_days",)),
        "learned_version": (published or {}).get("version"),
        "code": code_digest()})
    if (previous := reuse.reused_table(context, "product_attributes", fingerprint, warehouse.read_table)) is not None:
        return previous
    brands = clean_products["brand"].dropna().unique().tolist()
    model = None
    if extractor.backend == "learned":
        model, _ = model_store.store().load(EXTRACTOR_MODEL)
    runner = extractor.build(brands, learned=model)
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
        "rows_rules_reused": stats.rules_reused,
        "cache_entries_dropped": stats.cache_dropped,
        "cache_entries_expired": stats.cache_expired,
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
        reuse.FINGERPRINT_KEY: fingerprint,
    }
    return dg.Output(df, metadata=meta)
