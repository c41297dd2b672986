"""The price MLP's torch module (module level, so a fitted model pickles into the store)."""

from __future__ import annotations

import torch
from torch import nn


class PriceNet(nn.Module):
    """[dense features | learned embeddings of the categorical columns] -> 2 hidden layers -> log price."""

    def __init__(self, n_dense: int, cards: list[int], dims: list[int], hidden: int, dropout: float):
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(cards, dims))
        self.body = nn.Sequential(
            nn.Linear(n_dense + sum(dims), hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden // 2, 1),
        )

    def forward(self, dense: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        e = [emb(codes[:, j]) for j, emb in enumerate(self.embs)]
        return self.body(torch.cat([dense] + e, dim=1)).squeeze(1)
