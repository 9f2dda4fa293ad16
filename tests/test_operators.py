"""What operators see: /metrics, request ids and JSON logs, the console's files, search by name, UTC timestamps,
and the CLI's one-line errors and enrolment over HTTP."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from embedding.embedder import default_model_path, read_card
from service.logs import JsonFormatter, RequestIdFilter
from service.settings import Settings
from tests.conftest import SYNTHETIC_ENROL, SYNTHETIC_PROBE, admin_client, admin_headers, image_bytes
from tests.test_cli import facedb, make_people

G = "/v1/galleries/default"


def _metric(text: str, metric: str, /, **labels: str) -> float:
    """The value of one sample of the Prometheus text format."""
    for line in text.splitlines():
        if not line.startswith(metric):
            continue
        match = re.match(r"^([a-z_]+)(\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != metric:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    raise AssertionError(f"no sample {metric} {labels}")


def test_metrics_after_some_traffic(client: TestClient) -> None:
    person = client.post(f"{G}/identities", json={"external_id": "a"}).json()["id"]
    files = {"image": ("a.png", image_bytes(1), "image/png")}
    client.post(f"{G}/identities/{person}/faces", files=files, data=SYNTHETIC_ENROL)
    for _ in range(3):
        client.post(f"{G}/identify", files={"image": ("p.png", image_bytes(1), "image/png")}, data=SYNTHETIC_PROBE)
    client.get(f"{G}/identities/{10**9}")
    client.get("/v1/galleries", headers={"Authorization": "Bearer nope"})

    r = client.get("/metrics", headers={"Authorization": ""})  # open by default, like /healthz
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    identify = "/v1/galleries/{gallery}/identify"
    assert _metric(text, "facedb_http_requests_total", route=identify, method="POST", status="200") == 3
    assert _metric(text, "facedb_http_request_seconds_count", route=identify, method="POST") == 3
    assert (
        _metric(
            text, "facedb_http_requests_total", route="/v1/galleries/{gallery}/identities/{identity_id}", status="404"
        )
        == 1
    )
    assert _metric(text, "facedb_http_requests_total", route="/v1/*", status="401") == 1
    for stage, calls in (("decode", 4), ("embed", 4), ("search", 3)):
        assert _metric(text, "facedb_stage_seconds_count", stage=stage) >= calls, stage
    assert _metric(text, "facedb_embed_queue_depth") == 0
    assert _metric(text, "facedb_gallery_faces", gallery="default") == 1
    assert _metric(text, "facedb_active_model_info", name=read_card(default_model_path()).name) == 1
    assert _metric(text, "facedb_overloaded_total") == 0
    assert _metric(text, "facedb_rate_limited_total") == 0
    assert "/v1/galleries/default/identities/1" not in text  # templates, never raw paths


def test_metrics_can_require_a_key(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(metrics_require_key=True)
    with admin_client(settings) as c:
        assert c.get("/metrics", headers={"Authorization": ""}).status_code == 401
        assert c.get("/metrics").status_code == 200


def test_request_ids_and_json_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="facedb.access"):
        given = client.get("/v1/galleries", headers={"X-Request-ID": "door-7.42"})
        made = client.get("/v1/galleries", headers={"X-Request-ID": "bad id with spaces"})
    assert given.headers["x-request-id"] == "door-7.42"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    access = [r for r in caplog.records if r.name == "facedb.access"]
    record = access[0]
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"].startswith("GET /v1/galleries 200")
    assert (line["status"], line["key"], line["path"]) == (200, "admin", "/v1/galleries")
    assert line["time"].endswith("+00:00") and line["level"] == "INFO"


def test_console_is_served_with_a_strict_policy(client: TestClient) -> None:
    r = client.get("/console", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/console/"
    page = client.get("/console/", headers={"Authorization": ""})
    assert page.status_code == 200 and "<title>facedb console</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for asset in ("app.js", "style.css"):
        assert client.get(f"/console/{asset}").status_code == 200
    everything = page.text + client.get("/console/app.js").text + client.get("/console/style.css").text
    assert "http://" not in everything and "https://" not in everything  # nothing loaded from outside


def test_who_am_i_search_by_name_and_utc_timestamps(client: TestClient) -> None:
    assert client.get("/v1/me").json() == {"name": "admin", "scopes": ["admin"], "galleries": None}
    for external_id, name in (("emp-1", "Ada Lovelace"), ("emp-2", "Grace Hopper"), ("x_%", "Percent")):
        client.post(f"{G}/identities", json={"external_id": external_id, "display_name": name})
    found = client.get(f"{G}/identities", params={"q": "LOVE"}).json()["items"]
    assert [i["external_id"] for i in found] == ["emp-1"]
    assert [i["external_id"] for i in client.get(f"{G}/identities", params={"q": "emp-"}).json()["items"]] == [
        "emp-1",
        "emp-2",
    ]
    assert [i["external_id"] for i in client.get(f"{G}/identities", params={"q": "_%"}).json()["items"]] == ["x_%"]
    created = client.post(f"{G}/identities", json={"external_id": "t"}).json()
    read = client.get(f"{G}/identities/{created['id']}").json()
    for stamp in (created["created_at"], read["created_at"], read["updated_at"]):
        assert stamp.endswith(("Z", "+00:00")), stamp
    gallery = client.get("/v1/galleries/default").json()["created_at"]
    assert gallery.endswith(("Z", "+00:00")), gallery


def test_an_image_side_over_the_limit_is_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_side=100, max_aspect_ratio=50)
    with admin_client(settings) as c:
        r = c.post(f"{G}/identify", files={"image": ("w.png", image_bytes(1, size=(150, 20)), "image/png")})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "image_side_too_long")


# --- the CLI -----------------------------------------------------------------------------------------


def test_cli_refuses_a_missing_sqlite_file_and_an_unreachable_database(tmp_path: Path) -> None:
    elsewhere = os.environ | {"FACEDB_DATA_DIR": str(tmp_path / "nothing-here")}
    out = facedb("db", "current", env=elsewhere, check=False)
    assert out.returncode == 1 and "no database at" in out.stderr and "facedb db upgrade" in out.stderr
    assert not (tmp_path / "nothing-here" / "facedb.sqlite3").exists()  # nothing was created
    bad = os.environ | {"FACEDB_CROP_KEY": "short", "FACEDB_DATA_DIR": str(tmp_path)}
    out = facedb("db", "current", env=bad, check=False)
    assert out.returncode == 2 and out.stderr.strip() == "error: FACEDB_CROP_KEY must be base64", out.stderr
    down = os.environ | {"FACEDB_DATABASE_URL": "postgresql+psycopg://facedb:secret@127.0.0.1:9/none"}
    out = facedb("db", "current", env=down, check=False)
    assert out.returncode == 1 and "cannot be used" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "secret" not in out.stderr


@pytest.mark.slow
def test_enrol_a_folder_over_http(server_url: str, settings: Settings, tmp_path: Path) -> None:
    url = server_url
    people = tmp_path / "people"
    make_people(people, 3, 2)
    key_file = settings.resolved_admin_key_file
    # elsewhere: no database at hand, only the server's address and a key
    remote = {k: v for k, v in os.environ.items() if not k.startswith("FACEDB_")}
    args = ["enroll", str(people), "--no-detect", "--allow-conflict", "--allow-mismatch", "--url", url]
    out = facedb(*args, "--key-file", str(key_file), env=remote)
    assert "3 identities, 6 faces accepted, 1 rejected (unsupported_image: 1)" in out.stdout, out.stdout + out.stderr
    out = facedb(*args, "--key", "fdb_000000000000_" + "x" * 43, env=remote, check=False)
    assert out.returncode == 1 and "invalid_api_key" in out.stderr and "Traceback" not in out.stderr
    nowhere = [*args[:-1], "http://127.0.0.1:9", "--key-file", str(key_file)]
    out = facedb(*nowhere, env=remote, check=False)
    assert out.returncode == 1 and "server_unreachable" in out.stderr and "Traceback" not in out.stderr
    again = facedb(*args, env=remote | {"FACEDB_API_KEY": key_file.read_text().strip()})
    assert "0 faces accepted" in again.stdout and "duplicate_image: 6" in again.stdout
    with httpx.Client(base_url=url, headers=admin_headers(settings)) as c:
        assert c.get(f"{G}").json()["face_count"] == 6
        actions = [e["action"] for e in c.get("/v1/admin/audit", params={"action": "enroll_faces"}).json()["items"]]
        assert len(actions) >= 6
