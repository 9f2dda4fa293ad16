"""Decode untrusted image bytes into RGB pixels.

Every failure is reported as an `ImageError` with a stable code; no other exception escapes
`decode_image` for any input byte string.
"""

from __future__ import annotations

import io
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedding.errors import (
    CORRUPT_IMAGE,
    DECOMPRESSION_BOMB,
    EMPTY_IMAGE,
    IMAGE_BAD_ASPECT,
    IMAGE_SIDE_TOO_LONG,
    IMAGE_TOO_MANY_PIXELS,
    UNSUPPORTED_IMAGE,
    ImageError,
)

SUPPORTED_FORMATS: Final[tuple[str, ...]] = ("JPEG", "PNG", "PPM", "GIF", "BMP", "WEBP")
"""Pillow format names accepted by `decode_image` (PPM covers PBM/PGM/PPM)."""

BOMB_RATIO: Final = 100
"""An over-sized image whose raw RGB size exceeds this multiple of its encoded size is a bomb."""

_SIXTEEN_BIT_MODES: Final = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def _too_large_error(width: int, height: int, n_bytes: int, max_pixels: int) -> ImageError:
    """The error for an image that declares more than `max_pixels` pixels."""
    pixels = width * height
    if pixels * 3 > BOMB_RATIO * n_bytes:
        return ImageError(
            DECOMPRESSION_BOMB,
            f"image declares {width}x{height} pixels ({pixels * 3} raw bytes) from only {n_bytes} bytes "
            f"of data; limit is {max_pixels} pixels",
        )
    return ImageError(
        IMAGE_TOO_MANY_PIXELS,
        f"image has {width}x{height} = {pixels} pixels; limit is {max_pixels}",
    )


def _pillow_bomb_error(exc: Exception, n_bytes: int, max_pixels: int) -> ImageError:
    """Map Pillow's own decompression-bomb guard, which fires inside `Image.open` before we see the size.

    Pillow raises `DecompressionBombError` above 2 * `Image.MAX_IMAGE_PIXELS` (read, never changed
    here) and warns above 1x, which is an exception only under a warnings filter that says so.
    The declared raw size is then at least 3 bytes times that many pixels.
    """
    limit = (Image.MAX_IMAGE_PIXELS or 0) * (2 if isinstance(exc, Image.DecompressionBombError) else 1)
    if limit * 3 > BOMB_RATIO * n_bytes:
        return ImageError(
            DECOMPRESSION_BOMB,
            f"image declares more than {limit} pixels from only {n_bytes} bytes of data; limit is {max_pixels} pixels",
        )
    return ImageError(IMAGE_TOO_MANY_PIXELS, f"image declares more than {limit} pixels; limit is {max_pixels}")


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to a uint8 RGB array, (H, W, 3) for valid images."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        # 16-bit PNG / PGM: Pillow scales samples to 0..65535; map to 0..255 rather than clipping.
        scale = 257.0 if mode in _SIXTEEN_BIT_MODES else 1.0
        wide = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = mode in {"RGBA", "LA", "La", "RGBa", "PA"} or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    elif mode == "RGB":
        rgb = img
    else:
        # L, 1, P, CMYK, YCbCr, LAB, HSV, ...: Pillow's converters (grey is replicated).
        rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def _corrupt(exc: Exception) -> ImageError:
    """Map a decoder failure (the format was recognised but the data is bad) to `corrupt_image`."""
    return ImageError(CORRUPT_IMAGE, f"the image data is corrupt: {type(exc).__name__}: {exc}")


def decode_image(
    data: bytes, *, max_pixels: int, max_aspect: float | None = None, max_side: int | None = None
) -> np.ndarray:
    """Decode an encoded image into an RGB array.

    Args:
        data: encoded JPEG, PNG, PBM/PGM/PPM, GIF, BMP or WebP bytes (untrusted).
        max_pixels: largest accepted width * height, checked from the header before decoding.
        max_aspect: largest accepted ratio of the longer side to the shorter (None: any), checked from the header.
        max_side: longest accepted side in pixels (None: any), checked from the header.

    Returns:
        uint8 array of shape (H, W, 3), RGB, C-contiguous. Grey images are replicated to three
        channels, palette/alpha/16-bit/CMYK images converted (alpha composited on white), only the
        first frame of an animation is used, and the EXIF orientation is applied.

    Raises:
        ImageError: with code `empty_image`, `unsupported_image`, `corrupt_image`, `image_too_many_pixels`,
            `image_bad_aspect`, `image_side_too_long` or `decompression_bomb`; never any other exception for bytes
            input.
        ValueError: if `max_pixels` is not positive (a programming error, not a bad upload).
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if not data:
        raise ImageError(EMPTY_IMAGE, "the image is empty (0 bytes)")
    n_bytes = len(data)
    try:
        # Lazy: reads the header only. Pillow's own bomb guard may fire here (mapped below).
        img = Image.open(io.BytesIO(bytes(data)), formats=list(SUPPORTED_FORMATS))
    except UnidentifiedImageError as exc:
        raise ImageError(
            UNSUPPORTED_IMAGE,
            "not a recognised image; supported formats: JPEG, PNG, PGM/PPM/PBM, GIF, BMP, WebP",
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_bomb_error(exc, n_bytes, max_pixels) from exc
    except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error, EOFError, MemoryError, ...
        raise _corrupt(exc) from exc

    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(CORRUPT_IMAGE, f"image declares an invalid size {width}x{height}")
        if width * height > max_pixels:
            raise _too_large_error(width, height, n_bytes, max_pixels)
        if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
            raise ImageError(
                IMAGE_BAD_ASPECT, f"image is {width}x{height}; its sides may differ by at most {max_aspect:g}x"
            )
        if max_side is not None and max(width, height) > max_side:
            raise ImageError(IMAGE_SIDE_TOO_LONG, f"image is {width}x{height}; its sides may be at most {max_side} px")
        try:
            # Multi-frame files (GIF, WebP) are positioned on their first frame after open.
            # Truncated data fails here: ImageFile.LOAD_TRUNCATED_IMAGES is left False.
            img.load()
            rgb = _to_rgb_array(ImageOps.exif_transpose(img))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _pillow_bomb_error(exc, n_bytes, max_pixels) from exc
        except Exception as exc:
            raise _corrupt(exc) from exc
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ImageError(CORRUPT_IMAGE, f"decoded image has unexpected shape {rgb.shape}")
    return np.ascontiguousarray(rgb)
