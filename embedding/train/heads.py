"""Classification heads used only during training (never shipped in a model file).

Every head is an `nn.Module` with `forward(embeddings, labels) -> logits`: float (N, D) embeddings of
any norm and int64 (N,) class labels give float (N, num_classes) logits for cross-entropy. Heads are
registered by name in `HEADS` and built with `build_head(name, embedding_dim, num_classes, **params)`.

Notation: theta_ik is the angle between embedding i and the weight vector of class k, so
cos(theta_ik) = <x_i, w_k> / (|x_i| |w_k|). Margin heads change only the target logit (k == label);
every other logit is s * cos(theta_ik) (for plain softmax: the unnormalised <x_i, w_k> + b_k; for
SphereFace: |x_i| * cos(theta_ik)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

HeadFactory = Callable[..., nn.Module]
_H = TypeVar("_H", bound=HeadFactory)

HEADS: dict[str, HeadFactory] = {}
"""Registered head classes by name; each is called as factory(embedding_dim, num_classes, **params)."""

COS_EPS: Final = 1e-7
"""Cosines are clamped to [-1 + COS_EPS, 1 - COS_EPS] wherever an angle or a sine is taken, so
acos and sqrt keep finite gradients at theta = 0 and theta = pi."""


def register_head(name: str) -> Callable[[_H], _H]:
    """Decorator registering a head class (or factory) under `name`."""

    def decorator(factory: _H) -> _H:
        if name in HEADS:
            raise ValueError(f"head {name!r} is already registered")
        HEADS[name] = factory
        return factory

    return decorator


def build_head(name: str, embedding_dim: int, num_classes: int, **params: object) -> nn.Module:
    """Build the head registered as `name` for `num_classes` classes of `embedding_dim`-d embeddings."""
    try:
        factory = HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; known: {sorted(HEADS)}") from None
    return factory(embedding_dim, num_classes, **params)


class _NormalisedWeightHead(nn.Module):
    """Shared part of the angular heads: a (num_classes, D) class-weight matrix and the cosine."""

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(f"need embedding_dim >= 1 and num_classes >= 1, got {embedding_dim}, {num_classes}")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings (any norm) -> float (N, num_classes) cosine similarities."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    @staticmethod
    def _target_mask(labels: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
        """bool (N, num_classes), True at [i, labels[i]]."""
        if labels.ndim != 1 or labels.shape[0] != cosine.shape[0]:
            raise ValueError(f"labels must have shape ({cosine.shape[0]},), got {tuple(labels.shape)}")
        return F.one_hot(labels, num_classes=cosine.shape[1]).bool()


@register_head("softmax")
class SoftmaxHead(nn.Module):
    """Plain softmax classifier: logits = x W^T + b (no normalisation, no margin, no scale).

    float (N, D), int64 (N,) -> float (N, num_classes); `labels` are accepted for a uniform interface.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, num_classes, bias=bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings, int64 (N,) labels (unused) -> float (N, num_classes) logits."""
        del labels
        out: torch.Tensor = self.fc(embeddings)
        return out


@register_head("cosface")
class CosFaceHead(_NormalisedWeightHead):
    """CosFace / large-margin cosine loss head (Wang et al., 2018).

    logits[i, k] = s * (cos(theta_ik) - m * [k == labels[i]]). Feed the logits to cross-entropy.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 30.0, m: float = 0.35) -> None:
        super().__init__(embedding_dim, num_classes)
        self.s = s
        self.m = m

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings, int64 (N,) class labels -> float (N, num_classes) logits."""
        cosine = self.cosine(embeddings)
        margin = self._target_mask(labels, cosine).to(cosine.dtype) * self.m
        return self.s * (cosine - margin)


@register_head("arcface")
class ArcFaceHead(_NormalisedWeightHead):
    """ArcFace / additive angular margin head (Deng et al., 2019), the arcface_torch form.

    Target logit s * cos(theta + m) computed as s * (cos t * cos m - sin t * sin m). Where theta + m
    would pass pi (cos theta <= cos(pi - m)), cos(theta + m) would start increasing again; there the
    target logit is s * (cos theta - m * sin(pi - m)) instead, a CosFace-like margin (arcface_torch /
    InsightFace, no "easy margin"). The switch drops the logit by a small step (from -s to
    s * (-cos m - m sin m)), so the target logit stays monotone decreasing in theta.
    Non-target logits: s * cos(theta).
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(embedding_dim, num_classes)
        if not 0.0 <= m < math.pi:
            raise ValueError(f"ArcFace margin must be in [0, pi), got {m}")
        self.s = s
        self.m = m
        self.cos_m = math.cos(m)
        self.sin_m = math.sin(m)
        self.threshold = math.cos(math.pi - m)
        self.fallback_margin = math.sin(math.pi - m) * m

    def target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        """float (...) cos(theta) -> float (...) unscaled target value cos(theta + m) with the fallback."""
        clamped = cosine.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)
        sine = torch.sqrt(1.0 - clamped * clamped)
        phi = clamped * self.cos_m - sine * self.sin_m
        return torch.where(cosine > self.threshold, phi, cosine - self.fallback_margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings, int64 (N,) class labels -> float (N, num_classes) logits."""
        cosine = self.cosine(embeddings)
        mask = self._target_mask(labels, cosine)
        return self.s * torch.where(mask, self.target_logit(cosine), cosine)


@register_head("combined")
class CombinedMarginHead(_NormalisedWeightHead):
    """Combined margin (InsightFace): target logit s * (cos(m1 * theta + m2) - m3).

    (m1, m2, m3) = (1, 0.5, 0) is ArcFace without its fallback, (1, 0, 0.35) CosFace, (m, 0, 0)
    a SphereFace-like multiplicative margin without the psi extension. The formula is applied as is
    for every theta (like InsightFace's combined loss); pick margins with m1 * pi + m2 close to pi
    or accept that the target logit is not monotone for theta near pi. Non-target: s * cos(theta).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
    ) -> None:
        super().__init__(embedding_dim, num_classes)
        self.s = s
        self.m1 = m1
        self.m2 = m2
        self.m3 = m3

    def target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        """float (...) cos(theta) -> float (...) unscaled cos(m1 * theta + m2) - m3."""
        theta = torch.acos(cosine.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS))
        return torch.cos(self.m1 * theta + self.m2) - self.m3

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings, int64 (N,) class labels -> float (N, num_classes) logits."""
        cosine = self.cosine(embeddings)
        mask = self._target_mask(labels, cosine)
        return self.s * torch.where(mask, self.target_logit(cosine), cosine)


def chebyshev_cos_multiple(cosine: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m * theta) from cos(theta) by the Chebyshev recurrence T_m (exact, smooth at theta = 0, pi).

    float (...) -> float (...); m >= 0.
    """
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    previous, current = torch.ones_like(cosine), cosine
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2.0 * cosine * current - previous
    return current


