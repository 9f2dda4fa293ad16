"""Identify latency: search only (numpy reference vs exact FAISS) and end to end over HTTP.

Search only times ``GalleryIndex.search(q, k=5)`` for one query per call (the access-control case) on
galleries of random unit vectors, both backends in the same run on the same data and queries, and
checks that FAISS returns the same identities as the numpy reference (recall@5 must be 1.0).

End to end starts the real server (uvicorn, loopback, SQLite in a temporary directory), fills one
gallery per size through ``service.db.crud`` (so every face is in the change log, as in production),
and times ``POST /v1/galleries/{gallery}/identify`` with a real image, sequentially.

Run from the repository root (see benchmarks/README.md)::

    python -m benchmarks.identify_latency --quick          # smoke run, ~30 s
    python -m benchmarks.identify_latency --out results.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index import GalleryIndex, Hit
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FACEDB_DATA_ROOT", REPO.parent / "shared" / "data"))
K = 5
FACES_PER_IDENTITY = 5
# Within-identity spread: a face is normalise(centre + SPREAD * g), g ~ N(0, I/dim); cosine to the
# centre is about 1 / sqrt(1 + SPREAD^2), so faces of one person have cosine ~0.6 with each other.
SPREAD = 0.8
DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)


# --- statistics --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Latency summary of one series of sequential calls."""

    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    per_s: float

    @classmethod
    def of(cls, latencies_ns: Sequence[int]) -> Stats:
        """Summarise latencies in nanoseconds; percentiles by linear interpolation."""
        ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
        return cls(
            n=int(ms.size),
            p50_ms=float(np.percentile(ms, 50)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            per_s=float(1000.0 * ms.size / ms.sum()),
        )


# --- machine -----------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


def machine_info() -> dict[str, Any]:
    """CPU, memory, load and library versions, to print beside the numbers."""
    import torch  # noqa: PLC0415 - only needed for its version here

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "mem_total_gib": _mem_total_gib(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
    }


# --- synthetic data ----------------------------------------------------------------------------------


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def make_gallery(
    n: int, dim: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """n unit faces, FACES_PER_IDENTITY per identity: (face_ids, identity_ids, faces, identity centres)."""
    n_ids = max(1, -(-n // FACES_PER_IDENTITY))
    centres = _unit(rng.standard_normal((n_ids, dim), dtype=np.float32))
    identity_ids = (np.arange(n, dtype=np.int64) // FACES_PER_IDENTITY).astype(np.int64)
    noise = rng.standard_normal((n, dim), dtype=np.float32) * np.float32(SPREAD / np.sqrt(dim))
    faces = _unit(centres[identity_ids] + noise)
    return np.arange(n, dtype=np.int64), identity_ids, faces, centres


def make_queries(centres: npt.NDArray[np.float32], m: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """m unit probes: half a new photo of an enrolled identity, half a stranger (a random unit vector)."""
    dim = centres.shape[1]
    genuine = m // 2
    picks = rng.integers(0, len(centres), genuine)
    noise = rng.standard_normal((genuine, dim), dtype=np.float32) * np.float32(SPREAD / np.sqrt(dim))
    probes = np.concatenate([centres[picks] + noise, rng.standard_normal((m - genuine, dim), dtype=np.float32)])
    return _unit(probes[rng.permutation(m)])


# --- search only -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Variant:
    """One timed series: an index, and for FAISS the OpenMP thread count it searches with."""

    label: str
    index: GalleryIndex
    threads: int | None = None

    def search(self, q: npt.NDArray[np.float32]) -> list[Hit]:
        if self.threads is not None:
            faiss.omp_set_num_threads(self.threads)
        return self.index.search(q, K)[0]


def bench_search(
    sizes: Sequence[int],
    dim: int,
    queries: int,
    warmup: int,
    seed: int,
    faiss_threads: Sequence[int],
    *,
    interleave: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Time GalleryIndex.search, numpy and faiss (interleaved query by query, or one series after another).

    Returns (timings, recall of each faiss series against numpy).
    """
    default_threads = faiss.omp_get_max_threads()
    timings: list[dict[str, Any]] = []
    recall_rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            rng = np.random.default_rng([seed, n])
            face_ids, identity_ids, x, centres = make_gallery(n, dim, rng)
            reference = GalleryIndex(dim, backend="numpy")
            flat = GalleryIndex(dim, backend="faiss")
            for index in (reference, flat):
                index.add(face_ids, identity_ids, x)
            variants = [_Variant("numpy", reference)]
            variants += [_Variant(f"faiss/{t}t", flat, t) for t in faiss_threads]
            probes = [q[None, :] for q in make_queries(centres, queries + warmup, rng)]
            for v in variants:
                for q in probes[:warmup]:
                    v.search(q)
            lat: dict[str, list[int]] = {v.label: [] for v in variants}
            hits: dict[str, list[list[int]]] = {v.label: [] for v in variants}
            top1: dict[str, list[float]] = {v.label: [] for v in variants}
            gc.collect()
            timed = probes[warmup:]
            if interleave:
                # Query by query, rotating which series goes first: every series sees the same machine state.
                nv = len(variants)
                schedule = [(q, variants[(i + j) % nv]) for i, q in enumerate(timed) for j in range(nv)]
            else:
                schedule = [(q, v) for v in variants for q in timed]
            for q, v in schedule:
                t0 = time.perf_counter_ns()
                result = v.search(q)
                lat[v.label].append(time.perf_counter_ns() - t0)
                hits[v.label].append([h.identity_id for h in result])
                top1[v.label].append(result[0].score)
            for v in variants:
                row = {"faces": n, "identities": len(centres), "backend": v.label, **asdict(Stats.of(lat[v.label]))}
                if v.threads is not None:
                    row["faiss_threads"] = v.threads
                    row["faiss_gpu"] = bool(getattr(flat._index, "uses_gpu", False))
                timings.append(row)
            ref = hits["numpy"]
            for v in variants[1:]:
                got = hits[v.label]
                overlap = [len(set(f) & set(r)) / len(r) for f, r in zip(got, ref, strict=True)]
                diff = np.abs(np.asarray(top1[v.label]) - np.asarray(top1["numpy"]))
                recall_rows.append(
                    {
                        "faces": n,
                        "backend": v.label,
                        "recall_at_5": float(np.mean(overlap)),
                        "identical_ranked_lists": sum(f == r for f, r in zip(got, ref, strict=True)),
                        "queries": len(overlap),
                        "max_top1_score_diff": float(diff.max()),
                    }
                )
            print(f"  search: {n:>7} faces done", file=sys.stderr, flush=True)
    finally:
        faiss.omp_set_num_threads(default_threads)
    return timings, recall_rows


# --- end to end over HTTP ----------------------------------------------------------------------------


def _probe_image() -> tuple[str, bytes, str]:
    """(filename, bytes, description): an AT&T photo when the shared data is present, else a synthetic PNG."""
    att = DATA_ROOT / "att_faces" / "s1" / "1.pgm"
    if att.is_file():
        return att.name, att.read_bytes(), "AT&T s1/1.pgm (92x112 grey PGM)"
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(15, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((92, 112), Image.Resampling.BICUBIC).convert("L").save(buf, format="PNG")
    return "probe.png", buf.getvalue(), "synthetic 92x112 grey PNG (shared data not found)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _gallery_name(faces: int) -> str:
    return f"bench-{faces}"


def fill_galleries(settings: Settings, sizes: Sequence[int], seed: int) -> dict[str, Any]:
    """Migrate, register the configured model, then add one gallery per size through ``service.db.crud``."""
    from service.db import crud, migrate  # noqa: PLC0415
    from service.db.engine import Database  # noqa: PLC0415
    from service.runtime import build_runtime  # noqa: PLC0415

    db = Database(settings.resolved_database_url)
    try:
        migrate.upgrade(db.engine)
    finally:
        db.dispose()
    # The service registers the model version at start-up; faces must carry that version's id.
    runtime = build_runtime(settings, batching=False)
    try:
        active = runtime.service.active
    finally:
        runtime.close()

    t0 = time.perf_counter()
    db = Database(settings.resolved_database_url)
    try:
        for n in sizes:
            rng = np.random.default_rng([seed, n, 1])
            _, _, x, centres = make_gallery(n, active.dim, rng)
            with db.write() as session:
                gallery_id = crud.create_gallery(session, name=_gallery_name(n)).id
            chunk = 2_000  # identities per transaction
            for start in range(0, len(centres), chunk):
                with db.write() as session:
                    for ident in range(start, min(start + chunk, len(centres))):
                        identity = crud.create_identity(
                            session, gallery_id=gallery_id, external_id=f"p{ident:07d}", display_name=None, meta={}
                        )
                        lo = ident * FACES_PER_IDENTITY  # make_gallery numbers faces identity by identity
                        sel = np.arange(lo, min(lo + FACES_PER_IDENTITY, n))
                        crud.add_faces(
                            session,
                            identity=identity,
                            templates={active.id: x[sel]},
                            image_hashes=[f"{n:016x}{int(j):048x}" for j in sel],
                            crops=[None] * len(sel),
                        )
            print(f"  http: gallery {_gallery_name(n)} filled", file=sys.stderr, flush=True)
    finally:
        db.dispose()
    return {
        "model": f"{active.name}@{active.version}",
        "dim": active.dim,
        "fill_s": round(time.perf_counter() - t0, 1),
    }


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def fresh_database(tmp: Path) -> dict[str, str]:
    """A new SQLite database under ``tmp``, migrated, and the ``FACEDB_`` settings that point a server or the CLI at
    it (its data folder beside it)."""
    from service.db import migrate  # noqa: PLC0415
    from service.db.engine import Database  # noqa: PLC0415

    env = {"FACEDB_DATA_DIR": str(tmp / "data"), "FACEDB_DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}"}
    db = Database(env["FACEDB_DATABASE_URL"])
    migrate.upgrade(db.engine)
    db.dispose()
    return env


def server_headers(env: dict[str, str]) -> dict[str, str]:
    """The admin key a server started with ``env`` wrote on its first start, as request headers (the benchmarks
    measure the API as clients use it: authenticated)."""
    if env.get("FACEDB_AUTH", os.environ.get("FACEDB_AUTH", "on")) == "off":
        return {}
    secret = (Path(env["FACEDB_DATA_DIR"]) / "admin.key").read_text().strip()
    return {"Authorization": f"Bearer {secret}"}


@contextlib.contextmanager
def running_server(env: dict[str, str], log_path: Path, timeout_s: float) -> Iterator[tuple[str, float]]:
    """Start uvicorn on a free loopback port; yield (base URL, seconds until /readyz said ready); always stop it.

    Authentication stays on (clients send the bootstrap admin key, :func:`server_headers`); the per-key rate limit
    is off unless ``env`` sets it, since the benchmarks measure the service, not the limiter.
    """
    import httpx  # noqa: PLC0415

    env = {"FACEDB_RATE_LIMIT_PER_S": "0", **env}

    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.api:create_app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = t0 + timeout_s
        with httpx.Client(base_url=url, timeout=5.0, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with status {proc.returncode}:\n{_tail(log_path)}")
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s:\n{_tail(log_path)}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        break
                time.sleep(0.2)
        yield url, time.perf_counter() - t0
    finally:
        proc.terminate()  # uvicorn shuts down gracefully on SIGTERM (the lifespan saves snapshots)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def bench_http(
    sizes: Sequence[int], small: int, requests: int, warmup: int, seed: int, startup_timeout_s: float
) -> dict[str, Any]:
    """Fill galleries, start the server, time identify against each gallery, interleaved request by request."""
    import httpx  # noqa: PLC0415

    base = Settings()  # the configured model, device and threads; data and database go to a temp dir
    all_sizes = sorted({small, *sizes})
    filename, image, probe_desc = _probe_image()
    with tempfile.TemporaryDirectory(prefix="facedb-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        overrides = {
            "data_dir": data_dir,
            "database_url": f"sqlite:///{data_dir / 'facedb.sqlite3'}",
            "index_dir": data_dir / "index",
            "model_path": base.resolved_model_path.resolve(),
        }
        settings = base.model_copy(update=overrides)
        info = fill_galleries(settings, all_sizes, seed)
        # The server sees the same configuration as `base` (environment, .env) except where the data goes.
        env = {**os.environ, **{f"FACEDB_{k.upper()}": str(v) for k, v in overrides.items()}}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        lat: dict[int, list[int]] = {n: [] for n in all_sizes}
        with (
            running_server(env, Path(tmp) / "server.log", startup_timeout_s) as (url, startup_s),
            httpx.Client(base_url=url, timeout=60.0, trust_env=False, headers=server_headers(env)) as client,
        ):
            for n in all_sizes:
                got = client.get(f"/v1/galleries/{_gallery_name(n)}").raise_for_status().json()
                if got["face_count"] != n:
                    raise RuntimeError(f"gallery {_gallery_name(n)} has {got['face_count']} faces, expected {n}")

            def identify(n: int) -> int:
                files = {"image": (filename, image, "application/octet-stream")}
                t0 = time.perf_counter_ns()
                # detect=false: the probe is a pre-cropped face; detection time is measured by detection.py
                r = client.post(f"/v1/galleries/{_gallery_name(n)}/identify", files=files, data={"detect": "false"})
                dt = time.perf_counter_ns() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"identify on {_gallery_name(n)}: HTTP {r.status_code}: {r.text[:300]}")
                return dt

            for n in all_sizes:
                for _ in range(warmup):
                    identify(n)
            gc.collect()
            for i in range(requests):
                # Rotate the order so a slow moment of a busy machine does not always hit one gallery.
                for j in range(len(all_sizes)):
                    n = all_sizes[(i + j) % len(all_sizes)]
                    lat[n].append(identify(n))
    results = []
    base_p50 = Stats.of(lat[small]).p50_ms
    for n in all_sizes:
        stats = Stats.of(lat[n])
        row = {"faces": n, "gallery": _gallery_name(n), **asdict(stats), "p50_minus_small_ms": stats.p50_ms - base_p50}
        results.append(row)
    return {
        **info,
        "server": "uvicorn service.api:create_app (1 worker), HTTP/1.1 keep-alive on 127.0.0.1",
        "server_index_backend": base.index_backend,
        "startup_s": round(startup_s, 1),
        "probe": probe_desc,
        "small_gallery_faces": small,
        "results": results,
    }


# --- reporting ---------------------------------------------------------------------------------------


def _model_dim() -> tuple[int | None, str]:
    """(embedding dim, model label) from the configured model's card; (None, reason) if it cannot load."""
    from embedding.embedder import read_card  # noqa: PLC0415
    from embedding.errors import ModelLoadError  # noqa: PLC0415

    path = Settings().resolved_model_path
    try:
        card = read_card(path)  # .pt or .onnx (the default is SFace's .onnx)
    except ModelLoadError as exc:
        return None, str(exc)
    return card.embedding_dim, f"{card.name}@{card.version}"


def print_report(report: dict[str, Any]) -> None:
    """The results as plain-text tables."""
    m, cfg = report["machine"], report["config"]
    print()
    print(f"machine: {m['cpu_model']}; {m['usable_cpus']} of {m['logical_cpus']} CPUs usable; {m['mem_total_gib']} GiB")
    print(f"         {m['platform']}; python {m['python']}, numpy {m['numpy']}, torch {m['torch']}")
    print(f"         ({m['torch_threads']} threads), faiss {m['faiss']} ({m['faiss_omp_threads']} OpenMP threads)")
    print(f"load average at start {m['loadavg_1_5_15']}, at end {report['loadavg_end']}")
    if report.get("search"):
        print()
        print(
            f"Search only: GalleryIndex.search(q, k={K}), 1 query per call, dim {cfg['dim']}, "
            f"{cfg['queries']} queries per series ({cfg['search_order']}; half genuine, half strangers), "
            f"{FACES_PER_IDENTITY} faces/identity"
        )
        print(f"{'faces':>8} {'identities':>10}  {'backend':<9} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'QPS':>9}")
        for r in report["search"]:
            print(
                f"{r['faces']:>8} {r['identities']:>10}  {r['backend']:<9} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                f"{r['mean_ms']:>8.3f} {r['per_s']:>9.0f}"
            )
        for r in report["search_recall"]:
            verdict = "OK (exact)" if r["recall_at_5"] == 1.0 else "MISMATCH"
            print(
                f"recall@5 of {r['backend']} vs numpy, {r['faces']:>7} faces: {r['recall_at_5']:.4f} {verdict}; "
                f"identical ranked lists {r['identical_ranked_lists']}/{r['queries']}; "
                f"max top-1 score difference {r['max_top1_score_diff']:.2e}"
            )
    http = report.get("http")
    if http:
        print()
        print(
            f"End to end: POST /v1/galleries/<gallery>/identify, {cfg['requests']} sequential requests per gallery "
            f"(interleaved), httpx client, model {http['model']}, server index {http['server_index_backend']}"
        )
        print(f"probe: {http['probe']}; gallery fill {http['fill_s']} s; server start to ready {http['startup_s']} s")
        print(f"{'faces':>8}  {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}  {'p50 - small':>11}")
        for r in http["results"]:
            print(
                f"{r['faces']:>8}  {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mean_ms']:>8.2f} {r['per_s']:>8.1f}  "
                f"{r['p50_minus_small_ms']:>+11.2f}"
            )


def _positive_ints(text: str) -> list[int]:
    sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, comma-separated")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--sizes", type=_positive_ints, help="gallery sizes in faces, comma-separated (default 1000,10000,100000)"
    )
    p.add_argument("--dim", type=int, help="vector dim for search only (default: the model card's, else 128)")
    p.add_argument("--queries", type=int, help="timed single queries per size and backend (default 1000)")
    p.add_argument("--requests", type=int, help="timed HTTP requests per gallery (default 500)")
    p.add_argument(
        "--faiss-threads",
        type=_positive_ints,
        help="FAISS OpenMP thread counts to time, comma-separated (default: 1 and FAISS's default)",
    )
    p.add_argument(
        "--blocks",
        action="store_true",
        help="search only: time each series in one block instead of interleaving them query by query",
    )
    p.add_argument("--warmup", type=int, default=20, help="untimed calls before timing, per series (default 20)")
    p.add_argument("--small", type=int, default=100, help="faces in the small HTTP baseline gallery (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 1000,10000, few queries (~30 s)")
    p.add_argument("--no-search", action="store_true", help="skip the search-only part")
    p.add_argument("--no-http", action="store_true", help="skip the end-to-end HTTP part")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the server")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.faiss_threads = args.faiss_threads or sorted({1, faiss.omp_get_max_threads()})
    args.queries = args.queries or (200 if args.quick else 1000)
    args.requests = args.requests or (30 if args.quick else 500)
    if args.quick:
        args.warmup = min(args.warmup, 5)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when FAISS and numpy disagree."""
    args = parse_args(argv)
    model_dim, model_label = _model_dim()
    if model_dim is None and not args.no_http:
        print(f"error: the configured model cannot be loaded ({model_label});", file=sys.stderr)
        print("set FACEDB_MODEL_PATH, or run with --no-http (and --dim)", file=sys.stderr)
        return 2
    dim = args.dim or model_dim or 128
    if model_dim is None:
        model_label = f"not loaded ({model_label})"
    report: dict[str, Any] = {
        "benchmark": "identify_latency",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "config": {
            "sizes": args.sizes,
            "dim": dim,
            "k": K,
            "faces_per_identity": FACES_PER_IDENTITY,
            "queries": args.queries,
            "requests": args.requests,
            "warmup": args.warmup,
            "seed": args.seed,
            "faiss_threads": args.faiss_threads,
            "search_order": "blocks" if args.blocks else "interleaved",
            "model": model_label,
        },
        "machine": machine_info(),
    }
    t0 = time.perf_counter()
    if not args.no_search:
        report["search"], report["search_recall"] = bench_search(
            args.sizes, dim, args.queries, args.warmup, args.seed, args.faiss_threads, interleave=not args.blocks
        )
    if not args.no_http:
        report["http"] = bench_http(args.sizes, args.small, args.requests, args.warmup, args.seed, args.startup_timeout)
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(report)
    print(f"\nelapsed {report['elapsed_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    exact = all(r["recall_at_5"] == 1.0 for r in report.get("search_recall", []))
    if not exact:
        print("FAISS and the numpy reference returned different identities", file=sys.stderr)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
