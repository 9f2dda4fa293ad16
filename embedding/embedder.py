"""Face embedders: decoded RGB images in, L2-normalised float32 embeddings out."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedding.card import ModelCard
from embedding.checkpoint import load_checkpoint_bytes
from embedding.errors import ModelLoadError
from embedding.preprocess import to_model_input


def uncalibrated_message(source: str) -> str:
    """Why a model without thresholds is refused for serving, and the command that fixes it."""
    return (
        f"{source}: the model has no calibrated thresholds; run `facedb calibrate {source} --pairs PAIRS.txt "
        "--far 1e-3 --out CALIBRATED` and serve the calibrated file"
    )


def default_model_path() -> Path:
    """The default model shipped with the package, `embedding/models/default.pt` (dlib's ResNet, imported)."""
    return Path(__file__).resolve().parent / "models" / "default.pt"


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


class TorchEmbedder:
    """`Embedder` backed by a facedb model file (see `embedding.checkpoint`).

    The file is read lazily on first use. `embed` runs in eval mode under `torch.inference_mode()`
    in batches of `batch_size`, and is safe to call from several threads.
    """

    def __init__(
        self, path: Path, *, device: str | None = None, batch_size: int = 32, require_thresholds: bool = False
    ) -> None:
        """``require_thresholds``: refuse (ModelLoadError) a model whose card has no calibrated thresholds,
        as a served model must have them."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._path = Path(path)
        self._device = torch.device(device if device is not None else self._default_device())
        self._batch_size = batch_size
        self._require_thresholds = require_thresholds
        self._lock = threading.Lock()
        self._model: nn.Module | None = None
        self._card: ModelCard | None = None
        self._checksum: str | None = None

    @staticmethod
    def _default_device() -> str:
        """ "cuda" when a CUDA device is available, else "cpu"."""
        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def path(self) -> Path:
        """The model file."""
        return self._path

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._device

    @property
    def batch_size(self) -> int:
        """Images per forward pass."""
        return self._batch_size

    def load(self) -> None:
        """Read, verify and move the model to the device once; later calls return immediately.

        Raises `ModelLoadError` if the file is missing, corrupt or inconsistent.
        """
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            try:
                data = self._path.read_bytes()
            except OSError as exc:
                raise ModelLoadError(f"{self._path}: cannot read model file: {exc}") from exc
            model, card = load_checkpoint_bytes(data, source=str(self._path))
            if self._require_thresholds and not card.thresholds:
                raise ModelLoadError(uncalibrated_message(str(self._path)))
            model = model.to(self._device).eval()
            self._checksum = hashlib.sha256(data).hexdigest()
            self._card = card
            self._model = model  # published last: other threads test it without the lock

    def _loaded(self) -> tuple[nn.Module, ModelCard, str]:
        """Load if needed and return (model, card, checksum)."""
        self.load()
        if self._model is None or self._card is None or self._checksum is None:
            raise ModelLoadError(f"{self._path}: model is not loaded")
        return self._model, self._card, self._checksum

    @property
    def card(self) -> ModelCard:
        """The model card (loads the model file on first access)."""
        return self._loaded()[1]

    @property
    def checksum(self) -> str:
        """sha256 hex digest of the model file bytes (loads the model file on first access)."""
        return self._loaded()[2]

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed faces.

        Args:
            images: uint8 RGB arrays of shape (H, W, 3), any sizes; each whole image is the face.

        Returns:
            float32 array (N, card.embedding_dim), each row with unit L2 norm; (0, D) for N = 0.

        Raises:
            ValueError: if an image is not a non-empty uint8 (H, W, 3) array.
        """
        model, card, _ = self._loaded()
        out = np.empty((len(images), card.embedding_dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), self._batch_size):
                batch = to_model_input(images[start : start + self._batch_size], card.input)
                x = torch.from_numpy(batch).to(self._device)
                emb = F.normalize(model(x).float(), dim=1)
                out[start : start + len(batch)] = emb.cpu().numpy()
        return out
