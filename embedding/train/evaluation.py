"""Verification / identification metrics on embeddings (numpy only).

Scores are cosine similarities between L2-normalised embeddings; a pair is accepted as the same
person when score >= threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------------------- ROC and verification


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of `score >= threshold` over every distinct score.

    Args:
        scores: float (N,) pair scores. same: bool (N,) labels, both classes present.

    Returns:
        (far, tar, thresholds), float64 arrays of equal length K + 1 (K distinct scores): thresholds
        descending (the first is +inf: nothing accepted), far and tar non-decreasing from 0 to 1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_curve needs both positive and negative pairs")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_same = scores[order], same[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    tp = np.cumsum(sorted_same)[last_of_run]
    fp = (last_of_run + 1) - tp
    far = np.r_[0.0, fp / n_neg]
    tar = np.r_[0.0, tp / n_pos]
    thresholds = np.r_[np.inf, sorted_scores[last_of_run]]
    return far, tar, thresholds


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """EER: the rate where FAR equals FRR (= 1 - TAR), linearly interpolated on the ROC."""
    far, tar, _ = roc_curve(scores, same)
    frr = 1.0 - tar
    diff = far - frr  # increases from -1 to +1
    index = int(np.searchsorted(diff, 0.0))
    if index == 0:
        return float(far[0])
    d0, d1 = diff[index - 1], diff[index]
    w = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    return float(far[index - 1] + w * (far[index] - far[index - 1]))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float, float]:
    """TAR at a target FAR: (tar, threshold, measured far) with the threshold from `threshold_at_far`
    on the impostor (different-person) scores."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    threshold = threshold_at_far(scores[~same], far)
    return (
        float(np.mean(scores[same] >= threshold)),
        threshold,
        float(np.mean(scores[~same] >= threshold)),
    )


def far_label(far: float) -> str:
    """1e-3 -> "1e-3", 0.05 -> "5e-2": the key format of `ModelCard.thresholds`."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class VerificationReport:
    """k-fold verification metrics of one score set (see `verification_report`)."""

    n_pairs: int
    n_same: int
    folds: list[int]
    accuracy_per_fold: list[float]
    accuracy_mean: float
    accuracy_std: float
    roc_auc: float
    eer: float
    tar_at_far: dict[str, dict[str, float]]
    """FAR label -> {"tar", "threshold", "far"} over all pairs."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def summary(self) -> str:
        """One line: accuracy +- std, AUC, EER, TARs."""
        tars = ", ".join(f"TAR@FAR={k} {v['tar']:.4f}" for k, v in self.tar_at_far.items())
        return (
            f"accuracy {self.accuracy_mean:.4f} +- {self.accuracy_std:.4f} ({len(self.folds)} folds, "
            f"{self.n_pairs} pairs), AUC {self.roc_auc:.4f}, EER {self.eer:.4f}, {tars}"
        )


def verification_report(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray, fars: Sequence[float] = (1e-1, 1e-2, 1e-3)
) -> VerificationReport:
    """Standard LFW k-fold verification: per fold, accuracy with the threshold chosen on the other folds.

    Args:
        scores: float (N,) similarity per pair. same: bool (N,). folds: int (N,) fold ids (>= 2 distinct).

    Returns:
        a `VerificationReport`; AUC, EER and TAR@FAR are computed over all N pairs.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    fold_ids = [int(f) for f in np.unique(folds)]
    if len(fold_ids) < 2:
        raise ValueError("k-fold verification needs at least 2 folds")
    accuracies = foldwise_accuracy(scores, same, folds)
    tars: dict[str, dict[str, float]] = {}
    for far in fars:
        tar, threshold, measured = tar_at_far(scores, same, far)
        tars[far_label(far)] = {"tar": tar, "threshold": threshold, "far": measured}
    return VerificationReport(
        n_pairs=len(scores),
        n_same=int(same.sum()),
        folds=fold_ids,
        accuracy_per_fold=accuracies,
        accuracy_mean=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        roc_auc=roc_auc(scores, same),
        eer=equal_error_rate(scores, same),
        tar_at_far=tars,
    )


# ------------------------------------------------------------------------------------ identification


def identity_scores(
    gallery: np.ndarray, gallery_labels: Sequence[object] | np.ndarray, probes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best score of each probe against each gallery identity (max over that identity's images).

    gallery: float (G, D) unit rows; probes: float (P, D) unit rows.
    Returns (identities (I,) sorted unique labels, scores float64 (P, I)).
    """
    labels = np.asarray(gallery_labels)
    identities, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
    sims = probes.astype(np.float64) @ gallery.astype(np.float64)[order].T
    if len(probes) == 0:
        return identities, np.zeros((0, len(identities)))
    return identities, np.maximum.reduceat(sims, starts, axis=1)


