"""dlib's ResNet face embedder as a distillation teacher (CC0 weights from `face_recognition_models`).

The teacher sees each face the way dlib's own pipeline does: its 5-point shape predictor on the face box,
`dlib.get_face_chip` (150x150 RGB, padding 0.25), then the 29-layer ResNet's 128-d descriptor. It is slow on
a CPU (about 16 faces/s per core here), so training computes its embeddings once, beside the aligned crops
(`embedding.train.faceset`), and never at serving time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from embedding.detect import YUNET_TO_HOG, DetectedFace, as_rgb
from embedding.lazy import LazyModel

TEACHER_NAME: Final = "dlib_resnet_v1"
"""Stable name of the teacher (recorded in model cards and cache keys)."""

TEACHER_DIM: Final = 128


class DlibTeacher(LazyModel[tuple[Any, Any]]):
    """128-d L2-normalised embeddings of detected faces from dlib's ResNet (lazy `load()`)."""

    name: Final = TEACHER_NAME
    dim: Final = TEACHER_DIM

    def __init__(self, *, chip_size: int = 150, padding: float = 0.25) -> None:
        super().__init__()
        self._chip_size = chip_size
        self._padding = padding

    def _load(self) -> tuple[Any, Any]:
        """The 5-point predictor and the ResNet."""
        import dlib  # noqa: PLC0415 - heavy native module, imported on first use only
        import face_recognition_models as frm  # noqa: PLC0415

        return (
            dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
            dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
        )

    def chip(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """dlib's aligned chip of one face: uint8 (chip_size, chip_size, 3) RGB."""
        import dlib  # noqa: PLC0415

        predictor, _ = self._state()
        rgb = np.ascontiguousarray(as_rgb(image))
        x0, y0, x1, y1 = YUNET_TO_HOG(face.box) if face.detector == "yunet" else face.box
        rect = dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
        shape = predictor(rgb, rect)
        return np.asarray(dlib.get_face_chip(rgb, shape, self._chip_size, self._padding), dtype=np.uint8)

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """float32 (N, 128) unit rows for chips from `chip`; (0, 128) for none."""
        if not chips:
            return np.zeros((0, self.dim), dtype=np.float32)
        _, resnet = self._state()
        out = np.asarray(resnet.compute_face_descriptor([np.ascontiguousarray(c) for c in chips]), dtype=np.float32)
        return np.asarray(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12), dtype=np.float32)

    def embed(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
        """float32 (len(faces), 128) unit rows for faces of one image."""
        return self.embed_chips([self.chip(image, face) for face in faces])
