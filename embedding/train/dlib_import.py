"""Read dlib's face recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) into `DlibResNet`.

The file (CC0, shipped by the `face_recognition_models` package, so nothing is downloaded) is dlib's own
serialisation of its network object. What this reader relies on:

- integers: a control byte (bit 7 = negative, bits 0-3 = byte count), then the magnitude little-endian;
  strings: length, then bytes; bools: ASCII '0' / '1'; floats: int64 mantissa then int16 exponent
  (value = m * 2**e; exponents 32000-32002 are +inf, -inf, nan);
- tensors: version 2, then (n, k, rows, cols) and raw little-endian float32 values in that order;
- the network: the loss layer's record, then the version number of every layer wrapper from the loss end
  down (1 = a tag or skip wrapper, which stores nothing else; 2 = a layer; 3 = the layer on the input),
  then the input layer's record, then each layer's record from the input end up, each followed by three
  bools and its (empty) training buffers.

Only the layer records the face network uses are understood (`con_4`, `affine_`, `fc_2`, `relu_`, `max_pool_2`,
`avg_pool_2`, `add_prev_`); anything else raises `DlibFormatError`, as does any deviation from the expected
architecture, so a different file can never load silently wrong weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import torch

from embedding.backbones import DLIB_INPUT_MEAN_RGB, ChannelAffine, DlibResNet
from embedding.card import InputSpec, ModelCard
from embedding.checkpoint import load_checkpoint, save_checkpoint

CHIP_SIZE: Final = 150


class DlibFormatError(ValueError):
    """The file is not the dlib face recognition network this reader understands."""


@dataclass
class DlibLayer:
    """One layer record: its dlib type name, integer fields in file order and its parameter tensor."""

    kind: str
    ints: list[int] = field(default_factory=list)
    params: np.ndarray | None = None


@dataclass
class DlibNetwork:
    """A parsed file: the layer records from the input end up, and the input layer's settings."""

    layers: list[DlibLayer]
    input_mean_rgb: tuple[float, float, float]
    input_size: tuple[int, int]
    sha256: str


