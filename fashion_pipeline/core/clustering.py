"""Clustering products on their embeddings alone (the metadata-poor setting).

No titles, brands or labels go in: only the image and/or text embeddings. Known categories
are used afterwards, to score how well each clustering recovers them (NMI, ARI, purity), next
to an unsupervised silhouette on a seeded sample.
"""

from __future__ import annotations

import copy
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
    dec_warm_max_iter: int = 150  # a warm start's self-training steps (continuing a fitted DEC)
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
    x = np.hstack([_l2(b[keep]) for b in blocks]).astype(np.float32)  # kept rows are finite: nothing to clip
    return x, keep


@dataclass
class Reducer:
    """PCA (whitening off) then standardisation: the common input of all three methods."""

    pca: PCA
    scaler: StandardScaler

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int, seed: int = 0) -> "Reducer":
        k = min(n_components, x.shape[1], max(len(x) - 1, 1))
        pca = PCA(k, random_state=seed).fit(x)
        return cls(pca, StandardScaler().fit(pca.transform(x)))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.scaler.transform(self.pca.transform(x)).astype(np.float32)


def reduce(x: np.ndarray, n_components: int, seed: int = 0) -> np.ndarray:
    """``x`` through a `Reducer` fitted on it."""
    return Reducer.fit(x, n_components, seed).transform(x)


@dataclass
class ClusteringModel:
    """What a clustering run fitted, so the next run (a retrain) can continue from it: the input
    projection and each method's fitted estimator (KMeans, GaussianMixture, DEC)."""

    inputs: str
    n_clusters: int
    reducer: Reducer
    methods: dict

    def refusal(self, cfg: ClusteringConfig, n_features: int) -> str | None:
        """Why this model cannot seed a run with ``cfg`` on inputs of ``n_features`` columns (None when it can)."""
        if (self.inputs, self.n_clusters) != (cfg.inputs, cfg.n_clusters):
            return (f"it clusters {self.inputs!r} into {self.n_clusters}, the config {cfg.inputs!r} into "
                    f"{cfg.n_clusters}")
        if self.reducer.pca.n_features_in_ != n_features:
            return f"its projection reads {self.reducer.pca.n_features_in_} columns, these inputs have {n_features}"
        if self.reducer.pca.n_components_ != min(cfg.pca_components, n_features):
            return f"its projection has {self.reducer.pca.n_components_} components, the config asks for {cfg.pca_components}"
        return None


def fit_method(method: str, x: np.ndarray, cfg: ClusteringConfig, warm=None) -> tuple[np.ndarray, dict, object]:
    """Labels, info and the fitted estimator. ``warm`` (the same method's estimator from a previous run
    on the same projection): k-means starts from its centres, the mixture from its weights, means and
    precisions (one initialisation each), and DEC continues self-training from its autoencoder and
    centres for at most ``dec_warm_max_iter`` steps (no pre-training, no k-means initialisation); cluster
    numbers then keep their meaning
    from one run to the next. ``warm`` is not changed."""
    t0 = time.perf_counter()
    info: dict = {"start": "warm" if warm is not None else "cold"}
    if method == "kmeans":
        est = (KMeans(cfg.n_clusters, init=warm.cluster_centers_, n_init=1, random_state=cfg.seed) if warm is not None
               else KMeans(cfg.n_clusters, n_init=4, random_state=cfg.seed))
        labels = est.fit_predict(x)
    elif method == "gmm":
        kw = (dict(weights_init=warm.weights_, means_init=warm.means_, precisions_init=warm.precisions_, n_init=1)
              if warm is not None else dict(n_init=2))
        est = GaussianMixture(cfg.n_clusters, covariance_type="diag", random_state=cfg.seed, **kw).fit(x)
        labels = est.predict(x)
        info["converged"] = bool(est.converged_)
    elif method == "dec":
        if warm is not None:
            est = copy.deepcopy(warm)
            est.max_iter, est.update_interval, est.n_threads = cfg.dec_warm_max_iter, cfg.dec_update_interval, cfg.n_threads
            est.continue_fit(x)
        else:
            est = DEC(cfg.n_clusters, pretrain_epochs=cfg.dec_pretrain_epochs, max_iter=cfg.dec_max_iter,
                      update_interval=cfg.dec_update_interval, seed=cfg.seed, n_threads=cfg.n_threads).fit(x)
        labels = est.labels_
        info["self_training_updates"] = len(est.history_)
        info["final_mean_max_q"] = est.history_[-1]["mean_max_q"] if est.history_ else None
        info["first_mean_max_q"] = est.history_[0]["mean_max_q"] if est.history_ else None
    else:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {METHODS}")
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return np.asarray(labels), info, est


def cluster_products(
    product_ids: list[str],
    image: np.ndarray | None,
    text: np.ndarray | None,
    categories: pd.Series | np.ndarray | None,
    cfg: ClusteringConfig | None = None,
    log_fn=None,
    warm: ClusteringModel | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Cluster with every configured method.

    ``warm`` (the previous run's `ClusteringModel`, a retrain): its projection is kept and each
    method it has continues from its estimator (`fit_method`), unless it does not fit this config or
    these inputs (`ClusteringModel.refusal`): then everything is fitted afresh.

    Returns (assignments: product_id, method, cluster — long format; metrics: one row per method;
    extras: 2-D projection, kept mask, dropped count, per-method info, the fitted ``model`` and
    ``warm_note``: why a warm start given was not used, else "").
    """
    cfg = cfg or ClusteringConfig()
    x_raw, keep = clustering_inputs(image, text, cfg.inputs)
    if keep.sum() < cfg.n_clusters:
        raise ValueError(f"only {int(keep.sum())} products have the required embeddings; need >= {cfg.n_clusters}")
    refusal = warm.refusal(cfg, x_raw.shape[1]) if warm is not None else None
    if refusal is not None:
        warm = None
    reducer = warm.reducer if warm is not None else Reducer.fit(x_raw, cfg.pca_components, cfg.seed)
    x = reducer.transform(x_raw)
    ids = np.asarray(product_ids, dtype=object)[keep]
    cats = None if categories is None else np.asarray(categories, dtype=object)[keep]
    assignments, metric_rows, infos, fitted = [], [], {}, {}
    for method in cfg.methods:
        labels, info, fitted[method] = fit_method(method, x, cfg, warm.methods.get(method) if warm is not None else None)
        infos[method] = info
        if log_fn:
            log_fn(f"clustering {method} ({info['start']} start): {info['seconds']} s")
        assignments.append(pd.DataFrame({"product_id": ids, "method": method, "cluster": labels.astype(int)}))
        row = {"method": method, "inputs": cfg.inputs, "n_clusters": cfg.n_clusters,
               "n_found": int(len(np.unique(labels))), "seconds": info["seconds"]}
        if cats is not None:
            known = pd.notna(cats)
            row.update({k: v for k, v in clustering_metrics(cats[known], labels[known]).items()})
        row["silhouette_sampled"] = sampled_silhouette(x, labels, cfg.silhouette_sample, cfg.seed)
        metric_rows.append(row)
    xy = PCA(2, random_state=cfg.seed).fit_transform(x)
    extras = {"xy": xy, "kept": keep, "dropped_missing_embedding": int((~keep).sum()), "info": infos,
              "model": ClusteringModel(cfg.inputs, cfg.n_clusters, reducer, fitted),
              "warm_note": f"cold: {refusal}" if refusal else ""}
    return pd.concat(assignments, ignore_index=True), pd.DataFrame(metric_rows), extras
