"""Scoring the incoming listings folder with the published models (logic: core/scoring.py)."""


from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from fashion_pipeline import metadata as md
from fashion_pipeline.automation import EAGER_WHEN_GATES_PASS
from fashion_pipeline.core import scoring
from fashion_pipeline.core.reports import DropReport
from fashion_pipeline.paths import resolve
from fashion_pipeline.resources.model_store import ModelStoreResource

from .regressors import GROUP, published_price_regressor

LISTING_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv")


class ScoringConfig(dg.Config):
    incoming_dir: str = Field(
        default="data/incoming",
        description="Folder of new listings: .json / .jsonl / .csv files (title, description, image_path) "
        "and/or sub-folders in the Kaggle or H&M dataset layout. Relative to the project root.",
    )
    encoder_backend: str | None = Field(default=None, description=(
        "Embedding backend for listings; default: the encoder the published models record (backend, weights, "
        "preprocessing). Another encoder than the recorded one fails the run."))
    embed: bool = Field(default=True, description="Compute image/text embeddings for the listings.")
    extract_attributes: bool = Field(default=True, description="Run the rules attribute extractor on listings.")
    classify: bool = Field(default=True, description=(
        "Predict category / gender / usage with the published classifiers (a valid value stated by the listing wins)."))
    comparables: int = Field(default=5, ge=0, description=(
        "The k most similar catalogue products per listing (index price_comparables of the published price "
        "model); 0 disables."))


def listing_sources(folder: Path) -> list[Path]:
    """Listing files and dataset-layout sub-folders directly inside ``folder`` (sorted)."""
    if (folder / "styles.csv").exists() or (folder / "articles.csv").exists():
        return [folder]
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in LISTING_FILE_SUFFIXES:
            out.append(p)
        elif p.is_dir() and ((p / "styles.csv").exists() or (p / "articles.csv").exists()):
            out.append(p)
    return out


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas"}, deps=[published_price_regressor, dg.AssetKey("published_classifiers"),
                                                         dg.AssetKey("price_comparables")],
          description="New listings from the incoming folder with category, gender, usage, extracted attributes, "
                      "a suggested USD price with an interval, and flags for what was missing or odd.",
          automation_condition=EAGER_WHEN_GATES_PASS)
def scored_listings(context: dg.AssetExecutionContext, config: ScoringConfig,
                    model_store: ModelStoreResource) -> dg.Output[pd.DataFrame]:
    store = model_store.store()
    try:
        model, info = scoring.load_published_price_model(store)
    except scoring.NoPublishedModelError as e:
        raise dg.Failure(description=str(e)) from e
    folder = resolve(config.incoming_dir)
    report = DropReport()
    frames = []
    if not folder.is_dir():
        report.add("incoming_folder_missing", str(folder))
    else:
        for src in listing_sources(folder):
            try:
                frame = scoring.read_listings(src, report=report)
            except Exception as e:  # one unreadable file must not stop the others; counted below
                report.add("unreadable_listing_source", f"{src.name}: {e}")
                continue
            frame["product_id"] = [f"{src.stem}/{pid}" if len(frame) else pid for pid in frame["product_id"]]
            frames.append(frame)
    listings = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["product_id", "title"])
    context.log.info(f"scoring {len(listings)} listings from {folder}")
    from fashion_pipeline.core.encoders.record import EncoderMismatchError

    try:
        serving = scoring.load_serving(store, model, info, classify=config.classify,
                                       embed=config.embed and len(listings) > 0, extract=config.extract_attributes,
                                       comparables_k=config.comparables, encoder_backend=config.encoder_backend)
    except EncoderMismatchError as e:
        raise dg.Failure(description=str(e)) from e
    for warning in serving.warnings:
        context.log.warning(warning)
    classifiers = serving.classifiers
    scores, counts = scoring.score_listings(listings, model, info, embedder=serving.embedder,
                                            extractor=serving.extractor, classifiers=classifiers,
                                            comparables_index=serving.index, comparables_k=config.comparables)
    return dg.Output(scores, metadata={
        "incoming_dir": dg.MetadataValue.path(str(folder)),
        "price_model_version": str(info.get("version")),
        "listings": dg.MetadataValue.int(len(scores)),
        "flag_counts": dg.MetadataValue.json(counts),
        "stages": dg.MetadataValue.json(serving.notes),
        "classifier_versions": dg.MetadataValue.json(
            {scoring.classifier_name(t, r): str(i.get("version")) for (t, r), (_, i) in sorted(classifiers.items())}),
        "preview": md.preview(scores[["listing_id", "title", "category", "category_confidence", "gender", "usage",
                                      "price_usd", "price_low_usd", "price_high_usd",
                                      "comparables_median_price_usd", "flags"]]),
        **md.drops(report, "not_scored"),
    })
