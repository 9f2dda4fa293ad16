"""The one face path: detector choice, dlib landmarks on YuNet faces, one resampling, mirror-image augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding.align import DLIB_150, eye_error
from embedding.card import InputSpec
from embedding.checkpoint import load_checkpoint, replace_card
from embedding.detect import YUNET_TO_HOG, DlibDetector, DlibLandmarks
from embedding.embedder import dlib_resnet_model_path
from embedding.facepath import (
    FaceRejectedError,
    aligned_face,
    build_detector,
    decode_crop,
    encode_crop,
    enrolment_face,
    model_face,
    probe_faces,
)
from embedding.preprocess import embed_faces
from embedding.quality import QualitySettings
from embedding.torch_embedder import TorchEmbedder
from embedding.yunet import YuNetDetector
from tests.conftest import DATA_ROOT, image_bytes, read_rgb, require_data

LFW = DATA_ROOT / "lfw" / "images"


@pytest.fixture(scope="module")
def default_detector() -> DlibLandmarks:
    detector = build_detector()
    assert isinstance(detector, DlibLandmarks)
    detector.load()
    return detector


def _lfw(n: int) -> list[np.ndarray]:
    return [read_rgb(p) for p in sorted(require_data(LFW).glob("*/*.jpg"))[: 30 * n : 30]]


def test_detector_choices() -> None:
    assert build_detector().name == "yunet+dlib5"
    assert build_detector("yunet", landmarks="yunet").name == "yunet"
    assert build_detector("hog").name == "dlib-hog+5"
    assert build_detector("hog", landmarks="68").name == "dlib-hog+68"
    with pytest.raises(ValueError, match="yunet"):
        build_detector("hog", landmarks="yunet")
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("mtcnn")  # type: ignore[arg-type]


def test_box_map_keeps_the_centre_and_makes_a_square() -> None:
    x0, y0, x1, y1 = YUNET_TO_HOG((100.0, 50.0, 200.0, 180.0))
    assert x1 - x0 == pytest.approx(y1 - y0)
    assert abs((x0 + x1) / 2 - 150) < 10 and abs((y0 + y1) / 2 - 115) < 10


@pytest.mark.data
def test_dlib_landmarks_on_yunet_faces_match_dlibs_own(default_detector: DlibLandmarks) -> None:
    """On faces both find, the landmarks from a mapped YuNet box are those of dlib's own detector (within 3% of
    the eye distance on average), and the boxes and scores stay YuNet's."""
    hog = DlibDetector(landmarks="5")
    errors = []
    for image in _lfw(12):
        ours, theirs = default_detector.detect(image), hog.detect(image)
        if not ours or not theirs:
            continue
        assert ours[0].detector == "yunet" and ours[0].landmark_model == "dlib5"
        ied = theirs[0].inter_eye_distance
        errors.append(float(np.linalg.norm(ours[0].landmarks[:2] - theirs[0].landmarks[:2], axis=1).mean()) / ied)
    assert len(errors) >= 10
    assert float(np.mean(errors)) < 0.03, errors


@pytest.mark.data
def test_model_face_is_one_resampling_of_the_photo(default_detector: DlibLandmarks) -> None:
    """The crop served now is cut from the photo; the stored canonical crop gives nearly the same framing."""
    image = _lfw(1)[0]
    face = aligned_face(image, default_detector.detect(image)[0])
    spec = InputSpec(height=150, width=150, channels=3, mean=0.0, std=1.0, resize="stretch", face_template="dlib_150")
    direct = face.for_model(spec)
    assert np.array_equal(direct, model_face(image, face.detection.landmarks, spec))  # type: ignore[union-attr]
    stored = decode_crop(encode_crop(face.image), aligned=True).for_model(spec)
    assert direct.shape == stored.shape == (150, 150, 3)
    assert float(np.abs(direct.astype(int) - stored.astype(int)).mean()) < 12
    assert eye_error(face.detection.landmarks, DLIB_150) < 6  # type: ignore[union-attr]


@pytest.mark.data
def test_enrolment_and_probe_faces(default_detector: DlibLandmarks) -> None:
    image = _lfw(1)[0]
    gates = QualitySettings()
    face = enrolment_face(image, default_detector, gates)
    assert face.quality is not None and face.quality.passed
    assert len(probe_faces(image, default_detector, gates)) >= 1
    blank = np.full((300, 300, 3), 128, np.uint8)
    with pytest.raises(FaceRejectedError) as err:
        enrolment_face(blank, default_detector, gates)
    assert err.value.code == "no_face" and err.value.codes == ["no_face"]
    assert probe_faces(blank, default_detector, gates) == []


def test_yunet_finds_nothing_in_blobs() -> None:
    import io

    from PIL import Image

    blob = np.asarray(Image.open(io.BytesIO(image_bytes(3, size=(300, 240)))).convert("RGB"))
    assert YuNetDetector().detect(blob) == []


def test_mirror_augmentation_is_symmetric_and_calibrated_per_card(tmp_path: Path) -> None:
    """With ``flip`` a face and its mirror image get the same embedding; the card says whether it is on."""
    _, card = load_checkpoint(dlib_resnet_model_path())
    flipped = tmp_path / "flip.pt"
    replace_card(
        dlib_resnet_model_path(),
        flipped,
        card.model_copy(update={"input": card.input.model_copy(update={"flip": True})}),
    )
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, size=(150, 150, 3), dtype=np.uint8) for _ in range(3)]
    mirrored = [np.ascontiguousarray(f[:, ::-1]) for f in faces]
    with_flip = TorchEmbedder(flipped)
    np.testing.assert_allclose(with_flip.embed(faces), with_flip.embed(mirrored), atol=1e-5)
    plain = TorchEmbedder(dlib_resnet_model_path())
    if not card.input.flip:
        assert float((plain.embed(faces) * plain.embed(mirrored)).sum(axis=1).min()) < 0.9999


def test_embed_faces_batches_and_empty_input() -> None:
    spec = InputSpec(height=4, width=4, channels=1, mean=0.0, std=1.0, resize="stretch", flip=True)
    calls: list[int] = []

    def forward(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x.reshape(len(x), -1)[:, :3] + 1.0

    images = [np.full((4, 4, 3), v, np.uint8) for v in range(5)]
    out = embed_faces(forward, images, spec, batch_size=2)
    assert out.shape == (5, 3) and calls == [4, 4, 2]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    assert embed_faces(forward, [], spec, batch_size=2).shape[0] == 0
