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


# ------------------------------------------------------------------------------ IResNet (arcface_torch)


def _stride2_out(size: int, times: int) -> int:
    """Spatial length after `times` 3x3, stride-2, padding-1 convolutions."""
    for _ in range(times):
        size = _conv_out(size)
    return size


class IBasicBlock(nn.Module):
    """arcface_torch's IResNet block, same attribute names so its checkpoints load with strict=True.

    bn1 -> conv1 (3x3) -> bn2 -> prelu -> conv2 (3x3, stride) -> bn3, plus `downsample(x)` (1x1 conv
    + BN) or x. float32 (N, inplanes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, inplanes, H, W) -> float32 (N, planes, H', W')."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        result: torch.Tensor = out + identity
        return result


class IResNet(nn.Module):
    """The ArcFace IResNet (Deng et al.; arcface_torch layout and parameter names).

    conv1 (3x3, 64) -> bn1 -> prelu -> layer1..layer4 (IBasicBlock stages of 64, 128, 256, 512
    channels, each starting with stride 2) -> bn2 -> flatten -> dropout -> fc -> features (BN1d).
    Input float32 (N, in_channels, input_height, input_width), 3 x 112 x 112 for arcface_torch
    checkpoints -> float32 (N, embedding_dim), not normalised.
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        in_channels: int = 3,
        input_height: int = 112,
        input_width: int = 112,
        embedding_dim: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got {list(layers)}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        spatial = _stride2_out(input_height, 4) * _stride2_out(input_width, 4)
        self.fc = nn.Linear(512 * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        """One stage: a stride-2 block with a 1x1 downsample shortcut, then `blocks - 1` stride-1 blocks."""
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-05)
        )
        layers: list[nn.Module] = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers.extend(IBasicBlock(planes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, H, W) -> float32 (N, embedding_dim), not normalised."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        out: torch.Tensor = self.features(self.fc(x))
        return out


IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
"""Blocks per stage of each registered IResNet depth (as in arcface_torch)."""


def _iresnet_factory(name: str) -> BackboneFactory:
    """A registered constructor for the IResNet depth `name`."""
    layers = IRESNET_LAYERS[name]

    def factory(
        *,
        in_channels: int = 3,
        input_height: int = 112,
        input_width: int = 112,
        embedding_dim: int = 512,
        dropout: float = 0.0,
    ) -> nn.Module:
        return IResNet(
            layers,
            in_channels=in_channels,
            input_height=input_height,
            input_width=input_width,
            embedding_dim=embedding_dim,
            dropout=dropout,
        )

    factory.__name__ = name
    factory.__doc__ = f"`IResNet` with stage depths {list(layers)} (arcface_torch {name}); 112x112 RGB -> 512-d."
    return factory


for _name in IRESNET_LAYERS:
    register(_name)(_iresnet_factory(_name))


# -------------------------------------------------------------------------------------- MobileFaceNet


class _ConvBN(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional PReLU; `groups=in_ch` makes it depthwise."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int | tuple[int, int],
        stride: int,
        padding: int,
        *,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            layers.append(nn.PReLU(out_ch))
        super().__init__(*layers)


class _Bottleneck(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand (PReLU) -> 3x3 depthwise (PReLU) -> 1x1 linear project."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.residual = stride == 1 and in_ch == out_ch
        self.body = nn.Sequential(
            _ConvBN(in_ch, hidden, 1, 1, 0),
            _ConvBN(hidden, hidden, 3, stride, 1, groups=hidden),
            _ConvBN(hidden, out_ch, 1, 1, 0, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, in_ch, H, W) -> float32 (N, out_ch, H', W')."""
        out: torch.Tensor = self.body(x)
        return out + x if self.residual else out


MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
"""(expansion t, channels c, repeats n, first stride s) of MobileFaceNet's bottleneck stages."""


class MobileFaceNet(nn.Module):
    """MobileFaceNet (Chen et al., 2018): ~1 M parameters, ~0.23 GFLOPs at 112x112, for CPU serving.

    conv 3x3/2 (64) -> depthwise 3x3 (64) -> bottlenecks (`MOBILEFACENET_SETTING`) -> conv 1x1 (512)
    -> global depthwise conv over the whole 7x7 map (GDConv, linear) -> conv 1x1 to embedding_dim
    (linear) -> BN. float32 (N, in_channels, H, W) -> float32 (N, embedding_dim), not normalised.
    """

    def __init__(
        self, *, in_channels: int = 3, input_height: int = 112, input_width: int = 112, embedding_dim: int = 128
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBN(in_channels, 64, 3, 2, 1), _ConvBN(64, 64, 3, 1, 1, groups=64)]
        in_ch, strides = 64, 1
        for expansion, channels, repeats, stride in MOBILEFACENET_SETTING:
            for index in range(repeats):
                layers.append(_Bottleneck(in_ch, channels, stride if index == 0 else 1, expansion))
                in_ch = channels
            strides += stride == 2
        layers.append(_ConvBN(in_ch, 512, 1, 1, 0))
        self.features = nn.Sequential(*layers)
        kernel = (_stride2_out(input_height, strides), _stride2_out(input_width, strides))
        self.output = nn.Sequential(
            _ConvBN(512, 512, kernel, 1, 0, groups=512, act=False),
            nn.Conv2d(512, embedding_dim, 1, bias=False),
            nn.Flatten(),
            nn.BatchNorm1d(embedding_dim),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, H, W) -> float32 (N, embedding_dim), not normalised."""
        out: torch.Tensor = self.output(self.features(x))
        return out


@register("mobilefacenet")
def mobilefacenet(
    *, in_channels: int = 3, input_height: int = 112, input_width: int = 112, embedding_dim: int = 128
) -> nn.Module:
    """`MobileFaceNet`; input_height/input_width must match the model card's `InputSpec`."""
    return MobileFaceNet(
        in_channels=in_channels, input_height=input_height, input_width=input_width, embedding_dim=embedding_dim
    )


# ------------------------------------------------------------------------------- Siamese baseline


class SiameseNet(nn.Module):
    """The Siamese-network articles' AT&T baseline (the PyTorch "one-shot learning" tutorial network).

    Three blocks of ReflectionPad(1) -> Conv 3x3 -> ReLU -> BatchNorm with 4, 8, 8 channels at full
    resolution, then Linear(8 * H * W, 500) -> ReLU -> Linear(500, 500) -> ReLU -> Linear(500, 5).
    float32 (N, 1, 100, 100) grey -> float32 (N, embedding_dim = 5), compared by Euclidean distance.
    """

    def __init__(
        self, *, in_channels: int = 1, input_height: int = 100, input_width: int = 100, embedding_dim: int = 5
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for in_ch, out_ch in ((in_channels, 4), (4, 8), (8, 8)):
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3), nn.ReLU(), nn.BatchNorm2d(out_ch)]
        self.cnn = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * input_height * input_width, 500),
            nn.ReLU(),
            nn.Linear(500, 500),
            nn.ReLU(),
            nn.Linear(500, embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, H, W) -> float32 (N, embedding_dim)."""
        out: torch.Tensor = self.fc(self.cnn(x))
        return out


@register("siamese_att")
def siamese_att(
    *, in_channels: int = 1, input_height: int = 100, input_width: int = 100, embedding_dim: int = 5
) -> nn.Module:
    """`SiameseNet`, the historical baseline (100x100 grey in, 5-d out)."""
    return SiameseNet(
        in_channels=in_channels, input_height=input_height, input_width=input_width, embedding_dim=embedding_dim
    )


# ------------------------------------------------------------------------------- dlib's ResNet-29

DLIB_INPUT_MEAN_RGB: tuple[float, float, float] = (122.782, 117.001, 104.298)
"""Per-channel means dlib's `input_rgb_image` subtracts (0-255 scale) before dividing by 256."""


class ChannelAffine(nn.Module):
    """dlib's `affine` layer: a batch norm folded into a per-channel scale and shift (inference only)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, H, W) -> same shape."""
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of two (N, C, H, W) tensors of possibly different C, H, W: the smaller is zero-padded at the end of
    each dimension (how dlib's `add_prev` joins a residual branch to its shortcut)."""
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(shape):
            return t
        return nn.functional.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return pad(a) + pad(b)


class _DlibResidual(nn.Module):
    """conv 3x3 (stride s; no padding when s = 2) -> affine -> ReLU -> conv 3x3 -> affine, plus the shortcut
    (the input, or its 2x2 average pool when s = 2, zero-padded to the branch's channels), then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, *, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.down = down
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 0 if down else 1)
        self.bn1 = ChannelAffine(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.bn2 = ChannelAffine(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, in_ch, H, W) -> float32 (N, out_ch, H', W')."""
        branch = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        shortcut = nn.functional.avg_pool2d(x, 2, 2) if self.down else x
        return torch.relu(_add_zero_padded(branch, shortcut))


DLIB_RESNET_STAGES: tuple[tuple[int, int], ...] = ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1))
"""(channels, residual blocks) of the stages after the stem; every stage but the first starts by halving."""


class DlibResNet(nn.Module):
    """dlib's face recognition ResNet (`dlib_face_recognition_resnet_model_v1`, 29 conv layers), in PyTorch.

    float32 (N, 3, 150, 150) RGB in [0, 1] (the model card's spec: mean 0, std 1) -> float32 (N, 128).
    The input is first mapped as dlib's `input_rgb_image` does, (255 x - channel mean) / 256; then
    conv 7x7/2 (32) -> affine -> ReLU -> max pool 3x3/2 -> `DLIB_RESNET_STAGES` -> global average pool
    -> linear 256 -> 128 without bias. Weights come from dlib's file (`embedding.train.dlib_import`); the layer
    arithmetic (unpadded stride-2 convolutions and pools, zero-padded residual sums) follows dlib's.
    """

    def __init__(self, *, embedding_dim: int = 128) -> None:
        super().__init__()
        self.input_mean: torch.Tensor
        self.register_buffer("input_mean", torch.tensor(DLIB_INPUT_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, 2, 0), ChannelAffine(32), nn.ReLU(), nn.MaxPool2d(3, 2))
        blocks: list[nn.Module] = []
        in_ch = 32
        for stage, (channels, count) in enumerate(DLIB_RESNET_STAGES):
            for index in range(count):
                blocks.append(_DlibResidual(in_ch, channels, down=stage > 0 and index == 0))
                in_ch = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_ch, embedding_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, 3, H, W) in [0, 1] -> float32 (N, embedding_dim), not normalised."""
        x = (x * 255.0 - self.input_mean) / 256.0
        x = self.blocks(self.stem(x))
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


@register("dlib_resnet29")
def dlib_resnet29(*, embedding_dim: int = 128) -> nn.Module:
    """`DlibResNet` (150x150 RGB in; load dlib's weights with `embedding.train.dlib_import`)."""
    return DlibResNet(embedding_dim=embedding_dim)
