"""product_clusters + clustering_metrics: K-Means, Gaussian mixture and DEC on embeddings alone.

Logic: fashion_pipeline.core.clustering (and core.models.dec). Categories are only used to
score the clusterings, never to form them.
"""


from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field
from threadpoolctl import threadpool_limits

from fashion_pipeline import metadata as md
from fashion_pipeline import reuse
from fashion_pipeline.core.fingerprint import array_digest, code_digest, combine, frame_digest
from fashion_pipeline.core.clustering import METHODS, ClusteringConfig, cluster_products
from fashion_pipeline.core.features import read_embeddings_file
from fashion_pipeline.core.plots import scatter_2d_png
from fashion_pipeline.core.threads import resolve_threads
from fashion_pipeline.paths import default_var_path, resolve
from fashion_pipeline.resources.warehouse import WarehouseResource

GROUP = "models"
EMBEDDINGS_ASSET = dg.AssetKey("product_embeddings")


def embeddings_path(context: dg.AssetExecutionContext, configured: str | None) -> Path:
    """The Parquet written by product_embeddings: configured path, else the path recorded in its
    latest materialization, else the embedding stage's default location."""
    if configured:
        return resolve(configured)
    event = context.instance.get_latest_materialization_event(EMBEDDINGS_ASSET)
    mat = event.asset_materialization if event is not None else None
    if mat is not None and "path" in mat.metadata:
        return Path(str(mat.metadata["path"].value))
    return resolve(default_var_path("embeddings", "product_embeddings.parquet"))


def load_embeddings(context, products: pd.DataFrame, configured: str | None):
    """Embeddings aligned to ``products`` rows: (image, text) arrays with NaN rows where missing,
    and the number of products with no embedding row at all."""
    import numpy as np

    path = embeddings_path(context, configured)
    if not path.is_file():
        raise FileNotFoundError(f"product_embeddings Parquet not found at {path}: materialize product_embeddings first")
    ids, image, text = read_embeddings_file(path)
    pos = {pid: i for i, pid in enumerate(ids)}
    rows = products["product_id"].map(pos)
    missing = int(rows.isna().sum())

    def align(arr):
        if arr is None:
            return None
        out = np.full((len(products), arr.shape[1]), np.nan, np.float32)
        ok = rows.notna().to_numpy()
        out[ok] = arr[rows[ok].astype(int).to_numpy()]
        return out

    context.log.info(f"embeddings from {path}: {len(ids)} rows, {missing} products without a row")
    return align(image), align(text), missing, path


class ClusteringAssetConfig(dg.Config):
    methods: list[str] = Field(default=list(METHODS), description="Any of kmeans, gmm, dec.")
    n_clusters: int = Field(default=11, ge=2, description="Clusters per method (11 = the number of categories).")
    inputs: str = Field(default="both", description="Embeddings clustered: image, text or both (concatenated).")
    pca_components: int = Field(default=64, ge=2, description="PCA dimensions all methods cluster in.")
    dec_pretrain_epochs: int = Field(default=10, ge=1, description="DEC autoencoder pre-training epochs.")
    dec_max_iter: int = Field(default=600, ge=1, description="DEC self-training mini-batch steps (upper bound).")
    dec_update_interval: int = Field(default=50, ge=1, description="Steps between DEC target-distribution updates.")
    silhouette_sample: int = Field(default=2000, ge=10, description="Products in the sampled silhouette.")
    seed: int = Field(default=0, description="Random seed for every method.")
    threads: int | None = Field(default=None, ge=1, description=(
        "Threads for DEC (torch), k-means and PCA (BLAS / OpenMP); default: the cores available to the run's "
        "process. On a CPU shared with other busy processes spinning threads were measured 5x slower: set 1 there."))
    embeddings_path: str | None = Field(default=None, description=(
        "product_embeddings Parquet; default: the path recorded by the product_embeddings asset."))


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
                     warehouse: WarehouseResource):
    image, text, no_row, path = load_embeddings(context, clean_products, config.embeddings_path)
    fingerprint = combine({
        "products": frame_digest(clean_products[["product_id", "source", "category"]]),
        "embeddings": array_digest(image, text),
        "config": config.model_dump(exclude={"threads", "embeddings_path"}), "code": code_digest()})
    reused = [reuse.reused_table(context, key, fingerprint, warehouse.read_table, output_name=key)
              for key in ("product_clusters", "clustering_metrics")]
    if all(r is not None for r in reused):
        yield from reused
        return
    cfg = ClusteringConfig(
        n_clusters=config.n_clusters, inputs=config.inputs, pca_components=config.pca_components,
        methods=tuple(config.methods), seed=config.seed, silhouette_sample=config.silhouette_sample,
        dec_pretrain_epochs=config.dec_pretrain_epochs, dec_max_iter=config.dec_max_iter,
        dec_update_interval=config.dec_update_interval, n_threads=resolve_threads(config.threads),
    )
    with threadpool_limits(limits=resolve_threads(config.threads)):  # BLAS / OpenMP pools too (k-means, PCA)
        assign, metrics, extras = cluster_products(
            clean_products["product_id"].tolist(), image, text, clean_products["category"], cfg, context.log.info)
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
        "preview": md.preview(wide), reuse.FINGERPRINT_KEY: fingerprint,
    })
    yield dg.Output(metrics, output_name="clustering_metrics", metadata={
        "metrics": metrics_md,
        **{f"{r.method}/nmi": dg.MetadataValue.float(float(r.nmi)) for r in metrics.itertuples()},
        **{f"{r.method}/purity": dg.MetadataValue.float(float(r.purity)) for r in metrics.itertuples()},
        reuse.FINGERPRINT_KEY: fingerprint,
    })
