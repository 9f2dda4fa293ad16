"""dlib's ResNet in PyTorch (`embedding.train.dlib_import`): the reader, equality with dlib, the `dlib_150` framing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from embedding.align import DLIB_150, eye_error
from embedding.backbones import _add_zero_padded
from embedding.card import InputSpec
from embedding.checkpoint import load_checkpoint, replace_card
from embedding.detect import DetectedFace, DlibDetector
from embedding.facepath import model_face
from embedding.torch_embedder import TorchEmbedder
from embedding.train.cli import register
from embedding.train.dlib_import import (
    DlibFormatError,
    dlib_model_path,
    import_dlib_model,
    load_dlib_resnet,
    parse_dlib_network,
)
from embedding.train.faceset import central_face
from embedding.train.teacher import DlibTeacher
from tests.conftest import DATA_ROOT, read_rgb, require_data

PEOPLE = ("Colin_Powell", "Tony_Blair", "Serena_Williams", "Hugo_Chavez")
SPEC = InputSpec(height=150, width=150, channels=3, mean=0, std=1, resize="stretch", face_template="dlib_150")


def _batch(crops: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) RGB crops -> float32 (N, 3, H, W) in [0, 1], the imported model's input."""
    return torch.from_numpy(np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2) / 255.0)


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    return dlib_model_path().read_bytes()


@pytest.fixture(scope="module")
def faces(detector: DlibDetector) -> list[tuple[str, np.ndarray, DetectedFace]]:
    """(person, image, central face) for three LFW photos of each of four people."""
    lfw = require_data(DATA_ROOT / "lfw" / "images")
    out = []
    for person in PEOPLE:
        for path in sorted((lfw / person).iterdir())[:3]:
            image = read_rgb(path)
            face = central_face(detector.detect(image), *image.shape[:2])
            assert face is not None, path
            out.append((person, image, face))
    return out


def test_zero_padded_sum_matches_dlib_add_prev() -> None:
    a = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    b = torch.ones(1, 1, 4, 4)
    out = _add_zero_padded(a, b)
    assert out.shape == (1, 2, 4, 4)
    # Each input sits at index 0 (first channels, top-left); missing elements count as zero.
    assert torch.equal(out[0, 0, :3, :3], a[0, 0] + 1) and torch.equal(out[0, 1, :3, :3], a[0, 1])
    assert torch.equal(out[0, 0, 3, :], torch.ones(4)) and torch.equal(out[0, 1, 3, :], torch.zeros(4))


def test_reader_understands_every_byte(dat_bytes: bytes) -> None:
    net = parse_dlib_network(dat_bytes)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con_4") == 29 and kinds.count("affine_") == 29 and kinds.count("fc_2") == 1
    assert kinds.count("add_prev_") == 14 and kinds[0] == "con_4" and kinds[-1] == "fc_2"
    assert net.input_size == (150, 150)
    assert net.input_mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)


@pytest.mark.parametrize("cut", [0, 1, 40, 5000, -1])
def test_reader_refuses_truncated_files(dat_bytes: bytes, cut: int) -> None:
    with pytest.raises(DlibFormatError):
        parse_dlib_network(dat_bytes[:cut])


def test_reader_refuses_trailing_bytes_and_other_networks(dat_bytes: bytes, tmp_path: Path) -> None:
    with pytest.raises(DlibFormatError, match="unread bytes"):
        parse_dlib_network(dat_bytes + b"\x00")
    with pytest.raises(DlibFormatError, match="loss_metric_2"):
        parse_dlib_network(b"\x01\x01\x01\x05hello")
    other = tmp_path / "other.dat"
    import face_recognition_models as frm

    other.write_bytes(Path(frm.cnn_face_detector_model_location()).read_bytes())  # a dlib network, not this one
    with pytest.raises(DlibFormatError):
        load_dlib_resnet(other)


