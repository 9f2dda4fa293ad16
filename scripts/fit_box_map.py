"""Fit `embedding.detect.YUNET_TO_HOG`: where dlib's HOG detector puts its box, given YuNet's box of the same face.

dlib's landmark predictors were trained on HOG boxes, so facedb maps a YuNet box to the HOG box before running
them. The fit uses AT&T, Yale A and Extended Yale B (sets that no LFW or CelebA figure uses), images where each
detector finds exactly one face (dlib's bare HOG detector with one upsampling; YuNet at score 0.6, its threshold
when the map was fitted), small images enlarged to 200 px first:

    centre x + dx * w, centre y + dy * h, side = sw * w + sh * h      (least squares, w/h: YuNet's box)

    python -m scripts.fit_box_map
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from benchmarks.identify_latency import DATA_ROOT
from embedding.detect import YUNET_TO_HOG
from embedding.image import decode_image
from embedding.yunet import YuNetDetector


def pairs_of_boxes() -> tuple[np.ndarray, np.ndarray]:
    """(YuNet boxes, HOG boxes) as float (N, 4) centre x, centre y, width, height."""
    files = sorted((DATA_ROOT / "att_faces").glob("*/*.pgm"))[::2]
    files += sorted((DATA_ROOT / "yalefaces").glob("*/*"))
    files += sorted((DATA_ROOT / "extended_yale_b").glob("*/*.png"))[::6]
    import dlib  # noqa: PLC0415 - dlib's bare detector, as its landmark predictors were trained on

    yunet = YuNetDetector(score_threshold=0.6)
    hog = dlib.get_frontal_face_detector()
    ours, theirs = [], []
    for path in files:
        image = decode_image(path.read_bytes(), max_pixels=40_000_000)
        if min(image.shape[:2]) < 200:
            scale = 200 / min(image.shape[:2])
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        a, b = yunet.detect(image), hog(image, 1)
        if len(a) == 1 and len(b) == 1:
            r = b[0]
            ours.append(_centre_size(a[0].box))
            theirs.append([(r.left() + r.right() + 1) / 2, (r.top() + r.bottom() + 1) / 2, r.width(), r.height()])
    return np.array(ours), np.array(theirs)


def _centre_size(box: tuple[float, float, float, float]) -> list[float]:
    x0, y0, x1, y1 = box
    return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    x, y = pairs_of_boxes()
    dx = np.linalg.lstsq(x[:, 2:3], y[:, 0] - x[:, 0], rcond=None)[0][0]
    dy = np.linalg.lstsq(x[:, 3:4], y[:, 1] - x[:, 1], rcond=None)[0][0]
    sw, sh = np.linalg.lstsq(x[:, 2:4], (y[:, 2] + y[:, 3]) / 2, rcond=None)[0]
    side = (y[:, 2] + y[:, 3]) / 2
    residual = np.abs(side - x[:, 2:4] @ np.array([sw, sh]))
    print(f"{len(x)} faces; BoxMap(dx={dx:.4f}, dy={dy:.4f}, sw={sw:.4f}, sh={sh:.4f}); shipped: {YUNET_TO_HOG}")
    print(f"median side residual: {np.median(residual):.1f} px (faces ~{np.median(x[:, 2]):.0f} px wide)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
