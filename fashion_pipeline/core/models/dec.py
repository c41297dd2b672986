"""Deep Embedded Clustering (Xie, Girshick & Farhadi, ICML 2016) in PyTorch.

1. Pre-train a stacked autoencoder (here end-to-end, MSE) on the input features.
2. Initialise cluster centres by k-means on the encoder's latent codes.
3. Self-training: soft assignments q_ij = Student-t kernel between latent z_i and centre mu_j
   (alpha = 1); target p_ij = q_ij^2 / f_j, renormalised per row (f_j = sum_i q_ij), which
   sharpens confident assignments and normalises cluster size; minimise KL(P || Q) over
   encoder weights and centres. P is recomputed every ``update_interval`` batches; training
   stops when fewer than ``tol`` of the hard assignments changed between target updates.

Sized for CPU: smaller layers than the paper's d-500-500-2000-10 (configurable).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn


def _mlp(dims: list[int], last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2 or last_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...], latent: int):
        super().__init__()
        dims = [in_dim, *hidden, latent]
        self.encoder = _mlp(dims, last_act=False)
        self.decoder = _mlp(dims[::-1], last_act=False)

    def forward(self, x):
        z = self.encoder(x)
        return z, self.decoder(z)


def soft_assignment(z: torch.Tensor, centers: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Student-t kernel q_ij, rows sum to 1."""
    d2 = torch.cdist(z, centers).pow(2)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """p_ij = q_ij^2 / f_j, renormalised per row: sharpens and balances the assignments."""
    w = q.pow(2) / q.sum(dim=0, keepdim=True)
    return w / w.sum(dim=1, keepdim=True)


def kl_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q), averaged over rows."""
    return (p * (torch.log(p.clamp_min(1e-12)) - torch.log(q.clamp_min(1e-12)))).sum(dim=1).mean()


class DEC:
    """sklearn-style: ``DEC(n_clusters).fit(x).labels_``; ``predict`` / ``soft_assign`` for new rows."""

    def __init__(
        self,
        n_clusters: int,
        hidden: tuple[int, ...] = (256, 256, 512),
        latent_dim: int = 10,
        alpha: float = 1.0,
        pretrain_epochs: int = 20,
        max_iter: int = 2000,
        update_interval: int = 50,
        batch_size: int = 256,
        lr: float = 1e-3,
        tol: float = 0.001,
        seed: int = 0,
        n_threads: int = 2,
    ):
        self.n_clusters = n_clusters
        self.hidden = tuple(hidden)
        self.latent_dim = latent_dim
        self.alpha = alpha
        self.pretrain_epochs = pretrain_epochs
        self.max_iter = max_iter
        self.update_interval = update_interval
        self.batch_size = batch_size
        self.lr = lr
        self.tol = tol
        self.seed = seed
        self.n_threads = n_threads

    # -- stages --------------------------------------------------------------------------------
    def pretrain(self, x: np.ndarray) -> list[float]:
        torch.manual_seed(self.seed)
        self.ae_ = AutoEncoder(x.shape[1], self.hidden, self.latent_dim)
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        opt = torch.optim.Adam(self.ae_.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        losses = []
        for _ in range(self.pretrain_epochs):
            perm = torch.randperm(len(xt), generator=gen)
            tot = 0.0
            for b in range(0, len(xt), self.batch_size):
                xb = xt[perm[b : b + self.batch_size]]
                _, rec = self.ae_(xb)
                loss = nn.functional.mse_loss(rec, xb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += loss.item() * len(xb)
            losses.append(tot / len(xt))
        return losses

    def encode(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.ae_.encoder(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    def init_centers(self, x: np.ndarray) -> np.ndarray:
        z = self.encode(x)
        km = KMeans(self.n_clusters, n_init=5, random_state=self.seed).fit(z)
        self.centers_ = nn.Parameter(torch.from_numpy(km.cluster_centers_.astype(np.float32)))
        return km.labels_

    def soft_assign(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = self.ae_.encoder(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
            return soft_assignment(z, self.centers_, self.alpha).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.soft_assign(x).argmax(axis=1)

    def self_train(self, x: np.ndarray, max_iter: int | None = None) -> list[dict]:
        """KL self-training; returns a history row per target update (loss, sharpness, changes)."""
        max_iter = self.max_iter if max_iter is None else max_iter
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        opt = torch.optim.Adam([*self.ae_.encoder.parameters(), self.centers_], lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed + 1)
        history: list[dict] = []
        prev = None
        p_all = None
        perm = torch.randperm(len(xt), generator=gen)
        pos = 0
        losses: list[float] = []
        for it in range(max_iter):
            if it % self.update_interval == 0:
                with torch.no_grad():
                    q_all = soft_assignment(self.ae_.encoder(xt), self.centers_, self.alpha)
                    p_all = target_distribution(q_all)
                labels = q_all.argmax(dim=1).numpy()
                changed = float((labels != prev).mean()) if prev is not None else 1.0
                history.append({
                    "iter": it,
                    "kl_full": float(kl_loss(p_all, q_all)),
                    "mean_max_q": float(q_all.max(dim=1).values.mean()),
                    "changed": changed,
                    "batch_loss": float(np.mean(losses)) if losses else float("nan"),
                })
                losses = []
                if prev is not None and changed < self.tol:
                    break
                prev = labels
            if pos >= len(xt):
                perm = torch.randperm(len(xt), generator=gen)
                pos = 0
            idx = perm[pos : pos + self.batch_size]
            pos += self.batch_size
            q = soft_assignment(self.ae_.encoder(xt[idx]), self.centers_, self.alpha)
            loss = kl_loss(p_all[idx], q)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return history

    def continue_fit(self, x: np.ndarray) -> "DEC":
        """A warm start: self-training continued on ``x`` from this fitted model's autoencoder and
        centres (no pre-training, no k-means initialisation), so cluster j stays cluster j."""
        return self._fit(x, from_scratch=False)

    def fit(self, x: np.ndarray, y=None) -> "DEC":
        return self._fit(x, from_scratch=True)

    def _fit(self, x: np.ndarray, from_scratch: bool) -> "DEC":
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(self.n_threads)
        try:
            t0 = time.perf_counter()
            if from_scratch:
                self.pretrain_losses_ = self.pretrain(x)
                self.kmeans_labels_ = self.init_centers(x)
            self.history_ = self.self_train(x)
            self.labels_ = self.predict(x)
            self.fit_seconds_ = time.perf_counter() - t0
        finally:
            torch.set_num_threads(prev_threads)
        return self
