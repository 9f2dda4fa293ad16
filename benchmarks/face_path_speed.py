"""The whole face path over HTTP beside dlib's own whole pipeline, in one run on the same photos.

facedb: the real server (uvicorn, loopback, SQLite in a temporary directory, default settings: YuNet, the default
model) with ``--enrolled`` LFW people enrolled through the API; then

- **throughput**: ``--clients`` concurrent clients (threads, one HTTP connection each) send ``POST /identify``
  with 250x250 LFW photos for ``--seconds``; photos/s and p50/p99 latency;
- **door camera**: a 1920x1080 JPEG frame with one face about 60-110 px wide (an LFW photo pasted into an
  upscaled scikit-learn sample scene), identified one request at a time; p50/p99.

dlib: ``benchmarks/dlib_reference.py speed`` (HOG with 1 upsample, 5-point landmarks, ``get_face_chip`` 150 px,
``compute_face_descriptor``) on the same 250x250 photos and on the same frames,
run by ``--dlib-python`` (default ``.venv-bench/bin/python``: dlib built from source with OpenBLAS by
``scripts/setup_dlib_baseline.sh``, as face_recognition users install it), once in one process (dlib's pipeline
is single-threaded, and face_recognition runs one process unless told ``--cpus``) and once with one process per
core. Its photos/s has no HTTP and no search, so the comparison favours dlib.

    python -m benchmarks.face_path_speed [--clients 8] [--seconds 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.identify_latency import DATA_ROOT, REPO, fresh_database, machine_info, running_server, server_headers

G = "/v1/galleries/default"
_DLIB_ARGS = ("--limit", "0", "--json")
FRAME = (1920, 1080)


def lfw_photos(n: int, skip: int = 0) -> list[Path]:
    """``n`` LFW photos, one per person, people in name order after the first ``skip``."""
    people = sorted(p for p in (DATA_ROOT / "lfw" / "images").iterdir() if p.is_dir())
    return [sorted(person.glob("*.jpg"))[0] for person in people[skip : skip + n]]


def door_frames(photos: Sequence[Path], seed: int = 0) -> list[bytes]:
    """1920x1080 JPEG frames, each with one LFW photo (face ~60-110 px wide) pasted into a large scene."""
    from sklearn.datasets import load_sample_images  # noqa: PLC0415 - benchmark-only dependency

    scenes = [Image.fromarray(s).resize(FRAME, Image.Resampling.BILINEAR) for s in load_sample_images().images]
    rng = np.random.default_rng(seed)
    frames = []
    for i, path in enumerate(photos):
        frame = scenes[i % len(scenes)].copy()
        side = int(rng.integers(150, 260))  # LFW faces fill ~40% of the photo's width
        photo = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
        frame.paste(photo, (int(rng.integers(0, FRAME[0] - side)), int(rng.integers(0, FRAME[1] - side))))
        buf = io.BytesIO()
        frame.save(buf, format="JPEG", quality=90)
        frames.append(buf.getvalue())
    return frames


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def throughput(
    url: str, headers: dict[str, str], payloads: Sequence[bytes], clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` threads identify round-robin over ``payloads`` until ``seconds`` pass; photos/s and latency."""
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=url + G, timeout=60, trust_env=False, headers=headers) as c:
            i = offset
            while time.perf_counter() < stop:
                data = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                r = c.post("/identify", files={"image": ("probe.jpg", data)})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    else:
                        errors.append(r.status_code)
                i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "photos_per_s": len(latencies) / wall,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
    }


def sequential(url: str, headers: dict[str, str], payloads: Sequence[bytes], rounds: int) -> dict[str, Any]:
    """One request at a time over ``payloads`` ``rounds`` times: p50/p99 and how many answers had a face."""
    latencies: list[float] = []
    with_face = 0
    with httpx.Client(base_url=url + G, timeout=60, trust_env=False, headers=headers) as c:
        c.post("/identify", files={"image": ("warm.jpg", payloads[0])})
        for _ in range(rounds):
            for data in payloads:
                t0 = time.perf_counter()
                r = c.post("/identify", files={"image": ("frame.jpg", data)})
                latencies.append(time.perf_counter() - t0)
                with_face += bool(r.json().get("faces"))
    return {
        "requests": len(latencies),
        "with_face": with_face,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
    }


