"""The face image the service keeps and embeds: the same crop for enrolment, search and re-indexing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from embedding import decode_image


def face_crop(image: np.ndarray, *, max_side: int) -> np.ndarray:
    """The face crop of a decoded image, uint8 (h, w, 3) RGB, no side longer than ``max_side``.

    Until face detection lands the whole image is the face; it is only shrunk (never enlarged), so the
    crop that is stored for re-indexing is exactly what every model embeds.
    """
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def encode_crop(crop: np.ndarray) -> bytes:
    """Lossless PNG bytes of a crop (uint8 (h, w, 3))."""
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_crop(data: bytes) -> np.ndarray:
    """A stored crop back to uint8 (h, w, 3) RGB."""
    return decode_image(data, max_pixels=64_000_000)
