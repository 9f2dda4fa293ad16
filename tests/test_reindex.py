"""Model versions and re-indexing: switch without failed or mixed answers, resume after SIGKILL, roll back,
and two server processes on one database that agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import text

from embedding.checkpoint import load_checkpoint, save_checkpoint, weights_version
from embedding.embedder import dlib_resnet_model_path
from service import schemas
from service.admin import AdminService
from service.core import Upload
from service.db import migrate
from service.db.engine import Database
from service.errors import FacedbError
from service.runtime import Runtime, build_runtime
from service.settings import Settings
from tests.conftest import REPO, SYNTHETIC_ENROL, SYNTHETIC_PROBE, admin_client, free_port, image_bytes, new_key_headers

G = "/v1/galleries/default"


@pytest.fixture(scope="session")
def model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model: dlib's ResNet with perturbed weights, as after retraining (the default is SFace)."""
    model, card = load_checkpoint(dlib_resnet_model_path())
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    state = model.state_dict()
    card = card.model_copy(update={"name": "test-model-b", "version": weights_version(card.arch, state)})
    path = tmp_path_factory.mktemp("models") / "model-b.pt"
    save_checkpoint(path, model=model, card=card)
    return path


def start(settings: Settings) -> Runtime:
    return build_runtime(settings, batching=False)


def enroll_people(rt: Runtime, n: int, per: int = 2, prefix: str = "p") -> dict[str, int]:
    ids = {}
    for i in range(n):
        ident = rt.service.create_identity("default", schemas.IdentityCreate(external_id=f"{prefix}{i}"))
        uploads = [Upload(f"{j}.png", image_bytes(1000 * i + j)) for j in range(per)]
        rt.service.enroll("default", ident.id, uploads, detect=False, allow_conflict=True, allow_mismatch=True)
        ids[ident.external_id] = ident.id
    return ids


def ranking(rt: Runtime, seed: int) -> list[tuple[str, float]]:
    res = rt.service.identify("default", Upload("p.png", image_bytes(seed)), top_k=5, detect=False)
    return [(c.identity.external_id, c.score) for c in res.candidates]


def reindex(settings: Settings, model: Path, **kw: Any) -> schemas.JobPublic:
    db = Database(settings.resolved_database_url)
    try:
        admin = AdminService(db=db, settings=settings)
        mv = admin.reindexer.register(model)
        job_id = admin.reindexer.start_job(mv.id)
        admin.reindexer.run(job_id, **kw)
        return admin.get_job(job_id)
    finally:
        db.dispose()


