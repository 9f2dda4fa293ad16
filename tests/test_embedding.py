"""Tests of the `embedding` package: decoding, preprocessing, heads, model files and embedders."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from embedding.backbones import BACKBONES, build_backbone, register
from embedding.card import InputSpec, ModelCard
from embedding.checkpoint import load_checkpoint, save_checkpoint, weights_version
from embedding.embedder import Embedder, compact_model_path, dlib_resnet_model_path
from embedding.errors import IMAGE_ERROR_CODES, ImageError, ModelLoadError
from embedding.image import decode_image
from embedding.preprocess import center_crop_box, to_model_input
from embedding.torch_embedder import TorchEmbedder
from embedding.train.data import load_rgb_images
from embedding.train.dlib_import import dlib_model_path
from embedding.train.evaluation import best_threshold, foldwise_accuracy, rank1_accuracy, roc_auc, threshold_at_far
from embedding.train.heads import CosFaceHead

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FACEDB_DATA_ROOT", REPO / ".." / "shared" / "data"))
MAX_PIXELS = 40_000_000


# ----------------------------------------------------------------------------------------- helpers


def gradient_rgb(height: int = 24, width: int = 32) -> np.ndarray:
    """A deterministic uint8 (H, W, 3) colour test pattern."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=2).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode a Pillow image to bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height (CRC fixed), with a 1x1 image's data."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    assert data[ihdr + 4 : ihdr + 8] == b"IHDR"
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])))
    return bytes(data)


def decode_or_code(data: bytes, max_pixels: int = MAX_PIXELS) -> str:
    """'ok' if `data` decodes to a valid RGB array, else the ImageError code; anything else fails."""
    error: ImageError | None
    try:
        out = decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert error.code in IMAGE_ERROR_CODES
        assert error.message
        return error.code
    assert out.dtype == np.uint8
    assert out.ndim == 3
    assert out.shape[2] == 3
    assert out.flags.c_contiguous
    return "ok"


# ---------------------------------------------------------------------------------------- decoding

RGB = gradient_rgb()
GREY = RGB[:, :, 0].copy()

LOSSLESS_CASES: dict[str, Callable[[], bytes]] = {
    "png-rgb": lambda: encode(Image.fromarray(RGB), "PNG"),
    "png-grey": lambda: encode(Image.fromarray(GREY), "PNG"),
    "png-palette": lambda: encode(Image.fromarray(RGB).quantize(64).convert("RGB").quantize(64), "PNG"),
    "ppm": lambda: encode(Image.fromarray(RGB), "PPM"),
    "pgm": lambda: encode(Image.fromarray(GREY), "PPM"),
    "bmp-rgb": lambda: encode(Image.fromarray(RGB), "BMP"),
    "bmp-grey": lambda: encode(Image.fromarray(GREY), "BMP"),
    "webp-lossless": lambda: encode(Image.fromarray(RGB), "WEBP", lossless=True),
    "gif-grey": lambda: encode(Image.fromarray(GREY), "GIF"),
}


@pytest.mark.parametrize("case", sorted(LOSSLESS_CASES))
def test_decode_lossless_formats(case: str) -> None:
    data = LOSSLESS_CASES[case]()
    out = decode_image(data, max_pixels=MAX_PIXELS)
    assert out.shape == (24, 32, 3)
    assert out.dtype == np.uint8
    if case == "png-palette":
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    elif "grey" in case or case == "pgm":
        expected = np.repeat(GREY[:, :, None], 3, axis=2)
    else:
        expected = RGB
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("fmt", "mode"), [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("WEBP", "RGB"), ("GIF", "RGB")]
)
def test_decode_lossy_formats(fmt: str, mode: str) -> None:
    img = Image.fromarray(RGB).convert(mode)
    out = decode_image(encode(img, fmt), max_pixels=MAX_PIXELS)
    assert out.shape == (24, 32, 3)
    assert out.dtype == np.uint8
    reference = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert np.abs(out.astype(np.float64) - reference).mean() < 20
    if mode == "L":
        assert (out[:, :, 0] == out[:, :, 1]).all()
        assert (out[:, :, 1] == out[:, :, 2]).all()


