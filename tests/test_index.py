"""Tests for the index package: FAISS vs numpy congruence, identity search, persistence, threads."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from index import BruteForceIndex, FaissIndex, GalleryIndex, Hit, IndexCorruptError, VectorIndex
from index.base import atomic_write_bytes
from index.gallery import _Members

DIM = 128
ATOL = 1e-5

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> F32:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def make_indexes(dim: int = DIM) -> list[VectorIndex]:
    return [FaissIndex(dim), BruteForceIndex(dim)]


def check_topk(xq: F32, ref_ids: I64, ref_x: F32, scores: F32, ids: I64, *, k: int) -> None:
    """Assert (scores, ids) is a correct top-k over (ref_ids, ref_x), allowing for near-ties."""
    m, n = xq.shape[0], ref_ids.shape[0]
    kk = min(k, n)
    assert scores.shape == (m, k)
    assert scores.dtype == np.float32
    assert ids.shape == (m, k)
    assert ids.dtype == np.int64
    assert (ids[:, kk:] == -1).all()
    assert np.isneginf(scores[:, kk:]).all()
    if kk == 0:
        return
    exact = xq.astype(np.float64) @ ref_x.astype(np.float64).T
    pos_of = {int(i): p for p, i in enumerate(ref_ids)}
    for r in range(m):
        row_ids = ids[r, :kk].tolist()
        assert len(set(row_ids)) == kk, "duplicate ids in one result row"
        pos = [pos_of[i] for i in row_ids]  # KeyError: an id that is not stored
        np.testing.assert_allclose(scores[r, :kk], exact[r, pos], atol=ATOL)
        assert (np.diff(scores[r, :kk]) <= ATOL).all(), "scores not descending"
        best = np.sort(exact[r])[::-1][:kk]
        np.testing.assert_allclose(scores[r, :kk], best, atol=ATOL)


def assert_same_results(a: tuple[F32, I64], b: tuple[F32, I64]) -> None:
    """Same scores, and the same ids wherever the score is not within ATOL of a neighbour."""
    (sa, ia), (sb, ib) = a, b
    np.testing.assert_allclose(sa, sb, atol=ATOL)
    assert np.array_equal(ia == -1, ib == -1)
    finite = np.where(np.isfinite(sa), sa, -1e9).astype(np.float64)
    gap_prev = np.abs(np.diff(finite, axis=1, prepend=np.inf))
    gap_next = np.abs(np.diff(finite, axis=1, append=-np.inf))
    clear = (gap_prev > 2 * ATOL) & (gap_next > 2 * ATOL)
    valid = ia != -1
    assert valid.sum() < 4 or clear[valid].mean() > 0.5  # the check below must not be vacuous
    assert np.array_equal(ia[clear], ib[clear])


# --- VectorIndex congruence -------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 50, 2000])
def test_faiss_matches_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    x = unit_vectors(rng, n)
    ids = rng.choice(10 * n + 10, size=n, replace=False).astype(np.int64)
    xq = unit_vectors(rng, 20)
    fi, bf = make_indexes()
    for idx in (fi, bf):
        idx.add(ids, x)
        assert idx.ntotal == n
        assert np.array_equal(np.sort(idx.ids()), np.sort(ids))
    for k in (1, 5, n + 3):
        rf, rb = fi.search(xq, k), bf.search(xq, k)
        check_topk(xq, ids, x, *rf, k=k)
        check_topk(xq, ids, x, *rb, k=k)
        assert_same_results(rf, rb)

    removed = ids[rng.permutation(n)[: n // 3]]
    keep = ~np.isin(ids, removed)
    unknown = np.array([10 * n + 11, 10 * n + 12], dtype=np.int64)
    for idx in (fi, bf):
        assert idx.remove(np.concatenate([removed, unknown])) == removed.size
        assert idx.ntotal == n - removed.size
        assert idx.remove(removed) == 0
    for k in (1, 5, n + 3):
        rf, rb = fi.search(xq, k), bf.search(xq, k)
        check_topk(xq, ids[keep], x[keep], *rf, k=k)
        check_topk(xq, ids[keep], x[keep], *rb, k=k)
        assert_same_results(rf, rb)
        assert not np.isin(rf[1], removed).any()
        assert not np.isin(rb[1], removed).any()


@pytest.mark.parametrize("make", [lambda: FaissIndex(4), lambda: BruteForceIndex(4)])
def test_padding_and_basic_contract(make: Callable[[], VectorIndex]) -> None:
    idx = make()
    assert idx.dim == 4
    s, i = idx.search(np.ones((2, 4), np.float32), 3)
    assert (i == -1).all()
    assert np.isneginf(s).all()
    # float64, non-contiguous input is converted
    x = np.asfortranarray(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float64))
    idx.add(np.array([7, 3]), x)
    s, i = idx.search(np.array([[1.0, 0.5, 0, 0]]), 4)
    assert i.tolist() == [[7, 3, -1, -1]]
    np.testing.assert_allclose(s[0, :2], [1.0, 0.5])
    assert np.isneginf(s[0, 2:]).all()
    np.testing.assert_array_equal(idx.reconstruct(np.array([3, 7])), [[0, 1, 0, 0], [1, 0, 0, 0]])
    with pytest.raises(KeyError):
        idx.reconstruct(np.array([3, 99]))
    idx.reset()
    assert idx.ntotal == 0
    assert idx.ids().size == 0


@pytest.mark.parametrize("make", [lambda: FaissIndex(8), lambda: BruteForceIndex(8)])
def test_duplicates_and_bad_input_leave_index_unchanged(make: Callable[[], VectorIndex]) -> None:
    rng = np.random.default_rng(1)
    idx = make()
    x = unit_vectors(rng, 5, 8)
    idx.add(np.arange(5), x)
    xq = unit_vectors(rng, 3, 8)
    before = idx.search(xq, 10)

    bad_calls: list[tuple[Any, Any]] = [
        (np.array([4, 5]), unit_vectors(rng, 2, 8)),  # 4 already present
        (np.array([6, 6]), unit_vectors(rng, 2, 8)),  # repeated within the call
        (np.array([6, -1]), unit_vectors(rng, 2, 8)),  # negative id
        (np.array([6, 7]), unit_vectors(rng, 3, 8)),  # count mismatch
        (np.array([6, 7]), unit_vectors(rng, 2, 7)),  # wrong dim
        (np.array([[6, 7]]), unit_vectors(rng, 2, 8)),  # ids not 1-D
        (np.array([6.0, 7.0]), unit_vectors(rng, 2, 8)),  # float ids
        (np.array([6]), np.full((1, 8), np.nan)),  # non-finite
        (np.array([6]), np.ones(8)),  # x not 2-D
    ]
    for ids, xs in bad_calls:
        with pytest.raises(ValueError):
            idx.add(ids, xs)
        assert idx.ntotal == 5
        after = idx.search(xq, 10)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])
    for k in (0, -1):
        with pytest.raises(ValueError):
            idx.search(xq, k)
    with pytest.raises(ValueError):
        idx.search(np.ones((2, 7), np.float32), 1)
    with pytest.raises(ValueError):
        idx.search(np.ones(8, np.float32), 1)


def test_faiss_save_load_roundtrip_and_corruption(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = unit_vectors(rng, 300)
    ids = np.arange(1000, 1300, dtype=np.int64)
    fi = FaissIndex(DIM)
    fi.add(ids, x)
    fi.remove(ids[::7])
    path = tmp_path / "a.faiss"
    sha = fi.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.faiss"]
    loaded = FaissIndex.load(path, expected_sha256=sha)
    xq = unit_vectors(rng, 10)
    a, b = fi.search(xq, 20), loaded.search(xq, 20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError):
        loaded.add(ids[1:2], x[1:2])  # duplicate detection survives the round trip

    with pytest.raises(IndexCorruptError):
        FaissIndex.load(path, expected_sha256="0" * 64)
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(tmp_path / "missing.faiss")
    truncated = tmp_path / "t.faiss"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(truncated)
    l2 = tmp_path / "l2.faiss"
    faiss.write_index(faiss.IndexFlatIP(DIM), str(l2))
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(l2)
    l2map = tmp_path / "l2map.faiss"
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatL2(DIM)), str(l2map))
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(l2map)


def test_gpu_kind_without_gpu_raises() -> None:
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is available")
    with pytest.raises(RuntimeError, match="needs a GPU"):
        FaissIndex(4, kind="gpu_flat")
    assert not FaissIndex(4).uses_gpu


# --- GalleryIndex --------------------------------------------------------------------------------


def clustered_faces(rng: np.random.Generator, n_ident: int, faces_per: float, dim: int = DIM) -> tuple[I64, I64, F32]:
    """Faces near per-identity centres, so one identity often fills the top of a face ranking."""
    n = int(n_ident * faces_per)
    idents = rng.integers(0, n_ident, size=n).astype(np.int64)
    centres = unit_vectors(rng, n_ident, dim)
    x = centres[idents] + 0.35 * unit_vectors(rng, n, dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    face_ids = rng.choice(50 * n, size=n, replace=False).astype(np.int64)
    return face_ids, idents, x.astype(np.float32)


def brute_identity_search(xq: F32, face_ids: I64, idents: I64, x: F32, k: int) -> list[dict[int, float]]:
    """Per query: the top-k identities -> best face score, by grouping all face scores by identity."""
    exact = xq.astype(np.float64) @ x.astype(np.float64).T
    out = []
    for r in range(xq.shape[0]):
        best: dict[int, float] = {}
        for ident, s in zip(idents.tolist(), exact[r].tolist(), strict=True):
            best[ident] = max(best.get(ident, -np.inf), s)
        out.append(best)
    return out


def check_gallery_results(got: list[list[Hit]], xq: F32, face_ids: I64, idents: I64, x: F32, *, k: int) -> None:
    ref = brute_identity_search(xq, face_ids, idents, x, k)
    face_ident = dict(zip(face_ids.tolist(), idents.tolist(), strict=True))
    face_pos = {f: p for p, f in enumerate(face_ids.tolist())}
    assert len(got) == xq.shape[0]
    for r, hits in enumerate(got):
        best = ref[r]
        expected = sorted(best.values(), reverse=True)[:k]
        assert len(hits) == len(expected)
        assert len({h.identity_id for h in hits}) == len(hits), "identities not distinct"
        np.testing.assert_allclose([h.score for h in hits], expected, atol=ATOL)
        for h in hits:
            assert face_ident[h.face_id] == h.identity_id
            face_score = float(xq[r].astype(np.float64) @ x[face_pos[h.face_id]].astype(np.float64))
            assert h.score == pytest.approx(face_score, abs=ATOL)
            assert h.score == pytest.approx(best[h.identity_id], abs=ATOL), "not the best face"
        if len(hits) == k and k < len(best):
            # Identities clearly above the k-th score must all be present.
            cut = expected[-1] + 2 * ATOL
            assert {i for i, s in best.items() if s > cut} <= {h.identity_id for h in hits}


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_gallery_matches_brute_force(backend: Any) -> None:
    rng = np.random.default_rng(4)
    face_ids, idents, x = clustered_faces(rng, 400, 5)
    g = GalleryIndex(DIM, backend=backend)
    g.add(face_ids[:1000], idents[:1000], x[:1000])
    g.add(face_ids[1000:], idents[1000:], x[1000:])
    assert g.ntotal == face_ids.size
    assert g.n_identities == np.unique(idents).size
    assert np.array_equal(g.face_ids(), np.sort(face_ids))
    # Queries near identity centres make many top faces share an identity.
    xq = x[rng.choice(face_ids.size, 25, replace=False)] + 0.05 * unit_vectors(rng, 25)
    xq = xq.astype(np.float32)
    for k in (1, 5, 50, 1000):
        check_gallery_results(g.search(xq, k), xq, face_ids, idents, x, k=k)

    victims = np.unique(idents)[:40]
    n_victim_faces = int(np.isin(idents, victims).sum())
    assert sum(g.remove_identity(int(v)) for v in victims) == n_victim_faces
    assert g.remove_identity(int(victims[0])) == 0
    keep = ~np.isin(idents, victims)
    drop_faces = face_ids[keep][::3]
    assert g.remove_faces(np.concatenate([drop_faces, [10**12]])) == drop_faces.size
    keep &= ~np.isin(face_ids, drop_faces)
    assert g.ntotal == int(keep.sum())
    for k in (1, 5, 50):
        got = g.search(xq, k)
        check_gallery_results(got, xq, face_ids[keep], idents[keep], x[keep], k=k)
        assert not any(h.identity_id in set(victims.tolist()) for hits in got for h in hits)


def reference_means(x: F32, idents: I64, parts: tuple[int, ...] | None = None) -> npt.NDArray[np.float64]:
    """Each identity's (ascending) unit mean face; a fusion's (``parts``) part by part, scaled by 1/sqrt(k)."""
    sums = np.stack([x[idents == i].astype(np.float64).sum(axis=0) for i in np.unique(idents)])
    if parts is None:
        whole: npt.NDArray[np.float64] = sums / np.linalg.norm(sums, axis=1, keepdims=True)
        return whole
    edges = np.cumsum((0, *parts))
    blocks = [sums[:, a:b] / np.linalg.norm(sums[:, a:b], axis=1, keepdims=True) for a, b in itertools.pairwise(edges)]
    fused: npt.NDArray[np.float64] = np.concatenate(blocks, axis=1) / np.sqrt(len(parts))
    return fused


def check_mean_results(
    got: list[list[Hit]],
    xq: F32,
    face_ids: I64,
    idents: I64,
    x: F32,
    *,
    k: int,
    parts: tuple[int, ...] | None = None,
) -> None:
    """Against a numpy reference: each identity scores q . unit(mean of its faces); the hit names its best face."""
    ids = np.unique(idents)
    means = reference_means(x, idents, parts)
    scores = xq.astype(np.float64) @ means.T
    for r, hits in enumerate(got):
        expected = np.sort(scores[r])[::-1][:k]
        np.testing.assert_allclose([h.score for h in hits], expected, atol=ATOL)
        for h in hits:
            assert h.score == pytest.approx(scores[r][np.searchsorted(ids, h.identity_id)], abs=ATOL)
            own = face_ids[idents == h.identity_id]
            face_scores = x[np.isin(face_ids, own)] @ xq[r]
            assert h.face_id == own[int(np.argmax(face_scores))]


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_gallery_mean_identity_score_matches_reference(backend: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    face_ids, idents, x = clustered_faces(rng, 200, 4)
    g = GalleryIndex(DIM, backend=backend, identity_score="mean")
    g.add(face_ids[:300], idents[:300], x[:300])
    g.add(face_ids[300:], idents[300:], x[300:])
    assert g.n_identities == g.n_compared == np.unique(idents).size
    xq = (x[rng.choice(face_ids.size, 20, replace=False)] + 0.05 * unit_vectors(rng, 20)).astype(np.float32)
    for k in (1, 5, 300):
        check_mean_results(g.search(xq, k), xq, face_ids, idents, x, k=k)
    # incremental removals move the means (and drop emptied identities) without a rebuild
    victims = np.unique(idents)[:10]
    for v in victims:
        g.remove_identity(int(v))
    keep = ~np.isin(idents, victims)
    drop = face_ids[keep][::2]
    g.remove_faces(drop)
    keep &= ~np.isin(face_ids, drop)
    check_mean_results(g.search(xq, 5), xq, face_ids[keep], idents[keep], x[keep], k=5)
    assert g.n_identities == np.unique(idents[keep]).size
    # a snapshot holds only the faces; loading rebuilds the means
    g.save(tmp_path / "g", meta={})
    loaded, _ = GalleryIndex.load(tmp_path / "g", backend=backend, identity_score="mean")
    check_mean_results(loaded.search(xq, 5), xq, face_ids[keep], idents[keep], x[keep], k=5)


def fused_faces(rng: np.random.Generator, n_ident: int, faces_per: float) -> tuple[I64, I64, F32]:
    """Fusion vectors (two unit parts of DIM/2, scaled by 1/sqrt(2)): the first model's faces of one person agree
    closely, the second's loosely, as dlib's ResNet and SFace do."""
    half = DIM // 2
    n = int(n_ident * faces_per)
    idents = rng.integers(0, n_ident, size=n).astype(np.int64)
    tight = unit_vectors(rng, n_ident, half)[idents] + 0.1 * unit_vectors(rng, n, half)
    loose = unit_vectors(rng, n_ident, half)[idents] + 1.0 * unit_vectors(rng, n, half)
    parts = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in (tight, loose)]
    return np.arange(n, dtype=np.int64), idents, (np.concatenate(parts, axis=1) / np.sqrt(2)).astype(np.float32)


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_gallery_mean_of_a_fusion_is_taken_part_by_part(backend: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    face_ids, idents, x = fused_faces(rng, 60, 4)
    parts = (DIM // 2, DIM // 2)
    # the whole-vector mean weights the tight part above the loose one: the two references really differ
    assert np.abs(reference_means(x, idents, parts) - reference_means(x, idents)).max() > 0.01
    g = GalleryIndex(DIM, backend=backend, identity_score="mean", mean_parts=parts)
    g.add(face_ids, idents, x)
    xq = x[rng.choice(face_ids.size, 15, replace=False)]
    check_mean_results(g.search(xq, 5), xq, face_ids, idents, x, k=5, parts=parts)
    gone = face_ids[::3]
    g.remove_faces(gone)
    keep = ~np.isin(face_ids, gone)
    check_mean_results(g.search(xq, 5), xq, face_ids[keep], idents[keep], x[keep], k=5, parts=parts)
    g.save(tmp_path / "g", meta={})
    loaded, _ = GalleryIndex.load(tmp_path / "g", backend=backend, identity_score="mean", mean_parts=parts)
    check_mean_results(loaded.search(xq, 5), xq, face_ids[keep], idents[keep], x[keep], k=5, parts=parts)


def test_gallery_refuses_parts_that_do_not_fill_the_vector() -> None:
    with pytest.raises(ValueError, match="sum to the vector dim"):
        GalleryIndex(DIM, identity_score="mean", mean_parts=(DIM // 2, DIM // 4))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "fp16"])
def test_gallery_over_fetch_with_one_dominant_identity(kind: str) -> None:
    """Many faces of one person crowd the short list; identity-level top-k still finds the others."""
    rng = np.random.default_rng(5)
    centre = unit_vectors(rng, 1)
    big = centre + 0.05 * unit_vectors(rng, 500)  # 500 faces of identity 0, all near the query
    others = unit_vectors(rng, 30)
    x = np.concatenate([big, others]).astype(np.float32)
    idents = np.concatenate([np.zeros(500, np.int64), np.arange(1, 31)])
    face_ids = np.arange(x.shape[0], dtype=np.int64)
    g = GalleryIndex(DIM, kind=kind)
    g.add(face_ids, idents, x)
    stored = x if kind == "flat" else x.astype(np.float16).astype(np.float32)  # what fp16 storage holds
    got = g.search(centre, 5)
    assert got[0][0].identity_id == 0
    check_gallery_results(got, centre, face_ids, idents, stored, k=5)
    # More identities asked for than exist: every identity, once.
    got = g.search(centre, 100)
    assert sorted(h.identity_id for h in got[0]) == list(range(31))
    check_gallery_results(got, centre, face_ids, idents, stored, k=100)


def test_gallery_bad_input_and_empty() -> None:
    g = GalleryIndex(8)
    assert g.search(np.ones((2, 8), np.float32), 3) == [[], []]
    g.add([1, 2], [10, 10], np.eye(8, dtype=np.float32)[:2])
    with pytest.raises(ValueError):
        g.add([2], [11], np.eye(8, dtype=np.float32)[:1])  # duplicate face id
    with pytest.raises(ValueError):
        g.add([3, 4], [11], np.eye(8, dtype=np.float32)[:2])  # identity count mismatch
    with pytest.raises(ValueError):
        g.search(np.ones((1, 8), np.float32), 0)
    with pytest.raises(ValueError):
        g.search(np.ones((1, 7), np.float32), 1)
    assert g.ntotal == 2
    assert g.n_identities == 1
    assert g.identities_of([2, 5]).tolist() == [10, -1]
    assert g.contains([5, 1, -1, 2]).tolist() == [False, True, False, True]
    assert g.search(np.eye(8, dtype=np.float32)[1:2], 3) == [[Hit(10, 2, 1.0)]]


# --- Gallery persistence -------------------------------------------------------------------------


@pytest.fixture
def saved_gallery(tmp_path: Path) -> tuple[GalleryIndex, Path, F32]:
    rng = np.random.default_rng(6)
    face_ids, idents, x = clustered_faces(rng, 60, 5)
    g = GalleryIndex(DIM)
    g.add(face_ids, idents, x)
    g.remove_identity(int(idents[0]))
    d = tmp_path / "gallery"
    g.save(d, meta={"model_version": "arcface-r50@3", "last_seq": 1234})
    return g, d, unit_vectors(rng, 10)


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_gallery_save_load_roundtrip(saved_gallery: tuple[GalleryIndex, Path, F32], backend: Any) -> None:
    g, d, xq = saved_gallery
    assert sorted(p.name for p in d.iterdir()) == ["faces.npy", "index.npz", "manifest.json"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["ntotal"] == g.ntotal
    assert manifest["dim"] == DIM
    loaded, meta = GalleryIndex.load(d, backend=backend)
    assert meta == {"model_version": "arcface-r50@3", "last_seq": 1234}
    assert loaded.backend == backend
    assert loaded.ntotal == g.ntotal
    assert loaded.n_identities == g.n_identities
    assert np.array_equal(loaded.face_ids(), g.face_ids())
    a, b = g.search(xq, 7), loaded.search(xq, 7)
    assert [[h.identity_id for h in r] for r in a] == [[h.identity_id for h in r] for r in b]
    assert [[h.face_id for h in r] for r in a] == [[h.face_id for h in r] for r in b]
    np.testing.assert_allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in b], atol=ATOL)
    # A loaded gallery stays usable and can be saved again.
    loaded.remove_faces(loaded.face_ids()[:3])
    loaded.save(d, meta={"last_seq": 1235})
    again, meta2 = GalleryIndex.load(d)
    assert meta2 == {"last_seq": 1235}
    assert again.ntotal == g.ntotal - 3


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: _flip_byte(d / "index.npz", -1000), id="flip-index"),
        pytest.param(lambda d: _flip_byte(d / "faces.npy", -3), id="flip-faces"),
        pytest.param(
            lambda d: (d / "index.npz").write_bytes((d / "index.npz").read_bytes()[:-64]),
            id="truncate-index",
        ),
        pytest.param(lambda d: (d / "faces.npy").write_bytes((d / "faces.npy").read_bytes()[:-8]), id="truncate-faces"),
        pytest.param(lambda d: (d / "manifest.json").unlink(), id="missing-manifest"),
        pytest.param(lambda d: (d / "faces.npy").unlink(), id="missing-faces"),
        pytest.param(lambda d: (d / "index.npz").unlink(), id="missing-index"),
        pytest.param(lambda d: _edit_manifest(d, ntotal=lambda v: v + 1), id="wrong-ntotal"),
        pytest.param(lambda d: _edit_manifest(d, dim=lambda v: v * 2), id="wrong-dim"),
        pytest.param(lambda d: _edit_manifest(d, format_version=lambda v: 99), id="wrong-version"),
        pytest.param(lambda d: _edit_manifest(d, meta=lambda v: None), id="no-meta"),
        pytest.param(lambda d: (d / "manifest.json").write_text("{not json"), id="bad-json"),
        pytest.param(lambda d: (d / "manifest.json").write_text("[1, 2]"), id="json-not-object"),
    ],
)
def test_gallery_load_detects_corruption(
    saved_gallery: tuple[GalleryIndex, Path, F32], damage: Callable[[Path], object]
) -> None:
    _, d, _ = saved_gallery
    GalleryIndex.load(d)  # intact directory loads
    damage(d)
    with pytest.raises(IndexCorruptError):
        GalleryIndex.load(d)


def _edit_manifest(d: Path, **edits: Callable[[Any], Any]) -> None:
    path = d / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, fn in edits.items():
        manifest[key] = fn(manifest[key])
    path.write_text(json.dumps(manifest))


def test_gallery_faces_table_swapped_with_consistent_checksum(
    saved_gallery: tuple[GalleryIndex, Path, F32],
) -> None:
    """A faces.npy whose checksum matches the manifest but whose ids disagree with the index."""
    _, d, _ = saved_gallery
    faces = np.load(d / "faces.npy")
    faces[0, 0] = faces[:, 0].max() + 1
    buf = io.BytesIO()
    np.save(buf, faces)
    (d / "faces.npy").write_bytes(buf.getvalue())
    _edit_manifest(d, faces_sha256=lambda _: hashlib.sha256(buf.getvalue()).hexdigest())
    with pytest.raises(IndexCorruptError):
        GalleryIndex.load(d)


def test_gallery_save_failure_leaves_no_files(tmp_path: Path) -> None:
    g = GalleryIndex(4)
    g.add([1], [1], np.ones((1, 4), np.float32))
    d = tmp_path / "g"
    with pytest.raises(TypeError):
        g.save(d, meta={"bad": object()})
    assert not d.exists() or list(d.iterdir()) == []
    g.save(d, meta={})
    assert sorted(p.name for p in d.iterdir()) == ["faces.npy", "index.npz", "manifest.json"]


def test_atomic_write_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "x").write_text("keep")  # os.replace cannot replace a non-empty directory
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    ok = tmp_path / "ok.bin"
    assert atomic_write_bytes(ok, b"data") == hashlib.sha256(b"data").hexdigest()
    assert ok.read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied", "ok.bin"]


# --- Concurrency ---------------------------------------------------------------------------------


def test_gallery_concurrent_search_add_remove() -> None:
    rng = np.random.default_rng(7)
    dim, n_initial, n_adders, batches, batch = 32, 300, 3, 15, 4
    n_total = n_initial + n_adders * batches * batch
    x_all = unit_vectors(rng, n_total, dim)
    ident_of = np.arange(n_total, dtype=np.int64) // 5  # fixed face -> identity mapping
    g = GalleryIndex(dim)
    g.add(np.arange(n_initial), ident_of[:n_initial], x_all[:n_initial])
    to_remove = rng.permutation(n_initial)[:100]
    errors: list[BaseException] = []
    removed_counts: list[int] = []
    barrier = threading.Barrier(n_adders + 3)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(timeout=10)
                fn()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        return run

    def adder(t: int) -> Callable[[], None]:
        def fn() -> None:
            for b in range(batches):
                start = n_initial + (t * batches + b) * batch
                sl = slice(start, start + batch)
                g.add(np.arange(start, start + batch), ident_of[sl], x_all[sl])

        return fn

    def remover() -> None:
        for chunk in np.array_split(to_remove, 20):
            removed_counts.append(g.remove_faces(chunk))

    def searcher() -> None:
        q = unit_vectors(np.random.default_rng(threading.get_ident() % 2**32), 4, dim)
        for _ in range(30):
            for r, hits in enumerate(g.search(q, 6)):
                assert len(hits) == 6
                assert len({h.identity_id for h in hits}) == len(hits)
                for h in hits:
                    assert 0 <= h.face_id < n_total
                    assert h.identity_id == ident_of[h.face_id]
                    assert h.score == pytest.approx(float(q[r] @ x_all[h.face_id]), abs=1e-4)

    threads = [threading.Thread(target=guarded(adder(t))) for t in range(n_adders)]
    threads += [threading.Thread(target=guarded(remover))]
    threads += [threading.Thread(target=guarded(searcher)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sum(removed_counts) == to_remove.size
    expected = np.setdiff1d(np.arange(n_total), to_remove)
    assert g.ntotal == n_total - to_remove.size
    assert np.array_equal(g.face_ids(), expected)
    xq = unit_vectors(rng, 5, dim)
    check_gallery_results(g.search(xq, 8), xq, expected, ident_of[expected], x_all[expected], k=8)


def test_members_match_a_dict_of_lists_through_adds_and_removals() -> None:
    """The compact identity -> faces table against the obvious reference, with identities emptied and refilled."""
    rng = np.random.default_rng(12)
    members = _Members()
    ref: dict[int, list[int]] = {}
    next_face = 0
    for _ in range(60):
        if ref and rng.random() < 0.4:
            stored = np.concatenate([np.array(v) for v in ref.values()])
            faces = rng.choice(stored, size=min(3, stored.size), replace=False)
            idents = np.array([next(i for i, v in ref.items() if f in v) for f in faces.tolist()], dtype=np.int64)
            members.remove(idents, faces.astype(np.int64))
            for f, i in zip(faces.tolist(), idents.tolist(), strict=True):
                ref[i].remove(f)
                if not ref[i]:
                    del ref[i]
        else:
            n = int(rng.integers(1, 6))
            idents = rng.integers(0, 15, n).astype(np.int64)
            faces = np.arange(next_face, next_face + n, dtype=np.int64)
            next_face += n
            members.add(idents, faces)
            for f, i in zip(faces.tolist(), idents.tolist(), strict=True):
                ref.setdefault(i, []).append(f)
        assert len(members) == len(ref)
        everyone = np.arange(15, dtype=np.int64)
        np.testing.assert_array_equal(members.has(everyone), [i in ref for i in range(15)])
        for i in range(15):
            assert members.of(i).tolist() == ref.get(i, [])
        held = everyone[members.has(everyone)]
        faces_held, owner = members.faces_of(held)
        grouped = [faces_held[owner == j].tolist() for j in range(held.size)]
        assert grouped == [ref[i] for i in held.tolist()]
