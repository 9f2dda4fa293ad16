"""Exceptions raised by the embedding package.

`ImageError.code` is a stable, machine-readable string that the service maps to API errors.
"""

from __future__ import annotations

from typing import Final

EMPTY_IMAGE: Final = "empty_image"
UNSUPPORTED_IMAGE: Final = "unsupported_image"
CORRUPT_IMAGE: Final = "corrupt_image"
IMAGE_TOO_MANY_PIXELS: Final = "image_too_many_pixels"
DECOMPRESSION_BOMB: Final = "decompression_bomb"
IMAGE_BAD_ASPECT: Final = "image_bad_aspect"
IMAGE_SIDE_TOO_LONG: Final = "image_side_too_long"

IMAGE_ERROR_CODES: Final[frozenset[str]] = frozenset(
    {
        EMPTY_IMAGE,
        UNSUPPORTED_IMAGE,
        CORRUPT_IMAGE,
        IMAGE_TOO_MANY_PIXELS,
        DECOMPRESSION_BOMB,
        IMAGE_BAD_ASPECT,
        IMAGE_SIDE_TOO_LONG,
    }
)


class ImageError(ValueError):
    """An uploaded image could not be turned into pixels.

    `code` is one of `IMAGE_ERROR_CODES`; `message` is a human-readable explanation.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ModelLoadError(RuntimeError):
    """A model file is missing, unreadable, of the wrong format or inconsistent with its card."""