class _Reader:
    """Sequential reader of dlib's serialisation primitives over bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def _take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self._data):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos} (wanted {count} more)")
        chunk = self._data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    @property
    def at_end(self) -> bool:
        return self.pos == len(self._data)

    def integer(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise DlibFormatError(f"bad integer control byte {control:#04x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def string(self) -> str:
        length = self.integer()
        if length > 256:
            raise DlibFormatError(f"implausible string length {length} at byte {self.pos}")
        return self._take(length).decode("latin-1")

    def boolean(self) -> bool:
        byte = self._take(1)
        if byte not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {byte!r} at byte {self.pos - 1}")
        return byte == b"1"

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        special = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        return special[exponent] if exponent in special else float(mantissa) * 2.0**exponent

    def tensor(self) -> np.ndarray:
        if (version := self.integer()) != 2:
            raise DlibFormatError(f"unsupported tensor version {version} at byte {self.pos}")
        shape = tuple(self.integer() for _ in range(4))
        if min(shape) < 0:
            raise DlibFormatError(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        if (version := self.integer()) != 1:
            raise DlibFormatError(f"unsupported alias_tensor version {version} at byte {self.pos}")
        return tuple(self.integer() for _ in range(4))


def _layer(reader: _Reader) -> DlibLayer:
    """One layer record (the details only, not the wrapper's trailer)."""
    kind = reader.string()
    if kind == "con_4":
        params = reader.tensor()
        ints = [reader.integer() for _ in range(7)]  # filters, rows, cols, stride y/x, padding y/x
        filters, biases = reader.alias(), reader.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            reader.real()
        count, channels, rows, cols = filters
        if params.size != count * channels * rows * cols + count or biases != (1, count, 1, 1):
            raise DlibFormatError(f"con_4 at byte {reader.pos}: parameters do not match {filters}")
        return DlibLayer(kind, [*ints, channels], params.reshape(-1))
    if kind == "affine_":
        params = reader.tensor()
        gamma, _beta = reader.alias(), reader.alias()
        mode = reader.integer()
        if mode != 0 or params.size != 2 * gamma[1]:
            raise DlibFormatError(f"affine_ at byte {reader.pos}: only per-channel mode is supported")
        return DlibLayer(kind, [gamma[1]], params.reshape(-1))
    if kind == "fc_2":
        outputs, inputs = reader.integer(), reader.integer()
        params = reader.tensor()
        _weights, _biases = reader.alias(), reader.alias()
        bias_mode = reader.integer()
        for _ in range(4):
            reader.real()
        if bias_mode != 1 or params.size != inputs * outputs:
            raise DlibFormatError("fc_2: only a fully connected layer without bias is supported")
        return DlibLayer(kind, [outputs, inputs], params.reshape(inputs, outputs))
    if kind in ("max_pool_2", "avg_pool_2"):
        return DlibLayer(kind, [reader.integer() for _ in range(6)])
    if kind in ("relu_", "add_prev_"):
        return DlibLayer(kind)
    raise DlibFormatError(f"unsupported dlib layer {kind!r} at byte {reader.pos}")


def parse_dlib_network(data: bytes) -> DlibNetwork:
    """Parse the whole file; raises `DlibFormatError` unless every byte is understood."""
    reader = _Reader(data)
    if reader.integer() != 1 or reader.string() != "loss_metric_2":
        raise DlibFormatError("not a dlib metric-learning network (expected a loss_metric_2 record first)")
    _margin, _distance_threshold = reader.real(), reader.real()  # training settings, unused at inference
    wrappers: list[int] = []
    while not wrappers or wrappers[-1] != 3:
        version = reader.integer()
        if version not in (1, 2, 3) or len(wrappers) > 10_000:
            raise DlibFormatError(f"unexpected layer wrapper version {version} at byte {reader.pos}")
        wrappers.append(version)
    if reader.string() != "input_rgb_image_sized":
        raise DlibFormatError("expected an input_rgb_image_sized input layer")
    mean = (reader.real(), reader.real(), reader.real())
    size = (reader.integer(), reader.integer())
    layers: list[DlibLayer] = []
    for version in reversed(wrappers):
        if version == 1:
            continue  # tags and skips carry no data; the architecture says where they are
        layers.append(_layer(reader))
        for _ in range(3):
            reader.boolean()
        for _ in range(3):
            reader.tensor()  # gradient, output and parameter-gradient buffers, empty in a saved network
        if version == 3:
            reader.integer()  # the input layer's sample expansion factor
    if not reader.at_end:
        raise DlibFormatError(f"{len(data) - reader.pos} unread bytes after the last layer")
    return DlibNetwork(layers, mean, size, hashlib.sha256(data).hexdigest())


def network_to_model(net: DlibNetwork) -> DlibResNet:
    """Copy a parsed network's weights into a new `DlibResNet` (eval mode, float32, CPU).

    The convolution and affine records, in file order, fill the model's in module order; every record's
    shape, stride and padding must match, and the input layer must be the 150x150 RGB one with dlib's means.
    """
    if net.input_size != (CHIP_SIZE, CHIP_SIZE) or not np.allclose(net.input_mean_rgb, DLIB_INPUT_MEAN_RGB):
        raise DlibFormatError(f"unexpected input layer: {net.input_size}, means {net.input_mean_rgb}")
    model = DlibResNet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    affines = [m for m in model.modules() if isinstance(m, ChannelAffine)]
    con_layers = [layer for layer in net.layers if layer.kind == "con_4"]
    affine_layers = [layer for layer in net.layers if layer.kind == "affine_"]
    fc_layers = [layer for layer in net.layers if layer.kind == "fc_2"]
    if (len(con_layers), len(affine_layers), len(fc_layers)) != (len(convs), len(affines), 1):
        raise DlibFormatError(
            f"expected {len(convs)} convolutions, {len(affines)} affine layers and 1 fc layer, found "
            f"{len(con_layers)}, {len(affine_layers)} and {len(fc_layers)}"
        )
    with torch.no_grad():
        for conv, layer in zip(convs, con_layers, strict=True):
            filters, rows, cols, stride_y, stride_x, pad_y, pad_x, channels = layer.ints
            expected = (conv.out_channels, conv.kernel_size[0], conv.kernel_size[1], *conv.stride, *conv.padding)
            found = (filters, rows, cols, stride_y, stride_x, pad_y, pad_x)
            if found != expected or channels != conv.in_channels:
                raise DlibFormatError(f"convolution {found} x {channels} channels does not match {expected}")
            assert layer.params is not None
            count = filters * channels * rows * cols
            conv.weight.copy_(torch.from_numpy(layer.params[:count].reshape(conv.weight.shape)))
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy(layer.params[count:]))
        for affine, layer in zip(affines, affine_layers, strict=True):
            assert layer.params is not None
            channels = layer.ints[0]
            if channels != affine.weight.numel():
                raise DlibFormatError(f"affine layer of {channels} channels where {affine.weight.numel()} expected")
            affine.weight.copy_(torch.from_numpy(layer.params[:channels]))
            affine.bias.copy_(torch.from_numpy(layer.params[channels:]))
        fc = fc_layers[0]
        assert fc.params is not None
        if fc.params.shape != (model.fc.in_features, model.fc.out_features):
            raise DlibFormatError(f"fc layer {fc.params.shape} does not match {model.fc}")
        model.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(fc.params.T)))
    return model.eval()


