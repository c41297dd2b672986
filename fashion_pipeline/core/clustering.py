"""Clustering products on their embeddings alone (the metadata-poor setting).

No titles, brands or labels go in: only the image and/or text embeddings. Known categories
are used afterwards, to score how well each clustering recovers them (NMI, ARI, purity), next
to an unsupervised silhouette on a seeded sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from fashion_pipeline.core.label_metrics import clustering_metrics, sampled_silhouette
from fashion_pipeline.core.models.dec import DEC

METHODS = ("kmeans", "gmm", "dec")


@dataclass
class ClusteringConfig:
    n_clusters: int = 11
    inputs: str = "both"  # image | text | both
    pca_components: int = 64
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    silhouette_sample: int = 2000
    dec_pretrain_epochs: int = 20
    dec_max_iter: int = 2000
    dec_update_interval: int = 50
    n_threads: int = 2


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def clustering_inputs(image: np.ndarray | None, text: np.ndarray | None, inputs: str = "both") -> tuple[np.ndarray, np.ndarray]:
    """Concatenate L2-normalised embeddings; rows lacking a required embedding are dropped.

    Returns (matrix, kept-row mask over the input rows).
    """
    blocks, keep = [], None
    if inputs not in ("image", "text", "both"):
        raise ValueError(f"inputs must be image, text or both, not {inputs!r}")
    for name, arr in (("image", image), ("text", text)):
        if inputs in (name, "both"):
            if arr is None:
                raise ValueError(f"clustering on {inputs!r} needs {name} embeddings")
            ok = np.all(np.isfinite(arr), axis=1)
            keep = ok if keep is None else keep & ok
            blocks.append(arr)
    x = np.hstack([_l2(np.nan_to_num(b[keep])) for b in blocks]).astype(np.float32)
    return x, keep


def reduce(x: np.ndarray, n_components: int, seed: int = 0) -> np.ndarray:
    """PCA (whitening off) then standardisation: the common input of all three methods."""
    k = min(n_components, x.shape[1], max(len(x) - 1, 1))
    z = PCA(k, random_state=seed).fit_transform(x)
    return StandardScaler().fit_transform(z).astype(np.float32)


def fit_method(method: str, x: np.ndarray, cfg: ClusteringConfig) -> tuple[np.ndarray, dict]:
    t0 = time.perf_counter()
    info: dict = {}
    if method == "kmeans":
        labels = KMeans(cfg.n_clusters, n_init=4, random_state=cfg.seed).fit_predict(x)
    elif method == "gmm":
        gm = GaussianMixture(cfg.n_clusters, covariance_type="diag", n_init=2, random_state=cfg.seed).fit(x)
        labels = gm.predict(x)
        info["converged"] = bool(gm.converged_)
    elif method == "dec":
        dec = DEC(cfg.n_clusters, pretrain_epochs=cfg.dec_pretrain_epochs, max_iter=cfg.dec_max_iter,
                  update_interval=cfg.dec_update_interval, seed=cfg.seed, n_threads=cfg.n_threads).fit(x)
        labels = dec.labels_
        info["self_training_updates"] = len(dec.history_)
        info["final_mean_max_q"] = dec.history_[-1]["mean_max_q"] if dec.history_ else None
        info["first_mean_max_q"] = dec.history_[0]["mean_max_q"] if dec.history_ else None
    else:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {METHODS}")
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return np.asarray(labels), info


def cluster_products(
    product_ids: list[str],
    image: np.ndarray | None,
    text: np.ndarray | None,
    categories: pd.Series | np.ndarray | None,
    cfg: ClusteringConfig | None = None,
    log_fn=None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Cluster with every configured method.

    Returns (assignments: product_id, method, cluster — long format; metrics: one row per method;
    extras: 2-D projection, kept mask, dropped count, per-method info).
    """
    cfg = cfg or ClusteringConfig()
    x_raw, keep = clustering_inputs(image, text, cfg.inputs)
    if keep.sum() < cfg.n_clusters:
        raise ValueError(f"only {int(keep.sum())} products have the required embeddings; need >= {cfg.n_clusters}")
    x = reduce(x_raw, cfg.pca_components, cfg.seed)
    ids = np.asarray(product_ids, dtype=object)[keep]
    cats = None if categories is None else np.asarray(categories, dtype=object)[keep]
    assignments, metric_rows, infos = [], [], {}
    for method in cfg.methods:
        labels, info = fit_method(method, x, cfg)
        infos[method] = info
        if log_fn:
            log_fn(f"clustering {method}: {info['seconds']} s")
        assignments.append(pd.DataFrame({"product_id": ids, "method": method, "cluster": labels.astype(int)}))
        row = {"method": method, "inputs": cfg.inputs, "n_clusters": cfg.n_clusters,
               "n_found": int(len(np.unique(labels))), "seconds": info["seconds"]}
        if cats is not None:
            known = pd.notna(cats)
            row.update({k: v for k, v in clustering_metrics(cats[known], labels[known]).items()})
        row["silhouette_sampled"] = sampled_silhouette(x, labels, cfg.silhouette_sample, cfg.seed)
        metric_rows.append(row)
    xy = PCA(2, random_state=cfg.seed).fit_transform(x)
    extras = {"xy": xy, "kept": keep, "dropped_missing_embedding": int((~keep).sum()), "info": infos}
    return pd.concat(assignments, ignore_index=True), pd.DataFrame(metric_rows), extras
