"""MilvusGallery on an embedded milvus-lite file: congruence with GalleryIndex, crowding, idempotent upserts and
removals, state that survives a restart of the server, bad input, and failures surfacing as IndexCorruptError."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'facedb[milvus]')")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'facedb[milvus]')")

from index import GalleryIndex, Hit, IndexCorruptError, milvus_gallery
from index.milvus_gallery import INDEX_TYPE, MilvusGallery, collection_names

DIM = 16
ATOL = 1e-4
KEY = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
REPO = Path(__file__).resolve().parents[1]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Opener = Callable[..., MilvusGallery]


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> F32:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def reference(identity_score: str) -> GalleryIndex:
    """The in-memory reference: GalleryIndex on FAISS with its default (exact, flat) index."""
    return GalleryIndex(DIM, backend="faiss", identity_score=identity_score)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def lite_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One milvus-lite file for the module (its in-process server starts once); each test uses its own gallery id."""
    return str(tmp_path_factory.mktemp("milvus") / "galleries.db")


_gallery_ids = itertools.count(1)


@pytest.fixture
def open_gallery(lite_db: str) -> Iterator[Opener]:
    """Opens MilvusGallery objects (default: the module's file, a fresh gallery id) and closes them afterwards."""
    opened: list[MilvusGallery] = []

    def open_(uri: str = lite_db, **kwargs: Any) -> MilvusGallery:
        kwargs.setdefault("gallery_id", next(_gallery_ids))
        kwargs.setdefault("model_key", KEY)
        kwargs.setdefault("dim", DIM)
        g = MilvusGallery(uri, **kwargs)
        opened.append(g)
        return g

    yield open_
    for g in opened:
        g.close()


def assert_same_hits(got: list[list[Hit]], want: list[list[Hit]]) -> None:
    assert len(got) == len(want)
    for g_row, w_row in zip(got, want, strict=True):
        assert [h.identity_id for h in g_row] == [h.identity_id for h in w_row]
        assert [h.face_id for h in g_row] == [h.face_id for h in w_row]
        np.testing.assert_allclose([h.score for h in g_row], [h.score for h in w_row], atol=ATOL)


def assert_same_state(g: MilvusGallery, ref: GalleryIndex, probe: I64) -> None:
    assert g.ntotal == ref.ntotal
    assert g.n_identities == ref.n_identities
    assert g.n_compared == ref.n_compared
    got_ids = g.face_ids()
    assert got_ids.dtype == np.int64
    assert np.array_equal(got_ids, ref.face_ids())
    assert np.array_equal(g.contains(probe), ref.contains(probe))
    got_idents = g.identities_of(probe)
    assert got_idents.dtype == np.int64
    assert np.array_equal(got_idents, ref.identities_of(probe))


def assert_same_searches(g: MilvusGallery, ref: GalleryIndex, xq: F32) -> None:
    n_ident = max(ref.n_identities, 1)
    for k in (1, 5, n_ident + 7):  # the last is more than there are identities
        assert_same_hits(g.search(xq, k), ref.search(xq, k))
        assert_same_hits(g.search(xq, k, by="best"), ref.search(xq, k, by="best"))


@pytest.mark.parametrize("identity_score", ["best", "mean"])
def test_congruent_with_gallery_index(open_gallery: Opener, identity_score: str) -> None:
    rng = np.random.default_rng(7)
    n = 300
    x = unit_vectors(rng, n)
    fids = rng.choice(100_000, size=n, replace=False).astype(np.int64)
    iids = rng.integers(0, 60, size=n).astype(np.int64)
    xq = unit_vectors(rng, 12)
    g = open_gallery(identity_score=identity_score)
    ref = reference(identity_score)
    assert g.backend == "milvus"
    assert g.identity_score == identity_score
    assert g.dim == DIM
    assert g.ntotal == 0
    assert g.n_identities == 0
    assert g.search(xq, 3) == [[] for _ in range(12)]
    assert g.search(np.empty((0, DIM), np.float32), 3) == []

    for part in np.array_split(np.arange(n), 3):
        g.add(fids[part], iids[part], x[part])
        ref.add(fids[part], iids[part], x[part])
    probe = np.concatenate([fids[::7], [-1, 100_001, 100_002]]).astype(np.int64)
    assert_same_state(g, ref, probe)
    assert_same_searches(g, ref, xq)

    gone = np.concatenate([fids[rng.permutation(n)[:70]], [100_003]])
    assert g.remove_faces(gone) == ref.remove_faces(gone) == 70
    assert_same_state(g, ref, probe)
    assert_same_searches(g, ref, xq)

    for ident in (int(iids[0]), int(iids[1]), 9999):
        assert g.remove_identity(ident) == ref.remove_identity(ident)
    assert_same_state(g, ref, probe)
    assert_same_searches(g, ref, xq)

    # Emptying the gallery entirely.
    rest = ref.face_ids()
    assert g.remove_faces(rest) == ref.remove_faces(rest) == rest.size
    assert g.ntotal == g.n_identities == g.n_compared == 0
    assert g.face_ids().size == 0
    assert not g.contains(probe).any()
    # (GalleryIndex.identities_of raises IndexError on an empty gallery, so no reference here.)
    assert np.array_equal(g.identities_of(probe), np.full(probe.size, -1))
    assert g.search(xq, 4) == [[] for _ in range(12)]


