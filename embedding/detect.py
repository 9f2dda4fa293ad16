"""Face detection with five landmarks: the `Detector` protocol, dlib's backends, dlib's landmarks on other
detectors' boxes (`DlibLandmarks`; YuNet itself is in `embedding.yunet`).

Coordinates are pixels of the input image: x to the right, y down, origin at the top-left corner
of the top-left pixel (pixel (i, j) covers [j, j+1) x [i, i+1); its centre is (j + 0.5, i + 0.5)).
Landmark points are dlib's pixel-index coordinates shifted by +0.5 so that they use that same
continuous convention as the boxes and `embedding.align`.

Landmark order (`LANDMARK_NAMES`), fixed for every backend, **image** left/right as in the ArcFace
template (the "left eye" is the one with the smaller x in a frontal, upright photo, i.e. the
subject's right eye):

0. left eye centre, 1. right eye centre, 2. nose tip, 3. left mouth corner, 4. right mouth corner.

Models come from the `face_recognition_models` package and are read lazily by `load()` (never at
import time).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from embedding.lazy import LazyModel

LANDMARK_NAMES: Final[tuple[str, ...]] = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
"""Row names of `DetectedFace.landmarks`; left/right are image left/right (ArcFace order)."""

DetectorBackend = Literal["hog", "cnn"]
LandmarkModel = Literal["68", "5"]

HOG_WINDOW: Final = 80
"""Side in px of the smallest face dlib's HOG detector finds without upsampling."""

CNN_WINDOW: Final = 40
"""Side in px of the smallest face dlib's mmod CNN detector finds without upsampling (about)."""

HOG_TILTED_COMPONENTS: Final = frozenset({3, 4})
"""Components of dlib's frontal HOG detector trained on faces rotated left / right in the image plane."""

ROTATED_MAX_RESIDUAL_ROLL: Final = 20.0
"""Rotation fallback keeps a face only if it is this upright (degrees) in the rotated image."""

# Five-point model: estimate the nose tip and mouth corners from the eyes and the nose base.
# Coordinates in the "eye frame": origin at the eye midpoint, x along left->right eye, y perpendicular
# (down in an upright face), unit = inter-eye distance. Each row maps (1, base_x, base_y) -> point
# (x, y); least-squares fit against the 68-point predictor's points 30, 48, 54 on 781 HOG detections
# (400 LFW + 400 CelebA, seed 1). Median residuals (IED units): nose tip 0.047, mouth corners 0.11.
_FIVE_POINT_COEF: Final[dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    "nose_tip": ((0.0551, 1.5032, -0.0740), (-0.3107, 0.0429, 1.1205)),
    "mouth_left": ((-0.4969, 0.1223, 0.0623), (0.5571, -0.0315, 0.6724)),
    "mouth_right": ((0.3880, 0.1614, 0.0882), (0.5538, -0.1293, 0.6751)),
}


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One detected face.

    Attributes:
        box: (x0, y0, x1, y1) float pixels, x1 > x0, y1 > y0; may extend past the image border.
        score: the detector's raw confidence, backend specific (see `detector`): for "yunet"
            sqrt(cls * obj) in [0, 1] (>= 0.7 by default; typically 0.85-0.95); for "hog" the
            SVM margin (>= the detector's `adjust_threshold`, 0 by default; frontal faces are
            typically 0.5-3), for "cnn" the mmod score (>= `adjust_threshold`; typically 0.5-1.3).
            Compare only scores of the same backend.
        landmarks: float32 (5, 2) read-only array of (x, y) points in `LANDMARK_NAMES` order.
        detector: "yunet", "hog" or "cnn", the backend that found the face.
        landmark_model: "68" (points measured by dlib's 68-point predictor), "5" or "dlib5" (eyes and
            nose base measured by dlib's 5-point predictor, on dlib's box or on another detector's;
            nose tip and mouth corners estimated), or "yunet" (YuNet's own five points).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)
    detector: str = "hog"
    landmark_model: str = "68"

    def __post_init__(self) -> None:
        points = np.array(self.landmarks, dtype=np.float32, copy=True)
        if points.shape != (5, 2):
            raise ValueError(f"landmarks must have shape (5, 2), got {points.shape}")
        points.setflags(write=False)
        object.__setattr__(self, "landmarks", points)
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        """Box width in px."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        """Box height in px."""
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        """Box area in px^2."""
        return self.width * self.height

    @property
    def inter_eye_distance(self) -> float:
        """Distance between the two eye centres in px."""
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: box, score, landmarks as a list of five [x, y], detector, landmark_model."""
        return {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "detector": self.detector,
            "landmark_model": self.landmark_model,
        }


@runtime_checkable
class Detector(Protocol):
    """What the service needs from a face detector."""

    @property
    def name(self) -> str:
        """Short stable identifier of the detector and its settings, e.g. "dlib-hog+68"."""
        ...

    def load(self) -> None:
        """Load the models if not loaded yet; idempotent and thread-safe."""
        ...

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """uint8 (H, W, 3) RGB (or (H, W) grey) -> faces, largest box first; [] when none."""
        ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """`detect` for each image, in order."""
        ...


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an image and return it as a C-contiguous uint8 (H, W, 3) array.

    Accepts uint8 (H, W, 3), (H, W, 1) and (H, W) (grey is replicated). Raises TypeError for a
    non-array, ValueError for another dtype or shape (including empty images).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W, 3) or (H, W) image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def _estimate_from_five(left_eye: np.ndarray, right_eye: np.ndarray, nose_base: np.ndarray) -> np.ndarray:
    """Five-point model: float (2,) eyes and nose base -> float64 (3, 2) nose tip, mouth left, mouth right."""
    mid = (left_eye + right_eye) / 2.0
    axis = right_eye - left_eye
    ied = float(np.hypot(axis[0], axis[1]))
    if ied < 1e-6:
        return np.repeat(nose_base[None, :], 3, axis=0)
    ux = axis / ied
    uy = np.array([-ux[1], ux[0]])
    rel = nose_base - mid
    feats = np.array([1.0, float(rel @ ux) / ied, float(rel @ uy) / ied])
    out = np.empty((3, 2), dtype=np.float64)
    for row, key in enumerate(("nose_tip", "mouth_left", "mouth_right")):
        cx, cy = _FIVE_POINT_COEF[key]
        fx = float(np.dot(cx, feats)) * ied
        fy = float(np.dot(cy, feats)) * ied
        out[row] = mid + fx * ux + fy * uy
    return out


