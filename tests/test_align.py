"""Similarity alignment to the ArcFace and head templates."""

from __future__ import annotations

import math
import random
import typing

import numpy as np
import pytest
from PIL import Image

from embedding.align import (
    ARCFACE_112,
    DLIB_150,
    TEMPLATES,
    FaceTemplate,
    HEAD_92x112,
    align_face,
    alignment_matrix,
    eye_error,
    similarity_transform,
    template_for_spec,
    transform_points,
)
from embedding.card import FaceTemplateName, InputSpec
from embedding.detect import DlibDetector
from tests.conftest import DATA_ROOT, read_rgb, require_data

SEED = 20240611


def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def test_similarity_transform_recovers_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    truth = similarity(1.7, 23.0, 5.0, -12.0)
    dst = transform_points(src, truth)
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    src = ARCFACE_112.points.copy()
    mirrored = src * np.array([-1.0, 1.0])
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_similarity_transform_degenerate_and_bad_input() -> None:
    same = np.ones((5, 2))
    m = similarity_transform(same, ARCFACE_112.points)
    np.testing.assert_allclose(m[:, :2], np.eye(2))
    with pytest.raises(ValueError, match="finite"):
        similarity_transform(np.full((5, 2), np.nan), ARCFACE_112.points)
    with pytest.raises(ValueError, match="N >= 2"):
        similarity_transform(np.zeros((1, 2)), np.zeros((1, 2)))


def test_align_places_a_synthetic_pattern_on_the_template() -> None:
    """Dots drawn at transformed template positions land on the template pixels after alignment."""
    truth = similarity(2.3, -17.0, 60.0, 40.0)  # crop -> image
    image = np.zeros((400, 400, 3), dtype=np.uint8)
    points = transform_points(ARCFACE_112.continuous_points(), truth)
    yy, xx = np.mgrid[0:400, 0:400] + 0.5
    for x, y in points:
        image[(xx - x) ** 2 + (yy - y) ** 2 < 4.0**2] = 255
    crop = align_face(image, points, template=ARCFACE_112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    grey = crop[:, :, 0].astype(np.float64)
    cy, cx = np.mgrid[0:112, 0:112] + 0.5
    for x, y in ARCFACE_112.continuous_points():
        window = (np.abs(cx - x) < 5) & (np.abs(cy - y) < 5)
        weights = grey * window
        centroid = np.array([(weights * cx).sum(), (weights * cy).sum()]) / weights.sum()
        assert np.linalg.norm(centroid - [x, y]) < 0.3


def test_size_scales_template_and_downscale_path_matches() -> None:
    rng = np.random.default_rng(1)
    small = np.asarray(Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).resize((200, 200)))
    points = ARCFACE_112.continuous_points() * (200 / 112)
    a = align_face(small, points, size=(112, 112))
    big = np.asarray(Image.fromarray(small).resize((1600, 1600), Image.Resampling.BILINEAR))
    b = align_face(big, points * 8, size=(112, 112))  # shrink 8x: box-filtered first
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 6
    c = align_face(small, points, size=(224, 224))
    assert c.shape == (224, 224, 3)


def test_border_modes() -> None:
    image = np.full((50, 50, 3), 200, dtype=np.uint8)
    points = ARCFACE_112.continuous_points() * 0.2 - 10.0  # face at the image corner: the crop runs off it
    edge = align_face(image, points, border="edge")
    constant = align_face(image, points, border="constant")
    assert edge.min() == 200
    assert constant.min() == 0


def test_templates_and_spec() -> None:
    assert set(TEMPLATES) == {"arcface_112", "head_92x112", "dlib_150", "arcface_112x123"}
    assert set(TEMPLATES) == set(typing.get_args(FaceTemplateName))
    # the fusion's input: ArcFace's square on top, unchanged, and 11 more rows below
    assert np.array_equal(TEMPLATES["arcface_112x123"].points, ARCFACE_112.points)
    assert TEMPLATES["arcface_112x123"].size == (112, 123)
    assert HEAD_92x112.size == (92, 112)
    # Head framing from dlib_resnet.md: eyes at ~47% of the height, eye-to-mouth ~30%.
    eyes_y = HEAD_92x112.points[:2, 1].mean() / 112
    assert 0.45 < eyes_y < 0.49
    assert 0.27 < (HEAD_92x112.points[3:, 1].mean() - HEAD_92x112.points[:2, 1].mean()) / 112 < 0.32
    spec = InputSpec(height=64, width=52, channels=1, mean=0.5, std=0.5)
    assert spec.face_template is None
    assert template_for_spec(spec) is HEAD_92x112
    spec2 = InputSpec(height=112, width=112, channels=3, mean=0.5, std=0.5, face_template="arcface_112")
    assert template_for_spec(spec2) is ARCFACE_112


@pytest.mark.data
@pytest.mark.parametrize("template", [HEAD_92x112, ARCFACE_112, DLIB_150], ids=lambda t: t.name)
def test_detected_faces_align_onto_the_template(detector: DlibDetector, template: FaceTemplate) -> None:
    """Detect, align, detect again in the crop: the eyes are within a few px of the template's eyes."""
    files = sorted(require_data(DATA_ROOT / "lfw" / "images").glob("*/*.jpg"))
    files += sorted(require_data(DATA_ROOT / "celeba_subset").glob("*/*.jpg"))
    errors = []
    eye_distance = float(np.linalg.norm(template.points[1] - template.points[0]))
    # The ArcFace crop is tight (no margin around the face); HOG needs context, so re-detect at 2x
    # size in a grey frame.
    for path in random.Random(SEED).sample(files, 12):
        image = read_rgb(path)
        faces = detector.detect(image)
        if not faces:
            continue
        # The fit's residual at the eyes, within 23% of the template's eye distance (8 px for ArcFace's 35 px).
        assert eye_error(faces[0].landmarks, template) < 0.23 * eye_distance
        size = (template.size[0] * 2, template.size[1] * 2)
        crop = align_face(image, faces[0].landmarks, template=template, size=size)
        framed = np.full((size[1] * 2, size[0] * 2, 3), 128, dtype=np.uint8)
        framed[size[1] // 2 : size[1] // 2 + size[1], size[0] // 2 : size[0] // 2 + size[0]] = crop
        again = detector.detect(framed)
        if not again:
            continue
        eyes = again[0].landmarks[:2] - np.array([size[0] // 2, size[1] // 2])
        target = template.continuous_points(size)[:2]
        errors.append(float(np.linalg.norm(eyes - target, axis=1).mean()) / 2)  # in template px
    assert len(errors) >= 8
    assert float(np.median(errors)) < 0.086 * eye_distance, errors  # 3 px for ArcFace


def test_alignment_matrix_maps_landmarks_close_to_template() -> None:
    truth = similarity(0.5, 10.0, 3.0, 4.0)
    landmarks = transform_points(HEAD_92x112.continuous_points(), truth)
    m = alignment_matrix(landmarks, template=HEAD_92x112)
    np.testing.assert_allclose(transform_points(landmarks, m), HEAD_92x112.continuous_points(), atol=1e-9)
    assert eye_error(landmarks, HEAD_92x112) < 1e-9
