"""The one face path: decode -> detect -> align -> assess -> model crop.

The service (enrolment, identify, verify, re-indexing), training, evaluation and the CLI all go through this
module, so a face is found, framed and judged the same way everywhere.

A detected face is kept two ways:

- for embedding now, the model's own framing (``InputSpec.face_template``) is cut **straight from the photo**
  with one resampling (`FaceImage.for_model`);
- for the database, a crop aligned to :data:`~embedding.align.CANONICAL` (the whole head with a margin, at a
  resolution above any model's own) from which a future model's framing is cut when re-indexing.

Without detection (``detect=false``, pre-cropped faces) the face is the whole image, shrunk to at most
``max_side``.
"""

from __future__ import annotations

import io
import queue
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

import numpy as np
from PIL import Image

from embedding.align import CANONICAL, align_face, canonical_crop, template_for_spec
from embedding.card import InputSpec
from embedding.detect import DetectedFace, Detector, DlibDetector, DlibLandmarks
from embedding.errors import ImageError
from embedding.image import decode_image
from embedding.openset import condition_of
from embedding.quality import Failure, QualityReport, QualitySettings, assess, assess_image, chroma_of
from embedding.yunet import YuNetDetector

DetectorKind = Literal["yunet", "hog", "cnn"]
DETECTOR_KINDS: Final[tuple[str, ...]] = ("yunet", "hog", "cnn")
"""``yunet`` (default: YuNet on onnxruntime, MIT), or dlib's ``hog`` / ``cnn`` with dlib landmarks."""

STORED_CROP_MAX_PIXELS: Final = 64_000_000


LandmarkSource = Literal["5", "68", "yunet"]


def landmarks_for(spec: InputSpec, kind: DetectorKind = "yunet") -> LandmarkSource:
    """The landmark source a model's card asks for (``spec.landmarks``), as `build_detector` names it.

    "yunet" needs the YuNet detector: with another detector such a model gets dlib's 5 points instead.
    """
    if spec.landmarks == "yunet" and kind == "yunet":
        return "yunet"
    return "5"


def build_detector(kind: DetectorKind = "yunet", *, landmarks: LandmarkSource = "5") -> Detector:
    """A detector by name, with the landmarks faces are aligned by.

    ``landmarks``: "5" (default) dlib's public-domain 5-point predictor, the framing dlib's ResNet and facedb's
    models were trained on; "68" dlib's 68-point predictor (trained on iBUG 300-W, whose terms forbid commercial
    use: opt-in only); "yunet" YuNet's own five points (YuNet detector only).
    """
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"unknown detector {kind!r}; known: {', '.join(DETECTOR_KINDS)}")
    if kind == "yunet":
        yunet = YuNetDetector()
        return yunet if landmarks == "yunet" else DlibLandmarks(yunet, model=landmarks)
    if landmarks == "yunet":
        raise ValueError("landmarks 'yunet' need the yunet detector")
    return DlibDetector(backend=kind, landmarks=landmarks)


@dataclass(frozen=True, eq=False)
class FaceImage:
    """One face ready to embed.

    Attributes:
        aligned: whether `image` is a `CANONICAL` crop (else the whole, pre-cropped image).
        detection: the detector's face, when one was detected.
        quality: its quality measures and failed gates, when assessed.
        source: the decoded photo the face was found in (kept only while the request runs), so that the model's
            framing is cut from the photo itself rather than from the canonical crop.
        crop: the stored crop or whole image, when there is no photo to cut from.
    """

    aligned: bool
    detection: DetectedFace | None = None
    quality: QualityReport | None = None
    source: np.ndarray | None = field(default=None, repr=False)
    crop: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def image(self) -> np.ndarray:
        """uint8 (h, w, 3): the `CANONICAL` crop when ``aligned`` (cut on first use: only enrolment stores it),
        else the whole image."""
        if self.crop is not None:
            return self.crop
        if self.source is None or self.detection is None:
            raise ValueError("a FaceImage needs a crop, or a photo and its detection")
        return canonical_crop(self.source, self.detection.landmarks)

    def for_model(self, spec: InputSpec) -> np.ndarray:
        """The face as a model with this input spec expects it (uint8 (h, w, 3) RGB)."""
        if not self.aligned:
            return self.image
        if self.source is not None and self.detection is not None:
            return model_face(self.source, self.detection.landmarks, spec)
        return model_face(self.image, CANONICAL.continuous_points(), spec)

    @cached_property
    def condition(self) -> str | None:
        """The photo condition this face is decided in (`embedding.openset.condition_of`): grey from the face
        region's chroma (the whole image's without a detection, measured once: every bar of a request reads it)."""
        if self.quality is not None and self.quality.face is not None:
            return condition_of(self.quality.chroma)
        return condition_of(chroma_of(self.image.astype(np.float64)))

    def detection_record(self) -> dict[str, Any] | None:
        """Detector, box, landmarks, score and quality measures, for the database and API answers."""
        if self.detection is None:
            return None
        record = self.detection.to_dict()
        if self.quality is not None:
            record["quality"] = self.quality.measures()
        return record