def test_reindex_matches_a_fresh_enrolment(
    make_settings: Callable[..., Settings], model_b: Path, tmp_path: Path
) -> None:
    settings = make_settings()
    rt = start(settings)
    try:
        enroll_people(rt, 6)
        before = rt.service.active.label
        job = reindex(settings, model_b)
        assert (job.status, job.done, job.total, job.failed) == ("completed", 12, 12, 0)
        assert job.switch_seconds is not None
        assert rt.service.active.label == before, "a process switches when it syncs, not in the middle of a request"
        rt.service.sync()
        assert rt.service.active.label.startswith("test-model-b@")
        after = {seed: ranking(rt, seed) for seed in (1, 2001, 4000, 99)}
    finally:
        rt.close()

    fresh_url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    fresh_db = Database(fresh_url)
    migrate.upgrade(fresh_db.engine)
    fresh_db.dispose()
    fresh = start(make_settings(database_url=fresh_url, data_dir=tmp_path / "fresh", model_path=model_b))
    try:
        enroll_people(fresh, 6)
        for seed, got in after.items():
            want = ranking(fresh, seed)
            assert [n for n, _ in got] == [n for n, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    finally:
        fresh.close()


def test_identify_keeps_answering_during_reindex(make_settings: Callable[..., Settings], model_b: Path) -> None:
    # Identities score by their best face here, so that an enrolled image scores ~1 under either model.
    settings = make_settings(
        reindex_batch_size=3, index_sync_interval_s=0.05, identity_score="best", models_dir=model_b.parent
    )
    with admin_client(settings) as client:
        for i in range(8):
            iid = client.post(f"{G}/identities", json={"external_id": f"q{i}"}).json()["id"]
            files = [("image", (f"{j}.png", image_bytes(100 * i + j), "image/png")) for j in range(3)]
            assert client.post(f"{G}/identities/{iid}/faces", files=files, data=SYNTHETIC_ENROL).status_code == 201
        labels: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                r = client.post(
                    f"{G}/identify", files={"image": ("p.png", image_bytes(301), "image/png")}, data=SYNTHETIC_PROBE
                )
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                body = r.json()
                labels.append(body["model_version"])
                top = body["candidates"][0]
                # the probe is an enrolled image: under one model it scores ~1; mixing models would not
                if top["identity"]["external_id"] != "q3" or top["score"] < 0.999:
                    failures.append(str(body))

        thread = threading.Thread(target=probe)
        thread.start()
        try:
            r = client.post("/v1/admin/reindex", json={"model_path": model_b.name})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            # an enrolment while the job runs is embedded with both models
            late = client.post(f"{G}/identities", json={"external_id": "late"}).json()["id"]
            files = [("image", ("late.png", image_bytes(777), "image/png"))]
            assert client.post(f"{G}/identities/{late}/faces", files=files, data=SYNTHETIC_ENROL).status_code == 201
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job = client.get(f"/v1/admin/reindex/{job_id}").json()
                if job["status"] != "running":
                    break
                time.sleep(0.05)
            assert job["status"] == "completed", job
            while time.monotonic() < deadline and not (labels and labels[-1].startswith("test-model-b")):
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()
        assert failures == []
        first_b = next(i for i, label in enumerate(labels) if label.startswith("test-model-b"))
        assert first_b > 0, "answers under the old model came first"
        assert all(label.startswith("test-model-b") for label in labels[first_b:]), "no answer went back"
        r = client.post(
            f"{G}/identify", files={"image": ("p.png", image_bytes(777), "image/png")}, data=SYNTHETIC_PROBE
        ).json()
        assert (r["candidates"][0]["identity"]["external_id"], r["candidates"][0]["score"] > 0.999) == ("late", True)
        models = {m["name"]: m for m in client.get("/v1/admin/models").json()["items"]}
        assert models["test-model-b"]["status"] == "active"
        assert models["test-model-b"]["templates"] == 25
        assert [m["status"] for n, m in models.items() if n != "test-model-b"] == ["retired"]


def test_rollback_and_faces_without_crops(make_settings: Callable[..., Settings], model_b: Path) -> None:
    settings = make_settings()
    rt = start(settings)
    try:
        enroll_people(rt, 3)
        a = rt.service.active
        reindex(settings, model_b)
        rt.service.sync()
        enroll_people(rt, 1, prefix="b-era")  # enrolled under B only
        db = rt.db
        admin = AdminService(db=db, settings=settings)
        mv = admin.reindexer.prepare(a.version)  # roll back: one command, re-embeds only what A lacks
        job_id = admin.reindexer.start_job(mv.id)
        admin.reindexer.run(job_id)
        assert admin.get_job(job_id).done == 8
        rt.service.sync()
        assert rt.service.active.label == a.label
        assert ranking(rt, 0)[0][0] == "b-era0"

        # a face without a stored crop (FACEDB_STORE_CROPS=false) cannot be re-embedded by B:
        # the switch is refused unless allowed
        no_crops = start(make_settings(store_crops=False))
        try:
            (iid,) = enroll_people(no_crops, 1, prefix="no-crop").values()
            assert [f.reindexable for f in no_crops.service.list_faces("default", iid).items] == [False, False]
        finally:
            no_crops.db.dispose()
        with pytest.raises(FacedbError) as exc:
            reindex(settings, model_b)
        assert exc.value.code == "faces_not_reindexable"
        assert rt.service.active.label == a.label
        job = reindex(settings, model_b, allow_missing=True)
        assert job.status == "completed"
    finally:
        rt.close()


# --- real processes ----------------------------------------------------------------------------------


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return os.environ | {
        "FACEDB_DATA_DIR": str(settings.data_dir),
        "FACEDB_DATABASE_URL": settings.resolved_database_url,
        "FACEDB_TORCH_THREADS": "1",
        **extra,
    }


def test_sigkill_mid_reindex_then_rerun(make_settings: Callable[..., Settings], model_b: Path) -> None:
    settings = make_settings(identity_score="best")  # an enrolled image then scores ~1 against its own face
    rt = start(settings)
    enroll_people(rt, 20, per=3)
    rt.close()
    env = _env(settings, FACEDB_REINDEX_BATCH_SIZE="4", FACEDB_JOB_STALE_S="1")
    cmd = [sys.executable, "-m", "service", "reindex", "--model", str(model_b)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = Database(settings.resolved_database_url)
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            with db.engine.connect() as conn:
                done = conn.execute(
                    text(
                        "SELECT count(*) FROM templates t JOIN model_versions m ON m.id = t.model_version_id "
                        "WHERE m.name = 'test-model-b'"
                    )
                ).scalar_one()
            if done >= 12:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < done < 60, f"killed mid-job ({done} of 60 templates)"
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT status FROM model_versions WHERE name = 'test-model-b'")).scalar_one() == (
                "building"
            )
        time.sleep(1.2)  # the dead job's heartbeat goes stale
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        assert "60/60 faces have templates" in out.stdout
    finally:
        db.dispose()
    rt = start(settings)
    try:
        assert rt.service.active.label.startswith("test-model-b@")
        assert rt.service.indexes.stats().faces == 60
        name, score = ranking(rt, 1001)[0]
        assert name == "p1"
        assert score == pytest.approx(1.0, abs=1e-5)
    finally:
        rt.close()


@pytest.fixture
def two_servers(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two servers on one database; an admin key made beforehand (in `settings.data_dir`'s place) serves both."""
    procs = []
    urls = []
    for i in range(2):
        port = free_port()
        env = _env(settings, FACEDB_INDEX_SYNC_INTERVAL_S="0.2", FACEDB_DATA_DIR=str(tmp_path / f"node{i}"))
        log = (tmp_path / f"node{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url, proc in zip(urls, procs, strict=True):
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, "server exited"
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server not ready"
                time.sleep(0.1)
        yield urls[0], urls[1]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "did not converge in time"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.slow
def test_two_processes_agree(two_servers: tuple[str, str], settings: Settings, model_b: Path) -> None:
    """Two uvicorn processes on one database (PostgreSQL, or one SQLite file on one machine)."""
    headers = new_key_headers(settings, "test-admin", "admin")
    a, b = (httpx.Client(base_url=u + G, timeout=30, headers=headers) for u in two_servers)

    def top(client: httpx.Client, seed: int) -> tuple[str | None, str]:
        body = client.post(
            "/identify", files={"image": ("p.png", image_bytes(seed), "image/png")}, data=SYNTHETIC_PROBE
        ).json()
        return (body["candidates"][0]["identity"]["external_id"] if body["candidates"] else None), body["model_version"]

    ids = {}
    for i in range(4):
        ids[i] = a.post("/identities", json={"external_id": f"m{i}"}).json()["id"]
        files = [("image", (f"{j}.png", image_bytes(50 * i + j), "image/png")) for j in range(2)]
        assert a.post(f"/identities/{ids[i]}/faces", files=files, data=SYNTHETIC_ENROL).status_code == 201
    delay = _eventually(lambda: top(b, 101)[0] == "m2")
    assert delay < 5
    assert b.delete(f"/identities/{ids[2]}").status_code == 204
    _eventually(lambda: top(a, 101)[0] != "m2")

    env = _env(settings)
    out = subprocess.run(
        [sys.executable, "-m", "service", "reindex", "--model", str(model_b)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    _eventually(lambda: top(a, 150)[1].startswith("test-model-b") and top(b, 150)[1].startswith("test-model-b"))
    for seed in (0, 51, 150, 151, 999):
        assert top(a, seed) == top(b, seed)
    ra = a.post("/identify", files={"image": ("p.png", image_bytes(151), "image/png")}, data=SYNTHETIC_PROBE).json()
    rb = b.post("/identify", files={"image": ("p.png", image_bytes(151), "image/png")}, data=SYNTHETIC_PROBE).json()
    assert [c["face_id"] for c in ra["candidates"]] == [c["face_id"] for c in rb["candidates"]]
    np.testing.assert_allclose(
        [c["score"] for c in ra["candidates"]], [c["score"] for c in rb["candidates"]], atol=1e-6
    )