@dataclass(frozen=True)
class _Models:
    """The loaded dlib objects (typed loosely: dlib ships no type stubs)."""

    detector: Any
    predictor: Any


class DlibDetector(LazyModel[_Models]):
    """`Detector` backed by dlib: HOG (fast, frontal) or mmod CNN (slower, more pose-tolerant).

    Args:
        backend: "hog" (`dlib.get_frontal_face_detector`) or "cnn" (`mmod_human_face_detector.dat`).
        landmarks: "5" (dlib's public-domain 5-point predictor; eye centres = corner midpoints, nose tip and mouth
            corners estimated from the eyes and the nose base) or "68" (68-point predictor; eye centres = corner
            midpoints 36/39 and 42/45, nose tip 30, mouth corners 48/54; trained on iBUG 300-W, whose terms forbid
            commercial use, so it is opt-in).
        upsample: dlib pyramid upsamplings of the working image (each doubles it; costs about 4x time).
        min_face_size: smallest face box side in px of the input image that must be found; small
            images are enlarged before detection so that such faces reach the detector's window,
            and boxes smaller than this are dropped.
        min_image_side: images whose shorter side is below this are enlarged to it (up to
            `max_upscale`) before detection: helps tight crops where the face fills the frame.
        max_image_side: images whose longer side exceeds this are shrunk for detection (landmarks
            are still measured on the full-resolution image).
        adjust_threshold: detection threshold offset (lower finds more faces and more false ones).
        max_upscale: largest enlargement factor applied to small images.
        rotation_fallback: when nothing is found, the image is also searched rotated by each of
            these angles (degrees, counter-clockwise) and the rotation with the best-scoring face
            wins; boxes and landmarks are mapped back to the input image (boxes keep their size,
            centred on the mapped centre). Finds strongly tilted faces so that the quality gate can
            say "extreme_pose" rather than "no_face" (or pass a wrong upright fit); costs len(...)
            extra searches on images without a confident face.
        rotation_margin: the rotated searches also run when an upright face was found by one of
            the HOG detector's tilted-face components, and replace the upright result when a
            rotation scores at least this much higher (the landmark fit on an upright box around a
            face tilted by ~45 degrees is wrong). Rotated faces are kept only if upright (within
            20 degrees) in the rotated image.
    """

    def __init__(
        self,
        *,
        backend: DetectorBackend = "hog",
        landmarks: LandmarkModel = "5",
        upsample: int = 1,
        min_face_size: int = 40,
        min_image_side: int = 200,
        max_image_side: int = 1280,
        adjust_threshold: float = 0.0,
        max_upscale: float = 4.0,
        rotation_fallback: Sequence[float] = (-45.0, 45.0),
        rotation_margin: float = 0.25,
    ) -> None:
        super().__init__()
        if backend not in ("hog", "cnn"):
            raise ValueError(f"backend must be 'hog' or 'cnn', got {backend!r}")
        if landmarks not in ("68", "5"):
            raise ValueError(f"landmarks must be '68' or '5', got {landmarks!r}")
        if not 0 <= upsample <= 3:
            raise ValueError(f"upsample must be in 0..3, got {upsample}")
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be >= 1, got {min_face_size}")
        if min_image_side < 0:
            raise ValueError(f"min_image_side must be >= 0, got {min_image_side}")
        if max_image_side < 64:
            raise ValueError(f"max_image_side must be >= 64, got {max_image_side}")
        if max_upscale < 1.0:
            raise ValueError(f"max_upscale must be >= 1, got {max_upscale}")
        self._backend: DetectorBackend = backend
        self._landmark_model: LandmarkModel = landmarks
        self._upsample = upsample
        self._min_face_size = min_face_size
        self._min_image_side = min_image_side
        self._max_image_side = max_image_side
        self._adjust_threshold = float(adjust_threshold)
        self._max_upscale = float(max_upscale)
        self._rotation_fallback = tuple(float(a) for a in rotation_fallback)
        self._rotation_margin = float(rotation_margin)
        if not all(math.isfinite(a) for a in self._rotation_fallback):
            raise ValueError(f"rotation_fallback angles must be finite, got {rotation_fallback}")
        self._run_lock = threading.Lock()  # dlib's detectors keep scratch buffers; serialise calls

    @property
    def name(self) -> str:
        """e.g. "dlib-hog+68"."""
        return f"dlib-{self._backend}+{self._landmark_model}"

    @property
    def backend(self) -> DetectorBackend:
        """ "hog" or "cnn"."""
        return self._backend

    @property
    def landmark_model(self) -> LandmarkModel:
        """ "68" or "5"."""
        return self._landmark_model

    @property
    def min_face_size(self) -> int:
        """Smallest face box side in px that is reported."""
        return self._min_face_size

    def _load(self) -> _Models:
        """Read the dlib models (about 0.7 s with the 68-point predictor)."""
        import dlib  # noqa: PLC0415 - heavy native module, imported on first use only
        import face_recognition_models as frm  # noqa: PLC0415

        if self._backend == "hog":
            detector = dlib.get_frontal_face_detector()
        else:
            detector = dlib.cnn_face_detection_model_v1(frm.cnn_face_detector_model_location())
        return _Models(detector=detector, predictor=shape_predictor(self._landmark_model))

    def _working_scale(self, height: int, width: int) -> float:
        """Factor from input pixels to the detector's working image."""
        window = HOG_WINDOW if self._backend == "hog" else CNN_WINDOW
        reach = self._min_face_size * (2**self._upsample)  # smallest face side after dlib's upsampling
        scale = 1.0
        if reach < window:
            scale = window / reach
        shortest = min(height, width)
        if shortest * scale < self._min_image_side:
            scale = self._min_image_side / shortest
        scale = min(scale, self._max_upscale)
        longest = max(height, width)
        if longest * scale > self._max_image_side:
            scale = self._max_image_side / longest
        return scale

    def _raw_boxes(self, models: _Models, work: np.ndarray) -> list[tuple[Any, float, int]]:
        """Run the dlib detector on a working image -> [(dlib.rectangle, score, HOG component or -1)]."""
        with self._run_lock:
            if self._backend == "hog":
                rects, scores, components = models.detector.run(work, self._upsample, self._adjust_threshold)
                return [(r, float(s), int(c)) for r, s, c in zip(rects, scores, components, strict=True)]
            found = models.detector(work, self._upsample)
        return [(d.rect, float(d.confidence), -1) for d in found if float(d.confidence) >= self._adjust_threshold]

    def _landmarks(self, models: _Models, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """float32 (5, 2) landmarks for a box on the full-resolution image."""
        return dlib_landmarks(models.predictor, image, box, self._landmark_model)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Find faces in a uint8 (H, W, 3) RGB or (H, W) grey image.

        Returns faces largest box first (ties: higher score first); [] when none is found.
        Raises TypeError / ValueError for a non-image input.
        """
        rgb = as_rgb(image)
        models = self._state()
        faces, tilted = self._detect_upright(models, rgb)
        if not self._rotation_fallback or (faces and not tilted):
            return faces
        # Nothing found, or a face found by a tilted-face component: its upright landmark fit may be
        # wrong, so a rotated search that scores clearly higher wins.
        best_score = max((f.score for f in faces), default=self._adjust_threshold) + self._rotation_margin
        for angle in self._rotation_fallback:
            found = self._detect_rotated(models, rgb, angle)
            score = max((f.score for f in found), default=-math.inf)
            if score > best_score:
                faces, best_score = found, score
        return faces

    def _detect_upright(self, models: _Models, rgb: np.ndarray) -> tuple[list[DetectedFace], bool]:
        """Faces (largest first) and whether one was found by a tilted-face HOG component."""
        height, width = rgb.shape[:2]
        scale = self._working_scale(height, width)
        if abs(scale - 1.0) > 1e-6:
            new_w = max(1, round(width * scale))
            new_h = max(1, round(height * scale))
            work = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
            sx, sy = width / new_w, height / new_h
        else:
            work, sx, sy = rgb, 1.0, 1.0
        faces: list[DetectedFace] = []
        tilted = False
        for rect, score, component in self._raw_boxes(models, work):
            box = (
                rect.left() * sx,
                rect.top() * sy,
                (rect.right() + 1) * sx,
                (rect.bottom() + 1) * sy,
            )
            if min(box[2] - box[0], box[3] - box[1]) < self._min_face_size:
                continue
            if not all(math.isfinite(v) for v in box):
                continue
            points = self._landmarks(models, rgb, box)
            tilted = tilted or component in HOG_TILTED_COMPONENTS
            faces.append(
                DetectedFace(
                    box=box,
                    score=score,
                    landmarks=points,
                    detector=self._backend,
                    landmark_model=self._landmark_model,
                )
            )
        faces.sort(key=lambda f: (-f.area, -f.score))
        return faces, tilted

    def _detect_rotated(self, models: _Models, rgb: np.ndarray, angle: float) -> list[DetectedFace]:
        """Detect on the image rotated counter-clockwise by `angle` degrees; map results back."""
        height, width = rgb.shape[:2]
        theta = math.radians(angle)
        cos, sin = math.cos(theta), math.sin(theta)
        out_w = max(1, math.ceil(abs(width * cos) + abs(height * sin)))
        out_h = max(1, math.ceil(abs(width * sin) + abs(height * cos)))
        # Rotated coords (u, v) -> original (x, y): rotate by +angle on screen (y down) about the centres.
        cx, cy, cu, cv = width / 2.0, height / 2.0, out_w / 2.0, out_h / 2.0
        to_orig = np.array([[cos, -sin, 0.0], [sin, cos, 0.0]])
        to_orig[:, 2] = np.array([cx, cy]) - to_orig[:, :2] @ np.array([cu, cv])
        data = tuple(float(v) for v in to_orig.reshape(-1))
        rotated = Image.fromarray(rgb).transform(
            (out_w, out_h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
        )
        faces: list[DetectedFace] = []
        for face in self._detect_upright(models, np.asarray(rotated, dtype=np.uint8))[0]:
            eye_line = face.landmarks[1] - face.landmarks[0]
            if abs(math.degrees(math.atan2(float(eye_line[1]), float(eye_line[0])))) > ROTATED_MAX_RESIDUAL_ROLL:
                # Not upright in the rotated frame: the box came from the detector's tilt tolerance and
                # the landmark fit on it is unreliable (typically an upright face seen at +-45 degrees).
                continue
            points = face.landmarks.astype(np.float64) @ to_orig[:, :2].T + to_orig[:, 2]
            centre = np.array([(face.box[0] + face.box[2]) / 2.0, (face.box[1] + face.box[3]) / 2.0])
            mx, my = centre @ to_orig[:, :2].T + to_orig[:, 2]
            half_w, half_h = face.width / 2.0, face.height / 2.0
            faces.append(
                DetectedFace(
                    box=(mx - half_w, my - half_h, mx + half_w, my + half_h),
                    score=face.score,
                    landmarks=points,
                    detector=face.detector,
                    landmark_model=face.landmark_model,
                )
            )
        faces.sort(key=lambda f: (-f.area, -f.score))
        return faces

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """`detect` on each image, in order."""
        return [self.detect(image) for image in images]


def shape_predictor(model: LandmarkModel) -> Any:
    """dlib's 68-point or public-domain 5-point shape predictor, read from `face_recognition_models`."""
    import dlib  # noqa: PLC0415 - heavy native module, imported on first use only
    import face_recognition_models as frm  # noqa: PLC0415

    if model == "68":
        return dlib.shape_predictor(frm.pose_predictor_model_location())
    return dlib.shape_predictor(frm.pose_predictor_five_point_model_location())


def dlib_landmarks(
    predictor: Any, image: np.ndarray, box: tuple[float, float, float, float], model: LandmarkModel
) -> np.ndarray:
    """float32 (5, 2) landmarks in `LANDMARK_NAMES` order from a dlib shape predictor run on ``box``.

    "68": eye centres = corner midpoints 36/39 and 42/45, nose tip 30, mouth corners 48/54. "5": eye centres =
    corner midpoints of the 5-point model's eyes; nose tip and mouth corners estimated from the eyes and the nose
    base (`_FIVE_POINT_COEF`).
    """
    import dlib  # noqa: PLC0415

    rect = dlib.rectangle(round(box[0]), round(box[1]), round(box[2]) - 1, round(box[3]) - 1)
    pts = np.array([(p.x, p.y) for p in predictor(image, rect).parts()], dtype=np.float64) + 0.5
    if model == "68":
        out = np.stack([(pts[36] + pts[39]) / 2.0, (pts[42] + pts[45]) / 2.0, pts[30], pts[48], pts[54]])
    else:
        # dlib 5-point: 0, 1 = outer/inner corner of the image-right eye; 2, 3 = image-left eye; 4 = nose base.
        left_eye = (pts[2] + pts[3]) / 2.0
        right_eye = (pts[0] + pts[1]) / 2.0
        out = np.concatenate([left_eye[None], right_eye[None], _estimate_from_five(left_eye, right_eye, pts[4])])
    return out.astype(np.float32)


@dataclass(frozen=True)
class BoxMap:
    """Maps another detector's box to the box dlib's HOG detector draws around the same face (what dlib's landmark
    predictors were trained on): centre x + ``dx`` * w, centre y + ``dy`` * h, square side ``sw`` * w + ``sh`` * h."""

    dx: float
    dy: float
    sw: float
    sh: float

    def __call__(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 + self.dx * w, (y0 + y1) / 2 + self.dy * h
        half = max(1.0, self.sw * w + self.sh * h) / 2
        return cx - half, cy - half, cx + half, cy + half


YUNET_TO_HOG: Final = BoxMap(dx=-0.0375, dy=0.0189, sw=1.2127, sh=-0.1043)
"""Least-squares fit over about 450 faces that both detectors find once (AT&T, Yale A, Extended Yale B: sets no LFW
or CelebA figure uses); `python -m scripts.fit_box_map` reproduces it to within 1% (median side residual ~8 px on
faces ~150 px wide)."""


class DlibLandmarks(LazyModel[Any]):
    """`Detector` wrapper: another detector's faces, their landmarks measured again by a dlib shape predictor.

    dlib's ResNet (the default model) and facedb's own models were trained on faces framed by dlib's landmarks,
    so a YuNet face gets dlib's 5-point landmarks (public domain) on its box mapped by `YUNET_TO_HOG`. Measured on
    LFW folds 7-9 (`benchmarks/fidelity.py`): TAR at FAR 1e-3 0.930 with these landmarks against 0.912 with
    YuNet's own points and 0.918 for dlib's whole pipeline.
    """

    def __init__(self, detector: Detector, *, model: LandmarkModel = "5", box_map: BoxMap = YUNET_TO_HOG) -> None:
        super().__init__()
        if model not in ("68", "5"):
            raise ValueError(f"landmark model must be '68' or '5', got {model!r}")
        self._detector = detector
        self._model: LandmarkModel = model
        self._box_map = box_map
        self._run_lock = threading.Lock()

    @property
    def name(self) -> str:
        """e.g. "yunet+dlib5"."""
        return f"{self._detector.name}+dlib{self._model}"

    def _load(self) -> Any:
        self._detector.load()
        return shape_predictor(self._model)

    def refine(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> list[DetectedFace]:
        """The same faces (same order, boxes and scores) with dlib's landmarks."""
        predictor = self._state()
        rgb = as_rgb(image)
        out = []
        with self._run_lock:
            for face in faces:
                points = dlib_landmarks(predictor, rgb, self._box_map(face.box), self._model)
                out.append(
                    DetectedFace(
                        box=face.box,
                        score=face.score,
                        landmarks=points,
                        detector=face.detector,
                        landmark_model=f"dlib{self._model}",
                    )
                )
        return out

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """The wrapped detector's faces, largest first, with dlib's landmarks."""
        return self.refine(image, self._detector.detect(image))

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """`detect` for each image (the wrapped detector runs them as one batch)."""
        found = self._detector.detect_batch(images)
        return [self.refine(image, faces) for image, faces in zip(images, found, strict=True)]
