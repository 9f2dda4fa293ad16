"""Open-set decisions through the HTTP API with real faces: 1:N thresholds that follow the gallery's size, the
conflict check (near-certain duplicates only, atomic) and the mismatch check, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index.gallery import Hit
from service.core import _lookalikes
from service.settings import Settings
from tests.conftest import ATT, DATA_ROOT, admin_client, att_image, require_data

G = "/v1/galleries/default"


def _photo(s: int, i: int) -> tuple[str, tuple[str, bytes, str]]:
    return ("image", (f"s{s}_{i}.pgm", att_image(s, i).read_bytes(), "image/x-portable-graymap"))


def _person(client: TestClient, external_id: str) -> int:
    r = client.post(f"{G}/identities", json={"external_id": external_id})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _enrol(client: TestClient, identity: int, *photos: tuple[str, Any], **form: str) -> Any:
    return client.post(f"{G}/identities/{identity}/faces", files=list(photos), data=form)


def _identify(client: TestClient, s: int, i: int, **form: str) -> dict[str, Any]:
    r = client.post(f"{G}/identify", files=[_photo(s, i)], data=form)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_identify_threshold_follows_the_gallery_size(client: TestClient) -> None:
    require_data(ATT)
    ids = {s: _person(client, f"s{s}") for s in range(1, 7)}
    assert _enrol(client, ids[1], _photo(1, 1)).status_code == 201
    one = _identify(client, 1, 2)
    assert one["threshold_source"] == "calibrated"
    assert one["gallery_size"] == 1
    assert one["target_fpir"] == client.app.state.settings.target_fpir  # type: ignore[attr-defined]
    assert one["match"] is not None and one["match"]["identity"]["id"] == ids[1]
    for s in range(2, 7):
        assert _enrol(client, ids[s], _photo(s, 1), _photo(s, 2)).status_code == 201
    many = _identify(client, 1, 2)
    assert many["gallery_size"] == 6  # identities: each scores by the mean of its faces
    assert many["threshold"] > one["threshold"]
    assert many["match"] is not None and many["match"]["identity"]["id"] == ids[1]
    fixed = _identify(client, 1, 2, threshold="0.99")
    assert fixed["threshold_source"] == "request" and fixed["threshold"] == 0.99 and fixed["match"] is None
    # verify stays 1:1 at the card's default FAR, whatever the gallery's size (AT&T's photos are grey: the grey
    # table's threshold at that FAR)
    r = client.post(f"{G}/verify", files=[_photo(1, 3)], data={"identity_id": str(ids[1])})
    assert r.status_code == 200, r.text
    serving = client.app.state.runtime.service.serving  # type: ignore[attr-defined]
    far = serving.embedder.card.default_threshold_far
    grey_default = serving.model.default_threshold + (
        serving.open_set.under("grey").threshold_at_far(far) - serving.open_set.threshold_at_far(far)
    )
    assert r.json()["condition"] == "grey" and r.json()["threshold"] == pytest.approx(grey_default)
    assert r.json()["match"] is True


def test_conflict_names_the_other_identity_and_mismatch_guards_an_identity(client: TestClient) -> None:
    require_data(ATT)
    a, b = _person(client, "a"), _person(client, "b")
    assert _enrol(client, a, _photo(1, 1)).status_code == 201
    # the same person again under another id: refused, naming the first identity and the score
    r = _enrol(client, b, _photo(1, 2))
    assert r.status_code == 422, r.text
    [refusal] = r.json()["error"]["details"]["rejected"]
    assert refusal["code"] == "identity_conflict"
    assert refusal["other_identity"] == a and refusal["score"] >= refusal["threshold"]
    assert str(a) in refusal["message"]
    # someone else's face added to a: refused unless overridden; a different person is no conflict for b
    r = _enrol(client, a, _photo(2, 1))
    assert r.status_code == 422, r.text
    [refusal] = r.json()["error"]["details"]["rejected"]
    assert refusal["code"] == "face_mismatch" and refusal["score"] < refusal["threshold"]
    assert _enrol(client, b, _photo(2, 1)).status_code == 201
    assert _enrol(client, a, _photo(3, 1), allow_mismatch="true").status_code == 201
    # more photos of the right person are accepted
    r = _enrol(client, a, _photo(1, 3), _photo(1, 4))
    assert r.status_code == 201 and len(r.json()["accepted"]) == 2


def test_a_face_identify_would_name_as_someone_else_is_enrolled_with_a_warning(settings: Settings) -> None:
    """possible_duplicate: a face below the conflict bar that identify would still match to another identity is
    enrolled, with a warning naming that identity, identify's score and threshold, and the new face to delete if
    it is a duplicate; a different person's face draws no warning."""
    require_data(ATT)
    with admin_client(settings.model_copy(update={"conflict_fpir": 1e-9})) as client:  # a bar far above identify's
        a = _person(client, "a")
        assert _enrol(client, a, _photo(1, 1)).status_code == 201
        answer = _identify(client, 1, 2)
        assert answer["match"] is not None and answer["match"]["identity"]["id"] == a
        r = _enrol(client, _person(client, "b"), _photo(1, 2))
        assert r.status_code == 201, r.text
        [warning] = r.json()["warnings"]
        assert warning["code"] == "possible_duplicate" and warning["other_identity"] == a
        assert warning["face_id"] == r.json()["accepted"][0]["face_id"] and str(a) in warning["message"]
        assert warning["score"] == pytest.approx(answer["match"]["score"], abs=1e-5)
        assert warning["threshold"] == pytest.approx(answer["threshold"], abs=1e-6)
        [event, *_] = client.get("/v1/admin/audit", params={"action": "enroll_faces"}).json()["items"]
        assert event["target"]["possible_duplicates"] == {str(warning["face_id"]): a}  # kept for review
        r = _enrol(client, _person(client, "c"), _photo(2, 1))
        assert r.status_code == 201 and r.json()["warnings"] == []
    with admin_client(settings) as client:  # at the default bar the same person is refused outright
        r = _enrol(client, _person(client, "d"), _photo(1, 3))
        assert r.status_code == 422 and r.json()["error"]["details"]["rejected"][0]["code"] == "identity_conflict"
    quiet = settings.model_copy(update={"conflict_fpir": 1e-9, "possible_duplicate_warnings": False})
    with admin_client(quiet) as client:
        r = _enrol(client, _person(client, "e"), _photo(1, 4))
        assert r.status_code == 201 and r.json()["warnings"] == []


