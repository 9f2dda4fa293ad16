"""Margin heads and metric losses against direct computations (numpy / explicit formulas)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedding.train.heads import (
    HEADS,
    ArcFaceHead,
    CombinedMarginHead,
    CosFaceHead,
    SoftmaxHead,
    SphereFaceHead,
    build_head,
    register_head,
)
from embedding.train.losses import ContrastiveLoss, TripletLoss

D, C = 16, 5
ANGLES = [0.3, 1.2, 2.0, 2.9, 0.01, math.pi - 0.01]  # include theta near 0 and near pi


def embeddings_at_angles(weight: torch.Tensor, labels: list[int], angles: list[float], norms: list[float]):
    """Embeddings at exactly `angles` from their target class weight, with the given norms (float64 build)."""
    w = F.normalize(weight.detach().double(), dim=1)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for label, angle, norm in zip(labels, angles, norms, strict=True):
        u = torch.randn(w.shape[1], generator=gen, dtype=torch.float64)
        u = F.normalize(u - (u @ w[label]) * w[label], dim=0)
        rows.append(norm * (math.cos(angle) * w[label] + math.sin(angle) * u))
    return torch.stack(rows).float()


def class_weight(head: torch.nn.Module) -> torch.Tensor:
    """The (num_classes, D) class weights of any head."""
    weight = head.fc.weight if isinstance(head, SoftmaxHead) else head.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def numpy_cos(emb: torch.Tensor, weight: torch.Tensor) -> np.ndarray:
    e = emb.detach().double().numpy()
    w = weight.detach().double().numpy()
    out: np.ndarray = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    return out


def setup(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    labels = [0, 1, 2, 3, 4, 0]
    weight = class_weight(head)
    emb = embeddings_at_angles(weight, labels, ANGLES, [1.0, 2.0, 0.5, 3.0, 1.5, 2.5])
    cos = numpy_cos(emb, weight)
    return emb, torch.tensor(labels), cos, np.arccos(np.clip(cos, -1, 1))


def check_logits(head, expected_target, s_nontarget, atol=2e-3):
    torch.manual_seed(0)
    emb, labels, cos, theta = setup(head)
    logits = head(emb, labels).detach().double().numpy()
    rows = np.arange(len(labels))
    target = expected_target(cos[rows, labels.numpy()], theta[rows, labels.numpy()], emb)
    np.testing.assert_allclose(logits[rows, labels.numpy()], target, atol=atol, rtol=1e-4)
    mask = np.ones_like(logits, dtype=bool)
    mask[rows, labels.numpy()] = False
    scale = s_nontarget(emb)
    np.testing.assert_allclose(logits[mask], (scale * cos)[mask], atol=atol, rtol=1e-4)


def test_registry() -> None:
    assert {"softmax", "sphereface", "cosface", "arcface", "combined"} <= set(HEADS)
    assert isinstance(build_head("arcface", D, C, s=30.0), ArcFaceHead)
    with pytest.raises(KeyError, match="unknown head"):
        build_head("nope", D, C)
    with pytest.raises(ValueError, match="already registered"):
        register_head("cosface")(CosFaceHead)


def test_softmax_is_plain_linear() -> None:
    torch.manual_seed(0)
    head = SoftmaxHead(D, C)
    emb = torch.randn(6, D)
    expected = emb.double().numpy() @ head.fc.weight.detach().double().numpy().T + head.fc.bias.detach().numpy()
    np.testing.assert_allclose(head(emb, torch.zeros(6, dtype=torch.long)).detach().numpy(), expected, atol=1e-5)


def test_cosface() -> None:
    torch.manual_seed(0)
    head = CosFaceHead(D, C, s=30.0, m=0.35)
    check_logits(head, lambda c, t, e: 30.0 * (c - 0.35), lambda e: 30.0)


@pytest.mark.parametrize("s", [30.0, 64.0])
def test_arcface_with_fallback(s: float) -> None:
    torch.manual_seed(0)
    m = 0.5
    head = ArcFaceHead(D, C, s=s, m=m)

    def target(c, t, e):
        return s * np.where(c > np.cos(np.pi - m), np.cos(t + m), c - np.sin(np.pi - m) * m)

    check_logits(head, target, lambda e: s, atol=5e-3)
    # theta = pi - 0.01 is past pi - m: the fallback cos(theta) - m sin(m); the target stays monotone
    theta = torch.linspace(0.0, math.pi, 4001, dtype=torch.float64)
    values = head.target_logit(torch.cos(theta))
    assert torch.all(values[1:] <= values[:-1] + 1e-9)
    past = torch.tensor([math.cos(math.pi - m + 1e-3)], dtype=torch.float64)
    assert float(head.target_logit(past)) == pytest.approx(math.cos(math.pi - m + 1e-3) - math.sin(m) * m)


def test_combined_margin() -> None:
    torch.manual_seed(0)
    head = CombinedMarginHead(D, C, s=64.0, m1=1.0, m2=0.3, m3=0.2)
    check_logits(head, lambda c, t, e: 64.0 * (np.cos(t + 0.3) - 0.2), lambda e: 64.0, atol=5e-3)
    cos_like = CombinedMarginHead(D, C, s=30.0, m1=1.0, m2=0.0, m3=0.35)
    check_logits(cos_like, lambda c, t, e: 30.0 * (c - 0.35), lambda e: 30.0, atol=5e-3)


def psi_numpy(theta: np.ndarray, m: int) -> np.ndarray:
    k = np.clip(np.floor(m * theta / np.pi), 0, m - 1)
    out: np.ndarray = (-1.0) ** k * np.cos(m * theta) - 2 * k
    return out


def test_sphereface_logits_and_lambda_annealing() -> None:
    torch.manual_seed(0)
    head = SphereFaceHead(D, C, m=4).eval()
    lam = head.current_lambda()
    assert lam == 1000.0

    def norms(e):
        return e.double().norm(dim=1, keepdim=True).numpy()

    def target(c, t, e):
        return norms(e)[:, 0] * (lam * c + psi_numpy(t, 4)) / (1 + lam)

    check_logits(head, target, norms, atol=5e-3)
    head.train()
    emb, labels, _, _ = setup(head)
    for _ in range(10):
        head(emb, labels)
    assert int(head.iteration) == 10
    assert head.current_lambda() == pytest.approx(1000.0 / (1 + 0.12 * 10))
    head.iteration.fill_(10**6)
    assert head.current_lambda() == 5.0
    lam = 5.0
    head.eval()
    check_logits(head, target, norms, atol=5e-3)


def test_sphereface_psi_is_monotone_and_matches_cos_m_theta() -> None:
    head = SphereFaceHead(D, C, m=4)
    theta = np.linspace(0.0, np.pi, 2001)
    psi = head.psi(torch.tensor(np.cos(theta), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(psi, psi_numpy(theta, 4), atol=1e-5)
    assert np.all(np.diff(psi) <= 1e-6)
    assert psi[0] == pytest.approx(1.0) and psi[-1] == pytest.approx(-7.0, abs=1e-4)


def test_fixed_scale_sphereface() -> None:
    torch.manual_seed(0)
    head = SphereFaceHead(D, C, m=4, s=30.0, lambda_min=0.0, base=0.0).eval()
    check_logits(head, lambda c, t, e: 30.0 * psi_numpy(t, 4), lambda e: 30.0, atol=5e-3)


@pytest.mark.parametrize("name", ["softmax", "sphereface", "cosface", "arcface", "combined"])
def test_gradients_finite_at_theta_zero_and_pi(name: str) -> None:
    torch.manual_seed(0)
    head = build_head(name, D, C)
    weight = class_weight(head)
    emb = torch.cat([weight[:2].detach() * 3.0, -weight[2:4].detach() * 2.0]).clone().requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(head(emb, labels), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())


def test_margin_heads_reduce_the_target_logit() -> None:
    torch.manual_seed(0)
    emb, labels = torch.randn(32, D), torch.randint(0, C, (32,))
    for name in ("sphereface", "cosface", "arcface", "combined"):
        head: Any = build_head(name, D, C).eval()
        cos = head.cosine(emb)
        scale = emb.norm(dim=1) if name == "sphereface" else head.s
        rows = torch.arange(32)
        assert torch.all(head(emb, labels)[rows, labels] <= scale * cos[rows, labels] + 1e-4), name


def test_contrastive_loss_formula() -> None:
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [0.6, 0.8], [3.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])  # 0 = same
    d = np.array([5.0, 1.0, 5.0, 0.0])
    expected = np.mean((1 - y.numpy()) * 0.5 * d**2 + y.numpy() * 0.5 * np.maximum(0, 2.0 - d) ** 2)
    assert float(ContrastiveLoss(2.0)(a, b, y)) == pytest.approx(expected)
    a.requires_grad_(True)
    ContrastiveLoss(2.0)(a, b, y).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    with pytest.raises(ValueError):
        ContrastiveLoss(2.0)(a, b[:2], y)


def test_triplet_loss_formula_and_batch_hard() -> None:
    torch.manual_seed(0)
    a, p, n = torch.randn(8, D), torch.randn(8, D), torch.randn(8, D)
    an, pn, nn_ = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a.numpy(), p.numpy(), n.numpy()))
    expected = np.mean(np.maximum(0, np.linalg.norm(an - pn, axis=1) - np.linalg.norm(an - nn_, axis=1) + 0.2))
    assert float(TripletLoss(0.2)(a, p, n)) == pytest.approx(expected, rel=1e-5)
    emb = torch.randn(6, D, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    e = F.normalize(emb.detach(), dim=1).numpy()
    dist = np.linalg.norm(e[:, None] - e[None], axis=2)
    same = labels.numpy()[:, None] == labels.numpy()[None]
    hp = np.where(same & ~np.eye(6, dtype=bool), dist, 0).max(1)
    hn = np.where(same, 9, dist).min(1)
    loss = TripletLoss(0.2).batch_hard(emb, labels)
    assert float(loss.detach()) == pytest.approx(np.mean(np.maximum(0, hp - hn + 0.2)), rel=1e-4)
    loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
