"""The face images the service keeps and embeds, the same for enrolment, search and re-indexing.

A detected face is stored as a crop aligned to :data:`CANONICAL`, a generous 256x256 framing (the whole
head, eyes 64 px apart) from which any model's own framing (``InputSpec.face_template``: the AT&T-style head
of the current default model, or ArcFace's tight 112x112) is cut by a second similarity transform. So a
stored crop can be re-embedded by a future model with another framing. Without detection (``detect=false``,
pre-cropped faces) the crop is the whole image, shrunk to at most ``max_side``.
"""

from __future__ import annotations

import io
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from embedding import InputSpec, decode_image
from embedding.align import canonical_crop, model_crop
from embedding.detect import DetectedFace, DlibDetector
from embedding.quality import QualityReport


@dataclass(frozen=True)
class FaceImage:
    """One face ready to embed: the canonical aligned crop (``aligned``) or a whole image."""

    image: np.ndarray
    aligned: bool
    detection: DetectedFace | None = None
    quality: QualityReport | None = None

    def for_model(self, spec: InputSpec) -> np.ndarray:
        """The face as a model with this input spec expects it (uint8 (h, w, 3) RGB)."""
        if not self.aligned:
            return self.image
        return model_crop(self.image, spec)

    def detection_record(self) -> dict[str, Any] | None:
        """Detector, box, landmarks, score and quality measures, for the database and API answers."""
        if self.detection is None:
            return None
        record = self.detection.to_dict()
        if self.quality is not None:
            record["quality"] = self.quality.measures()
        return record


def whole_image(image: np.ndarray, *, max_side: int) -> FaceImage:
    """A pre-cropped face: the whole image, only ever shrunk, to at most ``max_side`` px."""
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    return FaceImage(image=image, aligned=False)


def aligned_face(image: np.ndarray, face: DetectedFace, quality: QualityReport | None = None) -> FaceImage:
    """A detected face, aligned to :data:`CANONICAL`."""
    crop = canonical_crop(image, face.landmarks)
    return FaceImage(image=crop, aligned=True, detection=face, quality=quality)


def encode_crop(crop: np.ndarray) -> bytes:
    """Lossless PNG bytes of a crop (uint8 (h, w, 3))."""
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_crop(data: bytes, *, aligned: bool) -> FaceImage:
    """A stored crop back to a face ready to embed."""
    return FaceImage(image=decode_image(data, max_pixels=64_000_000), aligned=aligned)


class DetectorPool:
    """A few detectors for concurrent requests (each dlib detector serialises its own calls)."""

    def __init__(self, *, size: int, backend: str, landmarks: str) -> None:
        self._free: queue.Queue[DlibDetector] = queue.Queue()
        for _ in range(size):
            self._free.put(DlibDetector(backend=backend, landmarks=landmarks))  # type: ignore[arg-type]
        self.name = f"dlib-{backend}-{landmarks}"

    def load(self) -> None:
        """Load every detector's models now rather than on the first request."""
        for detector in list(self._free.queue):
            detector.load()

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in uint8 (H, W, 3) RGB, largest first."""
        with self._one() as detector:
            return detector.detect(image)

    @contextmanager
    def _one(self) -> Iterator[DlibDetector]:
        detector = self._free.get()
        try:
            yield detector
        finally:
            self._free.put(detector)
