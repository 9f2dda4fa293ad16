"""Measure where dlib's face chip puts our five landmarks: the `dlib_150` template of `embedding.align`.

dlib's own pipeline aligns a face with its 5-point predictor (eye corners, nose base) and `get_face_chip`
(150x150, padding 0.25). facedb aligns every model by a similarity transform from its own five landmarks
(eye centres, nose tip, mouth corners; `embedding.detect`) to a template. For dlib's ResNet the template is the
mean position of our landmarks inside dlib's chip, over LFW faces: for each face the exact image -> chip
mapping is read back from dlib by extracting chips of coordinate images (bilinear sampling of a linear ramp is
exact), our landmarks are mapped through it, and the mean over faces is printed (pixel-index convention, the
convention `FaceTemplate.points` uses) with the spread and the mean residual of a per-face similarity fit.

    python -m scripts.derive_dlib_template [--faces 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedding.detect import DlibDetector, as_rgb
from embedding.image import decode_image
from embedding.train.faceset import central_face

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CHIP = 150
PADDING = 0.25


def chip_points(details: object, points: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Map float (N, 2) pixel-index image points into dlib's chip (pixel-index convention)."""
    import dlib  # noqa: PLC0415

    height, width = image_shape
    xs = np.tile(np.arange(width, dtype=np.float32), (height, 1))
    ys = np.tile(np.arange(height, dtype=np.float32)[:, None], (1, width))
    cx = np.asarray(dlib.extract_image_chip(xs, details), dtype=np.float64)
    cy = np.asarray(dlib.extract_image_chip(ys, details), dtype=np.float64)
    # Interior chip pixels only: at the chip border dlib samples outside the image (zeros).
    inner = (cx > 1) & (cx < width - 2) & (cy > 1) & (cy < height - 2)
    rows, cols = np.nonzero(inner)
    design = np.stack([cx[inner], cy[inner], np.ones(inner.sum())], axis=1)
    # Least-squares affine from image coordinates to chip coordinates.
    coef, *_ = np.linalg.lstsq(design, np.stack([cols, rows], axis=1).astype(np.float64), rcond=None)
    return np.asarray(np.c_[points, np.ones(len(points))] @ coef, dtype=np.float64)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = DATA / "lfw" / "images"
    if not root.is_dir():
        print(f"LFW not found at {root}", file=sys.stderr)
        return 2
    import dlib  # noqa: PLC0415
    import face_recognition_models as frm  # noqa: PLC0415

    from embedding.align import similarity_transform, transform_points  # noqa: PLC0415

    files = sorted(root.glob("*/*.jpg"))
    rng = np.random.default_rng(args.seed)
    picked = [files[i] for i in rng.choice(len(files), size=min(args.faces, len(files)), replace=False)]
    detector = DlibDetector(landmarks="68")
    predictor5 = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    mapped: list[np.ndarray] = []
    for path in picked:
        image = as_rgb(decode_image(path.read_bytes(), max_pixels=4096 * 4096))
        face = central_face(detector.detect(image), image.shape[0], image.shape[1])
        if face is None:
            continue
        x0, y0, x1, y1 = face.box
        rect = dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
        shape = predictor5(np.ascontiguousarray(image), rect)
        details = dlib.get_face_chip_details(shape, CHIP, PADDING)
        # Our landmarks are continuous (pixel centre at +0.5); dlib works in pixel indices.
        mapped.append(chip_points(details, np.asarray(face.landmarks, np.float64) - 0.5, image.shape[:2]))
    pts = np.stack(mapped)
    mean = pts.mean(axis=0)
    residuals = [
        float(np.linalg.norm(transform_points(p, similarity_transform(p, mean)) - mean, axis=1).mean()) for p in pts
    ]
    print(f"faces: {len(pts)} of {len(picked)} LFW images (seed {args.seed})")
    print("template (pixel-index convention, 150x150):")
    for name, (x, y), (sx, sy) in zip(
        ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right"), mean, pts.std(axis=0), strict=True
    ):
        print(f"  {name:12s} [{x:8.4f}, {y:8.4f}]   spread (std) {sx:.2f}, {sy:.2f} px")
    print(f"mean residual of a per-face similarity fit to the template: {np.mean(residuals):.2f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
