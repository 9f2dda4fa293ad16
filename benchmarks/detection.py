"""Face detection: recall and speed per backend and dataset, plus detect+align accuracy.

Recall is the fraction of images where at least one face is found (every image in these sets shows
one face, so a miss is a failure to acquire). Time is per image at the dataset's native size
(decoding excluded), p50 over the sampled images, single-threaded dlib.

The alignment part (``--align``) runs the current default model through detect + align:

- AT&T rank-1 (gallery images 1-5 of s1..s40, probes 6-10) with both gallery and probes detected and
  aligned to ``HEAD_92x112`` versus the original crops; images without a detection fall back to the
  whole image (counted);
- eye placement: AT&T images aligned to ``HEAD_92x112`` are compared with the originals (the mean
  distance between the eyes detected in the original and in the aligned crop);
- LFW View 2 folds 7-9 (1,800 pairs) verification accuracy (threshold per fold chosen on the other two)
  through detect + align versus the model card's fixed crop box and a plain centre crop.

Run from the repository root::

    python -m benchmarks.detection --quick            # ~1 min, YuNet and HOG, small samples
    python -m benchmarks.detection                    # YuNet (the default), HOG, CNN (on a small sample)
    python -m benchmarks.detection --align            # + the alignment accuracy part (~4 min)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from embedding.align import FaceTemplate, HEAD_92x112, align_face
from embedding.detect import DetectedFace, Detector, DlibDetector
from embedding.facepath import build_detector
from embedding.train.evaluation import foldwise_accuracy, pair_scores, rank1_accuracy, roc_auc

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FACEDB_DATA_ROOT", REPO.parent / "shared" / "data"))
LFW_CARD_BOX = (65, 42, 185, 188)
"""The model card's fixed (left, top, right, bottom) framing of 250x250 deep-funneled LFW images."""


