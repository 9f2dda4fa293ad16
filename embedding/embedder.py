"""Face embedders: decoded RGB images in, L2-normalised float32 embeddings out.

This module imports neither torch nor onnxruntime: `load_embedder` picks the runtime and imports only it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from embedding.card import ModelCard
from embedding.errors import ModelLoadError
from embedding.lazy import LazyModel


def uncalibrated_message(source: str) -> str:
    """Why a model without thresholds is refused for serving, and the command that fixes it."""
    return (
        f"{source}: the model has no calibrated thresholds; run `facedb calibrate {source} --pairs PAIRS.txt "
        "--far 1e-3 --out CALIBRATED` and serve the calibrated file"
    )


def default_model_path() -> Path:
    """The default model shipped with the package: the fusion of dlib's ResNet and SFace, `fusion_model_path`."""
    return fusion_model_path()


def sface_model_path() -> Path:
    """SFace (`embedding.sface`), 128-d (the default before the fusion)."""
    return Path(__file__).resolve().parent / "models" / "sface.onnx"


def fusion_model_path() -> Path:
    """`embedding/models/dlib_sface.onnx`: dlib's ResNet and SFace fused into one 256-d model (`embedding.fusion`),
    the default: lower FNIR at FPIR 1% than either alone (README, "The default model")."""
    return Path(__file__).resolve().parent / "models" / "dlib_sface.onnx"


def dlib_resnet_model_path() -> Path:
    """dlib's ResNet read into PyTorch, `embedding/models/dlib_resnet.pt` (the default before SFace and the fusion)."""
    return Path(__file__).resolve().parent / "models" / "dlib_resnet.pt"


def compact_model_path() -> Path:
    """facedb's own trained model shipped beside the default, `embedding/models/compact.pt` (faster, less accurate)."""
    return Path(__file__).resolve().parent / "models" / "compact.pt"


@runtime_checkable
class Embedder(Protocol):
    """What the service needs from an embedding model."""

    @property
    def card(self) -> ModelCard:
        """The model card (may load the model file)."""
        ...

    @property
    def checksum(self) -> str:
        """sha256 hex digest of the model file bytes (may load the model file)."""
        ...

    def load(self) -> None:
        """Load the model if not loaded yet; idempotent and thread-safe."""
        ...

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) RGB images of any sizes -> float32 (N, D), rows L2-normalised; (0, D) if N = 0."""
        ...


class LoadedModel(Protocol):
    """What an embedder's ``_load()`` returns, at least."""

    @property
    def card(self) -> ModelCard: ...

    @property
    def checksum(self) -> str: ...


Loaded = TypeVar("Loaded", bound=LoadedModel)


class LazyEmbedder(LazyModel[Loaded]):
    """The `Embedder` properties every runtime shares: card and checksum, from the loaded state."""

    @property
    def card(self) -> ModelCard:
        """The model card (loads the model file on first access)."""
        return self._state().card

    @property
    def checksum(self) -> str:
        """sha256 hex digest of the model file bytes (loads the model file on first access)."""
        return self._state().checksum


TORCH_SUFFIXES: Final = frozenset({".pt", ".pth"})
ONNX_SUFFIXES: Final = frozenset({".onnx"})

Runtime = Literal["auto", "torch", "onnx"]
"""How a facedb ``.pt`` model is run: "torch", "onnx" (its ONNX export on onnxruntime), or "auto" (onnxruntime
on CPU, where it is 2-4x faster; PyTorch where CUDA is present)."""


def cuda_present() -> bool:
    """Whether an NVIDIA driver is loaded (checked without importing torch)."""
    return Path("/proc/driver/nvidia/version").exists()


def load_embedder(
    path: Path,
    *,
    device: str | None = None,
    batch_size: int = 32,
    allow_uncalibrated: bool = False,
    runtime: Runtime = "torch",
    onnx_cache: Path | None = None,
    threads: int = 0,
) -> Embedder:
    """The `Embedder` for a model file, by file type and runtime; nothing is read until `load()`.

    ``.onnx`` -> `OnnxEmbedder`. ``.pt``/``.pth`` -> `TorchEmbedder`, or under ``runtime`` "onnx" (or "auto" on a
    CPU) an `ExportedOnnxEmbedder` that serves the same model, card, version and checksum through its ONNX export,
    made once into ``onnx_cache`` (without a cache directory "auto" stays on PyTorch). Unless
    `allow_uncalibrated`, loading a model without thresholds raises `ModelLoadError`; so does any other suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from embedding.onnx_embedder import OnnxEmbedder  # noqa: PLC0415 - imports only the runtime in use

        return OnnxEmbedder(
            path, device=device, batch_size=batch_size, allow_uncalibrated=allow_uncalibrated, threads=threads
        )
    if suffix not in TORCH_SUFFIXES:
        raise ModelLoadError(
            f"{path}: unknown model file type {suffix or '(no suffix)'!r}; expected .pt/.pth (facedb) or .onnx"
        )
    on_cpu = device == "cpu" or (device is None and not cuda_present())
    if runtime == "onnx" or (runtime == "auto" and on_cpu and onnx_cache is not None):
        from embedding.onnx_embedder import ExportedOnnxEmbedder  # noqa: PLC0415

        return ExportedOnnxEmbedder(
            path,
            cache_dir=onnx_cache,
            device=device,
            batch_size=batch_size,
            allow_uncalibrated=allow_uncalibrated,
            threads=threads,
        )
    from embedding.torch_embedder import TorchEmbedder  # noqa: PLC0415

    return TorchEmbedder(
        path, device=device, batch_size=batch_size, require_thresholds=not allow_uncalibrated, threads=threads
    )


def read_card(path: Path) -> ModelCard:
    """A model file's card without starting a runtime (a ``.pt`` is read with PyTorch, an ``.onnx`` with onnx)."""
    path = Path(path)
    if path.suffix.lower() in ONNX_SUFFIXES:
        from embedding.onnx_embedder import foreign_card, load_onnx_model, read_onnx_card  # noqa: PLC0415

        proto = load_onnx_model(path)
        return read_onnx_card(proto, str(path)) or foreign_card(proto, str(path))
    from embedding.checkpoint import load_checkpoint  # noqa: PLC0415

    return load_checkpoint(path)[1]
