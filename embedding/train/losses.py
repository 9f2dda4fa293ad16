"""Metric-learning losses on embedding pairs and triplets (training only).

Margin heads (`embedding.train.heads`) turn embeddings into logits for cross-entropy; the losses here
compare embeddings directly: the contrastive loss of the Siamese-network articles and the triplet loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ContrastiveLoss(nn.Module):
    """Contrastive loss (Hadsell, Chopra, LeCun, 2006) with label 0 = same person, 1 = different.

    L = mean over pairs of (1 - Y) * d^2 / 2 + Y * max(0, margin - d)^2 / 2, d the Euclidean distance
    between the two (unnormalised) embeddings.
    """

    def __init__(self, margin: float = 2.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin

    def forward(self, first: torch.Tensor, second: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """float (N, D), float (N, D), (N,) labels in {0, 1} (0 = same) -> float scalar loss."""
        if first.shape != second.shape or first.ndim != 2 or label.shape != first.shape[:1]:
            raise ValueError(
                f"expected (N, D), (N, D), (N,), got {tuple(first.shape)}, {tuple(second.shape)}, {tuple(label.shape)}"
            )
        y = label.to(first.dtype)
        # Differentiable distance: sqrt of a clamped square so d = 0 (identical pairs) has a finite gradient.
        squared = (first - second).pow(2).sum(dim=1)
        distance = torch.sqrt(squared.clamp_min(1e-12))
        losses = (1.0 - y) * 0.5 * squared + y * 0.5 * F.relu(self.margin - distance).pow(2)
        return losses.mean()


class TripletLoss(nn.Module):
    """Triplet loss (Schroff et al., 2015) on L2-normalised embeddings.

    L = mean of max(0, |a - p| - |a - n| + margin), Euclidean distances between unit vectors
    (so 0 <= d <= 2). `batch_hard` mines, per anchor of a labelled batch, the farthest positive and
    the nearest negative (Hermans et al., 2017).
    """

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin

    @staticmethod
    def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise Euclidean distance of unit rows, float (N, D) x2 -> (N,), finite gradient at 0."""
        return torch.sqrt((a - b).pow(2).sum(dim=1).clamp_min(1e-12))

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Three float (N, D) embedding batches (any norm; normalised here) -> float scalar loss."""
        if not anchor.shape == positive.shape == negative.shape or anchor.ndim != 2:
            raise ValueError(
                f"expected three (N, D) tensors, got {tuple(anchor.shape)}, {tuple(positive.shape)}, "
                f"{tuple(negative.shape)}"
            )
        a, p, n = (F.normalize(t, dim=1) for t in (anchor, positive, negative))
        return F.relu(self._distance(a, p) - self._distance(a, n) + self.margin).mean()

    def batch_hard(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings, int64 (N,) labels -> scalar batch-hard triplet loss.

        Anchors without a positive or a negative in the batch are skipped (loss 0 if none is left).
        """
        e = F.normalize(embeddings, dim=1)
        dist = torch.sqrt((2.0 - 2.0 * e @ e.T).clamp_min(1e-12))
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive_mask = same & ~eye
        valid = positive_mask.any(dim=1) & (~same).any(dim=1)
        if not bool(valid.any()):
            return embeddings.sum() * 0.0
        hardest_positive = torch.where(positive_mask, dist, torch.zeros_like(dist)).max(dim=1).values
        hardest_negative = torch.where(same, torch.full_like(dist, 4.0), dist).min(dim=1).values
        losses = F.relu(hardest_positive - hardest_negative + self.margin)
        return losses[valid].mean()