@register_head("sphereface")
class SphereFaceHead(_NormalisedWeightHead):
    """SphereFace / A-Softmax (Liu et al., 2017): multiplicative angular margin m with lambda annealing.

    psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi / m, (k + 1) pi / m], k in 0..m-1, is a
    monotone decreasing extension of cos(m theta) over [0, pi]. The target logit is
    scale * (lambda * cos(theta) + psi(theta)) / (1 + lambda); non-target logits are scale * cos(theta).
    `scale` is the embedding norm |x_i| (the original A-Softmax, weights normalised, features not) when
    `s` is None, else the constant `s`.

    lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power), counted in training-mode
    forward calls (buffer `iteration`, saved with the state dict so a resumed run continues the
    schedule). The original schedule: base 1000, gamma 0.12, power 1, lambda_min 5.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        m: int = 4,
        s: float | None = None,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__(embedding_dim, num_classes)
        if m < 1 or int(m) != m:
            raise ValueError(f"SphereFace margin m must be a positive integer, got {m}")
        self.m = int(m)
        self.s = s
        self.base = base
        self.gamma = gamma
        self.power = power
        self.lambda_min = lambda_min
        self.iteration: torch.Tensor
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def current_lambda(self) -> float:
        """The annealing weight lambda at the current iteration."""
        annealed = float(self.base * (1.0 + self.gamma * float(self.iteration)) ** (-self.power))
        return max(self.lambda_min, annealed)

    def psi(self, cosine: torch.Tensor) -> torch.Tensor:
        """float (...) cos(theta) -> float (...) psi(theta) = (-1)^k cos(m theta) - 2k."""
        clamped = cosine.clamp(-1.0, 1.0)
        with torch.no_grad():
            theta = torch.acos(clamped.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS))
            k = torch.floor(self.m * theta / math.pi).clamp(0, self.m - 1)
            sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        return sign * chebyshev_cos_multiple(clamped, self.m) - 2.0 * k

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float (N, D) embeddings, int64 (N,) class labels -> float (N, num_classes) logits."""
        cosine = self.cosine(embeddings)
        mask = self._target_mask(labels, cosine)
        lam = self.current_lambda()
        target = (lam * cosine + self.psi(cosine)) / (1.0 + lam)
        scale: torch.Tensor | float = embeddings.norm(dim=1, keepdim=True) if self.s is None else self.s
        if self.training:
            with torch.no_grad():
                self.iteration += 1
        return scale * torch.where(mask, target, cosine)
