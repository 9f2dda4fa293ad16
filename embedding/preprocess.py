"""The single preprocessing path from decoded RGB images to model input.

Training, evaluation and serving all call `to_model_input`, so a model always sees its inputs
prepared the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
from PIL import Image

from embedding.card import InputSpec

LUMA_WEIGHTS: Final[tuple[float, float, float]] = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma coefficients for R, G, B."""


def center_crop_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box of an (height, width) image with width/height == `aspect`.

    Returns (top, left, box_height, box_width), all ints, box at least 1x1.
    """
    if width >= aspect * height:
        box_h = height
        box_w = max(1, min(width, round(height * aspect)))
    else:
        box_w = width
        box_h = max(1, min(height, round(width / aspect)))
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


def _check_image(image: np.ndarray, index: int) -> None:
    """Raise TypeError/ValueError unless `image` is a non-empty uint8 (H, W, 3) numpy array."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ValueError(
            f"image {index}: expected a non-empty uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}"
        )


def _prepare_one(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One uint8 (H, W, 3) RGB image -> float32 (C, spec.height, spec.width), normalised."""
    if spec.resize == "center_crop":
        top, left, box_h, box_w = center_crop_box(image.shape[0], image.shape[1], spec.width / spec.height)
        image = image[top : top + box_h, left : left + box_w]
    size = (spec.width, spec.height)  # Pillow wants (width, height)
    if spec.channels == 1:
        luma = image.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
        grey = Image.fromarray(np.ascontiguousarray(luma)).resize(size, Image.Resampling.BILINEAR)
        planes = np.asarray(grey, dtype=np.float32)[None, :, :]
    else:
        rgb = Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.BILINEAR)
        planes = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)
    return (planes / np.float32(255.0) - np.float32(spec.mean)) / np.float32(spec.std)


def to_model_input(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Prepare decoded images for the model described by `spec`.

    Args:
        images: RGB uint8 arrays of shape (H, W, 3); sizes may differ. The whole image is treated
            as the face: detection and alignment come before (`embedding.facepath.model_face`).
        spec: the model's `InputSpec` (crop/resize, channels, normalisation).

    Returns:
        float32 C-contiguous array of shape (N, spec.channels, spec.height, spec.width);
        N = 0 gives shape (0, C, H, W).

    Raises:
        TypeError: if an image is not a numpy array.
        ValueError: if an image is not a non-empty uint8 (H, W, 3) array.
    """
    out = np.empty((len(images), spec.channels, spec.height, spec.width), dtype=np.float32)
    for index, image in enumerate(images):
        _check_image(image, index)
        out[index] = _prepare_one(image, spec)
    return out


def embed_faces(
    forward: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray], spec: InputSpec, *, batch_size: int
) -> np.ndarray:
    """Run a network over faces in batches: the one embedding loop of every runtime.

    Args:
        forward: float32 (n, C, H, W) model input -> float (n, D) raw embeddings.
        images: uint8 (H, W, 3) RGB faces of any sizes.
        spec: how to prepare them; with ``spec.flip`` each face and its mirror image share a batch and the
            embedding is the normalised sum of their two normalised outputs.
        batch_size: faces per call of ``forward`` (a flipped batch holds twice as many inputs).

    Returns:
        float32 (N, D) unit rows; (0, 0) when there are no images.
    """
    rows: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start : start + batch_size], spec)
        n = len(x)
        if spec.flip:
            x = np.concatenate([x, np.ascontiguousarray(x[:, :, :, ::-1])])
        emb = _unit(np.asarray(forward(x), dtype=np.float32))
        rows.append(_unit(emb[:n] + emb[n:]) if spec.flip else emb)
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12)), dtype=np.float32)
