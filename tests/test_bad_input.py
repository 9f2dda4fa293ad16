"""Every bad input gets a 4xx with its own stable code, and leaves nothing half-written."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.settings import Settings
from tests.conftest import SYNTHETIC_ENROL, SYNTHETIC_PROBE, admin_client, image_bytes

G = "/v1/galleries/default"


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares width x height (a decompression bomb)."""
    raw = zlib.compress(b"\x00" * 64)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def noise_jpeg(w: int, h: int) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def small_limits_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    settings = make_settings(
        max_pixels=300 * 300,
        max_upload_bytes=200_000,
        max_request_bytes=1_000_000,
        max_images_per_request=4,
        max_top_k=10,
    )
    with admin_client(settings) as c:
        yield c


def counts(client: TestClient) -> tuple[int, int]:
    g = client.get("/v1/galleries/default").json()
    return g["identity_count"], g["face_count"]


def strip_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG")
    return buf.getvalue()


BAD_IMAGES: dict[str, tuple[bytes, str]] = {
    "a 1x50000 strip": (strip_png(1, 50_000), "image_bad_aspect"),
    "a 20000x1 strip": (strip_png(20_000, 1), "image_bad_aspect"),
    "empty file": (b"", "empty_image"),
    "text renamed .jpg": (b"name,age\nalice,31\n" * 10, "unsupported_image"),
    "truncated JPEG": (noise_jpeg(120, 120)[:700], "corrupt_image"),
    "decompression bomb": (png_declaring(30_000, 30_000), "decompression_bomb"),
    "over the pixel limit": (noise_jpeg(320, 320), "image_too_many_pixels"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_on_identify(small_limits_client: TestClient, case: str) -> None:
    data, code = BAD_IMAGES[case]
    r = small_limits_client.post(f"{G}/identify", files={"image": ("x.jpg", data, "image/jpeg")}, data=SYNTHETIC_PROBE)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


def test_bad_images_on_enroll_partial_success(small_limits_client: TestClient) -> None:
    c = small_limits_client
    iid = c.post(f"{G}/identities", json={"external_id": "p"}).json()["id"]
    good = image_bytes(5)
    files = [("image", ("good.png", good, "image/png"))]
    files += [("image", (f"{name}.jpg", data, "image/jpeg")) for name, (data, _) in list(BAD_IMAGES.items())[:3]]
    r = c.post(f"{G}/identities/{iid}/faces", files=files, data=SYNTHETIC_ENROL)
    assert r.status_code == 201, r.text
    body = r.json()
    assert [a["filename"] for a in body["accepted"]] == ["good.png"]
    assert sorted(x["code"] for x in body["rejected"]) == sorted(code for _, code in list(BAD_IMAGES.values())[:3])
    assert counts(c) == (1, 1)

    # the same image again is a duplicate, and an all-bad request is 422 with the reasons, writing nothing
    r = c.post(f"{G}/identities/{iid}/faces", files=[("image", ("again.png", good, "image/png"))], data=SYNTHETIC_ENROL)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "no_face_enrolled")
    assert r.json()["error"]["details"]["rejected"][0]["code"] == "duplicate_image"
    for name, (data, code) in BAD_IMAGES.items():
        r = c.post(
            f"{G}/identities/{iid}/faces", files=[("image", ("x.jpg", data, "image/jpeg"))], data=SYNTHETIC_ENROL
        )
        assert r.status_code == 422, name
        assert r.json()["error"]["details"]["rejected"][0]["code"] == code, name
    assert counts(c) == (1, 1)


def test_upload_over_byte_limit(small_limits_client: TestClient) -> None:
    big = noise_jpeg(290, 290) + b"\x00" * 200_001
    r = small_limits_client.post(f"{G}/identify", files={"image": ("big.jpg", big, "image/jpeg")})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "image_too_large")


def test_request_over_body_limit(small_limits_client: TestClient) -> None:
    files = [("image", (f"{i}.bin", b"\x00" * 300_000, "image/jpeg")) for i in range(4)]
    r = small_limits_client.post(f"{G}/identify", files=files)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")


