"""Property-based tests of the image decoder and its limits: whatever the bytes, the answer is pixels or an
ImageError with a known code, and a limit is enforced exactly at its boundary, from the header alone."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from embedding.errors import IMAGE_ERROR_CODES, ImageError
from embedding.image import decode_image
from tests.test_bad_input import png_declaring

FAST = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _encode(width: int, height: int, fmt: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {fmt: _encode(24, 16, fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "PPM")}


def _decode_or_code(data: bytes, **limits: int | float) -> str | np.ndarray:
    """The pixels, or the error code; anything else escapes and fails the test."""
    try:
        return decode_image(data, **limits)  # type: ignore[arg-type]
    except ImageError as exc:
        code = exc.code
    assert code in IMAGE_ERROR_CODES, code
    return code


def _is_pixels(result: str | np.ndarray) -> bool:
    if isinstance(result, str):
        return False
    assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3 and result.flags.c_contiguous
    return True


@FAST
@given(st.binary(max_size=4096))
def test_any_bytes_give_pixels_or_a_known_code(data: bytes) -> None:
    _decode_or_code(data, max_pixels=1_000_000, max_side=4096, max_aspect=20)


@FAST
@given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 10_000),
)
def test_damaged_images_give_pixels_or_a_known_code(fmt: str, flips: list[tuple[int, int]], cut: int) -> None:
    """Real files of every supported format with bytes overwritten and the tail cut off."""
    data = bytearray(SEEDS[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    _decode_or_code(bytes(data[: max(1, len(data) - cut % len(data))]), max_pixels=1_000_000)


@FAST
@given(
    st.integers(1, 80),
    st.integers(1, 80),
    st.integers(1, 6400),
    st.integers(1, 80),
    st.floats(1.0, 20.0),
)
def test_each_limit_holds_exactly_at_its_boundary(
    width: int, height: int, max_pixels: int, max_side: int, max_aspect: float
) -> None:
    result = _decode_or_code(
        _encode(width, height, "PNG"), max_pixels=max_pixels, max_side=max_side, max_aspect=max_aspect
    )
    if width * height > max_pixels:
        assert result in ("image_too_many_pixels", "decompression_bomb")
    elif max(width, height) > max_aspect * min(width, height):
        assert result == "image_bad_aspect"
    elif max(width, height) > max_side:
        assert result == "image_side_too_long"
    else:
        assert _is_pixels(result) and result.shape[:2] == (height, width)  # type: ignore[union-attr]


@FAST
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_a_declared_size_over_the_limit_is_refused_from_the_header(width: int, height: int) -> None:
    """Headers that claim any size up to 2^31 per side over 64 bytes of pixel data: refused before a pixel is
    allocated; within the limits, the pixels the data holds or corrupt_image."""
    result = _decode_or_code(png_declaring(width, height), max_pixels=40_000_000, max_side=16384, max_aspect=20)
    if width * height > 40_000_000:
        assert result in ("decompression_bomb", "image_too_many_pixels")
    elif max(width, height) > 20 * min(width, height):
        assert result == "image_bad_aspect"
    elif max(width, height) > 16384:
        assert result == "image_side_too_long"
    else:
        assert (isinstance(result, str) and result == "corrupt_image") or _is_pixels(result)
        assert isinstance(result, str) or result.shape[:2] == (height, width)