def rank_k_accuracy(
    gallery: np.ndarray,
    gallery_labels: Sequence[object] | np.ndarray,
    probes: np.ndarray,
    probe_labels: Sequence[object] | np.ndarray,
    k: int,
) -> float:
    """Fraction of probes whose identity is among the k best-scoring gallery identities."""
    identities, scores = identity_scores(gallery, gallery_labels, probes)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean((identities[top] == np.asarray(probe_labels)[:, None]).any(axis=1)))


@dataclass(frozen=True)
class IdentificationSplit:
    """Indices into a labelled embedding set: gallery, mated probes (identity enrolled), strangers."""

    gallery: np.ndarray
    mated: np.ndarray
    strangers: np.ndarray


def split_identification(
    labels: Sequence[object] | np.ndarray,
    *,
    gallery_per_identity: int = 1,
    stranger_fraction: float = 0.25,
    seed: int = 0,
) -> IdentificationSplit:
    """Gallery/probe split for open-set identification.

    A seeded random `stranger_fraction` of the identities (at least 1, at most all but one) are
    strangers: all their images are non-mated probes. Each other identity enrols its first
    `gallery_per_identity` images (in the given order) and its remaining images are mated probes.
    """
    labels = np.asarray(labels)
    identities = np.unique(labels)
    if len(identities) < 2:
        raise ValueError("identification needs at least 2 identities")
    rng = np.random.default_rng(seed)
    n_strangers = min(len(identities) - 1, max(1, round(stranger_fraction * len(identities))))
    strangers = set(rng.permutation(identities)[:n_strangers].tolist()) if stranger_fraction > 0 else set()
    gallery: list[int] = []
    mated: list[int] = []
    stranger_idx: list[int] = []
    for identity in identities:
        idx = np.flatnonzero(labels == identity)
        if identity in strangers:
            stranger_idx.extend(idx.tolist())
        else:
            gallery.extend(idx[:gallery_per_identity].tolist())
            mated.extend(idx[gallery_per_identity:].tolist())
    return IdentificationSplit(
        np.array(gallery, dtype=np.int64), np.array(mated, dtype=np.int64), np.array(stranger_idx, dtype=np.int64)
    )


@dataclass(frozen=True)
class IdentificationReport:
    """Closed-set rank-k and open-set FNIR at FPIR (see `identification_report`)."""

    gallery_identities: int
    gallery_images: int
    mated_probes: int
    stranger_identities: int
    stranger_probes: int
    rank1: float
    rank5: float
    fpir: float
    threshold_at_fpir: float
    fnir_at_fpir: float
    measured_fpir: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def summary(self) -> str:
        """One line."""
        return (
            f"rank-1 {self.rank1:.4f}, rank-5 {self.rank5:.4f} ({self.mated_probes} probes, "
            f"{self.gallery_identities} enrolled); FNIR {self.fnir_at_fpir:.4f} at FPIR {self.fpir:g} "
            f"(threshold {self.threshold_at_fpir:.4f}, {self.stranger_probes} stranger probes of "
            f"{self.stranger_identities} identities, measured FPIR {self.measured_fpir:.4f})"
        )


def identification_report(
    embeddings: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    split: IdentificationSplit,
    *,
    fpir: float = 1e-2,
) -> IdentificationReport:
    """Identification metrics on float (N, D) unit rows with a gallery/mated/stranger split.

    rank-k: the probe's identity is among the k best gallery identities (mated probes only).
    Open set: the threshold t is the smallest with FPIR <= `fpir` over the strangers' best gallery
    scores; FNIR = fraction of mated probes whose best identity is wrong or scores below t.
    """
    labels = np.asarray(labels)
    g, m, s = split.gallery, split.mated, split.strangers
    if len(m) == 0 or len(s) == 0:
        raise ValueError("identification needs mated probes and stranger probes")
    identities, mated_scores = identity_scores(embeddings[g], labels[g], embeddings[m])
    order = np.argsort(-mated_scores, axis=1, kind="stable")
    hits = identities[order] == labels[m][:, None]
    _, stranger_scores = identity_scores(embeddings[g], labels[g], embeddings[s])
    stranger_best = stranger_scores.max(axis=1)
    threshold = threshold_at_far(stranger_best, fpir)
    best = mated_scores[np.arange(len(m)), order[:, 0]]
    found = hits[:, 0] & (best >= threshold)
    return IdentificationReport(
        gallery_identities=len(identities),
        gallery_images=len(g),
        mated_probes=len(m),
        stranger_identities=len(np.unique(labels[s])),
        stranger_probes=len(s),
        rank1=float(np.mean(hits[:, 0])),
        rank5=float(np.mean(hits[:, :5].any(axis=1))),
        fpir=fpir,
        threshold_at_fpir=threshold,
        fnir_at_fpir=float(1.0 - np.mean(found)),
        measured_fpir=float(np.mean(stranger_best >= threshold)),
    )


