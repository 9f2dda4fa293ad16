"""dlib's own whole pipeline, as dlib's examples (and face_recognition) run it: the reference baseline.

Per photo: decode (PIL, RGB) -> `get_frontal_face_detector()` with 1 upsample -> largest face -> 5-point
`shape_predictor` -> `get_face_chip(size=150, padding=0.25)` -> `face_recognition_model_v1
.compute_face_descriptor(chip, 0)` (128-d, no jitter). Models from `face_recognition_models`.

Standalone (numpy, PIL, dlib, face_recognition_models, stdlib only), so it runs in any venv; the reference
numbers come from `.venv-bench` with dlib built from source against OpenBLAS (scripts/setup_dlib_baseline.sh).

    python benchmarks/dlib_reference.py speed --images '../shared/data/lfw/images/*/*.jpg' --limit 300 \
        --threads 2 [--blas-threads 1] [--json]
    python benchmarks/dlib_reference.py embed --list paths.txt --out dlib.npz

speed: T worker processes (spawned; each loads its own dlib objects and warms up on one photo before the
clock starts) pull photos from a shared queue; photos/s = photos / wall time, decode included, model load
excluded. Per-stage ms (decode, detect, landmarks+chip, descriptor) are per photo, measured inside the same
run (clean single-core figures at --threads 1). --blas-threads sets OPENBLAS_NUM_THREADS/OMP_NUM_THREADS in
every worker (default 1, so T workers use T cores; 0 leaves the library default). With --json the last
line is one JSON object.

embed: for each path in the list, writes `paths`, `found` (bool), `descriptors` (N x 128 float64, zeros
when no face), `boxes` (N x 4 int: left, top, right, bottom of the largest detection, zeros when none),
`landmarks` (N x 5 x 2 int: x, y of dlib's 5 parts) and `num_faces` to an .npz.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

STAGES = ("decode", "detect", "chip", "descriptor")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".webp"}


class Face(NamedTuple):
    num_faces: int
    box: tuple[int, int, int, int]  # left, top, right, bottom
    landmarks: list[tuple[int, int]]
    descriptor: np.ndarray


class Pipeline:
    """The four dlib objects of one process (dlib objects are never shared across processes)."""

    def __init__(self) -> None:
        # dlib is imported late, after main() has set the BLAS thread variables its OpenBLAS reads on load.
        import dlib  # noqa: PLC0415
        import face_recognition_models as frm  # noqa: PLC0415

        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.resnet = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self.get_face_chip = dlib.get_face_chip

    def run(self, path: str, times: dict[str, float] | None = None) -> Face | None:
        """The largest face of one photo, or None; adds per-stage seconds to `times`."""
        t0 = time.perf_counter()
        img = np.asarray(Image.open(path).convert("RGB"))
        t1 = time.perf_counter()
        dets = self.detector(img, 1)
        t2 = time.perf_counter()
        if times is not None:
            times.update(decode=t1 - t0, detect=t2 - t1)
        if len(dets) == 0:
            return None
        rect = max(dets, key=lambda r: r.width() * r.height())
        shape = self.predictor(img, rect)
        chip = self.get_face_chip(img, shape, size=150, padding=0.25)
        t3 = time.perf_counter()
        descriptor = np.asarray(self.resnet.compute_face_descriptor(chip, 0), dtype=np.float64)
        t4 = time.perf_counter()
        if times is not None:
            times.update(chip=t3 - t2, descriptor=t4 - t3)
        points = [(p.x, p.y) for p in shape.parts()]
        return Face(len(dets), (rect.left(), rect.top(), rect.right(), rect.bottom()), points, descriptor)


def build_info() -> dict[str, Any]:
    import dlib  # noqa: PLC0415

    return {
        "dlib_version": dlib.__version__,
        "blas": getattr(dlib, "DLIB_USE_BLAS", None),
        "lapack": getattr(dlib, "DLIB_USE_LAPACK", None),
        "avx": getattr(dlib, "USE_AVX_INSTRUCTIONS", None),
    }


def find_images(spec: str, limit: int) -> list[str]:
    """Sorted image paths under a directory (recursive) or matching a glob, the first `limit` (0: all)."""
    if Path(spec).is_dir():
        paths = [str(p) for p in Path(spec).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        paths = glob.glob(spec, recursive=True)
    paths.sort()
    return paths[:limit] if limit > 0 else paths


def worker(paths: list[str], queue: Any, barrier: Any, results: Any) -> None:
    pipe = Pipeline()
    for path in paths[:5]:  # warm-up, untimed, until a photo with a face
        if pipe.run(path) is not None:
            break
    barrier.wait()
    start = time.monotonic()
    records: list[dict[str, float]] = []
    while (i := queue.get()) is not None:
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        pipe.run(paths[i], times)
        times["total"] = time.perf_counter() - t0
        records.append(times)
    results.put((start, time.monotonic(), records))


def speed(args: argparse.Namespace) -> int:
    paths = find_images(args.images, args.limit)
    if not paths:
        print(f"no images match {args.images!r}", file=sys.stderr)
        return 1
    ctx = mp.get_context("spawn")
    queue, results, barrier = ctx.Queue(), ctx.Queue(), ctx.Barrier(args.threads)
    for i in range(len(paths)):
        queue.put(i)
    for _ in range(args.threads):
        queue.put(None)
    procs = [ctx.Process(target=worker, args=(paths, queue, barrier, results)) for _ in range(args.threads)]
    load_start = os.getloadavg()[0]
    for p in procs:
        p.start()
    parts = [results.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(end for _, end, _ in parts) - min(start for start, _, _ in parts)
    records = [r for _, _, recs in parts for r in recs]

    def ms(stage: str) -> float:
        values = [r[stage] for r in records if stage in r]
        return round(1000 * statistics.fmean(values), 2) if values else float("nan")

    totals = sorted(r["total"] for r in records)
    out: dict[str, Any] = {
        **build_info(),
        "threads": args.threads,
        "blas_threads": args.blas_threads,
        "photos": len(records),
        "faces_found": sum("descriptor" in r for r in records),
        "wall_s": round(wall, 3),
        "photos_per_s": round(len(records) / wall, 3),
        **{f"ms_{s}": ms(s) for s in STAGES},
        "ms_total_mean": ms("total"),
        "ms_total_p50": round(1000 * statistics.median(totals), 2),
        "ms_total_p90": round(1000 * totals[int(0.9 * (len(totals) - 1))], 2),
        "loadavg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "python": sys.executable,
    }
    print(f"dlib {out['dlib_version']}  blas={out['blas']} lapack={out['lapack']} avx={out['avx']}  {sys.executable}")
    print(f"{out['photos']} photos ({out['faces_found']} with a face), {args.threads} process(es), ", end="")
    print(f"blas threads {args.blas_threads or 'default'}, load {out['loadavg_start_end']}")
    print(f"{'stage':<22}{'mean ms':>10}")
    for label, key in [("decode", "decode"), ("detect (1 upsample)", "detect"), ("landmarks+chip", "chip")]:
        print(f"{label:<22}{out['ms_' + key]:>10.2f}")
    print(f"{'descriptor':<22}{out['ms_descriptor']:>10.2f}")
    total = "".join(f"{out[k]:>10.2f}" for k in ("ms_total_mean", "ms_total_p50", "ms_total_p90"))
    print(f"{'total (mean/p50/p90)':<22}{total}")
    print(f"photos/s end to end: {out['photos_per_s']:.2f}  (wall {out['wall_s']:.1f} s)")
    if args.json:
        print(json.dumps(out))
    return 0


def embed(args: argparse.Namespace) -> int:
    paths = [line.strip() for line in Path(args.list).read_text().splitlines() if line.strip()]
    n = len(paths)
    found, num_faces = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int32)
    descriptors = np.zeros((n, 128), dtype=np.float64)
    boxes, landmarks = np.zeros((n, 4), dtype=np.int64), np.zeros((n, 5, 2), dtype=np.int64)
    pipe = Pipeline()
    for i, path in enumerate(paths):
        face = pipe.run(path)
        if face is None:
            continue
        found[i], num_faces[i], descriptors[i] = True, face.num_faces, face.descriptor
        boxes[i], landmarks[i] = face.box, face.landmarks
    np.savez(
        args.out,
        paths=np.array(paths, dtype=str),
        found=found,
        num_faces=num_faces,
        descriptors=descriptors,
        boxes=boxes,
        landmarks=landmarks,
        dlib_version=np.array(build_info()["dlib_version"]),
    )
    print(f"{int(found.sum())}/{n} photos with a face -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sp = sub.add_parser("speed", help="photos/s and per-stage ms")
    sp.add_argument("--images", required=True, help="directory (recursive) or glob of photos")
    sp.add_argument("--limit", type=int, default=300, help="first N sorted photos (0: all)")
    sp.add_argument("--threads", type=int, default=1, help="worker processes")
    sp.add_argument("--blas-threads", type=int, default=1, help="BLAS threads per worker (0: library default)")
    sp.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ep = sub.add_parser("embed", help="descriptors, boxes and landmarks of listed photos to an .npz")
    ep.add_argument("--list", required=True, help="text file, one image path per line")
    ep.add_argument("--out", required=True, help="output .npz")
    ep.add_argument("--blas-threads", type=int, default=1, help="BLAS threads (0: library default)")
    args = parser.parse_args(argv)
    if args.blas_threads > 0:  # before dlib (and its BLAS) is first imported, here and in spawned workers
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)
    return speed(args) if args.mode == "speed" else embed(args)


if __name__ == "__main__":
    sys.exit(main())
