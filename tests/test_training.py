"""`facedb train`: data selection, exclusions, all heads, resume, the card, and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from embedding.checkpoint import load_checkpoint
from embedding.embedder import load_embedder
from embedding.train.cli import register
from embedding.train.data import DatasetSpec, parse_folds, read_pairs
from embedding.train.training import TrainConfig, TrainingError, train
from tests.test_evaluation import make_identity_set, make_pairs_set

TINY = {"widths": [8, 16], "blocks": [1], "dropout": 0.0}


def config(root: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": (DatasetSpec(root, "none", "synth"),),
        "out": out,
        "backbone": "compact_iresnet",
        "backbone_params": TINY,
        "height": 32,
        "width": 32,
        "embedding_dim": 16,
        "epochs": 3,
        "batch_size": 12,
        "lr": 0.05,
        "seed": 1,
        "progress": False,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_identity_set(root, n_ids=6, n_imgs=6, size=40)
    return root


@pytest.mark.parametrize("head", ["softmax", "sphereface", "cosface", "arcface", "combined"])
def test_each_head_trains(synth: Path, tmp_path: Path, head: str) -> None:
    result = train(config(synth, tmp_path / "m.pt", head=head, epochs=2))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert result.card.training["head"]["type"] == head


def test_training_learns_and_writes_a_complete_card(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    result = train(config(synth, out, epochs=8, exclude_identities=frozenset({"Person_05"}), exclude_rule="test"))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    _, card = load_checkpoint(out)
    assert card.version == result.card.version and card.arch == "compact_iresnet"
    assert card.input.height == 32 and card.embedding_dim == 16
    training = card.training
    assert training["identities"] == 5 and training["images"] == 30
    assert training["held_out"] == {"rule": "test", "identities": ["Person_05"]}
    assert training["datasets"]["synth"]["excluded_identities"] == 1
    assert card.thresholds == {} and "UNCALIBRATED" in card.notes
    with pytest.raises(Exception, match="calibrate"):
        load_embedder(out).load()


def test_resume_continues_exactly(synth: Path, tmp_path: Path) -> None:
    straight = train(config(synth, tmp_path / "a.pt"))

    class StopError(Exception):
        pass

    def stop_after_two(epoch: int, model: torch.nn.Module, record: dict[str, float]) -> None:
        if epoch == 2:
            raise StopError

    cfg = config(synth, tmp_path / "b.pt")
    with pytest.raises(StopError):
        train(cfg, on_epoch=stop_after_two)  # interrupted during epoch 2's bookkeeping: state of epoch 1 kept
    resumed = train(config(synth, tmp_path / "b.pt", resume=True))
    assert resumed.card.version == straight.card.version
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history])
    with pytest.raises(TrainingError, match="different settings"):
        train(config(synth, tmp_path / "b.pt", resume=True, lr=0.01))


def test_bad_inputs(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="not found"):
        train(config(tmp_path / "nothing", tmp_path / "m.pt"))
    with pytest.raises(TrainingError, match="unknown backbone"):
        train(config(synth, tmp_path / "m.pt", backbone="nope"))
    with pytest.raises(TrainingError, match="unknown head"):
        train(config(synth, tmp_path / "m.pt", head="nope"))
    with pytest.raises(ValueError):
        parse_folds("x")
    assert parse_folds("7-9") == [7, 8, 9] == parse_folds("9,7,8")
    assert DatasetSpec.parse("/d/lfw/images").framing == "lfw"
    assert DatasetSpec.parse("/d/extended_yale_b").framing == "yaleb"
    assert DatasetSpec.parse("/d/x:none") == DatasetSpec(Path("/d/x"), "none", "x")


def test_train_command_excludes_lfw_folds_and_calibrates(tmp_path: Path) -> None:
    images, pairs = make_pairs_set(tmp_path, n_ids=10, n_imgs=5)
    fold2 = {p.a.parent.name for p in read_pairs(pairs) if p.fold == 2} | {
        p.b.parent.name for p in read_pairs(pairs) if p.fold == 2
    }
    app = typer.Typer()
    register(app)
    out = tmp_path / "m.pt"
    args = [
        "train",
        "--data",
        f"{images}:none",
        "--out",
        str(out),
        "--backbone-param",
        "widths=[8,16]",
        "--backbone-param",
        "blocks=[1]",
        "--height",
        "32",
        "--width",
        "32",
        "--embedding-dim",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--head",
        "arcface",
        "--head-param",
        "s=30",
        "--exclude-lfw-folds",
        "2",
        "--lfw-pairs",
        str(pairs),
        "--far",
        "1e-1",
    ]
    res = CliRunner().invoke(app, args)
    if len(fold2) >= 9:  # every identity held out: a clean one-line error
        assert res.exit_code == 1 and "error:" in res.output
        return
    assert res.exit_code == 0, res.output
    _, card = load_checkpoint(out)
    assert set(card.training["held_out"]["identities"]) == fold2
    assert card.thresholds and card.metrics["calibration"]["folds"] == [2]
    assert "verification" in card.metrics
    load_embedder(out).load()
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "absent"), "--out", str(out)])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "not found" in res.output
