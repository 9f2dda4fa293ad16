"""The Python client against the real app: every route has a method, sync and async agree, errors carry codes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from facedb_client import AsyncClient, Client, FacedbError
from facedb_client._requests import ROUTES
from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings
from tests.conftest import REPO, SYNTHETIC_PROBE, admin_client, api_operations, image_bytes

G = "default"


def test_every_route_has_a_client_method(settings: Settings) -> None:
    served = api_operations(create_app(settings))
    assert len(served) >= 25
    assert served == ROUTES


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with admin_client(settings) as c:
        yield c


def _client(api: TestClient) -> Client:
    # the client over the app in-process: its own httpx transport, the admin key as a user would pass it
    key = api.headers["Authorization"].removeprefix("Bearer ")
    return Client("http://testserver", key=key, transport=api._transport)


def test_sync_client_end_to_end(api: TestClient, tmp_path: Path) -> None:
    c = _client(api)
    assert c.health()["status"] == "ok"
    assert c.ready()["status"] == "ready"
    person = c.create_identity(G, "ada", display_name="Ada", metadata={"team": "R&D"})
    photo = tmp_path / "ada.png"
    photo.write_bytes(image_bytes(5))
    with (tmp_path / "ada.png").open("rb") as handle:
        enrolled = c.enroll(
            G, person["id"], [photo, image_bytes(6), handle], detect=False, allow_conflict=True, allow_mismatch=True
        )
    assert [a["filename"] for a in enrolled["accepted"]] == ["ada.png", "image-1"]
    assert [r["code"] for r in enrolled["rejected"]] == ["duplicate_image"]
    found = c.identify(G, image_bytes(5), detect=False)
    assert found["candidates"][0]["identity"]["external_id"] == "ada"
    assert c.verify(G, person["id"], image_bytes(6), detect=False)["score"] > 0.99
    assert c.verify_pair(image_bytes(5), image_bytes(5), detect=False)["match"] is True
    assert c.update_identity(G, person["id"], display_name="Ada L.")["display_name"] == "Ada L."
    assert c.list_identities(G)["items"][0]["id"] == person["id"]
    assert len(c.list_faces(G, person["id"])["items"]) == 2
    key = c.create_key("door", ["identify"], galleries=[G])
    assert key["secret"].startswith("fdb_")
    assert [k["name"] for k in c.list_keys()["items"]] == ["admin", "door"]
    actions = [e["action"] for e in c.audit(limit=3)["items"]]
    assert actions == ["create_key", "update_identity", "verify_pair"]

    with pytest.raises(FacedbError) as missing:
        c.get_identity(G, 10**9)
    assert (missing.value.status, missing.value.code) == (404, "identity_not_found")
    door = Client("http://testserver", key=key["secret"], transport=api._transport)
    with pytest.raises(FacedbError) as forbidden:
        door.list_identities(G)
    assert forbidden.value.code == "insufficient_scope"
    c.revoke_key(key["id"])
    with pytest.raises(FacedbError) as revoked:
        door.identify(G, image_bytes(5), detect=False)
    assert (revoked.value.status, revoked.value.code) == (401, "invalid_api_key")
    c.delete_identity(G, person["id"])
    assert c.get_gallery(G)["identity_count"] == 0


def test_async_client_agrees(settings: Settings) -> None:
    app = create_app(settings)

    async def run() -> tuple[str, float]:
        transport = httpx.ASGITransport(app=app)
        key = settings.resolved_admin_key_file.read_text().strip()
        async with AsyncClient("http://testserver", key=key, transport=transport) as c:
            person = await c.create_identity(G, "grace")
            await c.enroll(G, person["id"], [image_bytes(9)], detect=False, allow_conflict=True, allow_mismatch=True)
            found = await c.identify(G, image_bytes(9), detect=False)
            return found["candidates"][0]["identity"]["external_id"], found["candidates"][0]["score"]

    with TestClient(app):  # the lifespan runs (and writes the key) while the async client talks to the app
        name, score = asyncio.run(run())
    assert name == "grace" and score > 0.999


def test_client_installs_without_torch(tmp_path: Path) -> None:
    """`pip install client/` into a bare virtualenv: httpx comes along, nothing of the service does."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-build-isolation"]
    env = os.environ | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    setuptools = subprocess.run([*pip, "setuptools>=69", "wheel"], check=False, env=env, capture_output=True, text=True)
    assert setuptools.returncode == 0, setuptools.stderr
    done = subprocess.run([*pip, str(REPO / "client")], check=False, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    probe = "import facedb_client, importlib.util as u; print(u.find_spec('torch'), u.find_spec('service'))"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], check=False, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.stdout.split() == ["None", "None"], out.stderr


def test_probe_form_values_round_trip(api: TestClient) -> None:
    """Booleans and numbers reach the server as the API's form values (detect=false really skips detection)."""
    c = _client(api)
    assert SYNTHETIC_PROBE == {"detect": "false"}
    answer = c.identify(G, image_bytes(3), detect=False, top_k=1, threshold=0.5)
    assert answer["threshold"] == 0.5 and answer["threshold_source"] == "request"
