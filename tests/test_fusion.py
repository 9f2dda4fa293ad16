"""The shipped fusion (`embedding/models/dlib_sface.onnx`): one input, and each part of its vector is that model on
its own crop of the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from embedding.align import ARCFACE_112, DLIB_150, ARCFACE_112x123, align_face
from embedding.card import ModelCard
from embedding.checkpoint import load_checkpoint
from embedding.embedder import (
    Embedder,
    dlib_resnet_model_path,
    fusion_model_path,
    load_embedder,
    read_card,
    sface_model_path,
)
from embedding.fusion import Part, fusion_graph, sampling_grid
from embedding.preprocess import to_model_input
from embedding.sface import SFACE_INPUT

FUSION = fusion_model_path()


def smooth_frames(n: int) -> list[np.ndarray]:
    """uint8 (123, 112, 3) images without fine detail, so that two bilinear resamplings agree closely."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, size=(n, 16, 14, 3), dtype=np.uint8)
    return [np.asarray(Image.fromarray(c).resize((112, 123), Image.Resampling.BICUBIC)) for c in coarse]


@pytest.fixture(scope="module")
def fused() -> Embedder:
    embedder = load_embedder(FUSION, threads=1)
    embedder.load()
    return embedder


def test_card_describes_the_fusion(fused: Embedder) -> None:
    card = fused.card
    assert card.parts == [128, 128] and card.embedding_dim == 256
    assert card.input.face_template == "arcface_112x123" and (card.input.width, card.input.height) == (112, 123)
    assert card.input.landmarks == "dlib5" and not card.input.flip
    assert card.open_set is not None and card.thresholds


def test_each_part_is_its_model_on_its_own_crop(fused: Embedder) -> None:
    frames = smooth_frames(4)
    out = fused.embed(frames)
    np.testing.assert_allclose(np.linalg.norm(out[:, :128], axis=1), 2**-0.5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, 128:], axis=1), 2**-0.5, atol=1e-5)
    # SFace reads the frame's top 112 rows, its own ArcFace square, unchanged
    sface = load_embedder(sface_model_path(), threads=1)
    expected = sface.embed([f[:112] for f in frames])
    assert (expected * out[:, 128:] * 2**0.5).sum(axis=1).min() > 0.9999
    # dlib's ResNet (without its mirror image) sees its 150x150 chip cut from the frame by the templates' similarity
    model, card = load_checkpoint(dlib_resnet_model_path())
    chips = [align_face(f, ARCFACE_112x123.continuous_points(), template=DLIB_150) for f in frames]
    with torch.inference_mode():
        reference = F.normalize(model(torch.from_numpy(to_model_input(chips, card.input))), dim=1).numpy()
    assert (reference * out[:, :128] * 2**0.5).sum(axis=1).min() > 0.999


def test_sampling_grid_reads_the_frames_own_pixels_for_its_own_template() -> None:
    grid = sampling_grid(ARCFACE_112x123, ARCFACE_112)[0]
    cols = 2 * (np.arange(112) + 0.5) / 112 - 1
    rows = 2 * (np.arange(112) + 0.5) / 123 - 1
    np.testing.assert_allclose(grid[..., 0], np.broadcast_to(cols, (112, 112)), atol=1e-5)
    np.testing.assert_allclose(grid[..., 1], np.broadcast_to(rows[:, None], (112, 112)), atol=1e-5)
    chip = sampling_grid(ARCFACE_112x123, DLIB_150)
    assert np.abs(chip).max() <= 1.0  # dlib's whole chip lies inside the frame


def test_a_fusion_needs_two_parts_of_their_templates_size() -> None:
    with pytest.raises(ValueError, match="at least two"):
        fusion_graph([Part("one", None, "x", "y", SFACE_INPUT, 128)], name="one")
    odd = SFACE_INPUT.model_copy(update={"height": 100})
    with pytest.raises(ValueError, match="template's size"):
        fusion_graph([Part("a", None, "x", "y", odd, 128), Part("b", None, "x", "y", odd, 128)], name="two")


def test_card_refuses_parts_that_do_not_fill_the_vector_or_a_mirror_image() -> None:
    card = read_card(FUSION).model_dump()
    with pytest.raises(ValueError, match="summing to 256"):
        ModelCard.model_validate({**card, "parts": [128, 100]})
    with pytest.raises(ValueError, match="mirror-image"):
        ModelCard.model_validate({**card, "input": {**card["input"], "flip": True}})