def dlib_model_path() -> Path:
    """The network file installed by `face_recognition_models`."""
    import face_recognition_models as frm  # noqa: PLC0415 - optional heavy-ish import, only when converting

    return Path(frm.face_recognition_model_location())


def load_dlib_resnet(path: Path | None = None) -> tuple[DlibResNet, DlibNetwork]:
    """Read dlib's network file (default: `dlib_model_path()`) -> (model, parsed network)."""
    data = Path(path if path is not None else dlib_model_path()).read_bytes()
    net = parse_dlib_network(data)
    return network_to_model(net), net


DLIB_TRAINING_NOTE: Final = (
    "Not trained by facedb: dlib's face recognition ResNet by Davis King (dlib 19.3, 2017), trained from scratch "
    "with dlib's pairwise metric loss (margin 0.04 around a Euclidean distance of 0.6) on about 3 million faces "
    "of about 7,500 identities (FaceScrub, the VGG Face dataset and images scraped from the web); its author "
    "states that no LFW identity was in that data. Released into the public domain (CC0) and shipped in the "
    "face_recognition_models package; facedb reads the file with embedding.train.dlib_import."
)


def import_dlib_model(out: Path, *, source: Path | None = None, half: bool = True) -> ModelCard:
    """Convert dlib's network file into an (uncalibrated) facedb model file at `out`.

    The crop is the `dlib_150` face template (where dlib's own `get_face_chip` puts our landmarks) at 150x150
    RGB, scaled to [0, 1]; the network maps it exactly as dlib does. `half` stores the weights as float16
    (half the file; the model computes in float32; embeddings agree with dlib's to cosine > 0.99999).
    Run `facedb calibrate` on the result before serving it.
    """
    path = Path(source if source is not None else dlib_model_path())
    model, net = load_dlib_resnet(path)
    card = ModelCard(
        name="dlib-resnet29",
        version="pending",
        arch="dlib_resnet29",
        arch_params={"embedding_dim": 128},
        embedding_dim=128,
        input=InputSpec(
            height=CHIP_SIZE, width=CHIP_SIZE, channels=3, mean=0.0, std=1.0, resize="stretch", face_template="dlib_150"
        ),
        training={
            "origin": DLIB_TRAINING_NOTE,
            "source_file": path.name,
            "source_sha256": net.sha256,
            "stored_dtype": "float16" if half else "float32",
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        metrics={},
        thresholds={},
        default_threshold=1.0,
        default_threshold_far=0.0,
        notes="UNCALIBRATED: run `facedb calibrate` before serving this model.",
    )
    save_checkpoint(Path(out), model=model.half() if half else model, card=card)
    return load_checkpoint(Path(out))[1]
