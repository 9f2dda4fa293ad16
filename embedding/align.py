"""Face alignment: a similarity transform from five landmarks to a canonical template.

Point coordinates (landmarks in, template points) use the continuous pixel convention of
`embedding.detect`: x right, y down, pixel (i, j) covers [j, j+1) x [i, i+1), so its centre is
(j + 0.5, i + 0.5). Published templates such as ArcFace's are given in the OpenCV/insightface
"pixel index" convention (pixel centre at integers); `FaceTemplate.points` stores them as published
and `FaceTemplate.continuous_points` adds the 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from PIL import Image

from embedding.detect import as_rgb

if TYPE_CHECKING:
    from embedding.card import InputSpec

BorderMode = Literal["edge", "constant"]


@dataclass(frozen=True, eq=False)
class FaceTemplate:
    """Canonical landmark positions of an aligned crop.

    Attributes:
        name: stable identifier (the value recorded in `InputSpec.face_template`).
        size: (width, height) of the crop in px.
        points: float64 (5, 2) read-only, (x, y) in `embedding.detect.LANDMARK_NAMES` order,
            pixel-index convention (pixel centre at integer coordinates, as OpenCV/insightface).
    """

    name: str
    size: tuple[int, int]
    points: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        pts = np.array(self.points, dtype=np.float64, copy=True)
        if pts.shape != (5, 2):
            raise ValueError(f"template points must have shape (5, 2), got {pts.shape}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"template size must be (width, height) >= 1, got {self.size}")
        pts.setflags(write=False)
        object.__setattr__(self, "points", pts)

    def continuous_points(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """float64 (5, 2) points in the continuous convention, scaled to `size` (width, height)."""
        width, height = size if size is not None else self.size
        sx, sy = width / self.size[0], height / self.size[1]
        return np.asarray((self.points + 0.5) * np.array([sx, sy]), dtype=np.float64)


ARCFACE_112: Final = FaceTemplate(
    name="arcface_112",
    size=(112, 112),
    points=np.array(
        [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [41.5493, 92.3655],
            [70.7299, 92.2041],
        ]
    ),
)
"""The standard ArcFace / insightface 112x112 five-point template (tight face, no hair or chin margin)."""

HEAD_92x112: Final = FaceTemplate(
    name="head_92x112",
    size=(92, 112),
    points=np.array(
        [
            [27.89, 52.86],
            [60.95, 52.86],
            [44.42, 68.50],
            [29.58, 85.30],
            [59.26, 85.30],
        ]
    ),
)
"""AT&T-style whole-head framing (92x112) for the current default model.

The mean of the landmarks `DlibDetector()` (HOG + 68-point) finds on the AT&T images (394 of 400
detected), made left/right symmetric about the mean face's axis (x = 44.42): eyes at 47.2% of the
height, eye-to-mouth 29.0% of the height, inter-eye distance 35.9% of the width (the numbers in
`embedding/models/dlib_resnet.md`).
"""

DLIB_150: Final = FaceTemplate(
    name="dlib_150",
    size=(150, 150),
    points=np.array(
        [
            [47.31, 46.95],
            [99.79, 46.94],
            [73.34, 75.48],
            [49.71, 104.43],
            [97.97, 104.49],
        ]
    ),
)
"""Where dlib's own face chip (5-point predictor, `get_face_chip` 150x150, padding 0.25) puts our five landmarks:
the mean over 597 LFW faces, measured by `python -m scripts.derive_dlib_template` (seed 0). Faces aligned to it
are what dlib's ResNet (`dlib_resnet29`) was trained on; the per-face spread is 1.7-1.8 px at the eyes and
5-7 px at the nose and mouth."""

ARCFACE_112x123: Final = FaceTemplate(name="arcface_112x123", size=(112, 123), points=ARCFACE_112.points)
"""ArcFace's 112x112 framing with 11 more rows below: the smallest crop that holds both ArcFace's square (its top
112 rows, exactly) and dlib's 150x150 chip (`DLIB_150`, mapped by the similarity between the two templates; it
reaches y = 122.6). The input of `embedding.fusion`'s models, which cut both from it."""

TEMPLATES: Final[dict[str, FaceTemplate]] = {t.name: t for t in (ARCFACE_112, HEAD_92x112, DLIB_150, ARCFACE_112x123)}
"""Every built-in template by name."""

_CANONICAL_SIZE: Final = 256
_CANONICAL_EYE_PX: Final = 64.0


def _canonical() -> FaceTemplate:
    head = HEAD_92x112.continuous_points()
    scale = _CANONICAL_EYE_PX / float(np.linalg.norm(head[1] - head[0]))
    width, height = HEAD_92x112.size[0] * scale, HEAD_92x112.size[1] * scale
    offset = np.array([(_CANONICAL_SIZE - width) / 2, (_CANONICAL_SIZE - height) / 2])
    return FaceTemplate(
        name="canonical_256", size=(_CANONICAL_SIZE, _CANONICAL_SIZE), points=head * scale + offset - 0.5
    )


CANONICAL: Final = _canonical()
"""The framing faces are stored and prepared in: HEAD_92x112 scaled to 64 px between the eyes, centred in
256x256 (the whole head with a margin), so that any model's own template can be cut from it."""


