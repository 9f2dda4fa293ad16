"""Concurrent enrolment and identification from several threads: no lost or duplicated face."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from tests.conftest import SYNTHETIC_ENROL, SYNTHETIC_PROBE, image_bytes

G = "/v1/galleries/default"


def test_concurrent_enroll_and_identify(client: TestClient) -> None:
    n_people, per_person = 8, 4
    ids = [client.post(f"{G}/identities", json={"external_id": f"c{i}"}).json()["id"] for i in range(n_people)]
    acked: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def enroll(person: int) -> None:
        for j in range(per_person):
            data = image_bytes(1000 * person + j)
            r = client.post(
                f"{G}/identities/{ids[person]}/faces",
                files={"image": (f"{j}.png", data, "image/png")},
                data=SYNTHETIC_ENROL,
            )
            with lock:
                if r.status_code == 201:
                    acked.extend(a["face_id"] for a in r.json()["accepted"])
                else:
                    errors.append(r.text)

    def probe() -> int:
        done = 0
        while not stop.is_set() and done < 200:
            r = client.post(
                f"{G}/identify", files={"image": ("p.png", image_bytes(3), "image/png")}, data=SYNTHETIC_PROBE
            )
            if r.status_code != 200:
                with lock:
                    errors.append(r.text)
            done += 1
        return done

    with ThreadPoolExecutor(max_workers=n_people + 2) as pool:
        probes = [pool.submit(probe) for _ in range(2)]
        list(pool.map(enroll, range(n_people)))
        stop.set()
        assert all(p.result() > 0 for p in probes)

    assert errors == []
    assert len(acked) == len(set(acked)) == n_people * per_person
    stored = {f["id"] for iid in ids for f in client.get(f"{G}/identities/{iid}/faces").json()["items"]}
    assert stored == set(acked)
    stats = client.app.state.runtime.service.indexes.stats()  # type: ignore[attr-defined]
    assert stats.faces == len(acked)
    # every enrolled image is found as its own person
    for person in range(n_people):
        res = client.post(
            f"{G}/identify",
            files={"image": ("p.png", image_bytes(1000 * person + 2), "image/png")},
            data=SYNTHETIC_PROBE,
        ).json()
        assert res["candidates"][0]["identity"]["id"] == ids[person]


def test_concurrent_duplicate_external_id(client: TestClient) -> None:
    def create(_: int) -> int:
        return int(client.post(f"{G}/identities", json={"external_id": "same"}).status_code)

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = sorted(pool.map(create, range(6)))
    assert codes == [201] + [409] * 5
