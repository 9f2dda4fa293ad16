"""Search at scale on realistic vectors: facedb's FAISS index kinds beside exact search in the same run.

Galleries are synthetic but follow real embeddings of the shared faces: the default model's embeddings of the
shared data (`python -m benchmarks.open_set embed --models dlib_sface`, cached; ``--view`` picks another model's,
``--datasets`` the data sets, all five by default) give the mean and covariance of a person's centre and of a face
around its centre; new people and faces are drawn from those Gaussians and normalised (a fusion's part by part), so
that genuine and impostor cosines have the real distributions (printed beside the real ones). Probes: half a new
face of an enrolled person, half a stranger.

    python -m benchmarks.search_scale --faces 1000000 --json            # the kind the service would choose
    python -m benchmarks.search_scale --faces 100000 --kind fp16 --json

Each kind is `index.FaissIndex`, the service's own code. The last line is one JSON object: kind, faces, p50_ms,
p99_ms (one query, one thread), batch_p50_ms (64 queries), recall_at_1 and recall_at_5 against exact search in the
same run (also split into genuine probes and strangers, and at the identity level), exact_p50_ms, memory_bytes
(the index as the service snapshots it) beside raw_bytes (the float32 vectors), build_s, add_p50_ms and
remove_p50_ms (one face enrolled or deleted in the built index, no rebuild) with a check that they show up at
once, and rank-1 and FNIR at the exact search's FPIR 1% threshold for both.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.open_set import CACHE, DATASETS, load_view
from index import KINDS, FaissIndex, GalleryIndex, Tuning, gpu_available
from index.base import unit_means
from service.indexing import choose_kind

ALL_DATASETS = tuple(d.name for d in DATASETS)
DEFAULT_VIEW = "dlib_sface"
"""The cached embeddings the galleries follow by default: the default model's (`embedder.default_model_path`)."""


