"""Quality gates: good photos pass, photos made to trip a gate fail with its code."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from embedding.detect import DetectedFace, DlibDetector
from embedding.openset import GREY_CHROMA
from embedding.quality import (
    EXTREME_POSE,
    FACE_TOO_SMALL,
    LOW_CONFIDENCE,
    MULTIPLE_FACES,
    NO_FACE,
    OVEREXPOSED,
    QUALITY_CODES,
    TOO_BLURRY,
    TOO_DARK,
    QualitySettings,
    assess,
    assess_image,
    chroma_of,
    pose_from_landmarks,
    sharpness_of,
)
from tests.conftest import DATA_ROOT, read_rgb, require_data


def read_rgb_bytes(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


SEED = 20240611


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A frontal, well-lit LFW photo (250x250) that passes every gate."""
    return read_rgb(require_data(DATA_ROOT / "lfw" / "images") / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")


def gate(detector: DlibDetector, image: np.ndarray, settings: QualitySettings | None = None) -> list[str]:
    return assess_image(image, detector.detect(image), settings).codes


@pytest.mark.data
def test_good_photo_passes(detector: DlibDetector, photo: np.ndarray) -> None:
    report = assess_image(photo, detector.detect(photo))
    assert report.passed, report.failures
    assert report.n_faces == 1
    m = report.measures()
    assert 30 < m["inter_eye_px"] < 60
    assert abs(m["roll_deg"]) < 10 and abs(m["yaw_ratio"]) < 0.2
    assert m["sharpness"] > 0.05 and 60 < m["brightness"] < 200
    assert m["chroma"] > 3 * GREY_CHROMA  # a colour photo


@pytest.mark.data
def test_a_grey_copy_of_a_photo_measures_as_grey(detector: DlibDetector, photo: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(photo).convert("L").convert("RGB"))
    report = assess_image(grey, detector.detect(grey))
    assert report.chroma < 0.5 < GREY_CHROMA
    # a black-and-white photo stored as a colour JPEG keeps only compression noise in its channels
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=75)
    again = read_rgb_bytes(buf.getvalue())
    assert assess_image(again, detector.detect(again)).chroma < GREY_CHROMA


def test_chroma_is_the_channel_spread() -> None:
    region = np.zeros((4, 4, 3))
    assert chroma_of(region) == 0.0
    region[..., 0] = 30.0  # red 30 above green and blue everywhere
    assert chroma_of(region) == pytest.approx(30.0)


@pytest.mark.data
@pytest.mark.parametrize(
    ("root", "pattern", "floor"),
    [
        ("att_faces", "*/*.pgm", 0.85),  # measured 0.98 (detected and passed, of all images)
        ("lfw/images", "*/*.jpg", 0.85),  # measured 0.92
        ("celeba_subset", "*/*.jpg", 0.7),  # measured 0.79
        ("yalefaces", "*/*.gif", 0.85),  # measured 0.97
    ],
)
def test_most_good_photos_pass(detector: DlibDetector, root: str, pattern: str, floor: float) -> None:
    files = sorted(require_data(DATA_ROOT / root).glob(pattern))
    paths = random.Random(SEED).sample(files, 16)
    passed = sum(assess_image(im, detector.detect(im)).passed for im in (read_rgb(p) for p in paths))
    assert passed / len(paths) >= floor, f"{root}: {passed} of {len(paths)} passed"


@pytest.mark.data
def test_blurred_is_too_blurry(detector: DlibDetector, photo: np.ndarray) -> None:
    blurred = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(3)))
    assert TOO_BLURRY in gate(detector, blurred)


@pytest.mark.data
def test_darkened_is_too_dark(detector: DlibDetector, photo: np.ndarray) -> None:
    assert gate(detector, (photo * 0.15).astype(np.uint8)) == [TOO_DARK]


@pytest.mark.data
def test_brightened_is_overexposed(detector: DlibDetector, photo: np.ndarray) -> None:
    bright = np.clip(photo.astype(np.float64) * 2.2 + 60, 0, 255).astype(np.uint8)
    assert OVEREXPOSED in gate(detector, bright)


@pytest.mark.data
def test_tiny_face_is_too_small(detector: DlibDetector, photo: np.ndarray) -> None:
    # 250 -> 130 px: the face (eyes ~42 px apart at full size) is still found, eyes ~17 px apart.
    small = np.asarray(Image.fromarray(photo).resize((110, 110), Image.Resampling.BILINEAR))
    canvas = np.full((300, 300, 3), 128, dtype=np.uint8)
    canvas[95:205, 95:205] = small
    codes = gate(detector, canvas)
    assert FACE_TOO_SMALL in codes
    # Far too small to be found at all: no_face.
    assert gate(detector, np.asarray(Image.fromarray(photo).resize((30, 30)))) == [NO_FACE]


