"""Face quality measures and enrolment gates with stable reason codes.

Measures are taken on the detected face and on a tight grey crop aligned to `ARCFACE_112`
(`QUALITY_CROP_SIZE`), so they do not depend on the photo's resolution. Pose angles come from the
five landmarks (`embedding.detect.LANDMARK_NAMES`, image left/right).

Typical service use::

    faces = detector.detect(image)
    report = assess_image(image, faces, settings)      # no_face / multiple_faces + per-face gates
    if report.failures: reject with [f.code for f in report.failures]
    else: embed align_face(image, report.face.landmarks, template=...)

`assess(image, face, settings)` judges one face (e.g. every face of a multi-face identify).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedding.align import ARCFACE_112, align_face
from embedding.detect import DetectedFace, as_rgb
from embedding.preprocess import LUMA_WEIGHTS

NO_FACE: Final = "no_face"
MULTIPLE_FACES: Final = "multiple_faces"
FACE_TOO_SMALL: Final = "face_too_small"
TOO_BLURRY: Final = "too_blurry"
TOO_DARK: Final = "too_dark"
OVEREXPOSED: Final = "overexposed"
EXTREME_POSE: Final = "extreme_pose"
LOW_CONFIDENCE: Final = "low_confidence"

QUALITY_CODES: Final[tuple[str, ...]] = (
    NO_FACE,
    MULTIPLE_FACES,
    FACE_TOO_SMALL,
    LOW_CONFIDENCE,
    EXTREME_POSE,
    TOO_BLURRY,
    TOO_DARK,
    OVEREXPOSED,
)
"""Every failure code, in the order `assess` reports them."""

QUALITY_CROP_SIZE: Final = 112
"""Side in px of the aligned grey crop that sharpness and exposure are measured on."""

DEFAULT_MIN_SCORE: Final[dict[str, float]] = {"yunet": 0.7, "hog": 0.1, "cnn": 0.3}
"""Per-backend detector score floors used when `QualitySettings.min_score` is None."""

# Central region of the ArcFace crop used for exposure and sharpness: eyebrows to chin, cheek to cheek
# (rows, cols as fractions of the crop). It excludes most background and hair.
_INNER: Final = (0.25, 0.95, 0.18, 0.82)


class QualitySettings(BaseModel):
    """Thresholds for the gates.

    Defaults calibrated with dlib's HOG detector and 68-point landmarks (the default before YuNet and 5-point
    landmarks; `benchmarks/celeba_enrollment.py` shows how they gate now) on real photos and on degraded copies
    (Gaussian blur of 1/60 of the image side, x0.15 darkening, x2.2+60 brightening, 35-45 degree rotation): every
    gate fires on its degraded copies, and 97.5% of AT&T, 97% of Yale A, 92% of LFW and 79% of CelebA images passed
    (CelebA misses: no face 10%, small faces 6%, pose 5%).

    Attributes:
        multiple_faces: "reject" fails images with more than one face; "largest" judges the largest.
        secondary_face_ratio: under "reject", other faces whose box side is below this fraction of the
            largest face's do not count (small bystanders in the background); 0 counts every face.
        min_inter_eye_px: smallest distance between the eye centres, in px of the input image.
        min_face_px: smallest detection box side, in px of the input image.
        min_sharpness: smallest `QualityReport.sharpness` (see there).
        min_brightness: smallest mean luma (0-255) of the aligned face region.
        max_brightness: largest mean luma (0-255) of the aligned face region.
        max_clipped_fraction: largest fraction of face-region pixels at luma >= 250 (blown out).
        max_roll_deg: largest |roll| (eye-line angle from horizontal), degrees.
        max_yaw_ratio: largest |yaw_ratio| (nose offset from the eye midpoint / inter-eye distance).
        min_score: smallest detector score; None = `DEFAULT_MIN_SCORE` for the face's backend.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    multiple_faces: Literal["reject", "largest"] = "reject"
    secondary_face_ratio: float = Field(default=0.5, ge=0, le=1)
    min_inter_eye_px: float = Field(default=20.0, ge=0)
    min_face_px: float = Field(default=40.0, ge=0)
    min_sharpness: float = Field(default=0.02, ge=0)
    min_brightness: float = Field(default=35.0, ge=0, le=255)
    max_brightness: float = Field(default=210.0, ge=0, le=255)
    max_clipped_fraction: float = Field(default=0.15, ge=0, le=1)
    max_roll_deg: float = Field(default=30.0, ge=0, le=180)
    max_yaw_ratio: float = Field(default=0.4, ge=0)
    min_score: float | None = None


@dataclass(frozen=True)
class Failure:
    """One failed gate: `code` is one of `QUALITY_CODES` (stable), `message` is for people."""

    code: str
    message: str


