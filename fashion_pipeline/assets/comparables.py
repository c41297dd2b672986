"""price_comparables: the faiss index of catalogue products that scoring cites as comparables.

Built once per published price model, right after ``published_price_regressor``, from the
train + validation catalogue rows (never test) and their product_embeddings, and saved in the
model store as ``price_comparables`` with the price model version it serves (a retrain adds its new
products onto the published index when none of the indexed ones changed). The scoring CLI
and ``scored_listings`` load it once per run (core.comparables.load_for_price_model).
Logic: fashion_pipeline.core.comparables.
"""


import time

import dagster as dg
import pandas as pd
from pydantic import Field

from fashion_pipeline import reuse
from fashion_pipeline.automation import EAGER_WHEN_GATES_PASS
from fashion_pipeline.assets.regressors import GROUP, published_price_regressor
from fashion_pipeline.core import comparables
from fashion_pipeline.core.fingerprint import code_digest, combine, frame_digest
from fashion_pipeline.embedding_inputs import EMBEDDINGS_ASSET, read_catalogue_embeddings
from fashion_pipeline.core.scoring import PRICE_MODEL_NAME
from fashion_pipeline.resources.model_store import ModelStoreResource


class ComparablesConfig(dg.Config):
    embeddings_path: str | None = Field(
        default=None,
        description="product_embeddings Parquet; default: the path recorded by the latest product_embeddings "
        "materialization, else <var dir>/embeddings/product_embeddings.parquet.")
    splits: list[str] = Field(default=list(comparables.CATALOGUE_SPLITS),
                              description="Catalogue splits the comparables come from (never 'test': the hold-out).")
    extend: bool = Field(default=True, description=(
        "Add the new products onto the published index instead of rebuilding it, when every product it holds "
        "is still in the catalogue with the same embedding (new titles and prices are taken over) and the "
        "index kind stays the same; otherwise, or when false, the index is built from scratch. Metadata "
        "`built` says which and why."))


@dg.asset(group_name=GROUP, kinds={"faiss", "parquet"},
          deps=[published_price_regressor, EMBEDDINGS_ASSET],
          description="Nearest-neighbour index (faiss: exact IndexFlatIP, HNSW from 10k rows; normalised image + text embeddings) of "
                      "the priced train + validation catalogue products, saved next to the published price model "
                      "and versioned with it; scoring cites the k most similar products per listing.",
          automation_condition=EAGER_WHEN_GATES_PASS)
def price_comparables(context: dg.AssetExecutionContext, config: ComparablesConfig, clean_products: pd.DataFrame,
                      model_store: ModelStoreResource) -> dg.MaterializeResult:
    if "test" in config.splits:
        raise dg.Failure(description="price_comparables must not be built from the test split (the hold-out)")
    store = model_store.store()
    published = store.published(PRICE_MODEL_NAME)
    if published is None:
        raise dg.Failure(description=f"no published {PRICE_MODEL_NAME}: materialize published_price_regressor first")
    catalogue, emb_note = read_catalogue_embeddings(context, config.embeddings_path)
    if catalogue is None:  # not a failure: scoring works without embeddings, and says why there are no comparables
        context.log.warning(f"no comparables index built: {emb_note}")
        return dg.MaterializeResult(metadata={"index_size": dg.MetadataValue.int(0), "embeddings": emb_note,
                                              "price_model_version": str(published["version"]),
                                              "skipped": "no product embeddings: nothing to index"})
    encoder = catalogue.encoder
    fingerprint = combine({"products": frame_digest(clean_products), "embeddings": catalogue.digest(),
                           "config": config.model_dump(exclude={"embeddings_path"}),
                           "price_model_version": str(published["version"]), "code": code_digest()})
    index_kept = lambda event: str(  # noqa: E731 - the index it built is still in the store
        event.asset_materialization.metadata["version"].value) in store.versions(comparables.COMPARABLES_NAME)
    if (previous := reuse.reused_result(context, "price_comparables", fingerprint, still_there=index_kept)) is not None:
        return previous
    t0 = time.perf_counter()
    # Handed over: the file's matrices are freed once the catalogue rows are aligned.
    items, image, text = comparables.catalogue_items(clean_products, catalogue.release(), tuple(config.splits))
    index, how = None, "extend is off"
    if config.extend:
        previous, how = _published_index(store)
        if previous is not None:
            index, why = comparables.ComparablesIndex.extend(previous, items, image, text)
            how = f"{how}: {why}"
    if index is None:
        index = comparables.ComparablesIndex.build(items, image, text)
        how = f"built from scratch ({how})"
    else:
        how = f"extended {how}"
    del image, text
    build_s = time.perf_counter() - t0
    price_version = str(published["version"])
    version = comparables.save_to_store(store, index, price_version,
                                        {"embeddings": emb_note, "splits": list(config.splits), "encoder": encoder})
    context.log.info(f"{comparables.COMPARABLES_NAME} {version}: {index.size} products x {index.dimension} dims "
                     f"for {PRICE_MODEL_NAME} {price_version} in {build_s:.1f} s; {how}")
    by_source = items.loc[:, "source"].value_counts().to_dict() if len(items) else {}
    return dg.MaterializeResult(metadata={
        "version": version,
        "price_model_version": price_version,
        "index_size": dg.MetadataValue.int(index.size),
        "dimension": dg.MetadataValue.int(index.dimension),
        "dims": dg.MetadataValue.json(index.dims),
        "build_seconds": dg.MetadataValue.float(float(index.info["build_seconds"])),
        "total_seconds": dg.MetadataValue.float(round(build_s, 2)),
        "faiss_index": index.info["faiss_index"],
        "built": how,
        "rows": dg.MetadataValue.json({k: index.info[k] for k in (
            "rows_given", "rows_without_embedding", "rows_image_and_text", "rows_image_only", "rows_text_only")}),
        "catalogue_rows_by_source": dg.MetadataValue.json({str(k): int(v) for k, v in by_source.items()}),
        "splits": dg.MetadataValue.json(list(config.splits)),
        "embeddings": emb_note,
        reuse.FINGERPRINT_KEY: fingerprint,
    })


def _published_index(store) -> tuple[comparables.ComparablesIndex | None, str]:
    """The published comparables index (the one the previous price model served with) and its
    name, or None and why there is none to extend."""
    name = comparables.COMPARABLES_NAME
    try:
        info = store.published(name)
        if info is None:
            return None, "nothing published"
        folder, _ = store.load_files(name, str(info["version"]))
        return comparables.ComparablesIndex.load(folder), f"{name} {info['version']}"
    except Exception as e:  # damaged or of an older format: rebuilt
        return None, f"the published {name} could not be loaded: {type(e).__name__}: {e}"