def dlib_speed(python: Path, folder: Path, threads: int) -> dict[str, Any] | None:
    """dlib's whole pipeline on the photos of ``folder`` (one worker per core), run by ``python``; None if absent."""
    if not python.exists():
        print(f"dlib baseline skipped: {python} not found (run scripts/setup_dlib_baseline.sh)", file=sys.stderr)
        return None
    script = str(REPO / "benchmarks" / "dlib_reference.py")
    proc = subprocess.run(
        [str(python), script, "speed", "--images", str(folder), *_DLIB_ARGS, "--threads", str(threads)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        print(f"dlib baseline failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrolled", type=int, default=200)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--dlib-python", type=Path, default=REPO / ".venv-bench" / "bin" / "python")
    parser.add_argument("--dlib-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not (DATA_ROOT / "lfw" / "images").is_dir():
        print(f"LFW not found under {DATA_ROOT}", file=sys.stderr)
        return 2
    enrol = lfw_photos(args.enrolled)
    probes = lfw_photos(args.probes, skip=args.enrolled)
    report: dict[str, Any] = {"machine": machine_info(), "clients": args.clients}
    with tempfile.TemporaryDirectory(prefix="facedb-speed-") as tmp_s:
        tmp = Path(tmp_s)
        frame_dir, probe_dir = tmp / "frames", tmp / "probes"
        frame_dir.mkdir()
        probe_dir.mkdir()
        frames = door_frames(probes[: args.frames])
        for i, data in enumerate(frames):
            (frame_dir / f"frame{i:03d}.jpg").write_bytes(data)
        for path in probes:
            (probe_dir / path.name).write_bytes(path.read_bytes())
        env = fresh_database(tmp)
        with running_server(os.environ | env, tmp / "server.log", 300) as (url, _):
            headers = server_headers(env)
            with httpx.Client(base_url=url + G, timeout=60, trust_env=False, headers=headers) as c:
                for path in enrol:
                    ident = c.post("/identities", json={"external_id": path.parent.name}).json()["id"]
                    c.post(f"/identities/{ident}/faces", files={"image": (path.name, path.read_bytes())})
            payloads = [p.read_bytes() for p in probes]
            throughput(url, headers, payloads[:16], args.clients, 3.0)  # warm-up
            report["facedb_250px"] = throughput(url, headers, payloads, args.clients, args.seconds)
            report["facedb_1080p"] = sequential(url, headers, frames, rounds=3)
        report["dlib_250px_1_process"] = dlib_speed(args.dlib_python, probe_dir, 1)
        report["dlib_250px"] = dlib_speed(args.dlib_python, probe_dir, args.dlib_threads)
        report["dlib_1080p"] = dlib_speed(args.dlib_python, frame_dir, args.dlib_threads)
    fast, ref = report["facedb_250px"], report["dlib_250px"]
    print(f"machine: {report['machine']['cpu_model']}; {report['machine']['usable_cpus']} CPUs")
    print(
        f"facedb identify, 250x250 LFW photos, {args.clients} clients: {fast['photos_per_s']:.1f} photos/s, "
        f"p50 {fast['p50_ms']:.1f} ms, p99 {fast['p99_ms']:.1f} ms ({fast['errors']} errors)"
    )
    door = report["facedb_1080p"]
    print(
        f"facedb identify, 1920x1080 frame with one face: p50 {door['p50_ms']:.1f} ms, p99 {door['p99_ms']:.1f} ms; "
        f"face found in {door['with_face']} of {door['requests']}"
    )
    for key in ("dlib_250px_1_process", "dlib_250px", "dlib_1080p"):
        r = report[key]
        if r is not None:
            print(
                f"dlib {r.get('dlib_version')} ({'BLAS' if r.get('blas') else 'no BLAS'}), {key[5:]}: "
                f"{r['photos_per_s']:.1f} photos/s with {r['threads']} processes, "
                f"p50 {r.get('ms_total_p50', float('nan')):.1f} ms per photo"
            )
    if ref is not None:
        report["speedup_250px"] = fast["photos_per_s"] / ref["photos_per_s"]
        print(f"facedb / dlib throughput on 250x250 photos, dlib on every core: {report['speedup_250px']:.2f}x")
    single = report["dlib_250px_1_process"]
    if single is not None:
        report["speedup_250px_1_process"] = fast["photos_per_s"] / single["photos_per_s"]
        print(
            "facedb / dlib throughput on 250x250 photos, dlib in one process (as face_recognition runs it by "
            f"default): {report['speedup_250px_1_process']:.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
