"""Matrix factorization for recommendation: a vector per user and per item, and an item bias;
a user's score of an item is their dot product plus the bias. Item 0 is padding.

(The sequential recommender, SASRec, is models.transformer.GPT over item ids.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class MFConfig:
    n_users: int
    n_items: int  # with the padding item 0
    d_model: int = 64
    dropout: float = 0.2

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "d_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class MatrixFactorization(nn.Module):
    """(B,) user indices -> (B, n_items) scores. Its vectors are not named *emb*, so AdamW's
    weight decay regularises them (training.make_optimizer spares embeddings)."""

    def __init__(self, cfg: MFConfig) -> None:
        super().__init__()
        self.config = cfg
        self.user_vectors = nn.Parameter(torch.randn(cfg.n_users, cfg.d_model) * 0.02)
        self.item_vectors = nn.Parameter(torch.randn(cfg.n_items, cfg.d_model) * 0.02)
        self.item_bias = nn.Parameter(torch.zeros(cfg.n_items))
        self.dropout = nn.Dropout(cfg.dropout)

    def scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """Scores of every item for (B, D) user vectors: (B, n_items)."""
        return self.dropout(vectors) @ self.item_vectors.T + self.item_bias

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores(self.user_vectors[users])

    def fold_in(self, history: torch.Tensor) -> torch.Tensor:
        """A vector for a user the model has not seen, from their (B, T) item history (0:
        padding): the mean of their items' vectors."""
        real = (history > 0).unsqueeze(-1).to(self.item_vectors.dtype)  # (B, T, 1)
        summed = (self.item_vectors[history] * real).sum(1)  # (B, D)
        return summed / real.sum(1).clamp(min=1.0)