@pytest.mark.parametrize("identity_score", ["mean", "best"])
def test_conflict_check_scores_people_as_identify_does(settings: Settings, identity_score: str) -> None:
    """identity_conflict scores the other identity as identify ranks it (FACEDB_IDENTITY_SCORE: the normalised mean
    of its faces, or its best face), against the 1:N bar for every face of the gallery."""
    require_data(ATT)
    with admin_client(settings.model_copy(update={"identity_score": identity_score})) as client:
        a = _person(client, "a")
        assert _enrol(client, a, _photo(1, 1), _photo(1, 2), _photo(1, 3)).status_code == 201
        for s in (2, 3):
            assert _enrol(client, _person(client, f"s{s}"), _photo(s, 1)).status_code == 201
        ranked = _identify(client, 1, 4)["candidates"][0]
        best_face = client.post(f"{G}/verify", files=[_photo(1, 4)], data={"identity_id": str(a)}).json()["score"]
        r = _enrol(client, _person(client, "b"), _photo(1, 4))
        assert r.status_code == 422, r.text
        [refusal] = r.json()["error"]["details"]["rejected"]
        assert refusal["code"] == "identity_conflict" and refusal["other_identity"] == a
        assert ranked["identity"]["id"] == a and refusal["score"] == pytest.approx(ranked["score"], abs=1e-5)
        # the mean of three different photos is not the best of them: the two settings really score differently
        assert (refusal["score"] == pytest.approx(best_face, abs=1e-5)) == (identity_score == "best")
        open_set = client.app.state.runtime.service.serving.open_set  # type: ignore[attr-defined]
        faces = 5  # three of a, one each of s2 and s3: the bar counts faces, not the three people
        grey = open_set.under("grey")  # AT&T's photos are grey: the card's grey table sets their bar
        assert refusal["threshold"] == pytest.approx(grey.threshold(faces, settings.conflict_fpir), abs=1e-4)


