"""product_clusters + clustering_metrics: K-Means, Gaussian mixture and DEC on embeddings alone.

Logic: fashion_pipeline.core.clustering (and core.models.dec). Categories are only used to
score the clusterings, never to form them.
"""


from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field
from threadpoolctl import threadpool_limits

from fashion_pipeline import metadata as md
from fashion_pipeline import reuse
from fashion_pipeline.core.fingerprint import code_digest, combine, frame_digest
from fashion_pipeline.core.clustering import METHODS, ClusteringConfig, ClusteringModel, cluster_products
from fashion_pipeline.core.figures import scatter_2d_png
from fashion_pipeline.core.threads import resolve_threads
from fashion_pipeline.embedding_inputs import EMBEDDINGS_ASSET, require_catalogue_embeddings
from fashion_pipeline.resources.model_store import ModelStoreResource
from fashion_pipeline.resources.warehouse import WarehouseResource

GROUP = "models"


CLUSTERER_MODEL = "product_clusterer"


class ClusteringAssetConfig(dg.Config):
    mode: Literal["retrain", "select"] = Field(default="retrain", description=(
        "retrain (the weekly schedule, the sensor): continue from the clusterer the previous run stored "
        f"(model store name '{CLUSTERER_MODEL}'): its PCA projection is kept, k-means and the Gaussian mixture start "
        "from its centres / components, DEC continues self-training from its autoencoder and centres (no "
        "pre-training) — so cluster numbers keep their meaning from week to week; fitted afresh when nothing is "
        "stored or it does not fit the config (metadata `start`). select (model_selection_job): everything fitted "
        "afresh."))
    methods: list[str] = Field(default=list(METHODS), description="Any of kmeans, gmm, dec.")
    n_clusters: int = Field(default=11, ge=2, description="Clusters per method (11 = the number of categories).")
    inputs: str = Field(default="both", description="Embeddings clustered: image, text or both (concatenated).")
    pca_components: int = Field(default=64, ge=2, description="PCA dimensions all methods cluster in.")
    dec_pretrain_epochs: int = Field(default=10, ge=1, description="DEC autoencoder pre-training epochs.")
    dec_max_iter: int = Field(default=600, ge=1, description="DEC self-training mini-batch steps (upper bound).")
    dec_warm_max_iter: int = Field(default=150, ge=1, description=(
        "mode retrain: DEC self-training steps (upper bound) when continuing the stored clusterer. Self-training "
        "rarely meets its stopping tolerance (0.1% of assignments changed between target updates), so a warm "
        "start ran all `dec_max_iter` steps: ~7 s of a +1% retrain on the full development data (2 cores). 150 "
        "steps of 256 rows visit about as many rows as the catalogue holds."))
    dec_update_interval: int = Field(default=50, ge=1, description="Steps between DEC target-distribution updates.")
    silhouette_sample: int = Field(default=2000, ge=10, description="Products in the sampled silhouette.")
    seed: int = Field(default=0, description="Random seed for every method.")
    threads: int | None = Field(default=None, ge=1, description=(
        "Threads for DEC (torch), k-means and PCA (BLAS / OpenMP); default: the cores available to the run's "
        "process. On a CPU shared with other busy processes spinning threads were measured 5x slower: set 1 there."))
    embeddings_path: str | None = Field(default=None, description=(
        "product_embeddings Parquet; default: the path recorded by the product_embeddings asset."))


def previous_clusterer(store, config: ClusteringAssetConfig) -> tuple[ClusteringModel | None, str | None, str]:
    """(the stored clusterer a retrain continues from, its version, what the run does and why)."""
    if config.mode == "select":
        return None, None, "fitting every method afresh (select)"
    versions = store.versions(CLUSTERER_MODEL)
    if not versions:
        return None, None, f"fitting every method afresh: no {CLUSTERER_MODEL} stored yet"
    try:
        model, info = store.load(CLUSTERER_MODEL, versions[-1])
    except Exception as e:  # damaged or written by other code: fit afresh, and say so
        return None, None, f"fitting every method afresh: {CLUSTERER_MODEL} {versions[-1]} could not be loaded ({type(e).__name__}: {e})"
    if not isinstance(model, ClusteringModel):
        return None, None, f"fitting every method afresh: {CLUSTERER_MODEL} {versions[-1]} is a {type(model).__name__}"
    return model, str(info["version"]), (f"continuing from {CLUSTERER_MODEL} {info['version']} (its projection, "
                                         f"centres and DEC autoencoder; methods {sorted(model.methods)})")