def test_pytorch_network_equals_dlib_on_its_own_chips(faces: list[tuple[str, np.ndarray, DetectedFace]]) -> None:
    teacher = DlibTeacher()
    chips = [teacher.chip(image, face) for _, image, face in faces]
    reference = teacher.embed_chips(chips)  # dlib's compute_face_descriptor, normalised
    model, _ = load_dlib_resnet()
    x = _batch(chips)
    with torch.inference_mode():
        ours = torch.nn.functional.normalize(model(x), dim=1).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    # Float16 storage (the shipped file) changes the embeddings by less than 1e-5 in cosine.
    with torch.inference_mode():
        half = torch.nn.functional.normalize(model.half().float()(x), dim=1).numpy()
    assert float((half * reference).sum(axis=1).min()) > 0.99999


def test_dlib_150_framing_reproduces_dlibs_alignment(faces: list[tuple[str, np.ndarray, DetectedFace]]) -> None:
    """The service's path (one similarity transform to the `dlib_150` template) gives nearly dlib's own embeddings."""
    teacher = DlibTeacher()
    model, _ = load_dlib_resnet()
    ours, theirs, people = [], [], []
    for person, image, face in faces:
        crop = model_face(image, face.landmarks, SPEC)
        assert crop.shape == (150, 150, 3)
        assert eye_error(face.landmarks, DLIB_150) < 6.0
        ours.append(crop)
        theirs.append(teacher.chip(image, face))
        people.append(person)
    with torch.inference_mode():
        a = torch.nn.functional.normalize(model(_batch(ours)), dim=1).numpy()
        b = torch.nn.functional.normalize(model(_batch(theirs)), dim=1).numpy()
    agreement = (a * b).sum(axis=1)
    assert float(np.median(agreement)) > 0.97 and float(agreement.min()) > 0.9
    # Each photo is nearer to the person's other photos than to anyone else's, through our framing.
    labels = np.array(people)
    sims = a @ a.T
    np.fill_diagonal(sims, -1)
    assert (labels[sims.argmax(axis=1)] == labels).all()


def test_import_command_writes_an_uncalibrated_model(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    out = tmp_path / "dlib.pt"
    result = CliRunner().invoke(app, ["import-dlib", str(out)])
    assert result.exit_code == 0, result.output
    assert "facedb calibrate" in result.output
    model, card = load_checkpoint(out)
    assert card.arch == "dlib_resnet29" and card.input.face_template == "dlib_150" and not card.thresholds
    assert out.stat().st_size < 12_000_000  # float16 weights
    assert next(model.parameters()).dtype == torch.float32
    bad = CliRunner().invoke(app, ["import-dlib", str(tmp_path / "x.onnx")])
    assert bad.exit_code == 1 and "must end in .pt" in bad.output
    missing = CliRunner().invoke(app, ["import-dlib", str(out), "--source", str(tmp_path / "none.dat")])
    assert missing.exit_code == 1 and "error:" in missing.output


def test_imported_weights_are_the_installed_files(tmp_path: Path) -> None:
    """Float32 import equals the parsed file exactly; a different source checksum would show in the card."""
    card = import_dlib_model(tmp_path / "f32.pt", half=False)
    model, _ = load_checkpoint(tmp_path / "f32.pt")
    reference, net = load_dlib_resnet()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert card.training["source_sha256"] == net.sha256
    embedder = TorchEmbedder(tmp_path / "f32.pt", device="cpu")
    out = embedder.embed([np.full((150, 150, 3), 128, np.uint8)])
    assert out.shape == (1, 128) and abs(float(np.linalg.norm(out)) - 1) < 1e-5


def test_card_changes_keep_float16_weights(tmp_path: Path) -> None:
    """Calibration rewrites only the card: float16 weights stay float16 and the version stays the same."""
    card = import_dlib_model(tmp_path / "a.pt")
    updated = replace_card(tmp_path / "a.pt", tmp_path / "b.pt", card.model_copy(update={"notes": "calibrated"}))
    assert updated.version == card.version and updated.notes == "calibrated"
    payload = torch.load(tmp_path / "b.pt", map_location="cpu", weights_only=True)
    assert {t.dtype for t in payload["state_dict"].values()} == {torch.float16}
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
