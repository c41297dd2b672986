"""Clustering on real embeddings: DEC's self-training step, metrics, assignments table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fashion_pipeline.core.clustering import ClusteringConfig, cluster_products, clustering_inputs, reduce
from fashion_pipeline.core.label_metrics import clustering_metrics, purity
from fashion_pipeline.core.models.dec import DEC, kl_loss, soft_assignment, target_distribution
from fashion_pipeline_tests.fixtures.real_products import real_products_with_embeddings


@pytest.fixture(scope="module")
def data():
    df, image, text = real_products_with_embeddings()
    x, keep = clustering_inputs(image, text, "both")
    return df[keep].reset_index(drop=True), reduce(x, 32)


def test_target_distribution_is_sharper_than_q():
    q = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    p = target_distribution(q)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(3))
    assert p[0, 0] > q[0, 0] and p[1, 1] > q[1, 1]  # confident rows get more confident


def test_dec_self_training_lowers_kl_and_sharpens_assignments(data):
    _, x = data
    dec = DEC(n_clusters=5, hidden=(64, 64), latent_dim=8, pretrain_epochs=15, update_interval=1000, seed=0)
    losses = dec.pretrain(x)
    assert losses[-1] < losses[0]  # the autoencoder learns to reconstruct real embeddings
    dec.init_centers(x)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        q0 = soft_assignment(dec.ae_.encoder(xt), dec.centers_)
        p = target_distribution(q0)  # fixed target, as between two target updates
        kl0 = float(kl_loss(p, q0))
    hist = dec.self_train(x, max_iter=120)  # one target update: 120 steps against P(q0)
    with torch.no_grad():
        q1 = soft_assignment(dec.ae_.encoder(xt), dec.centers_)
        kl1 = float(kl_loss(p, q1))
    assert kl1 < kl0 * 0.9
    assert float(q1.max(dim=1).values.mean()) > float(q0.max(dim=1).values.mean())
    assert hist[0]["iter"] == 0


def test_purity_and_metrics_against_a_hand_count():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = [0, 0, 1, 1, 1, 1]
    # cluster 0 -> majority a (2), cluster 1 -> majority b (2): 4 of 6
    assert purity(truth, pred) == pytest.approx(4 / 6)
    m = clustering_metrics(truth, [5, 5, 5, 7, 7, 9])  # a relabelled perfect clustering
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0) and m["purity"] == 1.0


def test_cluster_products_assigns_every_product_per_method_and_counts_drops(data):
    df, _ = data
    _, image, text = real_products_with_embeddings()
    image[:3] = np.nan  # three products without an image
    cfg = ClusteringConfig(n_clusters=4, pca_components=16, dec_pretrain_epochs=3, dec_max_iter=60,
                           dec_update_interval=20, silhouette_sample=200)
    ids = [f"p{i}" for i in range(len(image))]
    cats = pd.Series(["x", "y"] * (len(image) // 2) + ["x"] * (len(image) % 2))
    assign, metrics, extras = cluster_products(ids, image, text, cats, cfg)
    assert extras["dropped_missing_embedding"] == 3
    assert set(assign["method"]) == {"kmeans", "gmm", "dec"}
    for _, part in assign.groupby("method"):
        assert sorted(part["product_id"]) == sorted(ids[3:])
        assert part["cluster"].between(0, 3).all()
    assert list(metrics["method"]) == ["kmeans", "gmm", "dec"]
    assert metrics[["nmi", "ari", "purity", "silhouette_sampled"]].notna().all().all()
    # metrics are those of the assignments table
    km = assign[assign.method == "kmeans"]
    recomputed = clustering_metrics(cats.iloc[3:].to_numpy(), km["cluster"].to_numpy())
    assert metrics.set_index("method").loc["kmeans", "nmi"] == pytest.approx(recomputed["nmi"])


def test_a_warm_started_clustering_keeps_the_projection_and_the_cluster_numbers(data):
    df, _ = data
    _, image, text = real_products_with_embeddings()
    cfg = ClusteringConfig(n_clusters=4, pca_components=16, dec_pretrain_epochs=3, dec_max_iter=100,
                           dec_update_interval=20, silhouette_sample=200, seed=0)
    ids = [f"p{i}" for i in range(len(image))]
    cold, _, first = cluster_products(ids, image, text, None, cfg)
    model = first["model"]
    centres = model.methods["dec"].centers_.detach().clone()
    # Another seed: a cold fit would number its clusters anew; a warm one continues from the model.
    again = ClusteringConfig(**{**cfg.__dict__, "seed": 1, "dec_warm_max_iter": 40})
    warm, _, second = cluster_products(ids, image, text, None, again, warm=model)
    assert second["warm_note"] == "" and {i["start"] for i in second["info"].values()} == {"warm"}
    # DEC's self-training continued for dec_warm_max_iter steps at most (targets at steps 0 and 20), not dec_max_iter.
    assert [h["iter"] for h in second["model"].methods["dec"].history_] in ([0], [0, 20])
    assert second["model"].reducer is model.reducer  # the stored projection, not a refit
    assert torch.equal(model.methods["dec"].centers_.detach(), centres)  # the stored model is left as it was
    assert second["model"].methods["dec"] is not model.methods["dec"]
    by = {m: (cold[cold.method == m]["cluster"].to_numpy(), warm[warm.method == m]["cluster"].to_numpy())
          for m in ("kmeans", "gmm", "dec")}
    # k-means from its own converged centres on the same rows stays where it was.
    np.testing.assert_array_equal(*by["kmeans"])
    for m in ("gmm", "dec"):
        assert (by[m][0] == by[m][1]).mean() > 0.9, m
    reseeded, _, _ = cluster_products(ids, image, text, None, again)
    km = reseeded[reseeded.method == "kmeans"]["cluster"].to_numpy()
    assert (km == by["kmeans"][0]).mean() < 0.9  # what the warm start avoided: clusters renumbered
    # A model that does not fit the config is not used, and the run says why.
    _, _, third = cluster_products(ids, image, text, None, ClusteringConfig(**{**cfg.__dict__, "n_clusters": 5}),
                                   warm=model)
    assert third["warm_note"] == "cold: it clusters 'both' into 4, the config 'both' into 5"
    assert third["model"].reducer is not model.reducer
