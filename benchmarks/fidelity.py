"""Fidelity: each shipped embedder through facedb's face path beside its reference pipeline, in one run.

The default model is dlib's ResNet; its reference is dlib's own whole pipeline as dlib's examples and
face_recognition run it (`benchmarks/dlib_reference.py embed`: HOG with 1 upsample, the 5-point predictor,
``get_face_chip`` 150 px / padding 0.25, ``compute_face_descriptor``), run by ``--dlib-python`` (default
``.venv-bench``: dlib built from source, `scripts/setup_dlib_baseline.sh`; any Python with dlib works).
facedb's path is the service's: `embedding.facepath.build_detector()` (YuNet, landmarks by dlib's 5-point
predictor), `model_face` (one similarity transform to the model's template), the embedder the service would run.

Rows: the reference; facedb's path with the shipped card (mirror-image test-time augmentation on when the card
says so); facedb's path without it; and the path of the previous release (dlib HOG + 68-point landmarks, the
256 px canonical crop, then the model's template) for the record. In every row the face is the largest one
found; a photo without a face is a failure to acquire and scores -1 against everything.

- LFW folds 1-9 (every image of `pairs.txt`): accuracy by the 10-fold method (threshold chosen on the other
  folds), ROC AUC over the listed pairs, and TAR at FAR 1e-3 / 1e-4 with the threshold set on *every*
  cross-identity pair of those images (millions of impostors, so 1e-4 is measured, not extrapolated); genuine
  pairs are every same-identity pair of the images.
- CelebA subset: one gallery photo per identity (its first photo, in file order, where that row finds a face),
  every other photo a probe; rank-1 counts a probe without a face as a miss; failure to acquire.

    python -m benchmarks.fidelity [--json fidelity.json] [--lfw-limit N] [--celeba-limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.identify_latency import DATA_ROOT, REPO, machine_info
from embedding.align import CANONICAL, align_face, canonical_crop, template_for_spec
from embedding.checkpoint import load_checkpoint, replace_card
from embedding.detect import DlibDetector
from embedding.embedder import Embedder, dlib_resnet_model_path, load_embedder
from embedding.facepath import build_detector, model_face
from embedding.image import decode_image
from embedding.train.data import read_pairs
from embedding.train.evaluation import foldwise_accuracy, roc_auc, tar_at_far

MAX_PIXELS = 40_000_000


@dataclass
class Row:
    """One pipeline's embeddings of every image: float32 (N, D) unit rows, and which images had a face."""

    name: str
    emb: np.ndarray
    found: np.ndarray


def read(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes(), max_pixels=MAX_PIXELS)


def facedb_rows(model: Path, paths: Sequence[Path], onnx_cache: Path) -> list[Row]:
    """facedb's path with the card as shipped, without mirror-image augmentation, and the previous path."""
    _, card = load_checkpoint(model)
    with tempfile.TemporaryDirectory() as tmp:
        plain_path = Path(tmp) / "plain.pt"
        replace_card(
            model, plain_path, card.model_copy(update={"input": card.input.model_copy(update={"flip": False})})
        )
        plain = load_embedder(plain_path, runtime="auto", onnx_cache=onnx_cache, device="cpu")
        plain.load()
    spec = card.input
    detector = build_detector()
    previous = DlibDetector(landmarks="68")
    crops, mirrors, found = [], [], np.zeros(len(paths), bool)
    old_crops, old_found = [], np.zeros(len(paths), bool)
    for i, path in enumerate(paths):
        image = read(path)
        faces = detector.detect(image)
        if faces:
            crop = model_face(image, faces[0].landmarks, spec)
            crops.append(crop)
            mirrors.append(np.ascontiguousarray(crop[:, ::-1]))
            found[i] = True
        old = previous.detect(image)
        if old:
            canonical = canonical_crop(image, old[0].landmarks)
            old_crops.append(align_face(canonical, CANONICAL.continuous_points(), template=template_for_spec(spec)))
            old_found[i] = True
        if i % 1000 == 999:
            print(f"  facedb: {i + 1} of {len(paths)} images", file=sys.stderr, flush=True)
    dim = card.embedding_dim
    straight = _scatter(plain, crops, found, dim)
    mirrored = _scatter(plain, mirrors, found, dim)
    both = straight + mirrored
    both /= np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    old_rows = _scatter(plain, old_crops, old_found, dim)
    label = "facedb: YuNet + dlib 5-point, one resampling"
    rows = [Row(f"{label}, mirror TTA", both, found), Row(f"{label}, no TTA", straight, found)]
    if not spec.flip:
        rows = rows[::-1]
    rows.append(Row("facedb 0.1 path: HOG + 68-point, canonical crop then template", old_rows, old_found))
    return rows