def test_concurrent_enrolments_of_one_face_cannot_both_pass(client: TestClient) -> None:
    require_data(ATT)
    for trial in range(3):
        people = [_person(client, f"t{trial}-{n}") for n in range(4)]
        photo = _photo(10 + trial, 1)
        barrier = threading.Barrier(len(people))
        codes: list[int] = []

        def enrol(
            identity: int,
            photo: tuple[str, Any] = photo,
            barrier: threading.Barrier = barrier,
            codes: list[int] = codes,
        ) -> None:
            barrier.wait()
            codes.append(_enrol(client, identity, photo).status_code)

        threads = [threading.Thread(target=enrol, args=(p,)) for p in people]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [201, 422, 422, 422], codes


def test_a_person_enrolled_with_several_photos_is_warned_of_only_where_a_photo_looks_like_someone_else() -> None:
    """`_lookalikes`: a photo whose best other identity reaches identify's threshold is a possible duplicate only if
    that identity also beats every other face of the photo's own identity, this request's kept photos included."""
    x = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # this request's three photos of identity 7
    own = x.copy()  # identity 7 had no faces before; all three were kept
    hits = [[Hit(3, 30, 0.9)], [Hit(7, 70, 0.95), Hit(3, 30, 0.75)], [Hit(3, 30, 0.85)]]
    found = _lookalikes(7, hits, {}, [0, 1, 2], own, x, thresholds=[0.7] * 3)
    # photo 0: its closest own photo scores 0.8 < 0.9; photo 1: 0.8 > 0.75; photo 2: 0.6 < 0.85
    assert [(w.position, w.hit.identity_id, w.threshold) for w in found] == [(0, 3, 0.7), (2, 3, 0.7)]
    alone = _lookalikes(7, hits, {}, [0], own[:1], x, thresholds=[0.7] * 3)
    assert alone[0].position == 0  # alone: no own face to beat
    assert _lookalikes(7, hits, {}, [0, 1, 2], own, x, thresholds=[0.95] * 3) == []  # below identify's threshold


def _lfw(name: str, n: int, *, grey: bool = False) -> tuple[str, tuple[str, bytes, str]]:
    path = require_data(DATA_ROOT / "lfw" / "images") / name / f"{name}_{n:04d}.jpg"
    data = path.read_bytes()
    if grey:  # the same photo from a black-and-white camera
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("L").save(buf, format="JPEG", quality=95)
        data = buf.getvalue()
    return ("image", (path.name, data, "image/jpeg"))