@pytest.mark.data
@pytest.mark.parametrize("angle", [45, -45])
def test_rotated_is_extreme_pose(detector: DlibDetector, photo: np.ndarray, angle: int) -> None:
    rotated = np.asarray(Image.fromarray(photo).rotate(angle, expand=True, resample=Image.Resampling.BILINEAR))
    report = assess_image(rotated, detector.detect(rotated))
    assert EXTREME_POSE in report.codes
    assert abs(abs(report.roll_deg) - 45) < 8


@pytest.mark.data
def test_two_faces_are_multiple_faces(detector: DlibDetector, photo: np.ndarray) -> None:
    other = read_rgb(require_data(DATA_ROOT / "lfw" / "images") / "Colin_Powell" / "Colin_Powell_0001.jpg")
    pair = np.concatenate([photo, other], axis=1)
    faces = detector.detect(pair)
    assert len(faces) == 2
    assert assess_image(pair, faces).codes == [MULTIPLE_FACES]
    largest = assess_image(pair, faces, QualitySettings(multiple_faces="largest"))
    assert largest.passed and largest.n_faces == 2 and largest.face is faces[0]


def test_blank_is_no_face(detector: DlibDetector) -> None:
    report = assess_image(np.full((240, 320, 3), 128, np.uint8), detector.detect(np.full((240, 320, 3), 128, np.uint8)))
    assert report.codes == [NO_FACE] and report.face is None and report.n_faces == 0


@pytest.mark.data
def test_low_score_is_low_confidence(detector: DlibDetector, photo: np.ndarray) -> None:
    face = detector.detect(photo)[0]
    weak = DetectedFace(box=face.box, score=0.05, landmarks=face.landmarks, detector="hog")
    assert assess(photo, weak).codes == [LOW_CONFIDENCE]
    assert LOW_CONFIDENCE in assess(photo, face, QualitySettings(min_score=face.score + 1)).codes


@pytest.mark.data
def test_sharpness_does_not_depend_on_resolution(detector: DlibDetector, photo: np.ndarray) -> None:
    big = np.asarray(Image.fromarray(photo).resize((500, 500), Image.Resampling.BICUBIC))
    a = assess_image(photo, detector.detect(photo)).sharpness
    b = assess_image(big, detector.detect(big)).sharpness
    assert 0.6 < b / a < 1.5


def test_measures_on_synthetic_landmarks() -> None:
    pts = np.array([[30, 50], [70, 50], [50, 70], [35, 90], [65, 90]], dtype=np.float64)
    roll, yaw, pitch = pose_from_landmarks(pts)
    assert abs(roll) < 1e-9 and abs(yaw) < 1e-9 and abs(pitch - 0.5) < 1e-9
    tilted = pts.copy()
    tilted[1, 1] = 90  # right eye 40 px lower: +45 degrees
    assert abs(pose_from_landmarks(tilted)[0] - 45) < 1e-6
    flat = np.full((50, 50), 100.0)
    assert sharpness_of(flat) == 0.0
    assert set(QUALITY_CODES) == {
        NO_FACE,
        MULTIPLE_FACES,
        FACE_TOO_SMALL,
        TOO_BLURRY,
        TOO_DARK,
        OVEREXPOSED,
        EXTREME_POSE,
        LOW_CONFIDENCE,
    }


def test_odd_images_do_not_crash(detector: DlibDetector) -> None:
    for image in (np.zeros((1, 1, 3), np.uint8), np.zeros((2000, 3000), np.uint8)):
        assert assess_image(image, detector.detect(image)).codes == [NO_FACE]
    # A face whose landmarks run off a 1x1 image still gets measured (edge padding), not a crash.
    face = DetectedFace(box=(0, 0, 1, 1), score=1.0, landmarks=np.array([[0, 0], [1, 0], [0.5, 0.5], [0, 1], [1, 1]]))
    report = assess(np.zeros((1, 1, 3), np.uint8), face)
    assert FACE_TOO_SMALL in report.codes and TOO_DARK in report.codes


@pytest.mark.data
def test_small_bystander_is_not_multiple_faces(detector: DlibDetector, photo: np.ndarray) -> None:
    other = read_rgb(require_data(DATA_ROOT / "lfw" / "images") / "Colin_Powell" / "Colin_Powell_0001.jpg")
    canvas = np.full((250, 400, 3), 128, dtype=np.uint8)
    canvas[:, :250] = photo
    canvas[70:190, 265:385] = np.asarray(Image.fromarray(other).resize((120, 120)))  # face ~0.45x the main one
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert MULTIPLE_FACES not in assess_image(canvas, faces).codes
    assert MULTIPLE_FACES in assess_image(canvas, faces, QualitySettings(secondary_face_ratio=0.0)).codes
