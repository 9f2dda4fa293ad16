"""Every FAISS index kind against the exact numpy reference: recall floors, incremental adds and removals (native,
tombstoned, staged), re-adds, compaction, kind changes and snapshots; the GPU kinds' bookkeeping with CPU stand-ins
for the device (the real device runs in tests/test_cuda.py)."""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from index import KINDS, BruteForceIndex, FaissIndex, GalleryIndex, IndexCorruptError, Tuning, auto_nprobe, faiss_index
from index import gallery as gallery_module

DIM = 32
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

# Recall@10 against exact search that each kind must reach on clustered data (approximate kinds get their floor
# from their search parameters; the quantised flat kinds only perturb scores).
RECALL_FLOOR = {
    "flat": 1.0,
    "fp16": 0.99,
    "sq8": 0.95,
    "hnsw": 0.95,
    "pq": 0.97,
    "ivfpq": 0.9,
    "gpu_flat": 0.99,
    "gpu_ivf": 0.9,
}
SCORE_ATOL = {
    "flat": 1e-5,
    "fp16": 2e-3,
    "sq8": 2e-2,
    "hnsw": 2e-3,
    "pq": 1e-5,
    "ivfpq": 1e-5,
    "gpu_flat": 2e-3,
    "gpu_ivf": 1e-5,
}
CPU_KINDS = [k for k, spec in KINDS.items() if not spec.gpu]


def clustered(rng: np.random.Generator, n: int, centres: int = 300, dim: int = DIM) -> F32:
    """Unit vectors around random centres (people), like face embeddings; unstructured data flatters nothing."""
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def recall_at(index: FaissIndex, ref: BruteForceIndex, xq: F32, k: int) -> float:
    """Mean fraction of the exact top-k ids found; also checks the contract of every row."""
    s, i = index.search(xq, k)
    _, ri = ref.search(xq, k)
    live = set(ref.ids().tolist())
    hits = 0
    for row in range(len(xq)):
        got = [int(v) for v in i[row] if v >= 0]
        assert len(got) == len(set(got)), "an id twice in one row"
        assert set(got) <= live, "a removed or unknown id came back"
        assert (np.diff(s[row][i[row] >= 0]) <= 1e-6).all(), "scores not descending"
        hits += len(set(got) & set(ri[row].tolist()))
    return hits / ri.size


