"""YuNet on onnxruntime: same answers as OpenCV's own FaceDetectorYN, batched, bounded cost, pinned weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedding.errors import ModelLoadError
from embedding.yunet import YUNET_SHA256, YuNetDetector, float_graph, nms, yunet_model_path
from tests.conftest import DATA_ROOT, read_rgb, require_data

LFW = DATA_ROOT / "lfw" / "images"
CELEBA = DATA_ROOT / "celeba_subset"


@pytest.fixture(scope="module")
def yunet() -> YuNetDetector:
    det = YuNetDetector()
    det.load()
    return det


def _photos(n: int) -> list[Path]:
    lfw = sorted(require_data(LFW).glob("*/*.jpg"))[: 20 * n : 20]
    celeba = sorted(require_data(CELEBA).glob("*/*.jpg"))[: 20 * n : 20]
    return lfw + celeba


def test_weights_are_the_pinned_file() -> None:
    import hashlib

    assert hashlib.sha256(yunet_model_path().read_bytes()).hexdigest() == YUNET_SHA256


def test_float_graph_has_no_quantised_weights_and_dynamic_sides() -> None:
    import onnx

    model = onnx.load_from_string(float_graph(yunet_model_path().read_bytes()))
    assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]


def test_other_weights_are_refused(tmp_path: Path) -> None:
    data = bytearray(yunet_model_path().read_bytes())
    data[-1] ^= 0xFF
    path = tmp_path / "yunet.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="SHA-256"):
        YuNetDetector(model_path=path).load()


@pytest.mark.data
def test_same_faces_as_opencv(yunet: YuNetDetector) -> None:
    """Boxes, landmarks and scores equal OpenCV's FaceDetectorYN on the very same file, at native size."""
    cv2 = pytest.importorskip("cv2")
    ours_at_native = YuNetDetector(score_threshold=0.6, max_side=4096, min_side=0, min_face_size=1)
    compared = 0
    for path in _photos(6):
        rgb = read_rgb(path)
        h, w = rgb.shape[:2]
        reference = cv2.FaceDetectorYN.create(str(yunet_model_path()), "", (w, h), 0.6, 0.3, 5000)
        _, found = reference.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
        theirs = sorted([] if found is None else found.tolist(), key=lambda r: -r[2] * r[3])
        ours = ours_at_native.detect(rgb)
        assert len(ours) == len(theirs), path
        for face, row in zip(ours, theirs, strict=True):
            x0, y0, x1, y1 = face.box
            np.testing.assert_allclose([x0, y0, x1 - x0, y1 - y0], row[:4], atol=1e-3)
            np.testing.assert_allclose(face.landmarks.ravel(), row[4:14], atol=1e-3)
            assert face.score == pytest.approx(row[14], abs=1e-4)
            compared += 1
    assert compared >= 10


@pytest.mark.data
def test_landmarks_in_facedb_order(yunet: YuNetDetector) -> None:
    """Image-left eye first, nose between the eyes and above the mouth corners."""
    face = yunet.detect(read_rgb(_photos(1)[0]))[0]
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert face.detector == "yunet"


@pytest.mark.data
def test_batch_equals_one_by_one(yunet: YuNetDetector) -> None:
    images = [read_rgb(p) for p in _photos(3)]
    images.append(np.asarray(Image.fromarray(images[0]).resize((400, 300))))
    batched = yunet.detect_batch(images)
    for image, faces in zip(images, batched, strict=True):
        single = yunet.detect(image)
        assert len(single) == len(faces)
        for a, b in zip(single, faces, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-2)


@pytest.mark.data
def test_small_face_in_a_large_frame(yunet: YuNetDetector) -> None:
    """A door camera's 1920x1080 frame with a face 60 px wide is found, at the bounded working size."""
    photo = read_rgb(_photos(1)[0])
    face = yunet.detect(photo)[0]
    x0, y0, x1, y1 = (int(v) for v in face.box)
    head = Image.fromarray(photo).crop((x0 - 20, y0 - 20, x1 + 20, y1 + 20))
    scale = 60 / (x1 - x0)
    head = head.resize((round(head.width * scale), round(head.height * scale)), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(0)
    frame = Image.fromarray(rng.integers(90, 140, size=(1080, 1920, 3), dtype=np.uint8))
    frame.paste(head, (1400, 300))
    found = yunet.detect(np.asarray(frame))
    assert found, "no face found in the 1920x1080 frame"
    assert 40 <= found[0].width <= 90
    assert 1400 <= found[0].box[0] <= 1400 + head.width


def test_working_size_is_bounded_for_any_shape(yunet: YuNetDetector) -> None:
    """Hostile shapes cost no more than a photo: the network never sees more than max_side on a side."""
    for shape in [(1, 100_000), (100_000, 1), (6000, 6000), (3, 5)]:
        scale = yunet.working_scale(*shape)
        assert max(shape) * scale <= 960 + 1e-6
        assert yunet.detect(np.zeros((*shape, 3), dtype=np.uint8)) == []


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float64)
    keep = nms(boxes, np.array([0.8, 0.9, 0.7]), 0.3)
    assert keep.tolist() == [1, 2]
