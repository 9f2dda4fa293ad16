"""Images without faces, for counting false faces: every detector answered on the very same images.

Two kinds, both made here from data that ships offline (nothing committed, nothing downloaded):

- ``scenes``: tiles of scikit-learn's two sample photos (a temple and a flower) at three scales, plus smooth
  random blob images like the test suite's (certainly no faces);
- ``backgrounds``: square crops of CelebA photos away from every face: a region is excluded when YuNet at
  score 0.3 *or* dlib's HOG at threshold -0.5 sees anything there (boxes grown by half), so neither detector
  is judged on what it found at a permissive setting; what is left is walls, clothes, crowds' bodies, text.

    python -m benchmarks.nofaces [--backgrounds 400]   # counts per detector at the service's settings
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from benchmarks.identify_latency import DATA_ROOT
from embedding.detect import DetectedFace, Detector, DlibDetector
from embedding.facepath import build_detector
from embedding.yunet import YuNetDetector


def scenes(seed: int = 0) -> list[np.ndarray]:
    """Tiles of scikit-learn's sample photos at three scales and 40 random blob images, uint8 (H, W, 3)."""
    from sklearn.datasets import load_sample_images  # noqa: PLC0415 - benchmark-only dependency

    out: list[np.ndarray] = []
    for photo in load_sample_images().images:
        for side in (128, 213, 320):
            for y in range(0, photo.shape[0] - side + 1, side // 2):
                for x in range(0, photo.shape[1] - side + 1, side // 2):
                    out.append(np.ascontiguousarray(photo[y : y + side, x : x + side]))
    rng = np.random.default_rng(seed)
    for _ in range(40):
        w, h = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)))
    return out


def _grown(box: tuple[float, float, float, float], by: float = 0.5) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * by / 2, (y1 - y0) * by / 2
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def backgrounds(n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Up to ``n`` face-free square crops (80 px to half the photo's shorter side) of CelebA photos, one per photo."""
    root = DATA_ROOT / "celeba_subset"
    photos = sorted(root.glob("*/*.jpg"))
    random.Random(seed).shuffle(photos)
    permissive: list[Detector] = [
        YuNetDetector(score_threshold=0.3, min_face_size=8),
        DlibDetector(backend="hog", landmarks="5", adjust_threshold=-0.5, rotation_fallback=(), min_face_size=20),
    ]
    rng = random.Random(seed)
    made = 0
    for path in photos:
        if made >= n:
            return
        rgb = np.asarray(Image.open(path).convert("RGB"))
        h, w = rgb.shape[:2]
        zones = [_grown(f.box) for det in permissive for f in det.detect(rgb)]
        for _ in range(20):
            side = rng.randint(80, max(80, min(h, w) // 2))
            if side > min(h, w):
                break
            x, y = rng.randint(0, w - side), rng.randint(0, h - side)
            if not any(_overlaps((x, y, x + side, y + side), z) for z in zones):
                made += 1
                yield np.ascontiguousarray(rgb[y : y + side, x : x + side])
                break


def png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) image (what a client would upload)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def count_false_faces(detector: Detector, images: Sequence[np.ndarray]) -> tuple[int, int]:
    """(images where the detector reports at least one face, faces reported in all)."""
    found: list[list[DetectedFace]] = [detector.detect(image) for image in images]
    return sum(1 for f in found if f), sum(len(f) for f in found)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backgrounds", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sets = {"scenes": scenes(args.seed), "backgrounds": list(backgrounds(args.backgrounds, args.seed))}
    for kind in ("yunet", "hog"):
        detector = build_detector(kind)
        for name, images in sets.items():
            with_face, faces = count_false_faces(detector, images)
            print(f"{kind:6s} {name:12s} {with_face:4d} of {len(images)} images with a false face ({faces} faces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