class FaceRejectedError(Exception):
    """A photo failed the enrolment gates: ``failures`` in `embedding.quality.QUALITY_CODES` order."""

    def __init__(self, failures: Sequence[Failure]) -> None:
        self.failures = list(failures)
        super().__init__("; ".join(f.message for f in self.failures))

    @property
    def code(self) -> str:
        """The first failure's code."""
        return self.failures[0].code

    @property
    def codes(self) -> list[str]:
        """Every failure's code."""
        return [f.code for f in self.failures]


def decode(data: bytes, *, max_pixels: int, max_aspect: float | None = None, max_side: int | None = None) -> np.ndarray:
    """Untrusted image bytes -> uint8 (H, W, 3) RGB; raises `ImageError` with a stable code."""
    return decode_image(data, max_pixels=max_pixels, max_aspect=max_aspect, max_side=max_side)


def model_face(image: np.ndarray, landmarks: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The model's own framing (``spec.face_template``) cut from an image by one similarity transform.

    image: uint8 (H, W, 3); landmarks: float (5, 2) in `embedding.detect.LANDMARK_NAMES` order.
    Returns uint8 (h, w, 3) at the template's size.
    """
    return align_face(image, landmarks, template=template_for_spec(spec))


def whole_image(image: np.ndarray, *, max_side: int) -> FaceImage:
    """A pre-cropped face: the whole image, only ever shrunk, to at most ``max_side`` px."""
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    return FaceImage(aligned=False, crop=image)


def aligned_face(image: np.ndarray, face: DetectedFace, quality: QualityReport | None = None) -> FaceImage:
    """A detected face in its photo (the canonical crop is cut only when it is stored)."""
    return FaceImage(aligned=True, detection=face, quality=quality, source=image)


def enrolment_face(image: np.ndarray, detector: Detector, gates: QualitySettings) -> FaceImage:
    """The one face of an enrolment photo, or `FaceRejectedError` with the failed gates' codes."""
    report = assess_image(image, detector.detect(image), gates)
    if not report.passed or report.face is None:
        raise FaceRejectedError(report.failures)
    return aligned_face(image, report.face, report)


def probe_faces(image: np.ndarray, detector: Detector, gates: QualitySettings) -> list[FaceImage]:
    """Every face of a probe photo, largest first, each with its quality measured (not gated)."""
    return [aligned_face(image, f, assess(image, f, gates)) for f in detector.detect(image)]


def encode_crop(crop: np.ndarray) -> bytes:
    """Lossless PNG bytes of a crop (uint8 (h, w, 3))."""
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_crop(data: bytes, *, aligned: bool) -> FaceImage:
    """A stored crop back to a face ready to embed."""
    return FaceImage(aligned=aligned, crop=decode_image(data, max_pixels=STORED_CROP_MAX_PIXELS))


class DetectorPool:
    """A few detectors for concurrent requests (a dlib detector serialises its own calls)."""

    def __init__(self, *, size: int, factory: Callable[[], Detector]) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._free: queue.Queue[Detector] = queue.Queue()
        for _ in range(size):
            self._free.put(factory())
        self.name = self._free.queue[0].name

    def load(self) -> None:
        """Load every detector's models now rather than on the first request."""
        for detector in list(self._free.queue):
            detector.load()

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in uint8 (H, W, 3) RGB, largest first."""
        with self._one() as detector:
            return detector.detect(image)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """`detect` for each image, in order."""
        with self._one() as detector:
            return detector.detect_batch(images)

    @contextmanager
    def _one(self) -> Iterator[Detector]:
        detector = self._free.get()
        try:
            yield detector
        finally:
            self._free.put(detector)


__all__ = [
    "DETECTOR_KINDS",
    "DetectorKind",
    "DetectorPool",
    "FaceImage",
    "FaceRejectedError",
    "ImageError",
    "LandmarkSource",
    "aligned_face",
    "build_detector",
    "decode",
    "decode_crop",
    "encode_crop",
    "enrolment_face",
    "landmarks_for",
    "model_face",
    "probe_faces",
    "whole_image",
]