@dataclass(frozen=True, eq=False)
class QualityReport:
    """Measures of one face and the gates it failed.

    Attributes:
        face: the judged face (None when the image has none).
        n_faces: faces found in the image (1 when `assess` is given a single face).
        inter_eye_px: eye-centre distance in input px.
        face_px: smaller side of the detection box in input px.
        score: detector score (backend specific, see `DetectedFace.score`).
        roll_deg: eye-line angle, degrees, positive when the image-right eye is lower (clockwise).
        yaw_ratio: nose-tip offset along the eye line from the eye midpoint, in inter-eye distances;
            0 for a frontal face, about +-0.3 at 30-40 degrees of yaw (sign: + = nose towards image right).
        pitch_ratio: nose-tip distance below the eye line / mouth distance below the eye line (~0.5 frontal).
        sharpness: variance of the 4-neighbour Laplacian over the variance of the grey levels, on the
            112x112 aligned face region (a dimensionless high-frequency share; independent of crop
            size and contrast); sharp faces ~0.1-0.5, blurred < 0.05.
        brightness: mean luma (0-255) of the aligned face region.
        dark_fraction: fraction of face-region pixels with luma < 20.
        clipped_fraction: fraction of face-region pixels with luma >= 250.
        failures: failed gates, in `QUALITY_CODES` order; empty when the face passes.
    """

    face: DetectedFace | None
    n_faces: int
    inter_eye_px: float = 0.0
    face_px: float = 0.0
    score: float = 0.0
    roll_deg: float = 0.0
    yaw_ratio: float = 0.0
    pitch_ratio: float = 0.0
    sharpness: float = 0.0
    brightness: float = 0.0
    dark_fraction: float = 0.0
    clipped_fraction: float = 0.0
    chroma: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no gate failed."""
        return not self.failures

    @property
    def codes(self) -> list[str]:
        """The failure codes."""
        return [f.code for f in self.failures]

    def measures(self) -> dict[str, float]:
        """The numeric measures as a JSON-ready dict."""
        return {
            "inter_eye_px": round(self.inter_eye_px, 2),
            "face_px": round(self.face_px, 2),
            "score": round(self.score, 4),
            "roll_deg": round(self.roll_deg, 2),
            "yaw_ratio": round(self.yaw_ratio, 4),
            "pitch_ratio": round(self.pitch_ratio, 4),
            "sharpness": round(self.sharpness, 4),
            "brightness": round(self.brightness, 2),
            "dark_fraction": round(self.dark_fraction, 4),
            "clipped_fraction": round(self.clipped_fraction, 4),
            "chroma": round(self.chroma, 2),
        }


def pose_from_landmarks(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(roll_deg, yaw_ratio, pitch_ratio) from float (5, 2) landmarks; see `QualityReport`."""
    pts = np.asarray(landmarks, dtype=np.float64)
    left_eye, right_eye, nose = pts[0], pts[1], pts[2]
    axis = right_eye - left_eye
    ied = float(np.hypot(axis[0], axis[1]))
    if ied < 1e-6:
        return 0.0, 0.0, 0.0
    roll = math.degrees(math.atan2(axis[1], axis[0]))
    ux = axis / ied
    uy = np.array([-ux[1], ux[0]])
    mid = (left_eye + right_eye) / 2.0
    yaw = float((nose - mid) @ ux) / ied
    mouth_mid = (pts[3] + pts[4]) / 2.0
    mouth_down = float((mouth_mid - mid) @ uy)
    pitch = float((nose - mid) @ uy) / mouth_down if abs(mouth_down) > 1e-6 else 0.0
    return roll, yaw, pitch


