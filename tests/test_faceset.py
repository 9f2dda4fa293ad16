"""The serving path applied to data sets (`embedding.train.faceset`), the dlib teacher, and distillation training."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from embedding.align import ARCFACE_112
from embedding.card import InputSpec
from embedding.checkpoint import load_checkpoint
from embedding.detect import DlibDetector
from embedding.facepath import build_detector, model_face
from embedding.train.cli import register
from embedding.train.data import DatasetSpec, load_rgb_images
from embedding.train.faceset import align_files, central_face
from embedding.train.teacher import DlibTeacher
from embedding.train.training import TrainConfig, TrainingError, _centre, train
from tests.conftest import DATA_ROOT, read_rgb, require_data

SPEC = InputSpec(height=64, width=64, channels=1, mean=0.5, std=0.5, face_template="arcface_112")
PEOPLE = ("Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder")


@pytest.fixture(scope="module")
def lfw_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four LFW people with four images each, plus one person with a single image, as a one-folder-per-id set."""
    lfw = require_data(DATA_ROOT / "lfw" / "images")
    root = tmp_path_factory.mktemp("lfw_subset")
    for person in PEOPLE:
        (root / person).mkdir()
        for image in sorted((lfw / person).iterdir())[:4]:
            shutil.copy(image, root / person / image.name)
    single = next(p for p in sorted(lfw.iterdir()) if len(list(p.iterdir())) == 1)
    shutil.copytree(single, root / single.name)
    return root


def test_align_files_is_the_serving_path(lfw_subset: Path) -> None:
    paths = sorted(lfw_subset.glob("*/*.jpg"))[:6]
    aligned = align_files(paths, SPEC, workers=1, progress=False)
    assert aligned.crops.shape == (6, 112, 112, 3) and aligned.crops.dtype == np.uint8
    assert aligned.detected.all() and aligned.teacher is None
    detector = build_detector()
    for path, crop in zip(paths, aligned.crops, strict=True):
        image = read_rgb(path)
        face = central_face(detector.detect(image), *image.shape[:2])
        assert face is not None
        np.testing.assert_array_equal(crop, model_face(image, face.landmarks, SPEC))
    # The same crops come back through load_rgb_images (evaluation) and from two worker processes.
    again = align_files(paths, SPEC, workers=2, progress=False)
    np.testing.assert_array_equal(again.crops, aligned.crops)
    listed = load_rgb_images(paths, "detect", spec=SPEC)
    np.testing.assert_array_equal(np.stack(listed), aligned.crops)
    with pytest.raises(ValueError, match="input spec"):
        load_rgb_images(paths, "detect")


def test_fallback_landmarks_and_cache(lfw_subset: Path, tmp_path: Path) -> None:
    paths = sorted(lfw_subset.glob("*/*.jpg"))[:3]
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(blank)
    files = [*paths, blank]
    aligned = align_files(files, SPEC, teacher=True, workers=1, cache_dir=tmp_path / "cache", progress=False)
    assert aligned.detected.tolist() == [True, True, True, False]
    assert aligned.teacher is not None
    np.testing.assert_allclose(np.linalg.norm(aligned.teacher[:3], axis=1), 1.0, atol=1e-5)
    assert not aligned.teacher[3].any()  # no target where the detector found no face
    assert (aligned.crops[3] == 128).all()  # aligned with the median landmarks of the others
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    again = align_files(files, SPEC, teacher=True, workers=1, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again.crops, aligned.crops)
    assert again.teacher is not None
    np.testing.assert_array_equal(again.teacher, aligned.teacher)


def test_teacher_separates_people(lfw_subset: Path, detector: DlibDetector) -> None:
    teacher = DlibTeacher()
    rows = {}
    for person in PEOPLE[:2]:
        images = [read_rgb(p) for p in sorted((lfw_subset / person).iterdir())[:2]]
        faces = [central_face(detector.detect(im), *im.shape[:2]) for im in images]
        assert all(f is not None for f in faces)
        rows[person] = np.concatenate([teacher.embed(im, [f]) for im, f in zip(images, faces, strict=True) if f])
        chip = teacher.chip(images[0], faces[0])  # type: ignore[arg-type]
        assert chip.shape == (150, 150, 3)
    a, b = rows[PEOPLE[0]], rows[PEOPLE[1]]
    assert float(a[0] @ a[1]) > float(a[0] @ b[0]) + 0.03  # dlib: a large shared component (see training._centre)
    assert teacher.embed_chips([]).shape == (0, 128)


