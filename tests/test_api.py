"""The whole HTTP flow on SQLite and PostgreSQL: galleries, identities, faces, identify, verify, delete."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from embedding.embedder import default_model_path, read_card
from service.settings import Settings
from tests.conftest import SYNTHETIC_ENROL, SYNTHETIC_PROBE, admin_client, image_bytes

G = "/v1/galleries/default"


def new_identity(client: TestClient, external_id: str, **extra: Any) -> dict[str, Any]:
    r = client.post(f"{G}/identities", json={"external_id": external_id, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def enroll(client: TestClient, identity_id: int, *images: bytes, gallery: str = G) -> dict[str, Any]:
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    r = client.post(f"{gallery}/identities/{identity_id}/faces", files=files, data=SYNTHETIC_ENROL)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def identify(client: TestClient, data: bytes, gallery: str = G, **form: Any) -> dict[str, Any]:
    form = {**SYNTHETIC_PROBE, **form}
    r = client.post(f"{gallery}/identify", files={"image": ("probe.png", data, "image/png")}, data=form)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    r = client.get("/readyz")
    assert r.status_code == 200
    checks = r.json()["checks"]
    assert checks == {
        "model": True,
        "database": True,
        "index_lag": 0,
        "index_faces": 0,
        "index_kinds": {"1": "flat"},  # the default gallery, exact while small
        "model_version": checks["model_version"],
    }
    card = read_card(default_model_path())
    assert checks["model_version"] == f"{card.name}@{card.version}"


def test_openapi_lists_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in [
        "/v1/galleries",
        "/v1/galleries/{gallery}",
        "/v1/galleries/{gallery}/identities",
        "/v1/galleries/{gallery}/identities/{identity_id}",
        "/v1/galleries/{gallery}/identities/{identity_id}/faces",
        "/v1/galleries/{gallery}/identities/{identity_id}/faces/{face_id}",
        "/v1/galleries/{gallery}/identify",
        "/v1/galleries/{gallery}/verify",
        "/v1/verify",
    ]:
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_galleries(client: TestClient) -> None:
    names = [g["name"] for g in client.get("/v1/galleries").json()["items"]]
    assert names == ["default"]
    r = client.post("/v1/galleries", json={"name": "staff"})
    assert r.status_code == 201
    assert r.json()["identity_count"] == 0
    assert client.post("/v1/galleries", json={"name": "staff"}).json()["error"]["code"] == "gallery_exists"
    bad = client.post("/v1/galleries", json={"name": "Bad Name!"})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"
    assert client.get("/v1/galleries/staff").json()["name"] == "staff"
    assert client.delete("/v1/galleries/staff").status_code == 204
    assert client.get("/v1/galleries/staff").json()["error"]["code"] == "gallery_not_found"
    r = client.delete("/v1/galleries/default")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "gallery_protected")


def test_identity_crud_and_pagination(client: TestClient) -> None:
    created = [new_identity(client, f"p{i}", display_name=f"Person {i}", metadata={"n": i}) for i in range(7)]
    assert created[3]["metadata"] == {"n": 3}
    assert created[3]["face_count"] == 0

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor is not None else {})
        page = client.get(f"{G}/identities", params=params).json()
        seen += [i["external_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{i}" for i in range(7)]

    iid = created[0]["id"]
    r = client.patch(f"{G}/identities/{iid}", json={"display_name": "Renamed", "metadata": {"team": "a"}})
    assert r.status_code == 200
    assert (r.json()["display_name"], r.json()["metadata"], r.json()["external_id"]) == (
        "Renamed",
        {"team": "a"},
        "p0",
    )
    assert client.get(f"{G}/identities/{iid}").json()["display_name"] == "Renamed"

    dup = client.patch(f"{G}/identities/{iid}", json={"external_id": "p1"})
    assert (dup.status_code, dup.json()["error"]["code"]) == (409, "duplicate_external_id")
    assert client.get(f"{G}/identities/{iid}").json()["external_id"] == "p0"

    assert client.delete(f"{G}/identities/{iid}").status_code == 204
    assert client.get(f"{G}/identities/{iid}").json()["error"]["code"] == "identity_not_found"


def test_same_external_id_in_two_galleries(client: TestClient) -> None:
    client.post("/v1/galleries", json={"name": "other"})
    new_identity(client, "alice")
    r = client.post("/v1/galleries/other/identities", json={"external_id": "alice"})
    assert r.status_code == 201
    # an identity is only reachable through its own gallery
    assert client.get(f"/v1/galleries/default/identities/{r.json()['id']}").status_code == 404


def test_enroll_identify_verify_delete(client: TestClient) -> None:
    people = {name: new_identity(client, name) for name in ["ann", "bob", "cid"]}
    images = {name: [image_bytes(100 * k + j) for j in range(3)] for k, name in enumerate(people)}
    face_ids: dict[str, list[int]] = {}
    for name, ident in people.items():
        out = enroll(client, ident["id"], *images[name])
        assert len(out["accepted"]) == 3
        assert out["rejected"] == []
        face_ids[name] = [a["face_id"] for a in out["accepted"]]
        assert len(set(face_ids[name])) == 3

    assert client.get(f"{G}/identities/{people['bob']['id']}").json()["face_count"] == 3
    assert client.get("/v1/galleries/default").json()["face_count"] == 9

    # an enrolled image finds its own person first, scored against the mean of the person's three (different)
    # faces, naming the face that is this very image, and the decision says so
    res = identify(client, images["bob"][1], top_k=3)
    assert res["candidates"][0]["identity"]["external_id"] == "bob"
    assert res["candidates"][0]["face_id"] == face_ids["bob"][1]
    assert res["threshold"] <= res["candidates"][0]["score"] < 0.999
    assert res["match"]["identity"]["id"] == people["bob"]["id"]
    assert res["threshold_source"] == "calibrated" and res["gallery_size"] == 3  # identities (mean of their faces)
    open_set = client.app.state.runtime.service.serving.open_set  # type: ignore[attr-defined]
    assert res["condition"] == "grey"  # AT&T's photos: the card's grey table sets the bar
    grey, colour = (cal.threshold(3, res["target_fpir"]) for cal in (open_set.under("grey"), open_set))
    assert res["threshold"] == grey > colour
    ids = [c["identity"]["id"] for c in res["candidates"]]
    assert len(ids) == len(set(ids)) == 3, "top-k returns distinct identities"
    scores = [c["score"] for c in res["candidates"]]
    assert scores == sorted(scores, reverse=True)

    # threshold above every score: candidates stay, no match
    assert identify(client, images["bob"][1], threshold=1.0)["match"] is None or scores[0] >= 1.0

    ver = client.post(
        f"{G}/verify",
        files={"image": ("p.png", images["ann"][0], "image/png")},
        data={"identity_id": people["ann"]["id"], "detect": "false"},
    ).json()
    assert ver["match"] is True
    assert ver["score"] > 0.999
    pair = client.post(
        "/v1/verify",
        files={
            "image_a": ("a.png", images["cid"][2], "image/png"),
            "image_b": ("b.png", images["cid"][2], "image/png"),
        },
        data={"detect": "false"},
    ).json()
    assert pair["score"] > 0.999
    assert pair["match"] is True

    # deleting a face, then the identity, takes effect at once
    bob_faces = [f["id"] for f in client.get(f"{G}/identities/{people['bob']['id']}/faces").json()["items"]]
    assert client.delete(f"{G}/identities/{people['bob']['id']}/faces/{bob_faces[1]}").status_code == 204
    res = identify(client, images["bob"][1], top_k=3)
    assert all(c["face_id"] != bob_faces[1] for c in res["candidates"])
    assert client.delete(f"{G}/identities/{people['bob']['id']}").status_code == 204
    res = identify(client, images["bob"][1], top_k=5)
    assert "bob" not in [c["identity"]["external_id"] for c in res["candidates"]]
    assert len(res["candidates"]) == 2


def test_identify_empty_gallery(client: TestClient) -> None:
    res = identify(client, image_bytes(1))
    assert res["candidates"] == []
    assert res["match"] is None


def test_gallery_isolation_and_deletion(client: TestClient) -> None:
    client.post("/v1/galleries", json={"name": "lab"})
    lab = client.post("/v1/galleries/lab/identities", json={"external_id": "x"}).json()
    enroll(client, lab["id"], image_bytes(7), gallery="/v1/galleries/lab")
    home = new_identity(client, "y")
    enroll(client, home["id"], image_bytes(8))
    assert identify(client, image_bytes(7))["candidates"][0]["identity"]["external_id"] == "y"
    assert identify(client, image_bytes(7), gallery="/v1/galleries/lab")["candidates"][0]["score"] > 0.999
    assert client.delete("/v1/galleries/lab").status_code == 204
    r = client.post(
        "/v1/galleries/lab/identify", files={"image": ("p.png", image_bytes(7), "image/png")}, data={"detect": "false"}
    )
    assert r.json()["error"]["code"] == "gallery_not_found"


def test_restart_keeps_everything(settings: Settings) -> None:
    """Writes survive a restart; deletions stay deleted; the index is rebuilt or reloaded to match."""
    with admin_client(settings) as c:
        a, b = new_identity(c, "a"), new_identity(c, "b")
        second = enroll(c, a["id"], image_bytes(1), image_bytes(2))["accepted"][1]["face_id"]
        enroll(c, b["id"], image_bytes(3))
        before = identify(c, image_bytes(2))["candidates"][0]
        assert c.delete(f"{G}/identities/{b['id']}").status_code == 204
    with admin_client(settings) as c:
        res = identify(c, image_bytes(3), top_k=5)
        assert [x["identity"]["external_id"] for x in res["candidates"]] == ["a"]
        after = identify(c, image_bytes(2))["candidates"][0]
        assert after["face_id"] == before["face_id"] == second
        assert abs(after["score"] - before["score"]) < 1e-5  # the same mean of a's two faces
        assert c.app.state.runtime.service.indexes.stats().faces == 2  # type: ignore[attr-defined]