def churn(index: FaissIndex, ref: BruteForceIndex, rng: np.random.Generator, n: int) -> None:
    """Adds in batches, removals, and removed ids added again with new vectors, applied to both."""
    x = clustered(rng, n)
    ids = rng.choice(10 * n, n, replace=False).astype(np.int64)
    for part in np.array_split(np.arange(n), 5):
        for ix in (index, ref):
            ix.add(ids[part], x[part])
    gone = ids[rng.choice(n, n // 5, replace=False)]
    for ix in (index, ref):
        assert ix.remove(gone) == gone.size
        assert ix.remove(gone) == 0
    again = gone[: n // 20]
    fresh = clustered(rng, again.size)
    for ix in (index, ref):
        ix.add(again, fresh)
    assert index.ntotal == ref.ntotal
    np.testing.assert_array_equal(np.sort(index.ids()), np.sort(ref.ids()))


def check_kind(kind: str, n: int, seed: int = 0) -> FaissIndex:
    rng = np.random.default_rng(seed)
    # about a third of the IVF lists, as the default scans at 1M faces
    index, ref = FaissIndex(DIM, kind=kind, tuning=Tuning(nprobe=128)), BruteForceIndex(DIM)
    churn(index, ref, rng, n)
    xq = clustered(rng, 50)
    assert recall_at(index, ref, xq, 10) >= RECALL_FLOOR[kind]
    probe = ref.ids()[:20]
    np.testing.assert_allclose(index.reconstruct(probe), ref.reconstruct(probe), atol=SCORE_ATOL[kind] * 4)
    s, i = index.search(xq, 3)
    exact = np.einsum("qd,qkd->qk", xq, ref.reconstruct(i.ravel()).reshape(len(xq), 3, DIM))
    np.testing.assert_allclose(s, exact, atol=SCORE_ATOL[kind])  # reported scores are true cosines (or close)
    return index


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_kind_matches_exact_through_adds_and_removals(kind: str) -> None:
    n = 12_000 if KINDS[kind].min_train > 1000 else 3000
    index = check_kind(kind, n)
    if not KINDS[kind].native_remove:
        assert index.tombstones > 0  # removals were tombstoned, not rebuilt
        assert index.staged > 0  # and ids added again went to the exact staging index


@pytest.mark.parametrize("kind", ["sq8", "pq", "ivfpq"])
def test_kind_that_trains_is_exact_until_it_can(kind: str) -> None:
    rng = np.random.default_rng(1)
    index, ref = FaissIndex(DIM, kind=kind), BruteForceIndex(DIM)
    x = clustered(rng, KINDS[kind].min_train)
    ids = np.arange(x.shape[0], dtype=np.int64)
    index.add(ids[:-1], x[:-1])
    ref.add(ids[:-1], x[:-1])
    assert index.staged == x.shape[0] - 1
    xq = clustered(rng, 20)
    assert recall_at(index, ref, xq, 10) == 1.0  # staging is exact
    index.add(ids[-1:], x[-1:])
    ref.add(ids[-1:], x[-1:])
    assert index.staged == 0  # trained, and moved into the structure
    assert recall_at(index, ref, xq, 10) >= RECALL_FLOOR[kind]


@pytest.mark.parametrize("kind", ["hnsw", "pq", "ivfpq"])
def test_compaction_drops_tombstones_and_keeps_results(kind: str) -> None:
    index = check_kind(kind, 12_000, seed=2)
    assert index.needs_compaction  # a fifth removed: beyond the tombstone budget
    compacted = index.compacted()
    assert compacted.tombstones == 0 and compacted.staged == 0 and compacted.kind == kind
    assert not compacted.needs_compaction
    np.testing.assert_array_equal(compacted.ids(), index.ids())
    ref = BruteForceIndex(DIM)
    ref.add(index.ids(), index.reconstruct(index.ids()))
    xq = clustered(np.random.default_rng(3), 50)
    assert recall_at(compacted, ref, xq, 10) >= RECALL_FLOOR[kind]


def test_kind_change_and_snapshot_round_trip(tmp_path: Any) -> None:
    index = check_kind("hnsw", 3000, seed=4)
    path = tmp_path / "i.npz"
    sha = index.save(path)
    loaded = FaissIndex.load(path, expected_sha256=sha, kind="hnsw")
    assert (loaded.kind, loaded.tombstones, loaded.staged) == ("hnsw", index.tombstones, index.staged)
    xq = clustered(np.random.default_rng(5), 20)
    for a, b in zip(index.search(xq, 10), loaded.search(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexCorruptError, match="not the expected"):
        FaissIndex.load(path, kind="flat")
    as_flat = loaded.compacted(kind="flat")
    assert as_flat.kind == "flat" and as_flat.ntotal == index.ntotal


@pytest.mark.parametrize("kind", ["pq", "ivfpq"])
def test_pq_snapshot_and_single_queries_agree_with_batches(tmp_path: Any, kind: str) -> None:
    index = check_kind(kind, 12_000, seed=7)
    index.save(tmp_path / "i.npz")
    loaded = FaissIndex.load(tmp_path / "i.npz", kind=kind)
    xq = clustered(np.random.default_rng(8), 20)
    batch = index.search(xq, 10)
    for a, b in zip(batch, loaded.search(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    # one query and a batch may take different fast-scan implementations; the answers are the same
    singles = [index.search(q[None], 10) for q in xq]
    np.testing.assert_array_equal(np.concatenate([i for _, i in singles]), batch[1])
    np.testing.assert_allclose(np.concatenate([s for s, _ in singles]), batch[0], rtol=1e-6)


def fused(rng: np.random.Generator, n: int, rotation: F32) -> F32:
    """256-d vectors shaped like a fusion of two 128-d models: each model's unit vector of the same face, side by
    side, scaled by 1/sqrt(2); the second model sees the first's clusters in its own basis, with its own noise."""
    a = clustered(rng, n, dim=128)
    b = a @ rotation + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray(np.hstack([a, b]) / np.sqrt(2), dtype=np.float32)


def test_pq_codes_wide_vectors_after_a_pca_and_still_reports_exact_cosines(tmp_path: Any) -> None:
    def structure(index: FaissIndex) -> Any:
        refine: Any = faiss.downcast_index(index._main.index)
        return faiss.downcast_index(refine.base_index)

    rng = np.random.default_rng(11)
    dim = 256
    rotation = np.linalg.qr(rng.standard_normal((128, 128)))[0].astype(np.float32)
    x = fused(rng, 12_000, rotation)
    index, ref = FaissIndex.from_vectors(np.arange(12_000), x, kind="pq"), BruteForceIndex(dim)
    ref.add(np.arange(12_000), x)
    pca = structure(index)
    assert isinstance(pca, faiss.IndexPreTransform) and pca.index.d == faiss_index.PQ_MAX_DIM == 128
    codes = faiss.downcast_index(pca.index)
    assert isinstance(codes, faiss.IndexPQFastScan) and codes.pq.M == 64
    xq = fused(rng, 50, rotation)  # strangers: people of their own
    assert recall_at(index, ref, xq, 10) >= RECALL_FLOOR["pq"]
    s, i = index.search(xq, 3)
    exact = np.einsum("qd,qkd->qk", xq, ref.reconstruct(i.ravel()).reshape(len(xq), 3, dim))
    np.testing.assert_allclose(s, exact, atol=SCORE_ATOL["pq"])  # re-ranked from the full vectors
    index.save(tmp_path / "wide.npz")
    loaded = FaissIndex.load(tmp_path / "wide.npz", kind="pq")
    for a, b in zip(index.search(xq, 10), loaded.search(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    narrow = FaissIndex.from_vectors(np.arange(12_000), clustered(rng, 12_000, dim=128), kind="pq")
    assert isinstance(structure(narrow), faiss.IndexPQFastScan)  # 128-d and below: coded as they are
    # the codes of the reduced vectors rank worse, so the short list re-ranked from the full ones is twice as long
    assert index._search_params(10).k_factor == 2 * narrow._search_params(10).k_factor == 2 * 700 / 10


def test_wide_pq_of_the_layout_before_the_pca_asks_to_be_rebuilt(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(12)
    rotation = np.linalg.qr(rng.standard_normal((128, 128)))[0].astype(np.float32)
    x = fused(rng, 12_000, rotation)
    with monkeypatch.context() as patch:  # the structure the previous version built for 256-d vectors
        patch.setattr(faiss_index, "PQ_MAX_DIM", 256)
        FaissIndex.from_vectors(np.arange(12_000), x, kind="pq").save(tmp_path / "old.npz")
    old = FaissIndex.load(tmp_path / "old.npz", kind="pq")
    assert old.needs_compaction  # it loads and answers, and asks for a rebuild
    _, before = old.search(x[:20], 5)
    new = old.compacted()
    assert not new.needs_compaction
    _, after = new.search(x[:20], 5)
    np.testing.assert_array_equal(before[:, 0], np.arange(20))
    np.testing.assert_array_equal(after[:, 0], np.arange(20))
    narrow = FaissIndex.from_vectors(np.arange(12_000), clustered(rng, 12_000, dim=128), kind="pq")
    assert not narrow.needs_compaction


def test_ivfpq_of_the_layout_before_fast_scan_asks_to_be_rebuilt(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(10)
    x = clustered(rng, 12_000)
    with monkeypatch.context() as patch:  # the structure older versions built
        patch.setattr(faiss_index, "_ivfpq_spec", lambda dim, nlist: f"IVF{nlist},PQ8x8,RFlat")
        FaissIndex.from_vectors(np.arange(12_000), x, kind="ivfpq").save(tmp_path / "old.npz")
    old = FaissIndex.load(tmp_path / "old.npz", kind="ivfpq")
    assert old.needs_compaction  # a snapshot of that layout still loads and answers, and asks for a rebuild
    _, before = old.search(x[:20], 5)
    new = old.compacted()
    assert not new.needs_compaction
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(new._main)), faiss.IndexIVFPQFastScan)
    _, after = new.search(x[:20], 5)
    np.testing.assert_array_equal(before[:, 0], np.arange(20))
    np.testing.assert_array_equal(after[:, 0], np.arange(20))


def test_snapshot_searches_with_the_tuning_it_is_loaded_under(tmp_path: Any) -> None:
    rng = np.random.default_rng(6)
    g = GalleryIndex(DIM, kind="hnsw", tuning=Tuning(hnsw_m=8, ef_search=16), identity_score="mean")
    x = clustered(rng, 500)
    g.add(np.arange(500), np.arange(500) // 5, x)
    g.save(tmp_path / "g", meta={})
    as_saved, _ = GalleryIndex.load(tmp_path / "g", identity_score="mean")
    assert as_saved._index.tuning == Tuning(hnsw_m=8, ef_search=16)  # type: ignore[attr-defined]
    loaded, _ = GalleryIndex.load(tmp_path / "g", identity_score="mean", tuning=Tuning(ef_search=300, nprobe=7))
    # search parameters follow the settings; the graph keeps the links it was built with
    for part in (loaded._index, loaded._means):
        assert part.tuning == Tuning(hnsw_m=8, ef_search=300, nprobe=7)  # type: ignore[union-attr]


def test_snapshot_with_stray_tombstone_is_corrupt(tmp_path: Any) -> None:
    index = FaissIndex(DIM, kind="hnsw")
    index.add(np.arange(10), clustered(np.random.default_rng(6), 10))
    index.remove([3])
    index._tombstones = np.array([3, 99], dtype=np.int64)  # 99 was never stored
    with pytest.raises(IndexCorruptError, match="inconsistent"):
        FaissIndex.deserialize(index.serialize())


# --- GPU kinds, with the device stood in by CPU indexes -------------------------------------------------------


@pytest.fixture
def cpu_as_gpu(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes faiss look like a GPU build whose device indexes are CPU ones; returns a log of device builds."""
    built: list[str] = []

    class Config:
        useFloat16 = False  # noqa: N815 (the FAISS attribute it stands in for)

    def flat(res: object, dim: int, config: Config) -> Any:
        built.append("flat")
        assert config.useFloat16
        return faiss.IndexFlatIP(dim)

    def to_gpu(res: object, device: int, index: Any) -> Any:
        built.append(type(faiss.downcast_index(index)).__name__)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "GpuIndexFlatConfig", Config, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexFlatIP", flat, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    return built


@pytest.mark.parametrize("kind", ["gpu_flat", "gpu_ivf"])
def test_gpu_kinds_apply_changes_without_rebuilding_the_device_copy(cpu_as_gpu: list[str], kind: str) -> None:
    n = 12_000 if kind == "gpu_ivf" else 3000
    index = check_kind(kind, n, seed=7)
    assert index.uses_gpu
    assert len(cpu_as_gpu) == 1, "the device copy was built more than once"
    assert index.tombstones > 0  # removals masked on the device
    # k beyond what the device can fetch goes to the exact host master
    ref = BruteForceIndex(DIM)
    ref.add(index.ids(), index.reconstruct(index.ids()))
    xq = clustered(np.random.default_rng(8), 3)
    assert recall_at(index, ref, xq, 2100) >= 0.99


# --- GalleryIndex compaction while changes go on ---------------------------------------------------------------


@pytest.mark.parametrize("identity_score", ["best", "mean"])
def test_gallery_compaction_replays_changes_made_during_the_build(
    monkeypatch: pytest.MonkeyPatch, identity_score: Any
) -> None:
    rng = np.random.default_rng(9)
    n = 2000
    x = clustered(rng, n)
    faces, idents = np.arange(n, dtype=np.int64), rng.integers(0, 400, n).astype(np.int64)
    g = GalleryIndex(DIM, kind="flat", identity_score=identity_score)
    g.add(faces[:1500], idents[:1500], x[:1500])
    building, release = threading.Event(), threading.Event()
    real_build = gallery_module._build

    def slow_build(*args: Any) -> FaissIndex:
        building.set()
        assert release.wait(30)
        return real_build(*args)

    monkeypatch.setattr(gallery_module, "_build", slow_build)
    worker = threading.Thread(target=lambda: g.compact(kind="hnsw"))
    worker.start()
    assert building.wait(30)
    g.add(faces[1500:], idents[1500:], x[1500:])  # during the build
    g.remove_faces(faces[:300])
    g.remove_identity(int(idents[1600]))
    assert g.kind == "flat" and g.search(x[:1], 1)  # still serving the old index
    release.set()
    worker.join(60)
    assert g.kind == "hnsw"
    reference = GalleryIndex(DIM, kind="flat", identity_score=identity_score)
    live = g.face_ids()
    keep = np.isin(faces, live)
    reference.add(faces[keep], idents[keep], x[keep])
    assert g.ntotal == reference.ntotal and g.n_identities == reference.n_identities
    xq = clustered(rng, 40)
    got, want = g.search(xq, 5), reference.search(xq, 5)
    agree = np.mean([a[0].identity_id == b[0].identity_id for a, b in zip(got, want, strict=True)])
    assert agree >= 0.95
    assert not np.isin(faces[:300], g.face_ids()).any()


def test_automatic_ivf_effort_keeps_its_share_as_the_gallery_grows() -> None:
    auto = Tuning()
    assert auto_nprobe(auto, 438) == 438  # a small gallery: every list
    assert auto_nprobe(auto, 4000) == 1280  # 1M faces: the measured setting
    assert auto_nprobe(auto, 8944) == 2863  # 5M faces: the same 32%, not a shrinking share
    assert auto_nprobe(auto, 17889, gpu=True) == 2048  # the GPU's limit
    assert auto_nprobe(Tuning(nprobe=64), 4000) == 64  # a setting wins
    index = FaissIndex.from_vectors(np.arange(12_000), clustered(np.random.default_rng(9), 12_000), kind="ivfpq")
    assert index.nprobe == auto_nprobe(auto, 438) == 438