def test_too_many_images(small_limits_client: TestClient) -> None:
    c = small_limits_client
    iid = c.post(f"{G}/identities", json={"external_id": "p"}).json()["id"]
    files = [("image", (f"{i}.png", image_bytes(i), "image/png")) for i in range(5)]
    r = c.post(f"{G}/identities/{iid}/faces", files=files)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_many_images")
    assert counts(c) == (1, 0)


def test_unknown_gallery_identity_face(small_limits_client: TestClient) -> None:
    c = small_limits_client
    img = {"image": ("p.png", image_bytes(1), "image/png")}
    assert c.post("/v1/galleries/nope/identify", files=img).json()["error"]["code"] == "gallery_not_found"
    assert c.get("/v1/galleries/nope/identities").json()["error"]["code"] == "gallery_not_found"
    r = c.post(f"{G}/identities/999/faces", files=[("image", ("p.png", image_bytes(1), "image/png"))])
    assert (r.status_code, r.json()["error"]["code"]) == (404, "identity_not_found")
    r = c.post(f"{G}/verify", files=img, data={"identity_id": 999})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "identity_not_found")
    iid = c.post(f"{G}/identities", json={"external_id": "p"}).json()["id"]
    assert c.delete(f"{G}/identities/{iid}/faces/12345").json()["error"]["code"] == "face_not_found"
    r = c.post(f"{G}/verify", files=img, data={"identity_id": iid})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "identity_has_no_faces")
    assert c.get("/v1/nothing-here").json()["error"]["code"] == "not_found"


def test_duplicate_external_id(small_limits_client: TestClient) -> None:
    c = small_limits_client
    assert c.post(f"{G}/identities", json={"external_id": "dup"}).status_code == 201
    r = c.post(f"{G}/identities", json={"external_id": "dup", "display_name": "Other"})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "duplicate_external_id")
    assert counts(c) == (1, 0)


