"""The database is the truth and the index a cache: snapshots are checked, replayed or rebuilt, and a
server killed with SIGKILL mid-enrolment comes back with every acknowledged face and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from service import schemas
from service.core import Upload
from service.runtime import Runtime, build_runtime
from service.settings import Settings
from tests.conftest import SYNTHETIC_ENROL, SYNTHETIC_PROBE, admin_client, admin_headers, image_bytes, start_server


def start(settings: Settings) -> Runtime:
    return build_runtime(settings, batching=False)


def enroll_people(rt: Runtime, n: int, seed: int = 0) -> list[int]:
    ids = []
    for i in range(n):
        ident = rt.service.create_identity("default", schemas.IdentityCreate(external_id=f"s{seed}-{i}"))
        rt.service.enroll(
            "default",
            ident.id,
            [Upload(f"{i}.png", image_bytes(seed * 1000 + i))],
            detect=False,
            allow_conflict=True,
            allow_mismatch=True,
        )
        ids.append(ident.id)
    return ids


def snapshot_files(settings: Settings) -> list[Path]:
    return sorted(settings.resolved_index_dir.glob("*/gallery-*/*"))


def test_snapshot_is_reused_and_caught_up(settings: Settings) -> None:
    rt = start(settings)
    enroll_people(rt, 3)
    rt.close()  # writes the snapshot
    assert any(p.name == "manifest.json" for p in snapshot_files(settings))

    # another process writes after the snapshot: the next start replays only those changes
    other = start(settings)
    enroll_people(other, 2, seed=1)
    other.service.delete_identity("default", 1)
    other.db.dispose()  # killed before it could snapshot

    rt = start(settings)
    try:
        assert rt.service.indexes.stats().faces == 4
        assert rt.service.indexes.lag() == 0
        hits = rt.service.identify("default", Upload("p.png", image_bytes(1001)), top_k=1, detect=False).candidates
        assert hits[0].identity.external_id == "s1-1"
        gone = rt.service.identify("default", Upload("p.png", image_bytes(0)), top_k=10, detect=False).candidates
        assert "s0-0" not in [c.identity.external_id for c in gone]
    finally:
        rt.close()


@pytest.mark.parametrize("target", ["index.npz", "faces.npy", "manifest.json"])
def test_corrupt_snapshot_is_rebuilt(settings: Settings, target: str) -> None:
    rt = start(settings)
    enroll_people(rt, 4)
    rt.close()
    (path,) = [p for p in snapshot_files(settings) if p.name == target]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    rt = start(settings)
    try:
        assert rt.service.indexes.stats().faces == 4
        top = rt.service.identify("default", Upload("p.png", image_bytes(2)), top_k=1, detect=False).candidates[0]
        assert (top.identity.external_id, top.score > 0.999) == ("s0-2", True)
    finally:
        rt.close()


@pytest.mark.parametrize("index_backend", ["faiss", "milvus"])
@pytest.mark.parametrize("log_too", [True, False], ids=["restored-backup", "rows-deleted-behind-its-back"])
def test_snapshot_that_disagrees_with_the_database_is_rebuilt(
    settings: Settings, log_too: bool, index_backend: str
) -> None:
    """A snapshot (or Milvus collection) ahead of the database (restored from backup) or with other faces is not
    trusted."""
    if index_backend == "milvus":
        pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'facedb[milvus]')")
    settings = settings.model_copy(update={"index_backend": index_backend})
    rt = start(settings)
    enroll_people(rt, 5)
    rt.close()
    with rt.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM faces WHERE id > 3"))
        if log_too:
            conn.execute(text("DELETE FROM changes WHERE seq > 3"))
    rt = start(settings)
    try:
        assert rt.service.indexes.stats().faces == 3
        hits = rt.service.identify("default", Upload("p.png", image_bytes(4)), top_k=10, detect=False).candidates
        assert all(h.face_id <= 3 for h in hits)
    finally:
        rt.close()


def test_other_process_writes_reach_a_running_server(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(index_sync_interval_s=0.1)
    with admin_client(settings) as client:
        writer = start(settings)  # as `facedb enroll` would, in its own process
        try:
            enroll_people(writer, 2, seed=7)
        finally:
            writer.db.dispose()
        deadline = time.monotonic() + 5
        while client.get("/readyz").json()["checks"]["index_lag"] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = client.post(
            "/v1/galleries/default/identify",
            files={"image": ("p.png", image_bytes(7001), "image/png")},
            data=SYNTHETIC_PROBE,
        )
        assert r.json()["candidates"][0]["identity"]["external_id"] == "s7-1"


# --- a real server process, killed ----------------------------------------------------------------------


@pytest.fixture
def index_backend() -> str:
    """The server's FACEDB_INDEX_BACKEND (a test parametrizes it to run on Milvus too)."""
    return "faiss"


@pytest.fixture
def server(
    settings: Settings, tmp_path: Path, index_backend: str
) -> Iterator[Callable[[], tuple[subprocess.Popen[bytes], str]]]:
    if index_backend == "milvus":
        pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'facedb[milvus]')")
    procs: list[subprocess.Popen[bytes]] = []
    env = os.environ | {
        "FACEDB_DATA_DIR": str(settings.data_dir),
        "FACEDB_DATABASE_URL": settings.resolved_database_url,
        "FACEDB_INDEX_SYNC_INTERVAL_S": "0.2",
        "FACEDB_TORCH_THREADS": "1",
        "FACEDB_INDEX_BACKEND": index_backend,
    }

    def launch() -> tuple[subprocess.Popen[bytes], str]:
        proc, url = start_server(env, tmp_path / f"server-{len(procs)}.log", timeout_s=60)
        procs.append(proc)
        return proc, url

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("index_backend", ["faiss", "milvus"])
def test_sigkill_mid_enrolment_loses_no_acknowledged_face(
    server: Callable[[], tuple[subprocess.Popen[bytes], str]], settings: Settings, index_backend: str
) -> None:
    proc, url = server()
    headers = admin_headers(settings)
    acked: dict[int, int] = {}  # face id -> image seed
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=url, timeout=10, headers=headers) as c:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    ident = c.post("/v1/galleries/default/identities", json={"external_id": f"k{i}"})
                    if ident.status_code != 201:
                        continue
                    r = c.post(
                        f"/v1/galleries/default/identities/{ident.json()['id']}/faces",
                        files={"image": ("f.png", image_bytes(5000 + i), "image/png")},
                        data=SYNTHETIC_ENROL,
                    )
                except httpx.TransportError:
                    return
                if r.status_code == 201:
                    acked[r.json()["accepted"][0]["face_id"]] = 5000 + i

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 30
    while len(acked) < 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    thread.join()
    assert len(acked) >= 15

    _, url = server()
    with httpx.Client(base_url=url, timeout=30, headers=headers) as c:
        ready = c.get("/readyz").json()
        gallery = c.get("/v1/galleries/default").json()
        assert ready["checks"]["index_lag"] == 0
        assert ready["checks"]["index_faces"] == gallery["face_count"] >= len(acked)
        assert ready["checks"]["index_kinds"] == {"1": "milvus" if index_backend == "milvus" else "flat"}
        for face_id, seed in list(acked.items())[:: max(1, len(acked) // 8)]:
            r = c.post(
                "/v1/galleries/default/identify",
                files={"image": ("p.png", image_bytes(seed), "image/png")},
                data=SYNTHETIC_PROBE,
            )
            top = r.json()["candidates"][0]
            assert top["face_id"] == face_id
            assert top["score"] > 0.999
