"""Faces from real photos through the API: detection, alignment, enrolment gates, identity conflicts,
several faces per photo. Needs ../shared/data (skips otherwise)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

from tests.conftest import DATA_ROOT, require_data

G = "/v1/galleries/default"


def lfw(name: str, i: int = 1) -> Image.Image:
    path = require_data(DATA_ROOT / "lfw" / "images") / name / f"{name}_{i:04d}.jpg"
    return Image.open(path).convert("RGB")


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def side_by_side(left: Image.Image, right: Image.Image, right_scale: float = 0.8) -> Image.Image:
    right = right.resize((round(right.width * right_scale), round(right.height * right_scale)))
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), (128, 128, 128))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def enrol(client: TestClient, identity_id: int, *files: tuple[str, bytes], **form: Any) -> Any:
    return client.post(
        f"{G}/identities/{identity_id}/faces",
        files=[("image", (name, data, "image/jpeg")) for name, data in files],
        data=form,
    )


def new_identity(client: TestClient, external_id: str) -> int:
    return int(client.post(f"{G}/identities", json={"external_id": external_id}).json()["id"])


def test_enrolment_gates_each_say_why(client: TestClient) -> None:
    face = lfw("Colin_Powell")
    pid = new_identity(client, "colin")
    tiny = face.resize((40, 40))
    blank = Image.new("RGB", (250, 250), (127, 127, 127))
    blurred = face.filter(ImageFilter.GaussianBlur(6))
    dark = Image.fromarray((np.asarray(face) * 0.12).astype(np.uint8))
    two = side_by_side(lfw("Hugo_Chavez"), lfw("Jacques_Chirac"), right_scale=1.0)
    r = enrol(
        client,
        pid,
        ("good.jpg", jpeg(face)),
        ("blank.jpg", jpeg(blank)),
        ("blurred.jpg", jpeg(blurred)),
        ("dark.jpg", jpeg(dark)),
        ("tiny.jpg", jpeg(tiny)),
        ("two.jpg", jpeg(two)),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert [a["filename"] for a in body["accepted"]] == ["good.jpg"]
    box = body["accepted"][0]["face"]["box"]
    assert 40 < box[0] < 125 < box[2] < 210, box  # the face is in the middle of the deep-funneled image
    reasons = {x["filename"]: x["code"] for x in body["rejected"]}
    assert reasons["blank.jpg"] == "no_face"
    assert reasons["blurred.jpg"] in {"too_blurry", "no_face"}
    assert reasons["dark.jpg"] in {"too_dark", "no_face"}
    assert reasons["tiny.jpg"] in {"face_too_small", "no_face"}
    assert reasons["two.jpg"] == "multiple_faces"
    assert all(x["message"] for x in body["rejected"])
    # the photo with two people is accepted when the request says to take the largest face (someone else's: the
    # request also says to add it although it does not look like this identity)
    r = enrol(client, pid, ("two.jpg", jpeg(two)), multiple_faces="largest", allow_conflict="true")
    assert r.json()["error"]["details"]["rejected"][0]["code"] == "face_mismatch"
    r = enrol(
        client, pid, ("two.jpg", jpeg(two)), multiple_faces="largest", allow_conflict="true", allow_mismatch="true"
    )
    assert r.status_code == 201, r.text


def test_identity_conflict_and_duplicates(client: TestClient) -> None:
    a, b = new_identity(client, "a"), new_identity(client, "b")
    photo = lfw("Gerhard_Schroeder")
    assert enrol(client, a, ("1.jpg", jpeg(photo))).status_code == 201
    again = enrol(client, a, ("1.jpg", jpeg(photo)))
    assert again.json()["error"]["details"]["rejected"][0]["code"] == "duplicate_image"
    # the same face (re-encoded, other bytes) under another identity is a conflict naming the first
    r = enrol(client, b, ("copy.jpg", jpeg(photo, quality=80)))
    assert r.status_code == 422
    rejected = r.json()["error"]["details"]["rejected"][0]
    assert rejected["code"] == "identity_conflict"
    assert f"identity {a} (a)" in rejected["message"]
    assert enrol(client, b, ("copy.jpg", jpeg(photo, quality=80)), allow_conflict="true").status_code == 201


def test_identify_every_face_largest_first(client: TestClient) -> None:
    chavez, chirac = new_identity(client, "chavez"), new_identity(client, "chirac")
    assert enrol(client, chavez, ("b.jpg", jpeg(lfw("Hugo_Chavez", 1)))).status_code == 201
    assert enrol(client, chirac, ("t.jpg", jpeg(lfw("Jacques_Chirac", 1)))).status_code == 201
    group = jpeg(side_by_side(lfw("Jacques_Chirac", 1), lfw("Hugo_Chavez", 1), right_scale=0.7))
    res = client.post(f"{G}/identify", files={"image": ("g.jpg", group, "image/jpeg")}).json()
    assert len(res["faces"]) == 2
    sizes = [f["face"]["box"][2] - f["face"]["box"][0] for f in res["faces"]]
    assert sizes == sorted(sizes, reverse=True)
    assert [f["candidates"][0]["identity"]["external_id"] for f in res["faces"]] == ["chirac", "chavez"]
    assert res["candidates"] == res["faces"][0]["candidates"]
    assert all(f["quality"]["measures"]["inter_eye_px"] > 10 for f in res["faces"])
    one = client.post(f"{G}/identify", files={"image": ("g.jpg", group, "image/jpeg")}, data={"max_faces": 1}).json()
    assert len(one["faces"]) == 1
    bad = client.post(f"{G}/identify", files={"image": ("g.jpg", group, "image/jpeg")}, data={"max_faces": 0})
    assert bad.json()["error"]["code"] == "invalid_max_faces"

    # verify compares the largest face and says which one it used
    pair = client.post(
        "/v1/verify",
        files={
            "image_a": ("g.jpg", group, "image/jpeg"),
            "image_b": ("t.jpg", jpeg(lfw("Jacques_Chirac", 1)), "image/jpeg"),
        },
    ).json()
    assert pair["match"] is True
    assert pair["faces"][0]["box"][0] < 250  # Chirac, on the left, is the larger face

    nobody = jpeg(Image.new("RGB", (300, 200), (90, 90, 90)))
    res = client.post(f"{G}/identify", files={"image": ("n.jpg", nobody, "image/jpeg")}).json()
    assert (res["faces"], res["match"]) == ([], None)
    r = client.post(f"{G}/verify", files={"image": ("n.jpg", nobody, "image/jpeg")}, data={"identity_id": chavez})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "no_face")


def test_no_image_makes_it_answer_500(client: TestClient) -> None:
    """Odd but valid images through detection: tiny, huge and flat, grey, extreme aspect ratios."""
    rng = np.random.default_rng(0)
    odd = [
        Image.new("RGB", (1, 1)),
        Image.new("L", (3000, 2000), 200),
        Image.fromarray(rng.integers(0, 256, (1, 900, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (700, 2, 3), dtype=np.uint8)),
        lfw("Colin_Powell").convert("L"),
    ]
    pid = new_identity(client, "odd")
    for img in odd:
        data = jpeg(img.convert("RGB"))
        for r in (
            client.post(f"{G}/identify", files={"image": ("o.jpg", data, "image/jpeg")}),
            enrol(client, pid, ("o.jpg", data)),
        ):
            assert r.status_code < 500, r.text
