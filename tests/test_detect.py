"""Face detection (dlib HOG / CNN + landmarks) on real photos and odd inputs."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedding.detect import LANDMARK_NAMES, DetectedFace, Detector, DlibDetector, as_rgb
from tests.conftest import DATA_ROOT, read_rgb, require_data

SEED = 20240611


def sample(pattern_root: str, pattern: str, n: int) -> list[Path]:
    files = sorted(require_data(DATA_ROOT / pattern_root).glob(pattern))
    return random.Random(SEED).sample(files, min(n, len(files)))


def two_faces() -> np.ndarray:
    """Two LFW photos side by side, the right one at half size: two faces of different sizes."""
    root = require_data(DATA_ROOT / "lfw" / "images")
    big = read_rgb(root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    small = np.asarray(Image.fromarray(read_rgb(root / "Colin_Powell" / "Colin_Powell_0001.jpg")).resize((150, 150)))
    canvas = np.full((250, 420, 3), 128, dtype=np.uint8)
    canvas[:, :250] = big
    canvas[50:200, 260:410] = small
    return canvas


@pytest.mark.data
@pytest.mark.parametrize(
    ("root", "pattern", "n", "floor"),
    [
        ("yalefaces", "*/*.gif", 20, 0.9),  # measured 0.982 of 164 (benchmarks/detection.py)
        ("lfw/images", "*/*.jpg", 20, 0.9),  # measured 0.996 of 500
        ("celeba_subset", "*/*.jpg", 20, 0.85),  # measured 0.916 of 500
        ("att_faces", "*/*.pgm", 20, 0.9),  # measured 0.980 of 400
    ],
)
def test_finds_faces_in_most_photos(detector: DlibDetector, root: str, pattern: str, n: int, floor: float) -> None:
    paths = sample(root, pattern, n)
    found = misordered = 0
    for path in paths:
        image = read_rgb(path)
        faces = detector.detect(image)
        if not faces:
            continue
        found += 1
        face = faces[0]
        x0, y0, x1, y1 = face.box
        assert x1 > x0 and y1 > y0
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
        le, re, nose, ml, mr = face.landmarks.astype(np.float64)
        # Fixed order, image left/right: in the frame of the eye line (x from the left to the right
        # eye, y perpendicular, down), the mouth corners are left/right and nose then mouth lie below.
        ux = (re - le) / np.linalg.norm(re - le)
        uy = np.array([-ux[1], ux[0]])
        mid = (le + re) / 2
        assert ux[0] > 0.5  # upright-ish photos: the left eye has the smaller x
        ordered = (ml - mid) @ ux < 0 < (mr - mid) @ ux and 0 < (nose - mid) @ uy < ((ml + mr) / 2 - mid) @ uy
        misordered += not ordered
        # Landmarks lie in (a slightly grown) box.
        w, h = x1 - x0, y1 - y0
        assert np.all(face.landmarks[:, 0] > x0 - 0.2 * w) and np.all(face.landmarks[:, 0] < x1 + 0.2 * w)
        assert np.all(face.landmarks[:, 1] > y0 - 0.2 * h) and np.all(face.landmarks[:, 1] < y1 + 0.2 * h)
    assert found / len(paths) >= floor, f"{root}: found faces in {found} of {len(paths)} images"
    assert misordered <= 1, f"{root}: {misordered} faces with landmarks out of order"


@pytest.mark.data
def test_multiple_faces_largest_first(detector: DlibDetector) -> None:
    faces = detector.detect(two_faces())
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].box[0] < 250 <= faces[1].box[0]  # the big face is the left photo


@pytest.mark.data
def test_grey_and_rgb_agree(detector: DlibDetector) -> None:
    grey = read_rgb(sample("yalefaces", "*/*.gif", 1)[0])
    a = detector.detect(grey)
    b = detector.detect(grey[:, :, 0])  # (H, W)
    c = detector.detect(grey[:, :, :1])  # (H, W, 1)
    assert len(a) == len(b) == len(c) == 1
    np.testing.assert_allclose(a[0].landmarks, b[0].landmarks)
    np.testing.assert_allclose(a[0].landmarks, c[0].landmarks)


@pytest.mark.data
def test_small_crop_is_upsampled(detector: DlibDetector) -> None:
    image = read_rgb(require_data(DATA_ROOT / "att_faces") / "s1" / "1.pgm")  # 92x112, face fills it
    faces = detector.detect(image)
    assert len(faces) == 1
    assert 20 < faces[0].inter_eye_distance < 50


@pytest.mark.data
def test_detect_batch_and_threads_match_detect(detector: DlibDetector) -> None:
    images = [read_rgb(p) for p in sample("lfw/images", "*/*.jpg", 4)]
    single = [detector.detect(im) for im in images]
    batch = detector.detect_batch(images)
    results: dict[int, list[DetectedFace]] = {}

    def work(i: int) -> None:
        results[i] = detector.detect(images[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (s, b) in enumerate(zip(single, batch, strict=True)):
        assert [f.box for f in s] == [f.box for f in b] == [f.box for f in results[i]]


@pytest.mark.data
def test_five_point_model_agrees_with_68(detector: DlibDetector) -> None:
    five = DlibDetector(landmarks="5")
    for path in sample("lfw/images", "*/*.jpg", 5):
        image = read_rgb(path)
        a, b = detector.detect(image), five.detect(image)
        if not a or not b:
            continue
        ied = a[0].inter_eye_distance
        eye_err = np.linalg.norm(a[0].landmarks[:2] - b[0].landmarks[:2], axis=1).max()
        assert eye_err < 0.15 * ied
        assert np.linalg.norm(a[0].landmarks - b[0].landmarks, axis=1).max() < 0.4 * ied
        assert b[0].landmark_model == "5"


@pytest.mark.data
def test_rotated_face_found_by_fallback(detector: DlibDetector) -> None:
    image = read_rgb(require_data(DATA_ROOT / "lfw" / "images") / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    rotated = np.asarray(Image.fromarray(image).rotate(60, expand=True))
    faces = detector.detect(rotated)
    assert faces, "rotation fallback should find a face tilted by 60 degrees"
    le, re = faces[0].landmarks[:2]
    roll = np.degrees(np.arctan2(re[1] - le[1], re[0] - le[0]))
    assert -75 < roll < -45  # rotated counter-clockwise: the image-right eye is higher
    assert DlibDetector(rotation_fallback=()).detect(rotated) == []


@pytest.mark.data
def test_cnn_backend_finds_face() -> None:
    image = read_rgb(require_data(DATA_ROOT / "lfw" / "images") / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    faces = DlibDetector(backend="cnn", upsample=0).detect(image)
    assert len(faces) >= 1
    assert faces[0].detector == "cnn"
    assert faces[0].landmarks[0, 0] < faces[0].landmarks[1, 0]


def test_protocol_and_face_dataclass() -> None:
    assert isinstance(DlibDetector(), Detector)
    face = DetectedFace(box=(0, 0, 10, 10), score=1.0, landmarks=np.zeros((5, 2)))
    assert face.landmarks.dtype == np.float32 and not face.landmarks.flags.writeable
    assert face.area == 100.0
    assert face.to_dict()["landmarks"] == [[0.0, 0.0]] * 5
    assert len(LANDMARK_NAMES) == 5
    with pytest.raises(ValueError, match="shape"):
        DetectedFace(box=(0, 0, 1, 1), score=0.0, landmarks=np.zeros((4, 2)))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((1, 1, 3), dtype=np.uint8),
        np.full((3000, 2000, 3), 200, dtype=np.uint8),
        np.zeros((5, 700, 3), dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8),
    ],
    ids=["1x1", "huge-flat", "thin", "noise-grey"],
)
def test_odd_inputs_do_not_crash(detector: DlibDetector, image: np.ndarray) -> None:
    assert detector.detect(image) == []


def test_bad_inputs_raise() -> None:
    det = DlibDetector()
    with pytest.raises(TypeError):
        det.detect([[1, 2, 3]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        det.detect(np.zeros((0, 10, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        as_rgb(np.zeros((10, 10, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="backend"):
        DlibDetector(backend="mtcnn")  # type: ignore[arg-type]


@pytest.mark.data
def test_inspect_image_draws_faces(tmp_path: Path) -> None:
    import io

    from embedding.inspect import inspect_image

    buf = io.BytesIO()
    Image.fromarray(two_faces()).save(buf, format="PNG")
    out = tmp_path / "inspect.png"
    result = inspect_image(buf.getvalue(), detector=DlibDetector(), out_path=out)
    assert len(result.faces) == 2 and len(result.crops) == 2 and len(result.reports) == 2
    assert result.crops[0].shape == (112, 92, 3)
    with Image.open(out) as drawn:
        assert drawn.width >= 420 and drawn.height > 250