def _config(root: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": (DatasetSpec(root, "detect", "lfw"),),
        "out": out,
        "backbone": "compact_iresnet",
        "backbone_params": {"widths": [8, 16], "blocks": [1], "dropout": 0.0},
        "height": 32,
        "width": 32,
        "face_template": "arcface_112",
        "embedding_dim": 128,
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.05,
        "seed": 1,
        "distill": "dlib",
        "workers": 1,
        "progress": False,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_distillation_training(lfw_subset: Path, tmp_path: Path) -> None:
    result = train(_config(lfw_subset, tmp_path / "d.pt", cache_dir=tmp_path / "cache"))
    assert all("distill_cos" in record for record in result.history)
    assert result.history[-1]["distill_cos"] > result.history[0]["distill_cos"] - 0.05
    _, card = load_checkpoint(result.path)
    assert card.input.face_template == "arcface_112"
    record = card.training
    assert record["distillation"]["teacher"] == "dlib_resnet_v1"
    assert "mean" in record["distillation"]["targets"]
    assert record["distillation"]["images_with_target"] == 17
    source = record["datasets"]["lfw"]
    assert source["images"] == 17 and source["identities"] == 4 and source["images_unlabelled_distill_only"] == 1
    with pytest.raises(TrainingError, match="128-d"):
        train(_config(lfw_subset, tmp_path / "e.pt", embedding_dim=16, cache_dir=tmp_path / "cache"))
    with pytest.raises(TrainingError, match="framing 'detect'"):
        train(_config(lfw_subset, tmp_path / "f.pt", data=(DatasetSpec(lfw_subset, "none", "lfw"),)))


def test_train_and_evaluate_commands_with_detection(lfw_subset: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    out = tmp_path / "m.pt"
    args = ["train", "--data", f"{lfw_subset}:detect", "--out", str(out), "--face-template", "arcface_112"]
    args += ["--backbone-param", "widths=[8,16]", "--backbone-param", "blocks=[1]", "--height", "32"]
    args += ["--width", "32", "--embedding-dim", "128", "--epochs", "1", "--batch-size", "8", "--workers", "1"]
    res = CliRunner().invoke(app, [*args, "--distill", "dlib"])
    assert res.exit_code == 0, res.output
    _, card = load_checkpoint(out)
    assert card.input.face_template == ARCFACE_112.name
    res = CliRunner().invoke(app, [*args, "--distill", "nope"])
    assert res.exit_code == 1 and "--distill must be dlib" in res.output
    ids = tmp_path / "ids.json"
    evaluate = ["evaluate", str(out), "--identification", str(lfw_subset), "--identification-framing", "detect"]
    res = CliRunner().invoke(app, [*evaluate, "--json", str(ids)])
    # An uncalibrated model is evaluated (only serving refuses it).
    assert res.exit_code == 0, res.output
    assert ids.exists()


def test_teacher_targets_are_centred() -> None:
    gen = torch.Generator().manual_seed(0)
    common = torch.ones(1, 8)
    rows = torch.nn.functional.normalize(common * 3 + torch.randn(20, 8, generator=gen), dim=1)
    mask = torch.ones(20, dtype=torch.bool)
    mask[[3, 7]] = False
    rows[~mask] = 0.0
    centred = _centre(rows, mask)
    assert not centred[~mask].any()
    torch.testing.assert_close(centred[mask].norm(dim=1), torch.ones(18))
    assert float((rows[mask] @ rows[mask].T).mean()) > 0.8  # raw rows share a large component
    assert abs(float((centred[mask] @ centred[mask].T).mean())) < 0.1