def template_for_spec(spec: InputSpec) -> FaceTemplate:
    """The template to align faces to for a model with this input spec.

    Uses `spec.face_template` when the card records one; models whose card predates it were trained
    on AT&T-style head crops, so they get `HEAD_92x112`.
    """
    name = spec.face_template
    if name is None:
        return HEAD_92x112
    if name not in TEMPLATES:
        raise ValueError(f"unknown face template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection), Umeyama 1991.

    Args:
        src, dst: float (N, 2) corresponding points, N >= 2.

    Returns:
        float64 (2, 3) matrix M with dst ~= M @ [x, y, 1]. Degenerate input (all src points equal)
        gives the pure translation of the centroids.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) arrays with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("points must be finite")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = float((s_c**2).sum() / len(src))
    matrix = np.zeros((2, 3), dtype=np.float64)
    if var_s < 1e-12:
        matrix[:, :2] = np.eye(2)
        matrix[:, 2] = mu_d - mu_s
        return matrix
    cov = d_c.T @ s_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sing * d).sum() / var_s)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to float (N, 2) points -> float64 (N, 2)."""
    pts = np.asarray(points, dtype=np.float64)
    return np.asarray(pts @ matrix[:, :2].T + matrix[:, 2], dtype=np.float64)


def alignment_matrix(
    landmarks: np.ndarray, *, template: FaceTemplate = ARCFACE_112, size: tuple[int, int] | None = None
) -> np.ndarray:
    """float64 (2, 3) matrix from image coordinates to crop coordinates (both continuous convention).

    `landmarks` is float (5, 2) in `LANDMARK_NAMES` order; `size` (width, height) defaults to the template's.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {pts.shape}")
    return similarity_transform(pts, template.continuous_points(size))


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    template: FaceTemplate = ARCFACE_112,
    border: BorderMode = "edge",
) -> np.ndarray:
    """Warp a face to a canonical crop.

    Args:
        image: uint8 (H, W, 3) RGB (or (H, W) grey).
        landmarks: float (5, 2) image points in `LANDMARK_NAMES` order (continuous convention).
        size: output (width, height); defaults to `template.size` (the template is scaled to it).
        template: canonical landmark positions, e.g. `ARCFACE_112` or `HEAD_92x112`.
        border: "edge" repeats the outermost image pixels where the crop reaches past the image,
            "constant" fills with black.

    Returns:
        uint8 (height, width, 3) RGB crop, bilinear interpolation; when the face is shrunk by 2x or
        more the image is first box-filtered down by an integer factor to avoid aliasing.
    """
    rgb = as_rgb(image)
    out_w, out_h = size if size is not None else template.size
    if out_w < 1 or out_h < 1:
        raise ValueError(f"size must be positive, got {(out_w, out_h)}")
    forward = alignment_matrix(landmarks, template=template, size=(out_w, out_h))
    scale = math.hypot(forward[0, 0], forward[1, 0])
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError("landmarks give a degenerate alignment")
    # Inverse map: crop coordinates -> image coordinates.
    lin_inv = np.linalg.inv(forward[:, :2])
    inverse = np.concatenate([lin_inv, (-lin_inv @ forward[:, 2])[:, None]], axis=1)

    factor = int(1.0 / scale) if scale < 0.5 else 1
    # Preimage of the crop, in image px, with a margin for the filter.
    corners = transform_points(np.array([[0, 0], [out_w, 0], [0, out_h], [out_w, out_h]], dtype=np.float64), inverse)
    margin = 2 * factor + 2
    x0 = math.floor(corners[:, 0].min()) - margin
    y0 = math.floor(corners[:, 1].min()) - margin
    x1 = math.ceil(corners[:, 0].max()) + margin
    y1 = math.ceil(corners[:, 1].max()) + margin
    # Keep the source window bounded even for absurd landmarks.
    limit = 8 * max(rgb.shape[0], rgb.shape[1], out_w, out_h) + 64
    x0, y0 = max(x0, -limit), max(y0, -limit)
    x1, y1 = min(x1, limit), min(y1, limit)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((out_h, out_w, 3), dtype=np.uint8)
    height, width = rgb.shape[:2]
    cols = np.arange(x0, x1)
    rows = np.arange(y0, y1)
    if border == "edge":
        window = rgb[np.clip(rows, 0, height - 1)][:, np.clip(cols, 0, width - 1)]
    else:
        window = np.zeros((len(rows), len(cols), 3), dtype=np.uint8)
        rin = (rows >= 0) & (rows < height)
        cin = (cols >= 0) & (cols < width)
        if rin.any() and cin.any():
            window[np.ix_(rin, cin)] = rgb[rows[rin]][:, cols[cin]]
    src = Image.fromarray(np.ascontiguousarray(window))
    offset = np.array([x0, y0], dtype=np.float64)
    if factor > 1:
        src = src.reduce(factor)
        inverse = inverse.copy()
        inverse[:, 2] -= offset
        inverse /= factor
    else:
        inverse = inverse.copy()
        inverse[:, 2] -= offset
    data = tuple(float(v) for v in inverse.reshape(-1))
    crop = src.transform((out_w, out_h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8)


def eye_error(landmarks: np.ndarray, template: FaceTemplate, size: tuple[int, int] | None = None) -> float:
    """Mean distance in crop px between the eyes mapped by the alignment and the template's eyes."""
    matrix = alignment_matrix(landmarks, template=template, size=size)
    mapped = transform_points(np.asarray(landmarks, dtype=np.float64)[:2], matrix)
    return float(np.linalg.norm(mapped - template.continuous_points(size)[:2], axis=1).mean())


def canonical_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """uint8 (256, 256, 3) face aligned to `CANONICAL` from an image and its float (5, 2) landmarks."""
    return align_face(image, landmarks, template=CANONICAL)