def _scatter(embedder: Embedder, crops: Sequence[np.ndarray], found: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros((len(found), dim), np.float32)
    if crops:
        out[found] = np.concatenate([embedder.embed(crops[i : i + 256]) for i in range(0, len(crops), 256)])
    return out


def dlib_row(python: Path, paths: Sequence[Path], workers: int) -> Row:
    """dlib's own pipeline on every image, ``workers`` processes of `benchmarks/dlib_reference.py embed`."""
    chunks = [list(paths[i::workers]) for i in range(workers)]
    with tempfile.TemporaryDirectory() as tmp:

        def run(k: int) -> Any:
            listing, out = Path(tmp) / f"list{k}.txt", Path(tmp) / f"out{k}.npz"
            listing.write_text("\n".join(str(p) for p in chunks[k]))
            script = str(REPO / "benchmarks" / "dlib_reference.py")
            subprocess.run([str(python), script, "embed", "--list", str(listing), "--out", str(out)], check=True)
            return np.load(out)

        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(run, range(workers)))
    emb = np.zeros((len(paths), 128), np.float32)
    found = np.zeros(len(paths), bool)
    for k, part in enumerate(parts):
        idx = np.arange(k, len(paths), workers)
        emb[idx] = part["descriptors"].astype(np.float32)
        found[idx] = part["found"]
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    version = subprocess.run(
        [str(python), "-c", "import dlib; print(dlib.__version__, dlib.DLIB_USE_BLAS)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return Row(f"dlib {' '.join(version[:1])} own pipeline (BLAS {version[1:2]})", emb, found)


def lfw_metrics(row: Row, paths: Sequence[Path], pairs: Sequence[Any]) -> dict[str, float]:
    """10-fold accuracy and AUC on the listed pairs; TAR at FAR 1e-3 / 1e-4 over every pair of the images."""
    index = {p: i for i, p in enumerate(paths)}
    a = np.array([index[p.a] for p in pairs])
    b = np.array([index[p.b] for p in pairs])
    scores = _scores(row)
    listed = scores[a, b].astype(np.float64)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    people = np.array([p.parent.name for p in paths])
    upper = np.triu_indices(len(paths), 1)
    all_scores = scores[upper].astype(np.float64)
    all_same = (people[:, None] == people[None, :])[upper]
    return {
        "images": len(paths),
        "failure_to_acquire": float(1 - row.found.mean()),
        "accuracy": float(np.mean(foldwise_accuracy(listed, same, folds))),
        "auc": roc_auc(listed, same),
        "tar_far_1e-3": tar_at_far(all_scores, all_same, 1e-3)[0],
        "tar_far_1e-4": tar_at_far(all_scores, all_same, 1e-4)[0],
        "genuine_pairs": int(all_same.sum()),
        "impostor_pairs": int((~all_same).sum()),
    }


def _scores(row: Row) -> np.ndarray:
    scores: np.ndarray = row.emb @ row.emb.T
    scores[~row.found, :] = -1.0
    scores[:, ~row.found] = -1.0
    return scores


def celeba_metrics(row: Row, paths: Sequence[Path]) -> dict[str, float]:
    """Rank-1 with each identity's first photo with a face as its gallery; FTA over every photo."""
    people = np.array([p.parent.name for p in paths])
    gallery: dict[str, int] = {}
    for i, person in enumerate(people):
        if row.found[i] and person not in gallery:
            gallery[person] = i
    names = sorted(gallery)
    g = row.emb[[gallery[n] for n in names]]
    probes = [i for i in range(len(paths)) if i not in set(gallery.values()) and people[i] in gallery]
    hits = 0
    for i in probes:
        if row.found[i]:
            hits += names[int(np.argmax(g @ row.emb[i]))] == people[i]
    return {
        "photos": len(paths),
        "identities_with_gallery": len(names),
        "probes": len(probes),
        "failure_to_acquire": float(1 - row.found.mean()),
        "rank1": hits / max(len(probes), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=dlib_resnet_model_path())
    parser.add_argument("--dlib-python", type=Path, default=REPO / ".venv-bench" / "bin" / "python")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lfw-limit", type=int, default=0, help="first N LFW images only (smoke runs)")
    parser.add_argument("--celeba-limit", type=int, default=0)
    parser.add_argument("--onnx-cache", type=Path, default=Path(tempfile.gettempdir()) / "facedb-onnx")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    pairs = read_pairs(DATA_ROOT / "lfw" / "pairs.txt")
    lfw = sorted({q for p in pairs for q in (p.a, p.b)})[: args.lfw_limit or None]
    keep = set(lfw)
    pairs = [p for p in pairs if p.a in keep and p.b in keep]
    celeba = sorted((DATA_ROOT / "celeba_subset").glob("*/*.jpg"))[: args.celeba_limit or None]
    images = lfw + celeba
    python = args.dlib_python if args.dlib_python.exists() else Path(sys.executable)
    t0 = time.perf_counter()
    rows = [dlib_row(python, images, args.workers)]
    t1 = time.perf_counter()
    rows += facedb_rows(args.model, images, args.onnx_cache)
    t2 = time.perf_counter()
    n = len(lfw)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "model": str(args.model),
        "seconds": {"dlib": t1 - t0, "facedb": t2 - t1},
        "rows": [],
    }
    for row in rows:
        lfw_row = Row(row.name, row.emb[:n], row.found[:n])
        celeba_row = Row(row.name, row.emb[n:], row.found[n:])
        report["rows"].append(
            {"name": row.name, "lfw": lfw_metrics(lfw_row, lfw, pairs), "celeba": celeba_metrics(celeba_row, celeba)}
        )
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


def print_table(report: dict[str, Any]) -> None:
    info = report["machine"]
    print(f"machine: {info['cpu_model']}; {info['usable_cpus']} CPUs; model {report['model']}")
    head = "| pipeline | LFW acc (10-fold) | AUC | TAR@1e-3 | TAR@1e-4 | LFW FTA | CelebA rank-1 | CelebA FTA |"
    print(head)
    print("|" + "---|" * 8)
    for r in report["rows"]:
        lfw, cel = r["lfw"], r["celeba"]
        print(
            f"| {r['name']} | {lfw['accuracy']:.4f} | {lfw['auc']:.4f} | {lfw['tar_far_1e-3']:.4f} | "
            f"{lfw['tar_far_1e-4']:.4f} | {lfw['failure_to_acquire']:.2%} | {cel['rank1']:.4f} | "
            f"{cel['failure_to_acquire']:.2%} |"
        )


if __name__ == "__main__":
    sys.exit(main())
