"""ONNX export, OnnxEmbedder, card in metadata, foreign models, and the load_embedder factory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import typer
from typer.testing import CliRunner

from embedding.backbones import build_backbone
from embedding.card import InputSpec, ModelCard
from embedding.checkpoint import save_checkpoint
from embedding.embedder import dlib_resnet_model_path, load_embedder
from embedding.errors import ModelLoadError
from embedding.onnx_embedder import CARD_KEY, GRAPH_HASH_KEY, INSIGHTFACE_INPUT, OnnxEmbedder, graph_sha256
from embedding.onnx_export import export_onnx
from embedding.torch_embedder import TorchEmbedder
from embedding.train.cli import calibrate_model, register
from tests.test_evaluation import make_pairs_set

MFN = {"in_channels": 3, "input_height": 112, "input_width": 112, "embedding_dim": 128}


def random_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (int(rng.integers(60, 140)), int(rng.integers(60, 140)), 3), dtype=np.uint8)
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A calibrated MobileFaceNet .pt with non-trivial BN statistics, and its ONNX export."""
    tmp = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", **MFN)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    card = ModelCard(
        name="mfn",
        version="",
        arch="mobilefacenet",
        arch_params=MFN,
        embedding_dim=128,
        input=InputSpec(height=112, width=112, channels=3, mean=0.5, std=0.5),
        training={},
        metrics={},
        thresholds={"1e-3": 0.5},
        default_threshold=0.5,
        default_threshold_far=1e-3,
    )
    pt = tmp / "mfn.pt"
    save_checkpoint(pt, model=model, card=card)
    onnx_path = tmp / "mfn.onnx"
    export_onnx(pt, onnx_path)
    return pt, onnx_path


def test_onnx_agrees_with_torch_and_carries_the_card(exported: tuple[Path, Path]) -> None:
    pt, onnx_path = exported
    torch_emb = load_embedder(pt, device="cpu")
    onnx_emb = load_embedder(onnx_path, device="cpu", batch_size=3)
    assert isinstance(torch_emb, TorchEmbedder) and isinstance(onnx_emb, OnnxEmbedder)
    images = random_images(7)
    a, b = torch_emb.embed(images), onnx_emb.embed(images)
    assert b.shape == (7, 128) and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(a * b, axis=1)) > 0.999
    assert onnx_emb.card == torch_emb.card  # same card, same version
    assert onnx_emb.checksum != torch_emb.checksum and len(onnx_emb.checksum) == 64
    assert onnx_emb.embed([]).shape == (0, 128)
    with pytest.raises(ValueError):
        onnx_emb.embed([np.zeros((4, 4), np.uint8)])
    assert "CPUExecutionProvider" in onnx_emb.providers


def test_default_model_exports(tmp_path: Path) -> None:
    out = tmp_path / "default.onnx"
    res = CliRunner().invoke(_app(), ["export-onnx", str(dlib_resnet_model_path()), str(out)])
    assert res.exit_code == 0, res.output
    images = random_images(4, seed=3)
    a = TorchEmbedder(dlib_resnet_model_path(), device="cpu").embed(images)
    b = load_embedder(out).embed(images)
    assert np.min(np.sum(a * b, axis=1)) > 0.999


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_tampered_graph_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    model = onnx.load(str(exported[1]))
    init = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save_model(model, str(bad))
    with pytest.raises(ModelLoadError, match="does not match"):
        OnnxEmbedder(bad).load()


def test_foreign_model_needs_calibration(exported: tuple[Path, Path], tmp_path: Path) -> None:
    model = onnx.load(str(exported[1]))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save_model(model, str(foreign))
    with pytest.raises(ModelLoadError, match="facedb calibrate"):
        load_embedder(foreign).load()
    emb = OnnxEmbedder(foreign, allow_uncalibrated=True)
    card = emb.card
    assert card.input == INSIGHTFACE_INPUT and card.embedding_dim == 128 and card.thresholds == {}
    assert card.version == graph_sha256(model)[:12]
    _, pairs = make_pairs_set(tmp_path)
    out = tmp_path / "calibrated.onnx"
    cal = calibrate_model(foreign, pairs, fars=[1e-1], framing="none", out=out)
    assert cal.version == card.version and cal.thresholds
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert CARD_KEY in meta and meta[GRAPH_HASH_KEY] == graph_sha256(model)
    served = load_embedder(out)
    served.load()
    assert served.card.thresholds == cal.thresholds


def test_factory_rejects_unknown_types(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model file type"):
        load_embedder(tmp_path / "model.bin")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_embedder(tmp_path / "missing.onnx").load()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        load_embedder(garbage).load()
