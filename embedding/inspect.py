"""Draw what detection, alignment and the quality gates see: for `facedb inspect IMAGE -o out.png`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from embedding.align import FaceTemplate, HEAD_92x112, align_face
from embedding.detect import LANDMARK_NAMES, DetectedFace, Detector, as_rgb
from embedding.image import decode_image
from embedding.quality import QualityReport, QualitySettings, assess

_COLOURS: Final[tuple[tuple[int, int, int], ...]] = (
    (0, 220, 0),
    (255, 160, 0),
    (0, 170, 255),
    (255, 0, 200),
    (255, 255, 0),
)
_POINT_COLOURS: Final[tuple[tuple[int, int, int], ...]] = (
    (255, 0, 0),
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
)
_MIN_SIDE: Final = 480
"""The photo panel is enlarged until its longer side reaches this many px."""
_CROP_HEIGHT: Final = 168
_DEFAULT_MAX_PIXELS: Final = 40_000_000


@dataclass(frozen=True)
class Inspection:
    """Result of `inspect_image`: the faces (largest first), their aligned crops and quality reports."""

    faces: list[DetectedFace]
    crops: list[np.ndarray]
    reports: list[QualityReport]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_inspection(
    image: np.ndarray,
    faces: Sequence[DetectedFace],
    crops: Sequence[np.ndarray],
    reports: Sequence[QualityReport] | None = None,
) -> Image.Image:
    """Render a uint8 (H, W, 3) RGB image with its faces, plus a strip of the aligned crops.

    Each face gets a box labelled "#index score" in its own colour and its five landmarks numbered
    0-4 in `LANDMARK_NAMES` order (0 left eye, 1 right eye, 2 nose tip, 3/4 mouth corners; image
    left/right). Below the photo, the crops (uint8 (h, w, 3)) are shown in face order with the
    quality verdict (PASS or the failure codes) when `reports` is given.
    """
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    zoom = max(1.0, _MIN_SIDE / max(height, width))
    panel_w, panel_h = max(1, round(width * zoom)), max(1, round(height * zoom))
    photo = Image.fromarray(rgb).resize((panel_w, panel_h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(photo)
    label_font = _font(14)
    point_font = _font(11)
    line = max(2, round(max(panel_w, panel_h) / 300))
    for index, face in enumerate(faces):
        colour = _COLOURS[index % len(_COLOURS)]
        x0, y0, x1, y1 = (v * zoom for v in face.box)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        draw.text((x0 + 2, max(0.0, y0 - 16)), f"#{index} {face.score:.2f}", fill=colour, font=label_font)
        radius = max(2, line)
        for number, (px, py) in enumerate(face.landmarks):
            cx, cy = float(px) * zoom, float(py) * zoom
            dot = _POINT_COLOURS[number % len(_POINT_COLOURS)]
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=dot, outline=(0, 0, 0))
            draw.text((cx + radius + 1, cy - radius - 1), str(number), fill=dot, font=point_font)

    tiles: list[Image.Image] = []
    for crop in crops:
        tile = Image.fromarray(as_rgb(crop))
        tiles.append(tile.resize((max(1, round(tile.width * _CROP_HEIGHT / tile.height)), _CROP_HEIGHT)))
    captions: list[str] = []
    for index in range(len(tiles)):
        text = f"#{index}"
        if reports is not None and index < len(reports):
            text += " PASS" if reports[index].passed else " " + ",".join(reports[index].codes)
        captions.append(text)
    caption_h = 20
    legend = "points: " + ", ".join(f"{i} {name}" for i, name in enumerate(LANDMARK_NAMES))
    strip_w = sum(t.width + 8 for t in tiles) + 8
    footer = f"{len(faces)} face(s); {legend}"
    footer_w = round(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(footer, font=label_font)) + 8
    canvas_w = max(panel_w, strip_w, footer_w)
    strip_h = (_CROP_HEIGHT + caption_h + 8) if tiles else 0
    canvas = Image.new("RGB", (canvas_w, panel_h + strip_h + 24), (32, 32, 32))
    canvas.paste(photo, (0, 0))
    cdraw = ImageDraw.Draw(canvas)
    x = 8
    for tile, caption, colour_index in zip(tiles, captions, range(len(tiles)), strict=True):
        canvas.paste(tile, (x, panel_h + 4))
        cdraw.text(
            (x, panel_h + 6 + _CROP_HEIGHT),
            caption,
            fill=_COLOURS[colour_index % len(_COLOURS)],
            font=label_font,
        )
        x += tile.width + 8
    cdraw.text((4, panel_h + strip_h + 4), footer, fill=(230, 230, 230), font=label_font)
    return canvas


def inspect_image(
    data: bytes,
    *,
    detector: Detector,
    out_path: Path | str | None = None,
    template: FaceTemplate = HEAD_92x112,
    settings: QualitySettings | None = None,
    max_pixels: int = _DEFAULT_MAX_PIXELS,
) -> Inspection:
    """Decode, detect, align every face to `template`, assess it, and save the drawing to `out_path`.

    The format is taken from `out_path`'s suffix (PNG recommended). Raises `ImageError` for
    undecodable bytes.
    """
    image = decode_image(data, max_pixels=max_pixels)
    faces = detector.detect(image)
    crops = [align_face(image, face.landmarks, template=template) for face in faces]
    reports = [assess(image, face, settings) for face in faces]
    if out_path is not None:
        draw_inspection(image, faces, crops, reports).save(out_path)
    return Inspection(faces=faces, crops=crops, reports=reports)