def test_a_grey_photo_is_decided_with_the_cards_grey_table(client: TestClient) -> None:
    """Grey photos score higher against strangers than colour ones, so the card carries a table for them: identify and
    the conflict check set a grey face's bar from it (at the same gallery size and target), and say so."""
    ids = {name: _person(client, name) for name in ("Aaron_Peirsol", "Aaron_Sorkin", "Abdullah_Gul")}
    for name, identity in ids.items():
        assert _enrol(client, identity, _lfw(name, 1)).status_code == 201
    serving = client.app.state.runtime.service.serving  # type: ignore[attr-defined]
    cal = serving.open_set
    assert cal is not None and "grey" in cal.condition_thresholds, "the default card carries a grey table"
    target = client.app.state.settings.target_fpir  # type: ignore[attr-defined]

    def identify(photo: tuple[str, Any]) -> dict[str, Any]:
        r = client.post(f"{G}/identify", files=[photo])
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    colour, grey = identify(_lfw("Aaron_Peirsol", 2)), identify(_lfw("Aaron_Peirsol", 2, grey=True))
    assert colour["condition"] is None and colour["faces"][0]["condition"] is None
    assert colour["threshold"] == pytest.approx(cal.threshold(3, target))
    assert grey["condition"] == "grey" and grey["faces"][0]["condition"] == "grey"
    assert grey["threshold"] == pytest.approx(cal.under("grey").threshold(3, target))
    assert grey["faces"][0]["threshold"] == grey["threshold"] > colour["threshold"]
    assert grey["faces"][0]["quality"]["measures"]["chroma"] < 1 < colour["faces"][0]["quality"]["measures"]["chroma"]
    for body in (colour, grey):
        assert body["match"] is not None and body["match"]["identity"]["id"] == ids["Aaron_Peirsol"]

    # the same person's grey photo under a new id: a conflict at the grey bar for the gallery's 3 faces
    again = _person(client, "someone_new")
    r = _enrol(client, again, _lfw("Aaron_Peirsol", 2, grey=True))
    assert r.status_code == 422, r.text
    rejected = r.json()["error"]["details"]["rejected"][0]
    assert rejected["code"] == "identity_conflict" and rejected["other_identity"] == ids["Aaron_Peirsol"]
    conflict_fpir = client.app.state.settings.conflict_fpir  # type: ignore[attr-defined]
    assert rejected["threshold"] == pytest.approx(cal.under("grey").threshold(3, conflict_fpir))

    # verify: the card's default moves by the grey table's rise at the default's FAR, for either photo of a pair
    far = serving.embedder.card.default_threshold_far
    rise = cal.under("grey").threshold_at_far(far) - cal.threshold_at_far(far)
    assert rise > 0

    def verify(*photos: tuple[str, Any], **form: Any) -> dict[str, Any]:
        if len(photos) == 1:
            r = client.post(f"{G}/verify", files=list(photos), data={"identity_id": ids["Aaron_Peirsol"], **form})
        else:
            r = client.post("/v1/verify", files=[("image_a", photos[0][1]), ("image_b", photos[1][1])], data=form)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    default = serving.model.default_threshold
    plain = verify(_lfw("Aaron_Peirsol", 2))
    assert plain["condition"] is None and plain["threshold"] == pytest.approx(default) and plain["match"]
    grey_one = verify(_lfw("Aaron_Peirsol", 2, grey=True))
    assert grey_one["condition"] == "grey" and grey_one["threshold"] == pytest.approx(default + rise)
    pair = verify(_lfw("Aaron_Peirsol", 1), _lfw("Aaron_Peirsol", 2, grey=True))
    assert pair["condition"] == "grey" and pair["threshold"] == pytest.approx(default + rise)
    asked = verify(_lfw("Aaron_Peirsol", 2, grey=True), threshold="0.5")  # a request's threshold is kept as given
    assert asked["threshold"] == 0.5 and asked["condition"] is None

    # the mismatch check: a stranger's grey photo added to an identity is refused at the grey table's 1:1 bar
    mismatch_far = client.app.state.settings.mismatch_far  # type: ignore[attr-defined]
    r = _enrol(client, ids["Aaron_Sorkin"], _lfw("Abdullah_Gul", 2, grey=True), allow_conflict="true")
    assert r.status_code == 422, r.text
    rejected = r.json()["error"]["details"]["rejected"][0]
    assert rejected["code"] == "face_mismatch"
    assert rejected["threshold"] == pytest.approx(cal.under("grey").threshold_at_far(mismatch_far))
    assert rejected["threshold"] > cal.threshold_at_far(mismatch_far)
