"""CelebA subset through the real HTTP API, from raw photos: enrol one image per identity, identify the rest.

- Identities sorted by name; the first ``--enrolled`` (default 100) are enrolled, the rest are strangers.
- Enrolment: each identity's images in file order until one passes the gates (detection + quality); every
  rejection is counted by reason.
- Probes: every other image of an enrolled identity (rank-1 among probes where a face was found, and how often
  the default threshold accepts the right person), and every image of a stranger (how often it is rejected).
- Failure to acquire: probes where no face was found.
- False faces: photos without faces (`benchmarks.nofaces`: tiles of scikit-learn's sample photos, blob images and
  face-free CelebA background crops) sent to identify; every answer with a face is a false face.
- Each `--model` x `--detector` pair (default: the shipped default model with YuNet, then with dlib's HOG as the
  baseline) runs the whole protocol in its own fresh server and database, one after the other in the same run.

    python -m benchmarks.celeba_enrollment [--enrolled 100] [--model PATH ...] [--detector yunet --detector hog]
        [--out celeba.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.identify_latency import DATA_ROOT, fresh_database, machine_info, running_server, server_headers
from benchmarks.nofaces import backgrounds, png, scenes
from embedding.embedder import default_model_path

G = "/v1/galleries/default"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrolled", type=int, default=100)
    parser.add_argument("--model", type=Path, action="append", help="model file; repeatable (default: shipped)")
    parser.add_argument("--detector", action="append", help="FACEDB_DETECTOR; repeatable (default: yunet, hog)")
    parser.add_argument("--backgrounds", type=int, default=300, help="face-free CelebA crops sent as probes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    root = DATA_ROOT / "celeba_subset"
    if not root.is_dir():
        print(f"CelebA subset not found at {root}", file=sys.stderr)
        return 2
    people = sorted(p for p in root.iterdir() if p.is_dir())
    models = args.model or [default_model_path()]
    detectors = args.detector or ["yunet", "hog"]
    no_faces = [png(image) for image in [*scenes(), *backgrounds(args.backgrounds)]]
    reports = []
    for model in models:
        for detector in detectors:
            print(f"\n== {model} with detector {detector}", flush=True)
            reports.append(run(model, detector, people[: args.enrolled], people[args.enrolled :], no_faces))
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2, default=str))
    return 0


def run(
    model: Path, detector: str, enrolled_people: Sequence[Path], strangers: Sequence[Path], no_faces: Sequence[bytes]
) -> dict[str, Any]:
    """The whole protocol against a fresh server serving `model`; prints and returns the figures."""
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="facedb-celeba-") as tmp_s:
        tmp = Path(tmp_s)
        env = fresh_database(tmp) | {"FACEDB_MODEL_PATH": str(model), "FACEDB_DETECTOR": detector}
        with (
            running_server(os.environ | env, tmp / "server.log", 120) as (url, _),
            httpx.Client(base_url=url + G, timeout=60, trust_env=False, headers=server_headers(env)) as c,
        ):
            reasons: Counter[str] = Counter()
            enrolled_with: dict[str, Path] = {}
            ids: dict[str, int] = {}
            t0 = time.perf_counter()
            for person in enrolled_people:
                ids[person.name] = c.post("/identities", json={"external_id": person.name}).json()["id"]
                for f in sorted(person.iterdir()):
                    r = c.post(f"/identities/{ids[person.name]}/faces", files={"image": (f.name, f.read_bytes())})
                    if r.status_code == 201:
                        enrolled_with[person.name] = f
                        break
                    for rej in r.json()["error"].get("details", {}).get("rejected", []):
                        reasons[rej["code"]] += 1
            enrol_s = time.perf_counter() - t0

            def probe(f: Path) -> dict[str, Any]:
                return probe_bytes(c, f.name, f.read_bytes())

            mated = fta = rank1 = accepted_right = accepted_wrong = 0
            latencies: list[float] = []
            for person in enrolled_people:
                if person.name not in enrolled_with:
                    continue
                for f in sorted(person.iterdir()):
                    if f == enrolled_with[person.name]:
                        continue
                    mated += 1
                    t = time.perf_counter()
                    res = probe(f)
                    latencies.append(time.perf_counter() - t)
                    if not res["faces"]:
                        fta += 1
                        continue
                    top = res["candidates"][0]["identity"]["external_id"] if res["candidates"] else None
                    rank1 += top == person.name
                    match = res["match"]
                    if match is not None:
                        if match["identity"]["external_id"] == person.name:
                            accepted_right += 1
                        else:
                            accepted_wrong += 1
            stranger_probes = stranger_fta = stranger_rejected = 0
            for person in strangers:
                for f in sorted(person.iterdir()):
                    stranger_probes += 1
                    res = probe(f)
                    if not res["faces"]:
                        stranger_fta += 1
                    elif res["match"] is None:
                        stranger_rejected += 1
            false_faces = sum(1 for i, data in enumerate(no_faces) if probe_bytes(c, f"noface{i}.png", data)["faces"])
            last = probe(next(iter(enrolled_with.values())))
            threshold, served = last["threshold"], last["model_version"]

    acquired = mated - fta
    s_acquired = stranger_probes - stranger_fta
    latencies.sort()
    report = {
        "model": str(model),
        "model_version": served,
        "detector": detector,
        "machine": info,
        "identities_enrolled": len(enrolled_with),
        "identities_tried": len(enrolled_people),
        "enrol_rejections": dict(reasons.most_common()),
        "enrol_s": enrol_s,
        "threshold": threshold,
        "mated_probes": mated,
        "mated_fta": fta,
        "rank1_of_acquired": rank1 / acquired if acquired else None,
        "accepted_right_of_acquired": accepted_right / acquired if acquired else None,
        "accepted_wrong_of_acquired": accepted_wrong / acquired if acquired else None,
        "stranger_probes": stranger_probes,
        "stranger_fta": stranger_fta,
        "stranger_rejected_of_acquired": stranger_rejected / s_acquired if s_acquired else None,
        "identify_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "no_face_images": len(no_faces),
        "no_face_images_with_a_face": false_faces,
    }
    print(f"model served: {served}; detector: {detector}")
    print(f"machine: {info['cpu_model']}; {info['usable_cpus']} CPUs; load at start {info['loadavg_1_5_15']}")
    print(
        f"enrolled {len(enrolled_with)} of {len(enrolled_people)} identities (one photo each) in {enrol_s:.1f} s; "
        f"photos rejected on the way: {dict(reasons.most_common())}"
    )
    print(f"mated probes: {mated}, no face found in {fta} ({fta / max(mated, 1):.1%})")
    print(
        f"rank-1 (of probes with a face): {report['rank1_of_acquired']:.3f}; at the default threshold "
        f"{threshold:.3f}: right person accepted {report['accepted_right_of_acquired']:.3f}, "
        f"wrong person accepted {report['accepted_wrong_of_acquired']:.3f}"
    )
    print(
        f"strangers ({len(strangers)} identities never enrolled): {stranger_probes} probes, no face in "
        f"{stranger_fta}; rejected at the default threshold: {report['stranger_rejected_of_acquired']:.3f}"
    )
    print(f"images without faces: {false_faces} of {len(no_faces)} answered with a face")
    print(f"identify p50 over HTTP with detection: {report['identify_p50_ms']:.1f} ms", flush=True)
    return report


def probe_bytes(client: httpx.Client, name: str, data: bytes) -> dict[str, Any]:
    """Identify's answer for one uploaded image."""
    body: dict[str, Any] = client.post("/identify", files={"image": (name, data)}).json()
    return body


if __name__ == "__main__":
    sys.exit(main())
