"""benchmarks.search_scale: realistic galleries from a face model, and every index kind it compares measured
against exact search with a recall floor (small sizes; the figures are in benchmarks/README.md)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.search_scale import KINDS, FaceModel, build, make_gallery, time_queries

DIM = 32


def _model(seed: int = 0) -> FaceModel:
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((DIM, DIM)).astype(np.float32) / np.sqrt(DIM)
    return FaceModel(
        centre_mean=np.zeros(DIM, dtype=np.float32),
        centre_chol=centre,
        face_chol=(0.5 * centre).astype(np.float32),
        spreads=np.array([0.5, 1.0, 1.5], dtype=np.float32),
    )


def test_gallery_shape_and_genuine_probes_are_closer() -> None:
    gallery = make_gallery(_model(), faces=3000, per_person=5, queries=200, seed=1)
    assert gallery.x.shape == (3000, DIM) and np.allclose(np.linalg.norm(gallery.x, axis=1), 1, atol=1e-5)
    assert (gallery.probe_person >= 0).sum() == 100
    top = (gallery.probes @ gallery.x.T).max(axis=1)
    assert top[gallery.probe_person >= 0].mean() > top[gallery.probe_person < 0].mean() + 0.1


@pytest.mark.parametrize(("kind", "floor"), [("fp16", 0.99), ("sq8", 0.97), ("hnsw_fp16", 0.97), ("hnsw", 0.95)])
def test_each_kind_against_exact_search(kind: str, floor: float) -> None:
    gallery = make_gallery(_model(), faces=5000, per_person=5, queries=200, seed=2)
    exact, _ = build("flat", gallery.x, seed=0)
    index, _ = build(kind, gallery.x, seed=0, ef_search=128)
    _, e_ids, _ = time_queries(exact, gallery.probes, 5)
    _, ids, _ = time_queries(index, gallery.probes, 5)
    recall = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, e_ids, strict=True)]))
    assert recall >= floor, (kind, recall)
    assert kind in KINDS
