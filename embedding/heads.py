"""Margin-based classification heads used only during training (never shipped in a model file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosFaceHead(nn.Module):
    """CosFace / large-margin cosine loss head (Wang et al., 2018).

    logits[i, k] = s * (cos(theta_ik) - m * [k == labels[i]]), where cos(theta_ik) is the cosine
    between embedding i and class-k weight vector. Feed the logits to cross-entropy.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 30.0, m: float = 0.35) -> None:
        super().__init__()
        self.s = s
        self.m = m
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings (any norm) -> float (N, num_classes) cosine similarities."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings, int64 (N,) class labels -> float (N, num_classes) logits."""
        cosine = self.cosine(embeddings)
        margin = F.one_hot(labels, num_classes=cosine.shape[1]).to(cosine.dtype) * self.m
        return self.s * (cosine - margin)