def face_region(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """float64 (h, w, 3) RGB of the central face region of the 112x112 ArcFace-aligned crop."""
    crop = align_face(image, landmarks, template=ARCFACE_112, size=(QUALITY_CROP_SIZE, QUALITY_CROP_SIZE))
    top, bottom, left, right = (round(v * QUALITY_CROP_SIZE) for v in _INNER)
    return np.asarray(crop[top:bottom, left:right], dtype=np.float64)


def luma_of(region: np.ndarray) -> np.ndarray:
    """float64 (h, w) luma (0-255) of an RGB region (h, w, 3)."""
    return np.asarray(region @ np.asarray(LUMA_WEIGHTS, dtype=np.float64), dtype=np.float64)


def chroma_of(region: np.ndarray) -> float:
    """Mean spread between the largest and smallest channel (0-255) of an RGB region (h, w, 3): 0 for grey."""
    return float((region.max(axis=2) - region.min(axis=2)).mean()) if region.size else 0.0


def quality_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """float64 (h, w) luma (0-255) of the central face region of the 112x112 ArcFace-aligned crop."""
    return luma_of(face_region(image, landmarks))


def sharpness_of(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian / variance of the grey levels of a float (h, w) image."""
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    contrast = float(grey.var())
    if contrast < 1.0:  # flat region: no detail at all
        return 0.0
    return float(lap.var()) / contrast


def _min_score(face: DetectedFace, settings: QualitySettings) -> float:
    if settings.min_score is not None:
        return settings.min_score
    return DEFAULT_MIN_SCORE.get(face.detector, 0.0)


def assess(image: np.ndarray, face: DetectedFace, settings: QualitySettings | None = None) -> QualityReport:
    """Measure one detected face of a uint8 (H, W, 3) RGB image and apply the per-face gates.

    Gates: face_too_small, low_confidence, extreme_pose, too_blurry, too_dark, overexposed.
    """
    settings = settings if settings is not None else QualitySettings()
    rgb = as_rgb(image)
    ied = face.inter_eye_distance
    face_px = min(face.width, face.height)
    roll, yaw, pitch = pose_from_landmarks(face.landmarks)
    region = face_region(rgb, face.landmarks)
    grey = luma_of(region)
    sharp = sharpness_of(grey)
    brightness = float(grey.mean())
    dark = float(np.mean(grey < 20.0))
    clipped = float(np.mean(grey >= 250.0))

    failures: list[Failure] = []
    if ied < settings.min_inter_eye_px or face_px < settings.min_face_px:
        failures.append(
            Failure(
                FACE_TOO_SMALL,
                f"face too small: eyes {ied:.0f} px apart (min {settings.min_inter_eye_px:.0f}), "
                f"box {face_px:.0f} px (min {settings.min_face_px:.0f}); use a closer or larger photo",
            )
        )
    floor = _min_score(face, settings)
    if face.score < floor:
        failures.append(Failure(LOW_CONFIDENCE, f"face detection confidence {face.score:.2f} is below {floor:.2f}"))
    if abs(roll) > settings.max_roll_deg or abs(yaw) > settings.max_yaw_ratio:
        failures.append(
            Failure(
                EXTREME_POSE,
                f"head pose too far from frontal: roll {roll:.0f} deg (max {settings.max_roll_deg:.0f}), "
                f"yaw ratio {yaw:.2f} (max {settings.max_yaw_ratio:.2f}); look straight at the camera",
            )
        )
    if sharp < settings.min_sharpness:
        failures.append(
            Failure(TOO_BLURRY, f"face too blurry: sharpness {sharp:.3f} (min {settings.min_sharpness:.3f})")
        )
    if brightness < settings.min_brightness:
        failures.append(
            Failure(TOO_DARK, f"face too dark: mean brightness {brightness:.0f} (min {settings.min_brightness:.0f})")
        )
    if brightness > settings.max_brightness or clipped > settings.max_clipped_fraction:
        failures.append(
            Failure(
                OVEREXPOSED,
                f"face overexposed: mean brightness {brightness:.0f} (max {settings.max_brightness:.0f}), "
                f"{100 * clipped:.0f}% of pixels blown out (max {100 * settings.max_clipped_fraction:.0f}%)",
            )
        )
    return QualityReport(
        face=face,
        n_faces=1,
        inter_eye_px=ied,
        face_px=face_px,
        score=face.score,
        roll_deg=roll,
        yaw_ratio=yaw,
        pitch_ratio=pitch,
        sharpness=sharp,
        brightness=brightness,
        dark_fraction=dark,
        clipped_fraction=clipped,
        chroma=chroma_of(region),
        failures=failures,
    )


def assess_image(
    image: np.ndarray, faces: Sequence[DetectedFace], settings: QualitySettings | None = None
) -> QualityReport:
    """Enrolment gate for a whole image: `faces` as returned by a `Detector` (largest first).

    no_face when `faces` is empty; when another face is at least `secondary_face_ratio` as large as
    the largest, multiple_faces under the "reject" policy (the largest face is still measured); under
    "largest" only the largest face is judged. `n_faces` counts every face given.
    """
    settings = settings if settings is not None else QualitySettings()
    if not faces:
        as_rgb(image)
        return QualityReport(face=None, n_faces=0, failures=[Failure(NO_FACE, "no face found in the image")])
    largest = max(faces, key=lambda f: f.area)
    report = assess(image, largest, settings)
    failures = list(report.failures)
    side = min(largest.width, largest.height)
    rivals = [f for f in faces if f is not largest and min(f.width, f.height) >= settings.secondary_face_ratio * side]
    if rivals and settings.multiple_faces == "reject":
        failures.insert(
            0,
            Failure(
                MULTIPLE_FACES,
                f"{len(rivals) + 1} faces of similar size found; the photo must show exactly one person",
            ),
        )
    return replace(report, n_faces=len(faces), failures=failures)