def test_decode_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[:, :3] = (255, 0, 0, 255)  # opaque red left half, transparent right half
    for fmt in ("PNG", "WEBP"):
        out = decode_image(
            encode(Image.fromarray(rgba), fmt, **({"lossless": True} if fmt == "WEBP" else {})), max_pixels=100
        )
        assert out.shape == (4, 6, 3)
        assert (out[:, :3] == (255, 0, 0)).all()
        assert (out[:, 3:] == 255).all()
    grey_alpha = Image.fromarray(np.full((4, 6), 0, dtype=np.uint8)).convert("LA")
    assert decode_image(encode(grey_alpha, "PNG"), max_pixels=100).shape == (4, 6, 3)


def test_decode_sixteen_bit_png_and_pgm_and_bilevel() -> None:
    wide = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(wide), "PNG"), max_pixels=100)
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255])
    pgm16 = b"P5\n3 1\n1023\n" + np.array([0, 511, 1023], dtype=">u2").tobytes()
    out = decode_image(pgm16, max_pixels=100)
    np.testing.assert_array_equal(out[0, :, 0], [0, 127, 255])
    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    out = decode_image(encode(bilevel, "PNG"), max_pixels=100)
    np.testing.assert_array_equal(out[0, :, 0], [0, 255])


def test_decode_gif_takes_first_frame() -> None:
    frames = [Image.new("L", (8, 8), 30), Image.new("L", (8, 8), 220)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    out = decode_image(data, max_pixels=100)
    assert out.shape == (8, 8, 3)
    assert abs(int(out.mean()) - 30) <= 2


def test_decode_applies_exif_orientation() -> None:
    img = Image.fromarray(gradient_rgb(20, 40))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()), max_pixels=10_000)
    assert out.shape == (40, 20, 3)