@pytest.mark.parametrize("top_k", [0, -1, 11, 10_000])
def test_top_k_out_of_range(small_limits_client: TestClient, top_k: int) -> None:
    r = small_limits_client.post(
        f"{G}/identify",
        files={"image": ("p.png", image_bytes(1), "image/png")},
        data={"top_k": top_k, **SYNTHETIC_PROBE},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_top_k")


def test_bad_form_values(small_limits_client: TestClient) -> None:
    img = {"image": ("p.png", image_bytes(1), "image/png")}
    r = small_limits_client.post(f"{G}/identify", files=img, data={"top_k": "three"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")
    assert "top_k" in r.json()["error"]["message"]
    r = small_limits_client.post(f"{G}/identify", files=img, data={"threshold": 2})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_threshold")
    r = small_limits_client.post(f"{G}/identify")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [b'{"external_id": "x"', b"not json at all", b'{"external_id": "x",}'],
)
def test_malformed_json(small_limits_client: TestClient, body: bytes) -> None:
    r = small_limits_client.post(f"{G}/identities", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_json")
    assert counts(small_limits_client) == (0, 0)


@pytest.mark.parametrize(
    "body",
    [
        {"external_id": ""},
        {"display_name": "no id"},
        {"external_id": "x", "metadata": [1, 2]},
        {"external_id": "x", "bogus": 1},
    ],
)
def test_invalid_identity_bodies(small_limits_client: TestClient, body: dict[str, object]) -> None:
    r = small_limits_client.post(f"{G}/identities", json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")
    assert counts(small_limits_client) == (0, 0)


def test_bad_pagination(small_limits_client: TestClient) -> None:
    assert small_limits_client.get(f"{G}/identities", params={"limit": 0}).json()["error"]["code"] == "invalid_limit"
    r = small_limits_client.get(f"{G}/identities", params={"cursor": "abc"})
    assert r.json()["error"]["code"] == "validation_error"


HUGE = str(2**63)  # one past the largest 64-bit id


@pytest.mark.parametrize(
    ("method", "path", "form"),
    [
        ("get", f"{G}/identities/{HUGE}", None),
        ("get", f"{G}/identities/{2**70}/faces", None),
        ("delete", f"{G}/identities/1/faces/{HUGE}", None),
        ("get", f"{G}/identities?cursor={HUGE}", None),
        ("get", f"/v1/admin/reindex/{2**70}", None),
        ("post", f"{G}/verify", {"identity_id": HUGE, "detect": "false"}),
    ],
)
def test_ids_beyond_64_bits_are_422(
    small_limits_client: TestClient, method: str, path: str, form: dict[str, str] | None
) -> None:
    files = {"image": ("p.png", image_bytes(1), "image/png")} if form is not None else None
    r = getattr(small_limits_client, method)(path, **({"data": form, "files": files} if form is not None else {}))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    "body",
    [
        {"external_id": "a\x00b"},
        {"external_id": "ok", "display_name": "nul\x00"},
        {"external_id": "ok", "metadata": {"k": "v\x00"}},
        {"external_id": "ok", "metadata": {"k\x00": 1}},
        {"external_id": "ok", "metadata": {"deep": [{"x": "\x00"}]}},
        {"external_id": "ok", "metadata": {"blob": "x" * 20_000}},
    ],
)
def test_nul_and_oversized_text_are_422_on_both_databases(
    small_limits_client: TestClient, body: dict[str, object]
) -> None:
    before = counts(small_limits_client)
    r = small_limits_client.post(f"{G}/identities", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert counts(small_limits_client) == before


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_metadata_are_422(small_limits_client: TestClient, token: str) -> None:
    body = b'{"external_id": "n", "metadata": {"x": ' + token.encode() + b"}}"
    r = small_limits_client.post(f"{G}/identities", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


def test_gallery_path_with_nul_is_not_found(small_limits_client: TestClient) -> None:
    r = small_limits_client.get("/v1/galleries/a%00b/identities")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "gallery_not_found"


def test_deeply_nested_json_is_malformed_json(small_limits_client: TestClient) -> None:
    body = b'{"external_id": "d", "metadata": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    r = small_limits_client.post(f"{G}/identities", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] in ("malformed_json", "validation_error")


def test_chunked_body_over_the_limit_is_413(small_limits_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        for _ in range(30):
            yield b"\x00" * 100_000  # 3 MB against a 1 MB limit, with no Content-Length
        yield b"\r\n--b--\r\n"

    r = small_limits_client.post(
        f"{G}/identify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        (f"{G}/identify", [("image", "a.png"), ("image", "b.png")]),
        ("/v1/verify", [("image_a", "a.png"), ("image_a", "c.png"), ("image_b", "b.png")]),
    ],
)
def test_repeated_single_file_fields_are_422(
    small_limits_client: TestClient, path: str, fields: list[tuple[str, str]]
) -> None:
    files = [(name, (fn, image_bytes(i), "image/png")) for i, (name, fn) in enumerate(fields)]
    r = small_limits_client.post(path, files=files, data=SYNTHETIC_PROBE)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "repeated_field"


@pytest.mark.parametrize(
    "model_path",
    ["/etc/passwd", "../../../../etc/passwd", "missing.pt", "nul\x00.pt", "dlib_resnet.md", "x" * 300],
)
def test_admin_model_path_only_names_model_files_in_the_models_dir(
    small_limits_client: TestClient, model_path: str
) -> None:
    r = small_limits_client.post("/v1/admin/reindex", json={"model_path": model_path})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("model_file_invalid", "validation_error")
    if r.json()["error"]["code"] == "model_file_invalid":
        # the same answer whether the file exists elsewhere, is missing, or is not a model
        assert r.json()["error"]["message"].endswith("no such model file")


def test_admin_model_path_that_is_not_a_model_is_422(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "fake.onnx").write_bytes(b"not an onnx graph")
    with admin_client(make_settings(models_dir=models)) as c:
        r = c.post("/v1/admin/reindex", json={"model_path": "fake.onnx"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "model_file_invalid"