# ------------------------------------------------------------------------------------------ ROC plot


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, *, title: str = "ROC") -> None:
    """Draw ROC curves (TAR against FAR on a log axis, 1e-4..1) into a PNG with Pillow.

    curves: name -> (far, tar) float arrays as from `roc_curve`.
    """
    from PIL import Image, ImageDraw  # noqa: PLC0415 - only the CLI draws plots

    width, height, left, right, top, bottom = 720, 540, 70, 20, 40, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    x_min, x_max = -4.0, 0.0

    def to_px(far: float, tar: float) -> tuple[float, float]:
        x = (math.log10(max(far, 10**x_min)) - x_min) / (x_max - x_min)
        return left + x * (width - left - right), top + (1.0 - tar) * (height - top - bottom)

    for decade in range(int(x_min), int(x_max) + 1):
        x, _ = to_px(10.0**decade, 0.0)
        draw.line([(x, top), (x, height - bottom)], fill=(220, 220, 220))
        draw.text((x - 12, height - bottom + 6), f"1e{decade}", fill="black")
    for tick in range(11):
        _, y = to_px(1.0, tick / 10)
        draw.line([(left, y), (width - right, y)], fill=(220, 220, 220))
        draw.text((left - 30, y - 6), f"{tick / 10:.1f}", fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((width // 2 - 60, height - 25), "false accept rate (log)", fill="black")
    draw.text((8, top - 25), "true accept rate", fill="black")
    draw.text((width // 2 - 20, 10), title, fill="black")
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (0, 0, 0)]
    for index, (name, (far, tar)) in enumerate(curves.items()):
        colour = colours[index % len(colours)]
        points = [to_px(float(f), float(t)) for f, t in zip(far, tar, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.text((left + 10, top + 10 + 16 * index), name, fill=colour)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


# ------------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class Calibration:
    """Thresholds at target FARs (see `calibrate_thresholds`)."""

    thresholds: dict[str, float]
    """FAR label -> cosine threshold (accept when score >= threshold)."""
    per_far: dict[str, dict[str, float]]
    """FAR label -> {"threshold", "far" (measured on the impostors), "tar" (on the genuine scores)}."""
    default_far: float
    n_genuine: int
    n_impostor: int


def calibrate_thresholds(
    genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float], *, default_far: float | None = None
) -> Calibration:
    """Per target FAR, the smallest threshold with FAR <= target on float (M,) impostor scores.

    Thresholds are rounded *up* to 4 decimals (the FAR can only drop). `default_far` (default: the
    strictest of `fars`) must be one of `fars`. TAR is measured on float (K,) genuine scores.
    """
    if not fars:
        raise ValueError("need at least one target FAR")
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError("calibration needs genuine and impostor scores")
    chosen_default = min(fars) if default_far is None else default_far
    if not any(math.isclose(chosen_default, f) for f in fars):
        raise ValueError(f"default FAR {chosen_default:g} is not one of the target FARs {list(fars)}")
    thresholds: dict[str, float] = {}
    per_far: dict[str, dict[str, float]] = {}
    for far in sorted(set(fars), reverse=True):
        if not 0.0 < far < 1.0:
            raise ValueError(f"FAR must be in (0, 1), got {far}")
        threshold = math.ceil(threshold_at_far(impostor, far) * 1e4) / 1e4
        label = far_label(far)
        thresholds[label] = threshold
        per_far[label] = {
            "threshold": threshold,
            "far": float(np.mean(impostor >= threshold)),
            "tar": float(np.mean(genuine >= threshold)),
        }
    return Calibration(thresholds, per_far, float(far_label(chosen_default)), int(genuine.size), int(impostor.size))