def test_crowding_by_one_identity(open_gallery: Opener) -> None:
    rng = np.random.default_rng(3)
    q = unit_vectors(rng, 1)
    crowd = q + 0.01 * rng.standard_normal((50, DIM)).astype(np.float32)
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    others = unit_vectors(rng, 40)
    x = np.concatenate([crowd, others])
    fids = np.arange(x.shape[0], dtype=np.int64) + 500
    iids = np.concatenate([np.zeros(50, np.int64), 1 + np.arange(40, dtype=np.int64) % 10])
    g = open_gallery()
    ref = reference("best")
    g.add(fids, iids, x)
    ref.add(fids, iids, x)
    hits = g.search(q, 3)[0]
    assert len(hits) == 3
    assert len({h.identity_id for h in hits}) == 3
    assert hits[0].identity_id == 0
    assert_same_hits(g.search(q, 3), ref.search(q, 3))
    assert_same_hits(g.search(q, 11), ref.search(q, 11))  # 11 identities: every face has to be fetched


def test_topk_bound_returns_the_true_top_identities(open_gallery: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """Milvus's topk cap (16384, made 32 here): identities beyond the fetched faces are left out, never misranked."""
    monkeypatch.setattr(milvus_gallery, "MAX_TOPK", 32)
    rng = np.random.default_rng(4)
    q = unit_vectors(rng, 1)
    crowd = q + 0.01 * rng.standard_normal((40, DIM)).astype(np.float32)
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    x = np.concatenate([crowd, unit_vectors(rng, 10)])
    iids = np.concatenate([np.zeros(40, np.int64), np.arange(1, 11, dtype=np.int64)])
    g = open_gallery()
    ref = reference("best")
    g.add(np.arange(50), iids, x)
    ref.add(np.arange(50), iids, x)
    assert_same_hits(g.search(q, 3), ref.search(q, 1))  # the best 32 faces are all identity 0's
    assert_same_hits(g.search(-q, 3), ref.search(-q, 3))  # far from the crowd: unaffected


@pytest.mark.parametrize("identity_score", ["best", "mean"])
def test_add_and_remove_are_idempotent(open_gallery: Opener, identity_score: str) -> None:
    rng = np.random.default_rng(11)
    x = unit_vectors(rng, 80)
    fids = np.arange(80, dtype=np.int64) * 3
    iids = np.arange(80, dtype=np.int64) % 9
    xq = unit_vectors(rng, 6)
    g = open_gallery(identity_score=identity_score)
    g.add(fids, iids, x)
    before = (g.face_ids(), g.identities_of(fids), g.search(xq, 5))
    g.add(fids, iids, x)  # replaying the same change
    g.add(fids[10:20], iids[10:20], x[10:20])
    assert np.array_equal(g.face_ids(), before[0])
    assert np.array_equal(g.identities_of(fids), before[1])
    assert_same_hits(g.search(xq, 5), before[2])
    assert g.ntotal == 80

    assert g.remove_faces(fids[:15]) == 15
    after_remove = (g.face_ids(), g.search(xq, 5))
    assert g.remove_faces(fids[:15]) == 0
    assert np.array_equal(g.face_ids(), after_remove[0])
    assert_same_hits(g.search(xq, 5), after_remove[1])
    assert g.remove_identity(4) > 0
    assert g.remove_identity(4) == 0

    ref = reference(identity_score)
    keep = ~np.isin(fids, fids[:15]) & (iids != 4)
    ref.add(fids[keep], iids[keep], x[keep])
    assert_same_state(g, ref, fids)
    assert_same_searches(g, ref, xq)


@pytest.mark.parametrize("identity_score", ["best", "mean"])
def test_upsert_overwrites_and_moves_faces(open_gallery: Opener, identity_score: str) -> None:
    rng = np.random.default_rng(5)
    x = unit_vectors(rng, 40)
    fids = np.arange(40, dtype=np.int64)
    iids = np.arange(40, dtype=np.int64) % 5
    g = open_gallery(identity_score=identity_score)
    g.add(fids, iids, x)
    # Face 0..9 get new vectors; faces 0..4 move to identity 7, and identity 3's faces all move to identity 8.
    x2 = x.copy()
    x2[:10] = unit_vectors(rng, 10)
    iids2 = iids.copy()
    iids2[:5] = 7
    iids2[iids == 3] = 8
    g.add(fids, iids2, x2)
    ref = reference(identity_score)
    ref.add(fids, iids2, x2)
    assert_same_state(g, ref, fids)
    assert_same_searches(g, ref, unit_vectors(rng, 5))


def test_means_follow_best_mode_writers_and_rebuild(open_gallery: Opener) -> None:
    rng = np.random.default_rng(9)
    x = unit_vectors(rng, 60)
    fids = np.arange(60, dtype=np.int64) + 1
    iids = np.arange(60, dtype=np.int64) % 12
    xq = unit_vectors(rng, 5)
    best = open_gallery()
    best.add(fids[:40], iids[:40], x[:40])
    # Opening in "mean" mode builds the means from the faces already there.
    mean = open_gallery(gallery_id=best.gallery_id, identity_score="mean")
    ref = reference("mean")
    ref.add(fids[:40], iids[:40], x[:40])
    assert_same_hits(mean.search(xq, 6), ref.search(xq, 6))
    # A "best" writer keeps the means collection up to date once it exists.
    best.add(fids[40:], iids[40:], x[40:])
    best.remove_faces(fids[:8])
    best.remove_identity(5)
    ref.add(fids[40:], iids[40:], x[40:])
    ref.remove_faces(fids[:8])
    ref.remove_identity(5)
    assert_same_state(mean, ref, fids)
    assert_same_searches(mean, ref, xq)
    assert mean.rebuild_means() == ref.n_identities
    assert_same_searches(mean, ref, xq)


def test_state_survives_restart(tmp_path: Path, open_gallery: Opener) -> None:
    from milvus_lite.server_manager import server_manager_instance

    uri = str(tmp_path / "restart.db")
    rng = np.random.default_rng(21)
    x = unit_vectors(rng, 50)
    fids = np.arange(50, dtype=np.int64) + 10
    iids = np.arange(50, dtype=np.int64) % 7
    xq = unit_vectors(rng, 4)
    g = MilvusGallery(uri, gallery_id=3, model_key=KEY, dim=DIM, identity_score="mean")
    assert g.last_seq == 0
    g.add(fids, iids, x)
    g.remove_faces(fids[:5])
    g.set_last_seq(42)
    assert g.last_seq == 42
    before = (g.search(xq, 4), g.search(xq, 4, by="best"), g.face_ids())
    g.close()
    g.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        g.search(xq, 1)
    # Stop the embedded server, so the next open reads everything back from the files.
    server_manager_instance.release_server(uri)

    again = open_gallery(uri, gallery_id=3, identity_score="mean")
    assert again.last_seq == 42
    assert np.array_equal(again.face_ids(), before[2])
    assert again.ntotal == 45
    assert_same_hits(again.search(xq, 4), before[0])
    assert_same_hits(again.search(xq, 4, by="best"), before[1])
    again.set_last_seq(43)
    assert again.last_seq == 43

    other = open_gallery(uri, gallery_id=3, model_key="0123456789abcdef0123")
    assert other.ntotal == 0
    assert other.last_seq == 0
    assert other.search(xq, 3) == [[] for _ in range(4)]
    assert other.collection_name != again.collection_name
    # A key sharing the 16-character prefix maps to the same collection name: refused, not shared.
    with pytest.raises(IndexCorruptError, match="model key"):
        MilvusGallery(uri, gallery_id=3, model_key=KEY[:16] + "ffff", dim=DIM)
    with pytest.raises(IndexCorruptError):
        MilvusGallery(uri, gallery_id=3, model_key=KEY, dim=DIM + 1)

    again.drop()
    with pytest.raises(RuntimeError, match="closed"):
        again.ntotal  # noqa: B018
    fresh = open_gallery(uri, gallery_id=3)
    assert fresh.ntotal == 0
    assert fresh.last_seq == 0


def test_bad_input_writes_nothing(open_gallery: Opener) -> None:
    rng = np.random.default_rng(1)
    g = open_gallery(identity_score="mean")
    x = unit_vectors(rng, 4)
    g.add([1, 2], [0, 0], x[:2])
    bad_x = x.copy()
    bad_x[3, 0] = np.nan
    bad_adds: list[tuple[Any, Any, Any]] = [
        ([3, 4, 5, 6], [1, 1, 1, 1], x[:, :-1]),  # wrong dim
        ([3, 4, 5, 6], [1, 1, 1, 1], bad_x),  # non-finite
        ([3, 4, 5, -6], [1, 1, 1, 1], x),  # negative face id
        ([3, 4, 5, 6], [1, 1, -1, 1], x),  # negative identity id
        ([3, 4, 5, 6], [1, 1, 1], x),  # shape mismatch
        ([3, 4, 5], [1, 1, 1], x),  # fewer ids than vectors
        ([3, 4, 4, 6], [1, 1, 1, 1], x),  # repeated face id
        ([3.0, 4.0, 5.0, 6.0], [1, 1, 1, 1], x),  # float ids
        ([[3, 4, 5, 6]], [1, 1, 1, 1], x),  # 2-D ids
        ([3, 4, 5, 6], [1, 1, 1, 1], np.array(["a", "b", "c", "d"] * DIM).reshape(4, DIM)),
    ]
    for face_ids, identity_ids, vectors in bad_adds:
        with pytest.raises(ValueError):
            g.add(face_ids, identity_ids, vectors)
    assert g.ntotal == 2
    assert g.n_identities == 1
    assert np.array_equal(g.face_ids(), [1, 2])
    with pytest.raises(ValueError):
        g.search(x[:, :3], 2)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            g.search(x, bad_k)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        g.search(x, 2, by="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        g.remove_faces([1.5])
    with pytest.raises(ValueError):
        g.remove_identity("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        g.set_last_seq(-1)
    assert g.last_seq == 0
    assert g.remove_identity(-1) == 0
    assert g.remove_faces([-1, 99]) == 0
    assert np.array_equal(g.contains([-5, 1, 3]), [False, True, False])
    assert np.array_equal(g.identities_of([-5, 1, 3]), [-1, 0, -1])
    assert g.ntotal == 2
    for kwargs in (
        {"gallery_id": -1},
        {"gallery_id": True},
        {"model_key": ""},
        {"dim": 0},
        {"identity_score": "median"},
    ):
        with pytest.raises(ValueError):
            open_gallery(**kwargs)


def test_unreachable_milvus_is_index_corrupt_error(tmp_path: Path) -> None:
    with pytest.raises(IndexCorruptError) as caught:
        MilvusGallery("http://127.0.0.1:1", gallery_id=1, model_key=KEY, dim=DIM, timeout=5)
    assert caught.value.__cause__ is not None
    with pytest.raises(IndexCorruptError):
        MilvusGallery(str(tmp_path / "missing" / "x.db"), gallery_id=1, model_key=KEY, dim=DIM)


def test_milvus_failures_are_index_corrupt_errors(tmp_path: Path) -> None:
    from milvus_lite.server_manager import server_manager_instance

    uri = str(tmp_path / "dies.db")
    g = MilvusGallery(uri, gallery_id=1, model_key=KEY, dim=DIM, identity_score="mean", timeout=5)
    x = unit_vectors(np.random.default_rng(0), 2)
    g.add([1, 2], [1, 1], x)
    server_manager_instance.release_server(uri)  # the server goes away under an open gallery
    calls: list[Callable[[], object]] = [
        lambda: g.search(x, 1),
        lambda: g.search(x, 1, by="best"),
        lambda: g.ntotal,
        lambda: g.n_identities,
        g.face_ids,
        lambda: g.contains([1]),
        lambda: g.identities_of([1]),
        lambda: g.add([3], [1], x[:1]),
        lambda: g.remove_faces([1]),
        lambda: g.remove_identity(1),
        lambda: g.last_seq,
        lambda: g.set_last_seq(5),
        g.rebuild_means,
    ]
    for call in calls:
        with pytest.raises(IndexCorruptError) as caught:
            call()
        assert caught.value.__cause__ is not None
    g.close()


def test_foreign_collection_is_refused(open_gallery: Opener, lite_db: str) -> None:
    """A collection of the expected name but another metric or schema is IndexCorruptError, not used."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(lite_db)
    try:
        for gallery_id, metric, extra in ((9001, "L2", False), (9002, "IP", True)):
            name, _ = collection_names(gallery_id, KEY)
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("face_id", DataType.INT64, is_primary=True)
            schema.add_field("identity_id", DataType.INT64)
            if extra:
                schema.add_field("quality", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
            params = client.prepare_index_params()
            params.add_index(field_name="vector", index_type="FLAT", metric_type=metric)
            client.create_collection(name, schema=schema, index_params=params)
            with pytest.raises(IndexCorruptError, match="metric" if metric == "L2" else "fields"):
                open_gallery(gallery_id=gallery_id)
    finally:
        client.close()


def test_collection_names_are_sanitised() -> None:
    faces, means = collection_names(12, "ab-cd.ef/0123456789xyz")
    assert faces == "facedb_g12_ab_cd_ef_0123456"
    assert means == faces + "_means"
    assert INDEX_TYPE == "FLAT"


def test_index_package_does_not_import_pymilvus() -> None:
    code = "import sys, index; assert 'pymilvus' not in sys.modules and 'index.milvus_gallery' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
