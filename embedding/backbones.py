"""Embedding backbones: CNNs mapping float32 (N, C, H, W) input to float32 (N, D) embeddings.

Backbones return *unnormalised* embeddings; callers L2-normalise. Constructors are registered by
name in `BACKBONES` so a model card's `arch` + `arch_params` rebuild the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

BackboneFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=BackboneFactory)

BACKBONES: dict[str, BackboneFactory] = {}
"""Registered backbone constructors by architecture name (filled by `register` at definition)."""


def register(name: str) -> Callable[[_F], _F]:
    """Decorator registering a backbone constructor under `name`."""

    def decorator(factory: _F) -> _F:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = factory
        return factory

    return decorator


def build_backbone(arch: str, **params: object) -> nn.Module:
    """Build the backbone registered as `arch` with constructor keyword arguments `params`."""
    try:
        factory = BACKBONES[arch]
    except KeyError:
        raise KeyError(f"unknown backbone {arch!r}; known: {sorted(BACKBONES)}") from None
    return factory(**params)


def _conv_out(size: int) -> int:
    """Output length of a 3x3, stride-2, padding-1 convolution over `size` samples."""
    return (size - 1) // 2 + 1


class ConvBNPReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> PReLU."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(out_ch),
        )


class IRBlock(nn.Module):
    """Improved residual block (as in ArcFace's IResNet): BN-conv-BN-PReLU-conv(stride)-BN + shortcut.

    (N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_ch == out_ch and stride == 1
            else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, in_ch, H, W) -> float32 (N, out_ch, H', W')."""
        out: torch.Tensor = self.body(x) + self.shortcut(x)
        return out


class CompactIResNet(nn.Module):
    """Small CPU-friendly face embedder for low-resolution (about 64 px) face crops.

    Stem conv (stride 2), then one stride-2 stage of IR blocks per entry of `widths[1:]`, then the
    ArcFace "E" output: BN2d -> Dropout -> Flatten -> Linear -> BN1d. Keeping the flattened
    spatial map (rather than global pooling) suits roughly aligned faces.
    Input float32 (N, in_channels, input_height, input_width) -> float32 (N, embedding_dim).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        input_height: int,
        input_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        embedding_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) + 1:
            raise ValueError(f"need len(widths) == len(blocks) + 1, got {list(widths)} and {list(blocks)}")
        layers: list[nn.Module] = [ConvBNPReLU(in_channels, widths[0], stride=2)]
        height, width = _conv_out(input_height), _conv_out(input_width)
        for in_ch, out_ch, n_blocks in zip(widths[:-1], widths[1:], blocks, strict=True):
            layers.append(IRBlock(in_ch, out_ch, stride=2))
            layers.extend(IRBlock(out_ch, out_ch, stride=1) for _ in range(n_blocks - 1))
            height, width = _conv_out(height), _conv_out(width)
        self.features = nn.Sequential(*layers)
        self.output = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(widths[-1] * height * width, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal convolutions; last BN of each residual branch starts at zero (identity blocks)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, IRBlock):
                last_bn = module.body[-1]
                if isinstance(last_bn, nn.BatchNorm2d):
                    nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, H, W) -> float32 (N, embedding_dim), not normalised."""
        out: torch.Tensor = self.output(self.features(x))
        return out


@register("compact_iresnet")
def compact_iresnet(
    *,
    in_channels: int = 1,
    input_height: int = 64,
    input_width: int = 52,
    widths: Sequence[int] = (32, 64, 128, 256),
    blocks: Sequence[int] = (1, 2, 1),
    embedding_dim: int = 128,
    dropout: float = 0.0,
) -> nn.Module:
    """`CompactIResNet`; input_height/input_width must match the model card's `InputSpec`."""
    return CompactIResNet(
        in_channels=in_channels,
        input_height=input_height,
        input_width=input_width,
        widths=tuple(widths),
        blocks=tuple(blocks),
        embedding_dim=embedding_dim,
        dropout=dropout,
    )