def test_empty_image() -> None:
    assert decode_or_code(b"") == "empty_image"


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file renamed photo.jpg\n",
        b"\x00" * 64,
        encode(Image.fromarray(RGB), "TIFF"),
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
    ],
    ids=["text", "zeros", "tiff", "pdf"],
)
def test_unsupported_image(data: bytes) -> None:
    assert decode_or_code(data) == "unsupported_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "PPM"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    data = encode(Image.fromarray(gradient_rgb(64, 64)), fmt)
    assert decode_or_code(data[: len(data) // 2]) == "corrupt_image"


def test_png_with_garbage_data_is_corrupt() -> None:
    data = bytearray(encode(Image.fromarray(gradient_rgb(16, 16)), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 40] = bytes(range(40))
    assert decode_or_code(bytes(data)) == "corrupt_image"


def test_too_many_pixels() -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    assert decode_or_code(data, max_pixels=9_999) == "image_too_many_pixels"
    assert decode_or_code(data, max_pixels=10_000) == "ok"


def test_decompression_bomb_checked_by_us() -> None:
    data = encode(Image.new("1", (3000, 3000)), "PNG")  # 27 MB raw from about 1 kB
    assert len(data) * 100 < 3000 * 3000 * 3
    assert decode_or_code(data, max_pixels=1_000_000) == "decompression_bomb"


def test_decompression_bomb_caught_by_pillow_guard() -> None:
    data = png_with_size(30_000, 30_000)  # beyond Pillow's own limit: it raises before we see the size
    assert decode_or_code(data) == "decompression_bomb"
    assert decode_or_code(png_with_size(5000, 5000), max_pixels=1_000_000) == "decompression_bomb"


def test_pillow_bomb_warning_is_mapped() -> None:
    data = png_with_size(10_000, 10_000)  # above Image.MAX_IMAGE_PIXELS: Pillow warns while opening
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert decode_or_code(data, max_pixels=500_000_000) == "decompression_bomb"
    with pytest.warns(Image.DecompressionBombWarning):
        assert decode_or_code(data, max_pixels=MAX_PIXELS) == "decompression_bomb"


def test_global_pillow_limit_is_untouched() -> None:
    before = Image.MAX_IMAGE_PIXELS
    decode_or_code(png_with_size(30_000, 30_000))
    decode_or_code(encode(Image.new("1", (3000, 3000)), "PNG"), max_pixels=1000)
    assert before == Image.MAX_IMAGE_PIXELS


def test_invalid_max_pixels() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(b"x", max_pixels=0)


def test_fuzz_never_raises_anything_but_image_error() -> None:
    rng = np.random.default_rng(1234)
    valid = [encode(Image.fromarray(gradient_rgb(16, 16)), fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "PPM")]
    samples: list[bytes] = [rng.bytes(int(n)) for n in rng.integers(1, 400, size=150)]
    for data in valid:
        samples += [data[:n] for n in range(1, len(data), max(1, len(data) // 25))]  # prefixes
        samples += [data[:n] + rng.bytes(200) for n in (8, 16, 32, 64)]  # valid header + garbage
        for _ in range(15):  # random byte flips
            flipped = bytearray(data)
            for pos in rng.integers(0, len(data), size=4):
                flipped[pos] = int(rng.integers(0, 256))
            samples.append(bytes(flipped))
    codes = {decode_or_code(data, max_pixels=1_000_000) for data in samples}
    assert codes <= IMAGE_ERROR_CODES | {"ok"}
    assert "corrupt_image" in codes
    assert "unsupported_image" in codes


# ------------------------------------------------------------------------------------ preprocessing


def spec(channels: int = 1, resize: str = "center_crop") -> InputSpec:
    return InputSpec.model_validate(
        {"height": 16, "width": 12, "channels": channels, "mean": 0.5, "std": 0.25, "resize": resize}
    )


def test_to_model_input_shape_dtype_and_normalisation() -> None:
    white = np.full((40, 30, 3), 255, dtype=np.uint8)
    black = np.zeros((10, 50, 3), dtype=np.uint8)
    for channels in (1, 3):
        x = to_model_input([white, black], spec(channels))
        assert x.shape == (2, channels, 16, 12)
        assert x.dtype == np.float32
        assert x.flags.c_contiguous
        np.testing.assert_allclose(x[0], (1.0 - 0.5) / 0.25, atol=1e-5)
        np.testing.assert_allclose(x[1], (0.0 - 0.5) / 0.25, atol=1e-5)
    assert to_model_input([], spec()).shape == (0, 1, 16, 12)


def test_to_model_input_grey_is_bt601_luma() -> None:
    colours = {
        (255, 0, 0): 0.299,
        (0, 255, 0): 0.587,
        (0, 0, 255): 0.114,
        (200, 100, 50): (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255,
    }
    for rgb, luma in colours.items():
        image = np.empty((8, 8, 3), dtype=np.uint8)
        image[:] = rgb
        x = to_model_input([image], spec(1))
        np.testing.assert_allclose(x, (luma - 0.5) / 0.25, atol=1e-5)
        x3 = to_model_input([image], spec(3))
        np.testing.assert_allclose(x3[0, :, 0, 0], (np.array(rgb) / 255 - 0.5) / 0.25, atol=1e-5)


def test_center_crop_versus_stretch() -> None:
    # 12 wide x 16 high target; a 16 x 32 image has a 12-pixel-wide centre box: columns 10..21.
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    image[:, 10:22] = 255
    np.testing.assert_allclose(to_model_input([image], spec(1, "center_crop")), 2.0, atol=1e-5)
    stretched = to_model_input([image], spec(1, "stretch"))
    assert stretched.min() < 0 < stretched.max()
    assert center_crop_box(112, 92, 52 / 64) == (0, 0, 112, 91)
    assert center_crop_box(10, 100, 1.0) == (0, 45, 10, 10)
    assert center_crop_box(100, 10, 1.0) == (45, 0, 10, 10)


def test_to_model_input_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_model_input([np.zeros((4, 4, 3), dtype=np.float32)], spec())
    with pytest.raises(ValueError, match="uint8"):
        to_model_input([np.zeros((4, 4), dtype=np.uint8)], spec())
    with pytest.raises(ValueError, match="uint8"):
        to_model_input([np.zeros((0, 4, 3), dtype=np.uint8)], spec())


def test_same_input_path_for_decoded_grey_and_colour() -> None:
    grey = decode_image(encode(Image.fromarray(GREY), "PNG"), max_pixels=MAX_PIXELS)
    x = to_model_input([grey], spec(1))
    expected = to_model_input([np.repeat(GREY[:, :, None], 3, axis=2)], spec(1))
    np.testing.assert_allclose(x, expected, atol=1e-5)


# --------------------------------------------------------------------------------- card and heads


def card_for(model_params: dict[str, object], **overrides: object) -> ModelCard:
    fields: dict[str, object] = {
        "name": "test",
        "version": "",
        "arch": "compact_iresnet",
        "arch_params": model_params,
        "embedding_dim": model_params["embedding_dim"],
        "input": {"height": 16, "width": 12, "channels": 1, "mean": 0.5, "std": 0.5, "resize": "center_crop"},
        "training": {"datasets": []},
        "metrics": {},
        "thresholds": {"1e-2": 0.3, "1e-3": 0.4},
        "default_threshold": 0.4,
        "default_threshold_far": 1e-3,
    }
    fields.update(overrides)
    return ModelCard.model_validate(fields)


TINY = {
    "in_channels": 1,
    "input_height": 16,
    "input_width": 12,
    "widths": [4, 8],
    "blocks": [1],
    "embedding_dim": 8,
    "dropout": 0.0,
}


def test_model_card_validates_default_threshold() -> None:
    card = card_for(TINY)
    assert ModelCard.model_validate_json(card.model_dump_json()) == card
    with pytest.raises(ValueError, match="default_threshold_far"):
        card_for(TINY, default_threshold_far=1e-1)
    with pytest.raises(ValueError, match="differs"):
        card_for(TINY, default_threshold=0.3)


def test_cosface_head_matches_direct_computation() -> None:
    torch.manual_seed(0)
    head = CosFaceHead(8, 5, s=30.0, m=0.35)
    emb = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = head(emb, labels)
    expected = torch.empty(6, 5)
    for i in range(6):
        for k in range(5):
            e, w = emb[i], head.weight[k]
            cos = torch.dot(e, w) / (e.norm() * w.norm())
            expected[i, k] = 30.0 * (cos - (0.35 if k == labels[i] else 0.0))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    assert head.weight.grad is not None


def test_backbone_registry() -> None:
    assert "compact_iresnet" in BACKBONES
    model = build_backbone("compact_iresnet", **TINY).eval()
    with torch.inference_mode():
        assert model(torch.zeros(3, 1, 16, 12)).shape == (3, 8)
    with pytest.raises(KeyError, match="unknown backbone"):
        build_backbone("no_such_net")
    with pytest.raises(ValueError, match="already registered"):
        register("compact_iresnet")(torch.nn.Identity)


def test_evaluation_metrics() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=200)
    same = rng.random(200) < 0.5
    scores[same] += 1.0
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in scores[same] for n in scores[~same]])
    assert roc_auc(scores, same) == pytest.approx(brute)
    assert roc_auc(np.array([1.0, 1.0, 0.0]), np.array([True, False, False])) == pytest.approx(0.75)
    t = best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True]))
    assert 0.2 < t < 0.8
    accs = foldwise_accuracy(scores, same, np.repeat([7, 8, 9], [70, 70, 60]))
    assert len(accs) == 3
    impostors = np.linspace(0.0, 1.0, 1001)
    t = threshold_at_far(impostors, 1e-2)
    assert np.mean(impostors >= t) <= 1e-2
    assert np.mean(impostors >= np.nextafter(impostors[-11], -np.inf)) > 1e-2
    g = np.eye(3, dtype=np.float32)
    assert rank1_accuracy(g, ["a", "b", "c"], g[[2, 1]], ["c", "a"]) == 0.5


# ------------------------------------------------------------------------------ model files, embedder


@pytest.fixture
def tiny_model_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_backbone("compact_iresnet", **TINY)
    with torch.no_grad():  # non-trivial BN statistics so eval mode differs from a fresh model
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                assert module.running_mean is not None
                assert module.running_var is not None
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    model.eval()
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, model=model, card=card_for(TINY))
    return path, model