@dg.multi_asset(
    group_name=GROUP,
    deps=[EMBEDDINGS_ASSET],
    outs={
        "product_clusters": dg.AssetOut(kinds={"pytorch", "duckdb"}, description=(
            "Cluster of every product (with embeddings) under each method: product_id, category, cluster_<method>.")),
        "clustering_metrics": dg.AssetOut(kinds={"duckdb"}, description=(
            "Per method: NMI, ARI, purity against the known categories, sampled silhouette, seconds.")),
    },
)
def product_clusters(context: dg.AssetExecutionContext, config: ClusteringAssetConfig, clean_products: pd.DataFrame,
                     warehouse: WarehouseResource, model_store: ModelStoreResource):
    emb = require_catalogue_embeddings(context, config.embeddings_path)
    path = emb.path
    store = model_store.store()
    warm, warm_version, start_note = previous_clusterer(store, config)
    context.log.info(f"mode {config.mode}: {start_note}")
    fingerprint = combine({
        "products": frame_digest(clean_products[["product_id", "source", "category"]]),
        "embeddings": emb.digest(),
        # Not the clusterer a retrain continues from: that is this asset's own previous output, so naming
        # it would make every run's inputs differ from the last one's and nothing would ever be reused.
        "config": config.model_dump(exclude={"threads", "embeddings_path"}), "code": code_digest()})
    reused = [reuse.reused_table(context, key, fingerprint, warehouse.read_table, output_name=key)
              for key in ("product_clusters", "clustering_metrics")]
    if all(r is not None for r in reused):
        yield from reused
        return
    image, text, no_row = emb.aligned(clean_products)
    cfg = ClusteringConfig(
        n_clusters=config.n_clusters, inputs=config.inputs, pca_components=config.pca_components,
        methods=tuple(config.methods), seed=config.seed, silhouette_sample=config.silhouette_sample,
        dec_pretrain_epochs=config.dec_pretrain_epochs, dec_max_iter=config.dec_max_iter,
        dec_warm_max_iter=config.dec_warm_max_iter,
        dec_update_interval=config.dec_update_interval, n_threads=resolve_threads(config.threads),
    )
    with threadpool_limits(limits=resolve_threads(config.threads)):  # BLAS / OpenMP pools too (k-means, PCA)
        assign, metrics, extras = cluster_products(
            clean_products["product_id"].tolist(), image, text, clean_products["category"], cfg, context.log.info,
            warm=warm)
    if extras["warm_note"]:
        start_note = f"{extras['warm_note']} ({CLUSTERER_MODEL} {warm_version})"
        context.log.warning(f"fitted afresh: {start_note}")
    version = store.save(CLUSTERER_MODEL, extras["model"], {"clustering": metrics.to_dict("records")},
                         {"inputs": cfg.inputs, "n_clusters": cfg.n_clusters, "methods": list(cfg.methods),
                          "warm_from": warm_version if not extras["warm_note"] else None})
    wide = assign.pivot(index="product_id", columns="method", values="cluster").add_prefix("cluster_").reset_index()
    wide.columns.name = None
    wide = wide.merge(clean_products[["product_id", "source", "category"]], on="product_id", how="left")
    wide = wide[["product_id", "source", "category", *[f"cluster_{m}" for m in cfg.methods]]]

    kept_categories = clean_products["category"].to_numpy()[extras["kept"]]
    plots = {}
    for m in cfg.methods:
        labels = assign.loc[assign.method == m, "cluster"].to_numpy()
        plots[f"plot_{m}"] = md.png(scatter_2d_png(extras["xy"], [f"c{c}" for c in labels],
                                                   f"{m}: clusters (PCA of the clustering input)"), m)
    plots["plot_categories"] = md.png(scatter_2d_png(extras["xy"], kept_categories, "known categories (same PCA)"),
                                      "categories")
    metrics_md = dg.MetadataValue.md(metrics.round(4).to_markdown(index=False))
    dropped = {
        "dropped/missing_embedding": dg.MetadataValue.int(extras["dropped_missing_embedding"]),
        "dropped/no_embedding_row": dg.MetadataValue.int(no_row),
    }
    yield dg.Output(wide, output_name="product_clusters", metadata={
        "metrics": metrics_md, **plots, **dropped, "embeddings_path": dg.MetadataValue.path(str(path)),
        "start": start_note, "clusterer_version": version,
        "methods": dg.MetadataValue.json({m: {"start": i["start"], "seconds": i["seconds"]}
                                          for m, i in extras["info"].items()}),
        "preview": md.preview(wide), reuse.FINGERPRINT_KEY: fingerprint,
    })
    yield dg.Output(metrics, output_name="clustering_metrics", metadata={
        "metrics": metrics_md,
        **{f"{r.method}/nmi": dg.MetadataValue.float(float(r.nmi)) for r in metrics.itertuples()},
        **{f"{r.method}/purity": dg.MetadataValue.float(float(r.purity)) for r in metrics.itertuples()},
        reuse.FINGERPRINT_KEY: fingerprint,
    })
