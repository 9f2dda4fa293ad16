"""API keys, scopes, galleries, rate limits, the bootstrap key and the audit log, through the real app on both
databases, and once through a real server started the README's way."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service import auth
from service.api import create_app
from service.auth import Caller, Scope, TokenBucket
from service.db import crud
from service.db.engine import Database
from service.db.models import AuditEvent, utcnow
from service.settings import Settings
from tests.conftest import (
    SYNTHETIC_ENROL,
    SYNTHETIC_PROBE,
    admin_client,
    admin_headers,
    api_operations,
    image_bytes,
)

G = "/v1/galleries/default"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def new_key(client: TestClient, name: str, *scopes: str, **extra: Any) -> dict[str, str]:
    r = client.post("/v1/admin/keys", json={"name": name, "scopes": list(scopes), **extra})
    assert r.status_code == 201, r.text
    return bearer(r.json()["secret"])


def enrol_one(client: TestClient, external_id: str, seed: int, gallery: str = G) -> int:
    person = client.post(f"{gallery}/identities", json={"external_id": external_id}).json()["id"]
    files = {"image": ("f.png", image_bytes(seed), "image/png")}
    assert client.post(f"{gallery}/identities/{person}/faces", files=files, data=SYNTHETIC_ENROL).status_code == 201
    return int(person)


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# --- the bootstrap key ----------------------------------------------------------------------------------


def test_first_start_writes_an_owner_only_admin_key_once(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    key_file = settings.resolved_admin_key_file
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as c:
        secret = key_file.read_text().strip()
        assert auth.SECRET_PATTERN.match(secret)
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert str(key_file) in caplog.text
        assert c.get("/v1/galleries", headers=bearer(secret)).status_code == 200
    with TestClient(create_app(settings)) as c:  # a key exists now: nothing new is made
        assert key_file.read_text().strip() == secret
        keys = c.get("/v1/admin/keys", headers=bearer(secret)).json()["items"]
        assert [(k["name"], k["scopes"], k["created_by"]) for k in keys] == [("admin", ["admin"], "bootstrap")]
        assert "secret" not in keys[0]


def test_a_database_whose_keys_are_all_revoked_gets_a_new_bootstrap_key(settings: Settings) -> None:
    with admin_client(settings) as c:
        first = c.headers["Authorization"]
        assert c.delete("/v1/admin/keys/1").status_code == 204
        assert code(c.get("/v1/galleries")) == "invalid_api_key"
    with admin_client(settings) as c:
        assert c.headers["Authorization"] != first
        assert c.get("/v1/galleries").status_code == 200
        assert [k["name"] for k in c.get("/v1/admin/keys").json()["items"]][1].startswith("admin-")


# --- 401 and 403 -------------------------------------------------------------------------------------


def test_every_v1_route_needs_a_key_and_health_stays_open(settings: Settings) -> None:
    app = create_app(settings)
    operations = sorted(op for op in api_operations(app) if op[1].startswith("/v1"))
    assert len(operations) >= 23
    with TestClient(app) as c:
        for method, template in operations:
            path = template.format(gallery="default", identity_id=1, face_id=1, job_id=1, key_id=1)
            r = c.request(method, path)
            assert r.status_code == 401, (method, path, r.text)
            assert code(r) == "missing_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/openapi.json").json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_a_proxy_prefix_does_not_bypass_the_key_check(settings: Settings) -> None:
    with TestClient(create_app(settings), root_path="/facedb") as c:
        r = c.get("/facedb/v1/galleries")
        assert (r.status_code, code(r)) == (401, "missing_api_key")
        assert c.get("/facedb/v1/galleries", headers=admin_headers(settings)).status_code == 200


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer fdb_0123456789ab_" + "A" * 43, "invalid_api_key"),  # well-formed, unknown
        ("Bearer not-a-facedb-key", "invalid_api_key"),
        ("Bearer " + "x" * 5000, "invalid_api_key"),
        ("Basic dXNlcjpwYXNz", "missing_api_key"),
        ("Bearer", "missing_api_key"),
    ],
)
def test_wrong_keys_are_401(settings: Settings, header: str, expected: str) -> None:
    with admin_client(settings) as c:
        r = c.get("/v1/galleries", headers={"Authorization": header})
        assert (r.status_code, code(r)) == (401, expected)
        real = c.headers["Authorization"]
        # the right prefix with the wrong token: the hash comparison refuses it
        tampered = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
        assert code(c.get("/v1/galleries", headers={"Authorization": tampered})) == "invalid_api_key"


def test_scopes_and_galleries(client: TestClient) -> None:
    assert client.post("/v1/galleries", json={"name": "staff"}).status_code == 201
    staff = "/v1/galleries/staff"
    person = enrol_one(client, "p", 1)
    reader = new_key(client, "reader", "read")
    enroller = new_key(client, "enroller", "enroll")
    door = new_key(client, "door", "identify", galleries=["staff"])
    probe = {"image": ("p.png", image_bytes(1), "image/png")}

    # read: listings and reads only
    assert client.get(f"{G}/identities/{person}", headers=reader).status_code == 200
    r = client.post(f"{G}/identities", json={"external_id": "x"}, headers=reader)
    assert (r.status_code, code(r)) == (403, "insufficient_scope")
    assert code(client.post(f"{G}/identify", files=probe, data=SYNTHETIC_PROBE, headers=reader)) == "insufficient_scope"
    # enroll: create, change and delete identities and faces, not identify or admin
    new = client.post(f"{G}/identities", json={"external_id": "e"}, headers=enroller)
    assert new.status_code == 201
    assert client.patch(f"{G}/identities/{new.json()['id']}", json={"display_name": "E"}, headers=enroller).is_success
    assert client.delete(f"{G}/identities/{new.json()['id']}", headers=enroller).status_code == 204
    assert code(client.post(f"{G}/identify", files=probe, data=SYNTHETIC_PROBE, headers=enroller)) == (
        "insufficient_scope"
    )
    assert code(client.get("/v1/admin/models", headers=enroller)) == "insufficient_scope"
    assert code(client.post("/v1/galleries", json={"name": "x"}, headers=enroller)) == "insufficient_scope"
    # identify, limited to one gallery
    assert client.post(f"{staff}/identify", files=probe, data=SYNTHETIC_PROBE, headers=door).status_code == 200
    r = client.post(f"{G}/identify", files=probe, data=SYNTHETIC_PROBE, headers=door)
    assert (r.status_code, code(r)) == (403, "gallery_forbidden")
    verify = {"identity_id": str(person), **SYNTHETIC_PROBE}
    assert code(client.post(f"{G}/verify", files=probe, data=verify, headers=door)) == "gallery_forbidden"
    assert code(client.get(f"{staff}/identities", headers=door)) == "insufficient_scope"
    # a limited reader lists only its galleries
    staff_reader = new_key(client, "staff-reader", "read", galleries=["staff"])
    assert [g["name"] for g in client.get("/v1/galleries", headers=staff_reader).json()["items"]] == ["staff"]
    assert {g["name"] for g in client.get("/v1/galleries").json()["items"]} == {"default", "staff"}


def test_key_lifecycle(client: TestClient) -> None:
    r = client.post("/v1/admin/keys", json={"name": "door-1", "scopes": ["identify", "read"], "galleries": ["default"]})
    assert r.status_code == 201
    created = r.json()
    assert created["secret"].startswith(f"fdb_{created['prefix']}_")
    listed = client.get("/v1/admin/keys").json()["items"]
    assert all("secret" not in k for k in listed)
    assert client.get(f"/v1/admin/keys/{created['id']}").json()["scopes"] == ["identify", "read"]
    door = bearer(created["secret"])
    assert client.get(f"{G}/identities", headers=door).status_code == 200

    assert code(client.post("/v1/admin/keys", json={"name": "door-1", "scopes": ["read"]})) == "api_key_exists"
    r = client.post("/v1/admin/keys", json={"name": "x", "scopes": ["admin"], "galleries": ["default"]})
    assert (r.status_code, code(r)) == (422, "admin_key_galleries")
    assert code(client.post("/v1/admin/keys", json={"name": "y", "scopes": ["root"]})) == "validation_error"
    assert code(client.post("/v1/admin/keys", json={"name": "z", "scopes": []})) == "validation_error"
    assert code(client.get(f"/v1/admin/keys/{2**40}")) == "api_key_not_found"
    digits = client.post("/v1/admin/keys", json={"name": "1", "scopes": ["read"]}).json()
    assert client.get("/v1/admin/keys/1").json()["name"] == "admin"  # an id, never another key's name
    assert client.get(f"/v1/admin/keys/{digits['id']}").json()["name"] == "1"

    assert client.delete(f"/v1/admin/keys/{created['id']}").status_code == 204
    assert code(client.get(f"{G}/identities", headers=door)) == "invalid_api_key"  # at once, despite the cache
    assert client.get(f"/v1/admin/keys/{created['id']}").json()["revoked_at"] is not None

    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    expired = new_key(client, "old", "read", expires_at=past)
    r = client.get(f"{G}/identities", headers=expired)
    assert (r.status_code, code(r)) == (401, "expired_api_key")


def test_rate_limit_is_per_key_with_retry_after(client: TestClient) -> None:
    slow = new_key(client, "slow", "read", rate_limit=0.01)  # one request, then one per 100 s
    assert client.get("/v1/galleries", headers=slow).status_code == 200
    r = client.get("/v1/galleries", headers=slow)
    assert (r.status_code, code(r)) == (429, "rate_limited")
    assert 60 <= int(r.headers["retry-after"]) <= 100
    assert client.get("/v1/galleries").status_code == 200  # other keys are not affected


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, capacity=4.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [0.0] * 4
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0
    now[0] += 100
    assert sum(bucket.take() == 0.0 for _ in range(10)) == 4  # never more than the burst


def test_caller_grants() -> None:
    admin = Caller(name="a", scopes=frozenset({Scope.ADMIN}))
    door = Caller(name="d", scopes=frozenset({Scope.IDENTIFY}), galleries=frozenset({"staff"}))
    assert all(admin.has(s) for s in Scope) and admin.may_use("anything")
    assert door.has(Scope.IDENTIFY) and not door.has(Scope.READ) and not door.has(Scope.ADMIN)
    assert door.may_use("staff") and not door.may_use("default")


def test_auth_off_opens_everything_and_says_so(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(auth="off")
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as c:
        assert c.get("/v1/admin/models").status_code == 200
        assert c.post(f"{G}/identities", json={"external_id": "a"}).status_code == 201
        events = c.get("/v1/admin/audit").json()["items"]
    assert "FACEDB_AUTH=off" in caplog.text and "EVERY /v1 ROUTE IS OPEN" in caplog.text
    assert not settings.resolved_admin_key_file.exists()
    assert events[0]["key_name"].startswith("anonymous")


# --- the audit log -----------------------------------------------------------------------------------


def test_every_write_route_is_audited(client: TestClient) -> None:
    """Every operation that is not a GET (writes, identify, verify) leaves an audit event, even when it fails."""
    writes = sorted(op for op in api_operations(client.app) if op[1].startswith("/v1") and op[0] != "GET")  # type: ignore[arg-type]
    assert len(writes) >= 12
    for method, template in writes:
        path = template.format(gallery="default", identity_id=10**9, face_id=10**9, job_id=10**9, key_id=10**9)
        before = client.get("/v1/admin/audit", params={"limit": 1}).json()["items"]
        status = client.request(method, path).status_code
        after = client.get("/v1/admin/audit", params={"limit": 1}).json()["items"]
        assert after and after[0]["id"] != (before[0]["id"] if before else None), (method, path)
        assert after[0]["status"] == status and after[0]["key_name"] == "admin", (method, path, after[0])


def test_audit_log_shows_who_enrolled_searched_and_deleted(client: TestClient) -> None:
    enroller = new_key(client, "enrolment-desk", "enroll")
    door = new_key(client, "door-7", "identify")
    person = client.post(f"{G}/identities", json={"external_id": "ada"}, headers=enroller).json()["id"]
    files = {"image": ("a.png", image_bytes(11), "image/png")}
    enrolled = client.post(f"{G}/identities/{person}/faces", files=files, data=SYNTHETIC_ENROL, headers=enroller)
    face = enrolled.json()["accepted"][0]["face_id"]
    probe = {"image": ("p.png", image_bytes(11), "image/png")}
    found = client.post(f"{G}/identify", files=probe, data=SYNTHETIC_PROBE, headers=door).json()
    assert found["match"]["identity"]["id"] == person
    assert code(client.delete(f"{G}/identities/{person}", headers=door)) == "insufficient_scope"
    assert client.post(f"{G}/identities/{person}/faces", files=files, headers=enroller).status_code == 422
    assert client.delete(f"{G}/identities/{person}").status_code == 204

    events = client.get("/v1/admin/audit").json()["items"]
    seen = [(e["key_name"], e["action"], e["status"], e["outcome"]) for e in events if e["action"] != "create_key"]
    assert seen == [
        ("admin", "delete_identity", 204, "ok"),
        ("enrolment-desk", "enroll_faces", 422, "no_face_enrolled"),
        ("door-7", "delete_identity", 403, "insufficient_scope"),
        ("door-7", "identify", 200, "ok"),
        ("enrolment-desk", "enroll_faces", 201, "ok"),
        ("enrolment-desk", "create_identity", 201, "ok"),
    ]
    by_action = {(e["action"], e["status"]): e for e in events}
    assert by_action[("enroll_faces", 201)]["target"]["face_ids"] == [face]
    assert by_action[("enroll_faces", 201)]["target"]["identity_id"] == person
    assert by_action[("identify", 200)]["target"]["matched_identity_ids"] == [person]
    assert by_action[("delete_identity", 204)]["target"] == {"identity_id": person}
    assert all(e["gallery"] == "default" and e["client"] == "testclient" for e in events if e["action"] != "create_key")
    text = str(events)
    assert "embedding" not in text and "image_bytes" not in text

    # filters and paging
    assert {e["key_name"] for e in client.get("/v1/admin/audit", params={"key": "door-7"}).json()["items"]} == {
        "door-7"
    }
    assert len(client.get("/v1/admin/audit", params={"action": "enroll_faces"}).json()["items"]) == 2
    assert client.get("/v1/admin/audit", params={"gallery": "staff"}).json()["items"] == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/v1/admin/audit", params={"since": future}).json()["items"] == []
    assert len(client.get("/v1/admin/audit", params={"until": future}).json()["items"]) == len(events)
    page1 = client.get("/v1/admin/audit", params={"limit": 3}).json()
    page2 = client.get("/v1/admin/audit", params={"limit": 3, "cursor": page1["next_cursor"]}).json()
    assert [e["id"] for e in page1["items"] + page2["items"]] == [e["id"] for e in events][:6]
    assert code(client.get("/v1/admin/audit", params={"limit": 0})) == "invalid_limit"
    assert code(client.get("/v1/admin/audit", headers=door)) == "insufficient_scope"


def test_audit_retention(settings: Settings) -> None:
    with admin_client(settings.model_copy(update={"audit_retention_days": 30})) as c:
        c.post(f"{G}/identities", json={"external_id": "recent"})
        db = Database(settings.resolved_database_url)
        try:
            with db.write() as session:
                old = AuditEvent(
                    action="identify", target={}, status=200, outcome="ok", at=utcnow() - timedelta(days=31)
                )
                crud.add_audit_event(session, event=old)
            assert c.app.state.runtime.audit.purge() == 1  # type: ignore[attr-defined]
        finally:
            db.dispose()
        assert [e["action"] for e in c.get("/v1/admin/audit").json()["items"]] == ["create_identity"]


# --- a real server ----------------------------------------------------------------------------------


def test_real_server_started_the_readme_way(server_url: str, settings: Settings, tmp_path: Path) -> None:
    """`facedb serve` with a data directory: the bootstrap key file, 401, 403, the admin key everywhere, the audit."""
    admin = admin_headers(settings)
    with httpx.Client(base_url=server_url, timeout=60) as c:
        assert c.get("/healthz").status_code == 200
        assert code(c.get("/v1/galleries")) == "missing_api_key"
        made = c.post("/v1/admin/keys", json={"name": "reader", "scopes": ["read"]}, headers=admin)
        reader = bearer(made.json()["secret"])
        r = c.post(f"{G}/identities", json={"external_id": "x"}, headers=reader)
        assert (r.status_code, code(r)) == (403, "insufficient_scope")
        person = c.post(f"{G}/identities", json={"external_id": "x"}, headers=admin).json()["id"]
        files = {"image": ("f.png", image_bytes(3), "image/png")}
        r = c.post(f"{G}/identities/{person}/faces", files=files, data=SYNTHETIC_ENROL, headers=admin)
        assert r.status_code == 201
        probe = {"image": ("p.png", image_bytes(3), "image/png")}
        assert c.post(f"{G}/identify", files=probe, data=SYNTHETIC_PROBE, headers=admin).json()["match"]
        assert c.get(f"{G}/identities/{person}", headers=reader).status_code == 200
        events = c.get("/v1/admin/audit", headers=admin).json()["items"]
    assert [(e["key_name"], e["action"], e["client"]) for e in events[:4]] == [
        ("admin", "identify", "127.0.0.1"),
        ("admin", "enroll_faces", "127.0.0.1"),
        ("admin", "create_identity", "127.0.0.1"),
        ("reader", "create_identity", "127.0.0.1"),
    ]
    assert "admin.key" in (tmp_path / "server.log").read_text()
