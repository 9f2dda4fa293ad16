"""Verification / identification metrics, ROC plot, calibration, and the evaluate/calibrate commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from embedding.backbones import build_backbone
from embedding.card import InputSpec, ModelCard
from embedding.checkpoint import load_checkpoint, save_checkpoint
from embedding.embedder import load_embedder
from embedding.train.cli import register
from embedding.train.evaluation import (
    IdentificationSplit,
    calibrate_thresholds,
    equal_error_rate,
    far_label,
    identification_report,
    plot_roc,
    rank_k_accuracy,
    roc_curve,
    split_identification,
    tar_at_far,
    verification_report,
)
from tests.conftest import DATA_ROOT, require_data

TINY_PARAMS = {
    "in_channels": 1,
    "input_height": 32,
    "input_width": 32,
    "widths": [8, 16],
    "blocks": [1],
    "embedding_dim": 16,
    "dropout": 0.0,
}
TINY_SPEC = InputSpec(height=32, width=32, channels=1, mean=0.5, std=0.5)


def make_identity_set(root: Path, n_ids: int = 8, n_imgs: int = 5, size: int = 48, seed: int = 0) -> list[str]:
    """Synthetic faces: one random blob pattern per identity, per-image noise and shifts; LFW file names."""
    rng = np.random.default_rng(seed)
    names = [f"Person_{i:02d}" for i in range(n_ids)]
    for name in names:
        base = rng.integers(0, 256, (6, 6, 3)).astype(np.float64)
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(1, n_imgs + 1):
            img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC))
            img = np.roll(img.astype(np.float64), rng.integers(-2, 3, 2), axis=(0, 1)) + rng.normal(0, 12, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{name}_{k:04d}.png")
    return names


def write_pairs(path: Path, names: list[str], n_imgs: int, folds: int = 2, per_fold: int = 6, seed: int = 0) -> None:
    """An LFW View 2 style pairs file (`.png` images are referenced as .jpg by LFW, so copy names)."""
    rng = np.random.default_rng(seed)
    lines = [f"{folds}\t{per_fold}"]
    for _ in range(folds):
        for _ in range(per_fold):
            name = names[rng.integers(len(names))]
            i, j = rng.choice(np.arange(1, n_imgs + 1), 2, replace=False)
            lines.append(f"{name}\t{i}\t{j}")
        for _ in range(per_fold):
            a, b = rng.choice(len(names), 2, replace=False)
            lines.append(f"{names[a]}\t{rng.integers(1, n_imgs + 1)}\t{names[b]}\t{rng.integers(1, n_imgs + 1)}")
    path.write_text("\n".join(lines) + "\n")


def make_pairs_set(tmp: Path, n_ids: int = 8, n_imgs: int = 5) -> tuple[Path, Path]:
    """(images dir, pairs.txt) in LFW layout with .jpg files."""
    images = tmp / "lfw" / "images"
    names = make_identity_set(images, n_ids, n_imgs)
    for png in images.rglob("*.png"):
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
    pairs = tmp / "lfw" / "pairs.txt"
    write_pairs(pairs, names, n_imgs)
    return images, pairs


def tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_backbone("compact_iresnet", **TINY_PARAMS).eval()
    card = ModelCard(
        name="tiny",
        version="",
        arch="compact_iresnet",
        arch_params=TINY_PARAMS,
        embedding_dim=16,
        input=TINY_SPEC,
        training={},
        metrics={},
        thresholds={},
        default_threshold=1.0,
        default_threshold_far=0.0,
        notes="UNCALIBRATED: run `facedb calibrate` before serving this model.",
    )
    save_checkpoint(path, model=model, card=card)
    return path


def test_roc_curve_eer_and_tar_at_far() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=400), 2)
    same = rng.random(400) < 0.5
    scores[same] += 1.5
    far, tar, thr = roc_curve(scores, same)
    for f, t, th in zip(far[1:], tar[1:], thr[1:], strict=True):
        assert f == pytest.approx(np.mean(scores[~same] >= th)) and t == pytest.approx(np.mean(scores[same] >= th))
    assert far[0] == tar[0] == 0 and far[-1] == tar[-1] == 1
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    eer = equal_error_rate(scores, same)
    brute = min(max(np.mean(scores[~same] >= t), np.mean(scores[same] < t)) for t in np.unique(scores))
    assert abs(eer - brute) < 0.02
    assert equal_error_rate(np.array([0.0, 1.0]), np.array([False, True])) == 0.0
    tar_v, threshold, measured = tar_at_far(scores, same, 1e-1)
    assert measured <= 0.1 and tar_v == pytest.approx(np.mean(scores[same] >= threshold))
    assert far_label(1e-3) == "1e-3" and far_label(0.05) == "5e-2" and float(far_label(1e-2)) == 1e-2


def test_verification_report_kfold() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=600)
    same = np.tile(np.repeat([True, False], 100), 3)
    scores[same] += 2.0
    folds = np.repeat([7, 8, 9], 200)
    report = verification_report(scores, same, folds)
    assert report.folds == [7, 8, 9] and len(report.accuracy_per_fold) == 3
    assert 0.8 < report.accuracy_mean <= 1.0 and report.accuracy_std >= 0
    assert set(report.tar_at_far) == {"1e-1", "1e-2", "1e-3"}
    assert 0.9 < report.roc_auc <= 1.0 and 0 < report.eer < 0.3
    with pytest.raises(ValueError, match="2 folds"):
        verification_report(scores, same, np.ones(600))


def test_identification_metrics_by_hand() -> None:
    e = np.eye(4, dtype=np.float32)
    emb = np.stack([e[0], e[1], e[2], 0.9 * e[0] + 0.1 * e[1], 0.2 * e[0] + 0.8 * e[1], e[3]])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array(["a", "b", "c", "a", "a", "x"])
    split = IdentificationSplit(np.array([0, 1, 2]), np.array([3, 4]), np.array([5]))
    report = identification_report(emb, labels, split, fpir=0.5)
    assert report.rank1 == 0.5 and report.rank5 == 1.0
    assert report.stranger_probes == 1 and report.threshold_at_fpir > 0.0
    assert report.fnir_at_fpir == 0.5  # probe 4 is misidentified; probe 3 is found above the threshold
    assert rank_k_accuracy(emb[:3], labels[:3], emb[3:5], labels[3:5], k=1) == 0.5
    labels_many = np.repeat([f"id{i}" for i in range(8)], 3)
    s = split_identification(labels_many, stranger_fraction=0.25, seed=0)
    assert len(s.strangers) == 6 and len(s.gallery) == 6 and len(s.mated) == 12
    assert not set(labels_many[s.strangers]) & set(labels_many[s.gallery])


def test_calibrate_thresholds_and_roc_png(tmp_path: Path) -> None:
    impostor = np.linspace(-1, 1, 10001)
    genuine = np.linspace(0.5, 1, 100)
    cal = calibrate_thresholds(genuine, impostor, [1e-1, 1e-3])
    assert cal.default_far == 1e-3 and set(cal.thresholds) == {"1e-1", "1e-3"}
    for label, row in cal.per_far.items():
        assert row["far"] <= float(label)
        assert round(row["threshold"], 4) == row["threshold"]
    with pytest.raises(ValueError, match="not one of"):
        calibrate_thresholds(genuine, impostor, [1e-1], default_far=1e-2)
    far, tar, _ = roc_curve(np.r_[genuine, impostor], np.r_[np.ones(100, bool), np.zeros(10001, bool)])
    plot_roc({"m": (far, tar)}, tmp_path / "roc.png")
    with Image.open(tmp_path / "roc.png") as img:
        assert img.size == (720, 540) and img.format == "PNG"


def test_evaluate_and_calibrate_commands(tmp_path: Path) -> None:
    images, pairs = make_pairs_set(tmp_path)
    model = tiny_model(tmp_path / "tiny.pt")
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(model),
            "--pairs",
            str(pairs),
            "--framing",
            "none",
            "--roc-png",
            str(tmp_path / "roc.png"),
            "--identification",
            str(images),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "verification: accuracy" in res.output and "identification: rank-1" in res.output
    assert (tmp_path / "roc.png").exists() and (tmp_path / "r.json").exists()
    # uncalibrated: the serving factory refuses it, on every attempt (a failed load publishes nothing)
    refused = load_embedder(model)
    for _ in range(2):
        with pytest.raises(Exception, match="calibrate"):
            refused.load()
    out = tmp_path / "calibrated.pt"
    res = runner.invoke(
        app,
        [
            "calibrate",
            str(model),
            "--pairs",
            str(pairs),
            "--far",
            "1e-1",
            "--far",
            "1e-2",
            "--framing",
            "none",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    _, before = load_checkpoint(model)
    _, after = load_checkpoint(out)
    assert after.version == before.version  # thresholds are card data, weights unchanged
    assert set(after.thresholds) == {"1e-1", "1e-2"} and after.default_threshold_far == 1e-2
    assert after.default_threshold == after.thresholds["1e-2"]
    assert "calibration" in after.metrics and "UNCALIBRATED" not in after.notes
    load_embedder(out).load()
    # one-line errors, no traceback
    res = runner.invoke(app, ["evaluate", str(tmp_path / "missing.pt"), "--pairs", str(pairs)])
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["calibrate", str(model), "--pairs", str(pairs), "--folds", "5", "--framing", "none"])
    assert res.exit_code == 1 and "folds [5]" in res.output


def test_default_model_on_att_identification() -> None:
    att = require_data(DATA_ROOT / "att_faces")
    from embedding.embedder import dlib_resnet_model_path
    from embedding.train.cli import evaluate_model

    result = evaluate_model(
        dlib_resnet_model_path(), identification_dir=att, identification_framing="detect", gallery_per_identity=5
    )
    ident = result["identification"]
    assert ident["stranger_identities"] == 10 and ident["mated_probes"] == 150
    assert ident["rank1"] > 0.9 and ident["rank5"] >= ident["rank1"]
    assert 0.0 <= ident["fnir_at_fpir"] < 0.5


def test_identity_scores_take_the_best_image_per_identity() -> None:
    from embedding.train.evaluation import identity_scores

    rng = np.random.default_rng(2)
    gallery = rng.normal(size=(30, 8))
    labels = rng.choice(["b", "a", "c", "d"], 30)
    probes = rng.normal(size=(5, 8))
    ids, scores = identity_scores(gallery, labels, probes)
    assert list(ids) == ["a", "b", "c", "d"]
    for col, identity in enumerate(ids):
        np.testing.assert_allclose(scores[:, col], (probes @ gallery[labels == identity].T).max(axis=1))
