"""The service's index: the kind follows each gallery's size (or FACEDB_INDEX_KIND), conversions and compactions run
while it serves, snapshots of every kind survive a restart, and the Milvus backend passes the same catch-up and
restart checks as FAISS, congruent with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import pytest

from index import KINDS
from service import indexing
from service.core import Upload
from service.runtime import Runtime, build_runtime
from service.settings import Settings
from tests.conftest import image_bytes
from tests.test_recovery import enroll_people


def start(settings: Settings) -> Runtime:
    return build_runtime(settings, batching=False)


def top(rt: Runtime, seed: int, k: int = 10) -> list[tuple[str, float]]:
    hits = rt.service.identify("default", Upload("p.png", image_bytes(seed)), top_k=k, detect=False).candidates
    return [(h.identity.external_id, round(h.score, 4)) for h in hits]


def after_restart(settings: Settings, seed: int) -> tuple[dict[int, str], list[tuple[str, float]]]:
    """Each gallery's index kind and the answer for one probe, from a fresh start on the same data."""
    rt = start(settings)
    try:
        return rt.service.indexes.kinds(), top(rt, seed)
    finally:
        rt.close()


def test_kind_follows_gallery_size_while_serving(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexing, "APPROXIMATE_FROM", 6)
    monkeypatch.setattr(indexing, "FLAT_BELOW", 4)
    settings = make_settings()
    rt = start(settings)
    try:
        enroll_people(rt, 5)
        indexes = rt.service.indexes
        assert indexes.kinds() == {1: "flat"} and indexes.maintain(wait=True) is None
        enroll_people(rt, 2, seed=1)
        assert indexes.maintain(wait=True) == "gallery 1: flat -> pq"
        assert indexes.kinds() == {1: "pq"}
        assert top(rt, 1001)[0] == ("s1-1", 1.0)
        for ident in (1, 2, 3):  # gone from answers at once
            rt.service.delete_identity("default", ident)
        assert {"s0-0", "s0-1", "s0-2"}.isdisjoint(e for e, _ in top(rt, 0))
        assert indexes.maintain(wait=True) is None  # 4 faces: above FLAT_BELOW, stays pq
        rt.service.delete_identity("default", 4)
        assert indexes.maintain(wait=True) == "gallery 1: pq -> flat"
        expected = top(rt, 1000)
    finally:
        rt.close()
    assert after_restart(settings, 1000) == ({1: "flat"}, expected)


def test_an_ivfpq_gallery_of_an_earlier_version_becomes_pq() -> None:
    assert indexing.choose_kind(30_000, gpu=False, current="ivfpq") == "pq"
    assert indexing.choose_kind(30_000, gpu=False, current="hnsw") == "pq"
    assert indexing.choose_kind(30_000, gpu=False, current="flat") == "flat"
    assert indexing.choose_kind(1_000_000, gpu=False) == "pq"
    assert indexing.choose_kind(20_000, gpu=False, current="ivfpq") == "flat"


def test_search_settings_reach_the_index_and_a_loaded_snapshot(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    def tuning(rt: Runtime) -> tuple[int, int, int]:
        t = rt.service.indexes._indexes[1]._index.tuning  # type: ignore[union-attr]
        return t.nprobe, t.rerank, t.hnsw_m

    rt = start(make_settings(index_kind="ivfpq", ivf_nprobe=64, ivf_rerank=100))
    try:
        enroll_people(rt, 3)
        assert tuning(rt) == (64, 100, 32)
        expected = top(rt, 1)
    finally:
        rt.close()
    monkeypatch.setattr(indexing.IndexManager, "_rebuild", lambda *_: pytest.fail("rebuilt, not loaded"))
    rt = start(make_settings(index_kind="ivfpq", ivf_nprobe=2000, ivf_rerank=900))
    try:
        assert rt.service.indexes.lag() == 0 and tuning(rt) == (2000, 900, 32)
        assert top(rt, 1) == expected
    finally:
        rt.close()


def test_index_kind_setting_and_snapshot_with_tombstones(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(index_kind="hnsw")
    rt = start(settings)
    try:
        enroll_people(rt, 6)
        rt.service.delete_identity("default", 2)
        assert rt.service.indexes.kinds() == {1: "hnsw"}
        assert rt.service.indexes.maintain(wait=True) is None  # the setting wins over the size
        expected = top(rt, 1)
        assert "s0-1" not in [e for e, _ in expected]
    finally:
        rt.close()  # the snapshot holds the tombstone
    assert after_restart(settings, 1) == ({1: "hnsw"}, expected)
    rt = start(make_settings(index_kind="flat"))  # a new setting converts in the background
    try:
        assert rt.service.indexes.maintain(wait=True) == "gallery 1: hnsw -> flat"
        assert top(rt, 1) == expected
    finally:
        rt.close()


# --- Milvus ---------------------------------------------------------------------------------------------------


@pytest.fixture
def milvus_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'facedb[milvus]')")

    def make(**overrides: object) -> Settings:
        return make_settings(index_backend="milvus", **overrides)

    return make


def test_milvus_catches_up_and_survives_restart_congruent_with_faiss(milvus_settings: Callable[..., Settings]) -> None:
    settings = milvus_settings()
    rt = start(settings)
    enroll_people(rt, 3)
    assert rt.service.indexes.kinds() == {1: "milvus"}
    rt.close()  # stores the applied sequence beside the collections

    other = start(settings)  # another process writes, and dies before storing its sequence
    enroll_people(other, 2, seed=1)
    other.service.delete_identity("default", 1)
    other.db.dispose()

    rt = start(settings)
    try:
        assert rt.service.indexes.stats().faces == 4
        assert rt.service.indexes.lag() == 0
        assert top(rt, 1001)[0] == ("s1-1", 1.0)
        assert "s0-0" not in [e for e, _ in top(rt, 0)]
        answers = [top(rt, seed) for seed in (0, 1, 2, 1000, 1001, 77)]
    finally:
        rt.close()
    faiss_rt = start(settings.model_copy(update={"index_backend": "faiss"}))
    try:
        assert [top(faiss_rt, seed) for seed in (0, 1, 2, 1000, 1001, 77)] == answers
    finally:
        faiss_rt.close()


def test_every_index_kind_can_be_set() -> None:
    assert set(get_args(Settings.model_fields["index_kind"].annotation)) == {"auto", *KINDS}
