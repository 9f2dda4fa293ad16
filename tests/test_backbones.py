"""Backbone registry: IResNet (arcface_torch layout), MobileFaceNet, the Siamese baseline, compact_iresnet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embedding.backbones import BACKBONES, IRESNET_LAYERS, build_backbone
from embedding.checkpoint import load_checkpoint
from embedding.embedder import compact_model_path, dlib_resnet_model_path

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
DEPTHS = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
}


def arcface_torch_state_shapes(layers: list[int], features: int = 512) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an arcface_torch IResNet state_dict, written out from its layer naming."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 3, 3)}

    def bn(prefix: str, ch: int) -> None:
        for name in BN:
            shapes[f"{prefix}.{name}"] = () if name == "num_batches_tracked" else (ch,)

    bn("bn1", 64)
    shapes["prelu.weight"] = (64,)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            bn(f"{p}.bn1", inplanes)
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.prelu.weight"] = (planes,)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn3", planes)
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    bn("bn2", 512)
    shapes["fc.weight"] = (features, 512 * 7 * 7)
    shapes["fc.bias"] = (features,)
    bn("features", features)
    return shapes


@pytest.mark.parametrize("name", list(DEPTHS))
def test_iresnet_matches_arcface_torch_layout(name: str) -> None:
    assert list(IRESNET_LAYERS[name]) == DEPTHS[name]
    model = build_backbone(name)
    state = model.state_dict()
    expected = arcface_torch_state_shapes(DEPTHS[name])
    assert list(state) == list(expected)  # same names, same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # an arcface_torch checkpoint (random tensors of its shapes here) loads strictly
    fake = {k: torch.rand(s) if s else torch.tensor(7) for k, s in expected.items()}
    model.load_state_dict(fake, strict=True)
    assert not model.get_parameter("features.weight").requires_grad  # frozen as in arcface_torch
    model.eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 512)


def test_mobilefacenet_is_small_and_gives_embeddings() -> None:
    model = build_backbone("mobilefacenet").eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.8e6 < n_params < 1.3e6
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 112, 112)).shape == (2, 128)
        other = build_backbone("mobilefacenet", in_channels=1, input_height=64, input_width=52, embedding_dim=64)
        assert other.eval()(torch.randn(2, 1, 64, 52)).shape == (2, 64)


def test_siamese_baseline_structure() -> None:
    model = build_backbone("siamese_att")
    pads = [m for m in model.modules() if isinstance(m, nn.ReflectionPad2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(pads) == 3 and [c.out_channels for c in convs] == [4, 8, 8]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(80000, 500), (500, 500), (500, 5)]
    with torch.inference_mode():
        assert model.eval()(torch.randn(2, 1, 100, 100)).shape == (2, 5)


def test_registry_has_all_and_default_model_still_loads() -> None:
    assert {
        "compact_iresnet",
        "dlib_resnet29",
        "iresnet18",
        "iresnet34",
        "iresnet50",
        "iresnet100",
        "mobilefacenet",
        "siamese_att",
    } <= set(BACKBONES)
    _, card = load_checkpoint(dlib_resnet_model_path())  # strict load of the shipped weights
    assert card.arch == "dlib_resnet29" and card.input.face_template == "dlib_150"
    _, card = load_checkpoint(compact_model_path())
    assert card.arch == "compact_iresnet" and card.input.face_template == "arcface_112"
