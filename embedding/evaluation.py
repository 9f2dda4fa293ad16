"""Verification / identification metrics on embeddings (numpy only).

Scores are cosine similarities between L2-normalised embeddings; a pair is accepted as the same
person when score >= threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two float (N, D) arrays of unit rows -> float64 (N,)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, D) arrays of the same shape, got {a.shape} and {b.shape}")
    return np.asarray(np.einsum("nd,nd->n", a.astype(np.float64), b.astype(np.float64)), dtype=np.float64)


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve for float (N,) scores and bool (N,) labels (ties count one half)."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both positive and negative pairs")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average 1-based ranks over runs of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold maximising accuracy of `score >= threshold` on float (N,) scores, bool (N,) labels.

    Candidates are midpoints between consecutive distinct scores (plus both ends); the smallest
    best candidate wins ties.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    distinct = np.unique(scores)
    candidates = np.concatenate(([distinct[0] - 1e-6], (distinct[:-1] + distinct[1:]) / 2.0, [distinct[-1] + 1e-6]))
    order = np.argsort(scores)
    sorted_scores, sorted_same = scores[order], same[order]
    # For each candidate t: correct = positives with score >= t + negatives with score < t.
    below = np.searchsorted(sorted_scores, candidates, side="left")
    pos_below = np.concatenate(([0], np.cumsum(sorted_same)))[below]
    neg_below = below - pos_below
    correct = (int(same.sum()) - pos_below) + neg_below
    return float(candidates[int(np.argmax(correct))])


def foldwise_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> list[float]:
    """LFW protocol: for each fold, accuracy with the threshold chosen on all the other folds.

    Args:
        scores: float (N,) pair scores. same: bool (N,) labels. folds: int (N,) fold ids.

    Returns:
        one accuracy per distinct fold id, in sorted fold order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    accuracies: list[float] = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(scores[~test], same[~test])
        accuracies.append(float(np.mean((scores[test] >= threshold) == same[test])))
    return accuracies


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """Smallest threshold whose false-accept rate on float (M,) impostor scores is <= `far`.

    With `score >= threshold` as accept, at most floor(far * M) impostors are accepted.
    """
    ranked = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    if ranked.size == 0:
        raise ValueError("no impostor scores")
    allowed = int(np.floor(far * ranked.size))
    if allowed >= ranked.size:
        return float(ranked[-1])
    return float(np.nextafter(ranked[allowed], np.inf))


def rank1_accuracy(
    gallery: np.ndarray,
    gallery_labels: Sequence[object] | np.ndarray,
    probes: np.ndarray,
    probe_labels: Sequence[object] | np.ndarray,
) -> float:
    """Fraction of probes whose most similar gallery embedding has the probe's label.

    gallery: float (G, D) unit rows; probes: float (P, D) unit rows; labels of length G and P.
    """
    labels = np.asarray(gallery_labels)
    nearest = np.argmax(probes.astype(np.float64) @ gallery.astype(np.float64).T, axis=1)
    return float(np.mean(labels[nearest] == np.asarray(probe_labels)))


def cross_scores(embeddings: np.ndarray, labels: Sequence[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs i < j of float (N, D) unit rows.

    Returns (genuine_scores, impostor_scores), float64 1-D arrays: pairs with equal / different labels.
    """
    labels = np.asarray(labels)
    sims = embeddings.astype(np.float64) @ embeddings.astype(np.float64).T
    upper = np.triu_indices(len(labels), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    values = sims[upper]
    return values[same], values[~same]