def read_rgb(path: Path) -> np.ndarray:
    """Decode a file to uint8 (H, W, 3) RGB (first frame of GIFs)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def dataset_files(seed: int, lfw_sample: int, celeba_sample: int) -> dict[str, list[Path]]:
    """Image paths per dataset: all of Yale A and AT&T, seeded samples of LFW and CelebA."""
    rng = random.Random(seed)
    lfw = sorted((DATA_ROOT / "lfw" / "images").glob("*/*.jpg"))
    celeba = sorted((DATA_ROOT / "celeba_subset").glob("*/*.jpg"))
    return {
        "yale_a": sorted((DATA_ROOT / "yalefaces").glob("*/*.gif")),
        "lfw": rng.sample(lfw, min(lfw_sample, len(lfw))),
        "celeba": rng.sample(celeba, min(celeba_sample, len(celeba))),
        "att": sorted((DATA_ROOT / "att_faces").glob("*/*.pgm")),
    }


@dataclass
class RecallRow:
    dataset: str
    backend: str
    n: int
    found: int
    multi: int
    p50_ms: float
    size: str
    median_face_px: float

    @property
    def recall(self) -> float:
        return self.found / self.n if self.n else float("nan")


def measure_recall(name: str, detector: Detector, paths: Sequence[Path]) -> RecallRow:
    """Detect on every path; count images with >= 1 face and time `detect`."""
    times: list[float] = []
    found = multi = 0
    sizes: list[float] = []
    shapes: set[str] = set()
    for path in paths:
        image = read_rgb(path)
        shapes.add(f"{image.shape[1]}x{image.shape[0]}")
        start = time.perf_counter()
        faces = detector.detect(image)
        times.append(time.perf_counter() - start)
        if faces:
            found += 1
            sizes.append(faces[0].width)
        multi += len(faces) > 1
    size = next(iter(shapes)) if len(shapes) == 1 else f"<= {max(max(int(v) for v in s.split('x')) for s in shapes)}"
    return RecallRow(
        dataset=name,
        backend=detector.name,
        n=len(paths),
        found=found,
        multi=multi,
        p50_ms=1000 * statistics.median(times) if times else float("nan"),
        size=size,
        median_face_px=statistics.median(sizes) if sizes else float("nan"),
    )


def recall_table(args: argparse.Namespace) -> None:
    files = dataset_files(args.seed, args.lfw_sample, args.celeba_sample)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: list[RecallRow] = []
    for backend in backends:
        # The CNN is timed without pyramid upsampling (it finds faces down to ~40 px at native size;
        # one upsampling costs ~4x, 1.4-1.9 s per image on this CPU).
        upsample = args.upsample if backend == "hog" else args.cnn_upsample
        detector: Detector = (
            build_detector("yunet")
            if backend == "yunet"
            else DlibDetector(backend="cnn" if backend == "cnn" else "hog", upsample=upsample)
        )
        start = time.perf_counter()
        detector.load()
        print(f"{detector.name}: load {time.perf_counter() - start:.2f} s", flush=True)
        for name, paths in files.items():
            sample = (
                paths if backend != "cnn" else random.Random(args.seed).sample(paths, min(args.cnn_sample, len(paths)))
            )
            rows.append(measure_recall(name, detector, sample))
            print(f"  {name}: done", flush=True)
    print()
    print(
        "| dataset | size (px) | backend | images | recall | failures to acquire | >1 face | p50 ms/image "
        "| median face px |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row.dataset} | {row.size} | {row.backend} | {row.n} | {row.recall:.3f} | {row.n - row.found} | "
            f"{row.multi} | {row.p50_ms:.1f} | {row.median_face_px:.0f} |"
        )


# ------------------------------------------------------------------------------------- alignment


def aligned_or_whole(
    detector: DlibDetector, image: np.ndarray, template: FaceTemplate
) -> tuple[np.ndarray, DetectedFace | None]:
    """The largest face aligned to `template`, or the whole image when nothing is detected."""
    faces = detector.detect(image)
    if not faces:
        return image, None
    return align_face(image, faces[0].landmarks, template=template), faces[0]


def att_split() -> tuple[list[Path], list[str], list[Path], list[str]]:
    root = DATA_ROOT / "att_faces"
    gallery, g_labels, probes, p_labels = [], [], [], []
    for subject in range(1, 41):
        for index in range(1, 11):
            path = root / f"s{subject}" / f"{index}.pgm"
            if index <= 5:
                gallery.append(path)
                g_labels.append(f"s{subject}")
            else:
                probes.append(path)
                p_labels.append(f"s{subject}")
    return gallery, g_labels, probes, p_labels


def read_lfw_pairs(folds: Sequence[int]) -> list[tuple[Path, Path, bool, int]]:
    """LFW View 2 pairs of the given folds as (path a, path b, same, fold)."""
    root = DATA_ROOT / "lfw"
    lines = (root / "pairs.txt").read_text().split("\n")
    _, per_fold = (int(v) for v in lines[0].split())
    rows = [line.split() for line in lines[1:] if line.strip()]

    def image(name: str, number: str) -> Path:
        return root / "images" / name / f"{name}_{int(number):04d}.jpg"

    pairs = []
    for index, row in enumerate(rows):
        fold = index // (2 * per_fold) + 1
        if fold not in folds:
            continue
        if len(row) == 3:
            pairs.append((image(row[0], row[1]), image(row[0], row[2]), True, fold))
        else:
            pairs.append((image(row[0], row[1]), image(row[2], row[3]), False, fold))
    return pairs


def align_eval(args: argparse.Namespace) -> None:
    import torch  # noqa: PLC0415

    from embedding.embedder import compact_model_path  # noqa: PLC0415
    from embedding.torch_embedder import TorchEmbedder  # noqa: PLC0415

    torch.set_num_threads(2)
    embedder = TorchEmbedder(compact_model_path())
    modes = [m.strip() for m in args.landmarks.split(",") if m.strip()]
    gallery, g_labels, probes, p_labels = att_split()
    att_images = [read_rgb(p) for p in gallery + probes]
    emb = embedder.embed(att_images)
    base = rank1_accuracy(emb[:200], g_labels, emb[200:], p_labels)
    print(f"\nAT&T rank-1, original crops: {base:.4f}")

    lfw_pairs = read_lfw_pairs((7, 8, 9))
    lfw_paths = sorted({p[0] for p in lfw_pairs} | {p[1] for p in lfw_pairs})
    lfw_index = {p: i for i, p in enumerate(lfw_paths)}
    lfw_images = [read_rgb(p) for p in lfw_paths]
    same = np.array([p[2] for p in lfw_pairs])
    folds = np.array([p[3] for p in lfw_pairs])

    def lfw_metrics(crops: Sequence[np.ndarray]) -> tuple[float, float, float]:
        e = embedder.embed(list(crops))
        scores = pair_scores(e[[lfw_index[p[0]] for p in lfw_pairs]], e[[lfw_index[p[1]] for p in lfw_pairs]])
        acc = foldwise_accuracy(scores, same, folds)
        return float(np.mean(acc)), float(np.std(acc)), roc_auc(scores, same)

    left, top, right, bottom = LFW_CARD_BOX
    for label, crops in (
        ("card crop box", [im[top:bottom, left:right] for im in lfw_images]),
        ("centre crop of 250x250", lfw_images),
    ):
        acc, sd, auc = lfw_metrics(crops)
        print(f"LFW 7-9, {label}: accuracy {acc:.4f} +- {sd:.4f}, AUC {auc:.4f}")

    for mode in modes:
        detector = DlibDetector(landmarks="5" if mode == "5" else "68")
        crops_faces = [aligned_or_whole(detector, im, HEAD_92x112) for im in att_images]
        misses = sum(face is None for _, face in crops_faces)
        emb = embedder.embed([c for c, _ in crops_faces])
        r1 = rank1_accuracy(emb[:200], g_labels, emb[200:], p_labels)
        # Eye placement: detect again on the aligned crop, compare eye centres with the original image's.
        errors = []
        template_errors = []
        for crop, face in crops_faces:
            if face is None:
                continue
            again = detector.detect(crop)
            if again:
                errors.append(float(np.linalg.norm(again[0].landmarks[:2] - face.landmarks[:2], axis=1).mean()))
                template_errors.append(
                    float(np.linalg.norm(again[0].landmarks[:2] - HEAD_92x112.continuous_points()[:2], axis=1).mean())
                )
        print(
            f"[{detector.name}] AT&T detect+align HEAD_92x112: rank-1 {r1:.4f} ({misses} of 400 not detected, "
            f"whole image used); eye centres in aligned crop vs original image: median "
            f"{statistics.median(errors):.2f} px, p90 {np.percentile(errors, 90):.2f} px; "
            f"vs template: median {statistics.median(template_errors):.2f} px"
        )
        lfw_crops = [aligned_or_whole(detector, im, HEAD_92x112) for im in lfw_images]
        lfw_misses = sum(face is None for _, face in lfw_crops)
        acc, sd, auc = lfw_metrics([c for c, _ in lfw_crops])
        print(
            f"[{detector.name}] LFW 7-9 detect+align HEAD_92x112: accuracy {acc:.4f} +- {sd:.4f}, AUC {auc:.4f} "
            f"({lfw_misses} of {len(lfw_images)} images not detected, whole image used)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="HOG only, 100 LFW and 100 CelebA images")
    parser.add_argument("--backends", default="yunet,hog,cnn", help="comma-separated: yunet, hog, cnn")
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--cnn-upsample", type=int, default=0)
    parser.add_argument("--lfw-sample", type=int, default=500)
    parser.add_argument("--celeba-sample", type=int, default=500)
    parser.add_argument("--cnn-sample", type=int, default=40, help="images per dataset for the slow CNN backend")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--align", action="store_true", help="also run the detect+align accuracy part")
    parser.add_argument("--align-only", action="store_true")
    parser.add_argument("--landmarks", default="68,5", help="landmark models for --align: 68, 5")
    args = parser.parse_args(argv)
    if not DATA_ROOT.exists():
        raise SystemExit(f"face data not found at {DATA_ROOT} (set FACEDB_DATA_ROOT)")
    if args.quick:
        args.backends = "yunet,hog"
        args.lfw_sample = min(args.lfw_sample, 100)
        args.celeba_sample = min(args.celeba_sample, 100)
    print(f"load average at start: {os.getloadavg()}")
    if not args.align_only:
        recall_table(args)
    if args.align or args.align_only:
        align_eval(args)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