@dataclass(frozen=True)
class FaceModel:
    """Statistics of real embeddings: person centres ~ N(centre_mean, centre_cov); a person's faces ~
    normalise(centre + spread * N(0, face_cov)), with ``spread`` drawn per person from the real people's (some
    people's photos vary far more than others'); a fusion's vectors (``parts``) are normalised part by part."""

    centre_mean: np.ndarray
    centre_chol: np.ndarray
    face_chol: np.ndarray
    spreads: np.ndarray
    parts: tuple[int, ...] | None = None

    @property
    def dim(self) -> int:
        return int(self.centre_mean.shape[0])

    def people(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """float32 (n, D) person centres (not normalised)."""
        z = rng.standard_normal((n, self.dim)).astype(np.float32)
        return np.asarray(self.centre_mean + z @ self.centre_chol.T, dtype=np.float32)

    def spread(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """float32 (n,) per-person spreads, resampled from the real people's."""
        return np.asarray(rng.choice(self.spreads, n), dtype=np.float32)

    def faces(self, centres: np.ndarray, spread: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """float32 (N, D) unit faces, one per row of ``centres`` with its person's ``spread`` (N,)."""
        z = rng.standard_normal(centres.shape).astype(np.float32)
        x = centres + spread[:, None] * (z @ self.face_chol.T)
        return unit_means(x.astype(np.float64), self.parts)


def fit_face_model(
    cache: Path, datasets: Sequence[str] = ALL_DATASETS, view: str = DEFAULT_VIEW
) -> tuple[FaceModel, np.ndarray, np.ndarray]:
    """The statistics of the cached real embeddings of ``datasets``, with those embeddings' (unit (N, D), person
    (N,))."""
    real = load_view(cache, view, datasets)
    keep = real.found
    x, who = real.x[keep], real.identity[keep]
    names, person = np.unique(who, return_inverse=True)
    counts = np.bincount(person)
    several = counts[person] >= 2
    x, person = x[several], person[several]
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, person, x)
    centres = sums[counts > 1] / counts[counts > 1][:, None]
    residual = x - (sums / np.maximum(counts, 1)[:, None])[person]
    # each person's residual size relative to everyone's (unbiased for their number of photos)
    own = np.zeros(len(names))
    np.add.at(own, person, (residual**2).sum(axis=1))
    n = counts[counts > 1]
    rms = np.sqrt(own[counts > 1] / (n - 1))
    spreads = rms / np.sqrt((residual**2).sum(axis=1).sum() / (len(x) - len(n)))
    jitter = 1e-6 * np.eye(x.shape[1])
    model = FaceModel(
        centre_mean=centres.mean(axis=0).astype(np.float32),
        centre_chol=np.linalg.cholesky(np.cov(centres, rowvar=False) + jitter).astype(np.float32),
        face_chol=np.linalg.cholesky(np.cov(residual, rowvar=False) + jitter).astype(np.float32),
        spreads=spreads.astype(np.float32),
        parts=real.parts,
    )
    return model, x, person


def cosine_quantiles(x: np.ndarray, person: np.ndarray, rng: np.random.Generator, pairs: int = 20000) -> dict[str, Any]:
    """Quantiles (5, 50, 95 %) of genuine and impostor cosines over random pairs."""
    a, b = rng.integers(0, len(x), pairs), rng.integers(0, len(x), pairs)
    same = (person[a] == person[b]) & (a != b)
    scores = np.einsum("ij,ij->i", x[a], x[b])
    order = np.argsort(person, kind="stable")
    starts = np.searchsorted(person[order], np.arange(person.max() + 1))
    ends = np.searchsorted(person[order], np.arange(person.max() + 1), side="right")
    gen = []
    for p in rng.integers(0, person.max() + 1, pairs):
        members = order[starts[p] : ends[p]]
        if len(members) >= 2:
            i, j = rng.choice(members, 2, replace=False)
            gen.append(float(x[i] @ x[j]))
    q = (5, 50, 95)
    return {
        "genuine": [round(float(v), 3) for v in np.percentile(gen, q)],
        "impostor": [round(float(v), 3) for v in np.percentile(scores[~same], q)],
    }


@dataclass
class Gallery:
    x: np.ndarray
    person: np.ndarray
    probes: np.ndarray
    probe_person: np.ndarray
    """-1 for strangers."""


def make_gallery(model: FaceModel, faces: int, per_person: int, queries: int, seed: int) -> Gallery:
    rng = np.random.default_rng(seed)
    people = max(1, faces // per_person)
    centres, spread = model.people(people, rng), model.spread(people, rng)
    person = np.repeat(np.arange(people), per_person)[:faces]
    x = np.empty((faces, model.dim), dtype=np.float32)
    for start in range(0, faces, 200_000):  # bounded temporary memory
        rows = person[start : start + 200_000]
        x[start : start + len(rows)] = model.faces(centres[rows], spread[rows], rng)
    enrolled = rng.integers(0, people, queries // 2)
    n_strangers = queries - len(enrolled)
    strangers = model.faces(model.people(n_strangers, rng), model.spread(n_strangers, rng), rng)
    probes = np.concatenate([model.faces(centres[enrolled], spread[enrolled], rng), strangers])
    return Gallery(x, person, probes, np.concatenate([enrolled, np.full(len(strangers), -1)]))


def build(kind: str, x: np.ndarray, tuning: Tuning) -> tuple[FaissIndex, float]:
    """(index, seconds to train and add) for a kind over unit vectors x (N, D), ids 0..N-1."""
    started = time.perf_counter()
    index = FaissIndex.from_vectors(np.arange(len(x), dtype=np.int64), x, kind=kind, tuning=tuning)
    return index, time.perf_counter() - started


class GpuExact:
    """Exact float32 search on the GPU: the reference when the gallery is too large for exact CPU search."""

    def __init__(self, x: np.ndarray) -> None:
        self._res: Any = faiss.StandardGpuResources()
        self._index: Any = faiss.GpuIndexFlatIP(self._res, x.shape[1])
        self._index.add(x)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(q, k)  # type: ignore[no-any-return]


def time_queries(index: Any, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Scores and ids (Q, k) and per-query milliseconds, one query per call."""
    scores, ids, times = [], [], []
    for q in probes:
        started = time.perf_counter()
        s, i = index.search(q[None, :], k)
        times.append((time.perf_counter() - started) * 1000)
        scores.append(s[0])
        ids.append(i[0])
    return np.array(scores), np.array(ids), times


def batch_p50(index: Any, probes: np.ndarray, k: int, size: int = 64) -> float:
    times = []
    for start in range(0, len(probes) - size + 1, size):
        started = time.perf_counter()
        index.search(probes[start : start + size], k)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times)) if times else float("nan")


def decisions(gallery: Gallery, scores: np.ndarray, ids: np.ndarray, threshold: float) -> dict[str, float]:
    """Rank-1 and FNIR over the genuine probes at ``threshold`` (a match is the right person's face on top)."""
    genuine = gallery.probe_person >= 0
    top = gallery.person[np.maximum(ids[:, 0], 0)]
    right = (top == gallery.probe_person) & (ids[:, 0] >= 0)
    return {
        "rank1": round(float(right[genuine].mean()), 4),
        "fnir": round(float(1 - (right & (scores[:, 0] >= threshold))[genuine].mean()), 4),
    }


def identity_level(gallery: Gallery, parts: tuple[int, ...] | None = None) -> Gallery:
    """The gallery as the service searches it with identity_score="mean": one normalised mean face per person (a
    fusion's part by part)."""
    people = int(gallery.person.max()) + 1
    sums = np.zeros((people, gallery.x.shape[1]), dtype=np.float64)
    np.add.at(sums, gallery.person, gallery.x)
    means = unit_means(sums, parts)
    return Gallery(means, np.arange(people), gallery.probes, gallery.probe_person)


def changes(index: FaissIndex, gallery: Gallery, rng: np.random.Generator, n: int = 200) -> dict[str, Any]:
    """Enrol and delete ``n`` single faces in the built index, timing each; then check both show up at once."""
    n = min(n, len(gallery.probes))
    new = gallery.probes[rng.choice(len(gallery.probes), n, replace=False)]
    new_ids = np.arange(len(gallery.x), len(gallery.x) + n, dtype=np.int64)
    gone_ids = rng.choice(len(gallery.x), n, replace=False).astype(np.int64)
    add_ms, remove_ms = [], []
    for i in range(n):
        started = time.perf_counter()
        index.add(new_ids[i : i + 1], new[i : i + 1])
        add_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        index.remove(gone_ids[i : i + 1])
        remove_ms.append((time.perf_counter() - started) * 1000)
    _, found = index.search(new, 1)
    _, own = index.search(gallery.x[gone_ids], 10)
    return {
        "add_p50_ms": round(float(np.median(add_ms)), 4),
        "remove_p50_ms": round(float(np.median(remove_ms)), 4),
        "added_found_at_1": round(float((found[:, 0] == new_ids).mean()), 4),
        "removed_returned": int(np.isin(own, gone_ids).sum()),
    }


def resident_growth(kind: str, snapshot: Path, what: str) -> int:
    """Bytes a fresh process's resident set grows by when it loads ``snapshot`` (``what``: "index" for a
    `FaissIndex` file, "gallery" for a `GalleryIndex` directory scored by identity means, as the service holds
    it), after returning the load's freed buffers to the system (glibc's malloc_trim)."""
    code = (
        "from benchmarks.search_scale import _load_and_measure; "
        f"print(_load_and_measure({kind!r}, {str(snapshot)!r}, {what!r}))"
    )
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=repo)
    return int(out.stdout.strip().splitlines()[-1])


def _resident() -> int:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure without trimming
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


def _load_and_measure(kind: str, snapshot: str, what: str) -> int:
    before = _resident()
    if what == "index":
        loaded: Any = FaissIndex.load(Path(snapshot), kind=kind)
    else:
        loaded = GalleryIndex.load(Path(snapshot), identity_score="mean")
    grown = _resident() - before
    del loaded
    return grown


def memory_in_ram(index: FaissIndex, gallery: Gallery, tuning: Tuning) -> dict[str, Any]:
    """The index, and the whole gallery as the service holds it (faces and identity means, ``identity_score=mean``),
    each loaded from its snapshot by a fresh process: resident growth over the raw float32 vectors."""
    raw = gallery.x.nbytes
    with tempfile.TemporaryDirectory(prefix="facedb-scale-") as tmp:
        index.save(Path(tmp) / "index.npz")
        index_bytes = resident_growth(index.kind, Path(tmp) / "index.npz", "index")
        whole = GalleryIndex(gallery.x.shape[1], kind=index.kind, tuning=tuning, identity_score="mean")
        whole.add(np.arange(len(gallery.x), dtype=np.int64), gallery.person, gallery.x)
        whole.save(Path(tmp) / "gallery", meta={})
        del whole
        gallery_bytes = resident_growth(index.kind, Path(tmp) / "gallery", "gallery")
    return {
        "ram_index_ratio": round(index_bytes / raw, 3),
        "ram_gallery_ratio": round(gallery_bytes / raw, 3),
    }


def recall(ids: np.ndarray, e_ids: np.ndarray, rows: np.ndarray) -> float:
    return round(float((ids[rows, 0] == e_ids[rows, 0]).mean()), 4) if rows.any() else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    faiss.omp_set_num_threads(args.build_threads)
    rng = np.random.default_rng(args.seed)
    model, real_x, real_person = fit_face_model(args.cache, args.datasets, args.view)
    gallery = make_gallery(model, args.faces, args.per_person, args.queries, args.seed)
    synthetic = cosine_quantiles(gallery.x[:200_000], gallery.person[:200_000], rng)
    kind = args.kind or choose_kind(args.faces, gpu=gpu_available())
    if args.level == "identity":
        gallery = identity_level(gallery, model.parts)
    tuning = Tuning(
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef,
        nprobe=args.nprobe,
        rerank=args.rerank,
    )
    exact: Any = GpuExact(gallery.x) if KINDS[kind].gpu else build("flat", gallery.x, tuning)[0]
    index, build_s = build(kind, gallery.x, tuning)
    faiss.omp_set_num_threads(args.threads)
    e_scores, e_ids, e_times = time_queries(exact, gallery.probes, 5)
    strangers = gallery.probe_person < 0
    threshold = float(np.quantile(e_scores[strangers, 0], 0.99))  # FPIR 1% under exact search
    scores, ids, times = time_queries(index, gallery.probes, 5)
    person = gallery.person
    result = {
        "kind": kind,
        "summary": KINDS[kind].summary,
        "faces": args.faces,
        "level": args.level,
        "vectors": len(gallery.x),
        "dim": model.dim,
        "p50_ms": round(float(np.median(times)), 4),
        "p99_ms": round(float(np.percentile(times, 99)), 4),
        "batch_p50_ms": round(batch_p50(index, gallery.probes, 5), 3),
        "recall_at_1": recall(ids, e_ids, np.ones(len(ids), dtype=bool)),
        "recall_at_1_genuine": recall(ids, e_ids, ~strangers),
        "recall_at_1_strangers": recall(ids, e_ids, strangers),
        "identity_recall_at_1": round(float((person[ids[:, 0]] == person[e_ids[:, 0]]).mean()), 4),
        "recall_at_5": round(float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, e_ids, strict=True)])), 4),
        "exact_p50_ms": round(float(np.median(e_times)), 4),
        "exact_p99_ms": round(float(np.percentile(e_times, 99)), 4),
        "memory_bytes": int(index.serialize().nbytes),
        "raw_bytes": int(gallery.x.nbytes),
        "build_s": round(build_s, 2),
        "threshold_fpir_1pct": round(threshold, 4),
        "exact": decisions(gallery, e_scores, e_ids, threshold),
        "approximate": decisions(gallery, scores, ids, threshold),
        "datasets": list(args.datasets),
        "cosines_real": cosine_quantiles(real_x, real_person, rng),
        "cosines_synthetic": synthetic,
        "threads": args.threads,
        "tuning": {
            "hnsw_m": args.hnsw_m,
            "ef_construction": args.ef_construction,
            "ef_search": args.ef,
            "nprobe": args.nprobe,
            "nprobe_used": index.nprobe,
            "rerank": args.rerank,
        },
        "queries": args.queries,
    }
    result["memory_ratio"] = round(result["memory_bytes"] / result["raw_bytes"], 3)
    if args.level == "face" and not KINDS[kind].gpu:
        result.update(memory_in_ram(index, gallery, tuning))
    result.update(changes(index, gallery, rng))
    return result


DEFAULTS = Tuning()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--kind", choices=sorted(KINDS), default=None, help="default: the service's choice at that size")
    p.add_argument("--per-person", type=int, default=5)
    p.add_argument(
        "--level",
        choices=["face", "identity"],
        default="face",
        help="search every face, or (as identify does with the default identity_score=mean) one mean per person",
    )
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", type=int, default=DEFAULTS.ef_search, help="HNSW efSearch")
    p.add_argument("--hnsw-m", type=int, default=DEFAULTS.hnsw_m, help="HNSW links per vector")
    p.add_argument("--ef-construction", type=int, default=DEFAULTS.ef_construction, help="HNSW efConstruction")
    p.add_argument("--nprobe", type=int, default=DEFAULTS.nprobe, help="IVF lists scanned (0: automatic)")
    p.add_argument("--rerank", type=int, default=DEFAULTS.rerank, help="pq, ivfpq: candidates re-ranked exactly")
    p.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads for search (the service's is 1)")
    p.add_argument("--build-threads", type=int, default=2, help="FAISS OpenMP threads for building")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument(
        "--datasets",
        nargs="+",
        choices=ALL_DATASETS,
        default=list(ALL_DATASETS),
        help="the shared data sets whose real embeddings the gallery's statistics follow (default: all of them)",
    )
    p.add_argument(
        "--view",
        default=DEFAULT_VIEW,
        help="the cached embeddings whose statistics the gallery follows (default: the default model's, the 256-d"
        " fusion dlib_sface; sface for SFace's 128-d)",
    )
    p.add_argument("--json", action="store_true", help="only the JSON line")
    args = p.parse_args(argv)
    try:
        result = run(args)
    except FileNotFoundError as exc:
        p.error(str(exc))
    if not args.json:
        for key in ("kind", "faces", "p50_ms", "p99_ms", "recall_at_1", "exact_p50_ms", "memory_bytes", "raw_bytes"):
            print(f"{key:>14}: {result[key]}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
