"""A real server under a 3 GB address-space cap answers every hostile input of the security issue with its 4xx,
and keeps answering valid requests afterwards."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.conftest import DATA_ROOT, admin_headers, require_data, start_server
from tests.test_bad_input import png_declaring, strip_png

CAP_BYTES = 3 * 1024**3
G = "/v1/galleries/default"


def _cap_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


@pytest.fixture
def capped_server(settings: Settings, tmp_path: Path) -> Iterator[httpx.Client]:
    """A client with the admin key of a real server whose address space is capped at 3 GB."""
    env = os.environ | {
        "FACEDB_DATA_DIR": str(settings.data_dir),
        "FACEDB_DATABASE_URL": settings.resolved_database_url,
        "FACEDB_TORCH_THREADS": "1",
    }
    log = tmp_path / "server.log"
    proc, url = start_server(env, log, preexec_fn=_cap_memory)
    try:
        # generous per-request timeout: a guard against hangs, not a speed test
        with httpx.Client(base_url=url + G, timeout=60, headers=admin_headers(settings)) as client:
            yield client
        assert proc.poll() is None, f"the server died:\n{log.read_text()[-3000:]}"
    finally:
        proc.kill()
        proc.wait()


def test_hostile_inputs_under_a_memory_cap(capped_server: httpx.Client) -> None:
    photo = require_data(DATA_ROOT / "lfw" / "images" / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()
    c = capped_server
    person = c.post("/identities", json={"external_id": "p"}).json()["id"]
    images = {
        "1x100000 grey strip": (strip_png(1, 100_000), "image_bad_aspect"),
        "1x20000 grey strip": (strip_png(1, 20_000), "image_bad_aspect"),
        "6000x6000 blank": (strip_png(6000, 6000), "no_face"),
        "decompression bomb": (png_declaring(70_000, 70_000), "decompression_bomb"),
    }
    for name, (data, code) in images.items():
        r = c.post(f"/identities/{person}/faces", files={"image": ("x.png", data)})
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"]["details"]["rejected"][0]["code"] == code, name
        r = c.post("/identify", files={"image": ("x.png", data)})
        assert r.status_code in (200, 422), (name, r.text)  # a blank photo is an answer with no face
    big = {"external_id": "m", "metadata": {"blob": "x" * 10_000_000}}
    assert c.post("/identities", json=big).json()["error"]["code"] == "validation_error"
    deep = b'{"external_id": "d", "metadata": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    r = c.post("/identities", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    assert c.get(f"/identities/{2**70}").json()["error"]["code"] == "validation_error"

    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        for _ in range(70):
            yield b"\x00" * 1_000_000
        yield b"\r\n--b--\r\n"

    r = c.post("/identify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # and valid work still gets done
    assert c.post(f"/identities/{person}/faces", files={"image": ("p.jpg", photo)}).status_code == 201
    r = c.post("/identify", files={"image": ("p.jpg", photo)})
    assert r.status_code == 200 and r.json()["match"]["identity"]["id"] == person