def test_checkpoint_round_trip(tiny_model_file: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, model = tiny_model_file
    loaded, card = load_checkpoint(path)
    assert not loaded.training
    assert card.version == weights_version("compact_iresnet", model.state_dict())
    assert len(card.version) == 12
    x = torch.randn(4, 1, 16, 12)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    # Same weights -> same version; different weights -> different version.
    again = tmp_path / "again.pt"
    save_checkpoint(again, model=loaded, card=card.model_copy(update={"version": "ignored"}))
    assert load_checkpoint(again)[1].version == card.version
    with torch.no_grad():
        next(iter(loaded.parameters())).add_(1e-3)
    save_checkpoint(again, model=loaded, card=card)
    assert load_checkpoint(again)[1].version != card.version


def test_checkpoint_errors(tiny_model_file: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, _ = tiny_model_file
    data = path.read_bytes()
    bad = tmp_path / "bad.pt"
    cases: dict[str, bytes] = {"truncated": data[: len(data) // 2], "random": os.urandom(2000), "empty": b""}
    for payload in ({"format": "other"}, [1, 2, 3]):
        buf = io.BytesIO()
        torch.save(payload, buf)
        cases[f"foreign-{type(payload).__name__}"] = buf.getvalue()
    blob = torch.load(path, weights_only=True)
    blob["card"]["version"] = "000000000000"
    buf = io.BytesIO()
    torch.save(blob, buf)
    cases["tampered"] = buf.getvalue()
    for name, content in cases.items():
        bad.write_bytes(content)
        with pytest.raises(ModelLoadError):
            load_checkpoint(bad)
        embedder = TorchEmbedder(bad, device="cpu")
        with pytest.raises(ModelLoadError, match=str(bad.name)):
            embedder.load()
        assert name
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.pt")


def test_torch_embedder_contract(tiny_model_file: tuple[Path, torch.nn.Module]) -> None:
    path, _ = tiny_model_file
    embedder = TorchEmbedder(path, device="cpu", batch_size=3)
    assert isinstance(embedder, Embedder)
    threads = [threading.Thread(target=embedder.load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert embedder.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert embedder.card.embedding_dim == 8
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(int(h), int(w), 3), dtype=np.uint8) for h, w in rng.integers(5, 60, (7, 2))]
    out = embedder.embed(images)
    assert out.shape == (7, 8)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([embedder.embed([image]) for image in images])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)
    empty = embedder.embed([])
    assert empty.shape == (0, 8)
    assert empty.dtype == np.float32


def test_embedding_package_has_no_service_dependencies() -> None:
    code = "import sys, embedding; bad = {'fastapi', 'sqlalchemy'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def default_embedder() -> TorchEmbedder:
    path = dlib_resnet_model_path()
    assert path.exists(), f"the shipped default model is missing: {path}"
    embedder = TorchEmbedder(path, device="cpu", batch_size=32)
    embedder.load()
    return embedder


@pytest.fixture(scope="module", params=["default", "compact"])
def shipped_embedder(request: pytest.FixtureRequest) -> TorchEmbedder:
    """Each model shipped in embedding/models/."""
    path = dlib_resnet_model_path() if request.param == "default" else compact_model_path()
    assert path.exists(), f"a shipped model is missing: {path}"
    embedder = TorchEmbedder(path, device="cpu", batch_size=32)
    embedder.load()
    return embedder


def _check_thresholds(embedder: TorchEmbedder) -> None:
    card = embedder.card
    assert {"1e-1", "1e-2", "1e-3"} <= set(card.thresholds)
    ordered = [card.thresholds[k] for k in sorted(card.thresholds, key=float, reverse=True)]
    assert ordered == sorted(ordered)  # stricter FAR, higher threshold
    by_far = {float(label): value for label, value in card.thresholds.items()}
    assert card.default_threshold == by_far[card.default_threshold_far] and card.default_threshold_far == 1e-3


def test_default_model_card(default_embedder: TorchEmbedder) -> None:
    """The default is dlib's ResNet, imported, calibrated and measured beside facedb's own model."""
    card = default_embedder.card
    _check_thresholds(default_embedder)
    assert card.arch == "dlib_resnet29" and card.input.face_template == "dlib_150"
    assert {"verification", "verification_folds_7_9", "calibration", "att_identification"} <= set(card.metrics)
    assert {"celeba_identification", "baseline", "embed_faces_per_s_cpu"} <= set(card.metrics)
    assert card.metrics["verification"]["accuracy_mean"] >= 0.97
    assert card.metrics["celeba_identification"]["rank1"] > card.metrics["baseline"]["celeba_identification"]["rank1"]
    assert card.training["source_sha256"] == hashlib.sha256(dlib_model_path().read_bytes()).hexdigest()
    assert dlib_resnet_model_path().stat().st_size < 20_000_000
    assert len(default_embedder.checksum) == 64
    card_md = dlib_resnet_model_path().with_suffix(".md").read_text()
    assert card.version in card_md and f"{card.default_threshold:.4f}" in card_md


def test_compact_model_card() -> None:
    embedder = TorchEmbedder(compact_model_path(), device="cpu")
    card = embedder.card
    _check_thresholds(embedder)
    assert {"verification", "calibration", "att_identification", "teacher_lfw"} <= set(card.metrics)
    assert card.metrics["verification"]["accuracy_mean"] >= 0.9  # on held-out LFW folds
    assert card.metrics["embed_faces_per_s_cpu"]["batch_32"] >= 100
    assert card.input.face_template == "arcface_112"
    assert compact_model_path().stat().st_size < 20_000_000
    assert card.version in compact_model_path().with_suffix(".md").read_text()


def test_shipped_model_embeddings(shipped_embedder: TorchEmbedder) -> None:
    images = [gradient_rgb(112, 92), gradient_rgb(250, 250), gradient_rgb(30, 80)] * 3
    out = shipped_embedder.embed(images)
    dim = shipped_embedder.card.embedding_dim
    assert out.shape == (9, dim)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(shipped_embedder.embed(images), out, atol=1e-6)
    small_batches = TorchEmbedder(shipped_embedder.path, device="cpu", batch_size=2)
    np.testing.assert_allclose(small_batches.embed(images), out, atol=1e-5)
    np.testing.assert_allclose(out[0], out[3], atol=1e-5)
    assert shipped_embedder.embed([]).shape == (0, dim)


def test_shipped_model_separates_att_people(shipped_embedder: TorchEmbedder) -> None:
    att = DATA_ROOT / "att_faces"
    if not att.exists():
        pytest.skip(f"face data not found at {att} (set FACEDB_DATA_ROOT or put ../shared/data beside the repo)")
    paths = [att / f"s{subject}" / f"{image}.pgm" for subject in range(1, 41) for image in range(1, 4)]
    labels = [subject for subject in range(1, 41) for _ in range(1, 4)]
    emb = shipped_embedder.embed(load_rgb_images(paths, "detect", spec=shipped_embedder.card.input))
    sims = emb @ emb.T
    same = np.equal.outer(labels, labels)
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    genuine, impostor = sims[same & off_diagonal], sims[~same]
    threshold = shipped_embedder.card.default_threshold
    # At the card's threshold (FAR 1e-3 on LFW) AT&T strangers are rejected and most genuine pairs accepted.
    assert float(np.mean(impostor >= threshold)) < 0.01
    assert float(np.mean(genuine >= threshold)) > 0.5
    assert (
        roc_auc(np.concatenate([genuine, impostor]), np.r_[np.ones(genuine.size, bool), np.zeros(impostor.size, bool)])
        > 0.9
    )
