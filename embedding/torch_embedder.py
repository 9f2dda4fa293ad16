"""`TorchEmbedder`: facedb model files (``.pt``) run by PyTorch, on CUDA when present."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embedding.card import ModelCard
from embedding.checkpoint import load_checkpoint_bytes
from embedding.embedder import LazyEmbedder, uncalibrated_message
from embedding.errors import ModelLoadError
from embedding.preprocess import embed_faces


@dataclass(frozen=True)
class _Loaded:
    model: nn.Module
    card: ModelCard
    checksum: str


class TorchEmbedder(LazyEmbedder[_Loaded]):
    """`Embedder` backed by a facedb model file (see `embedding.checkpoint`).

    The file is read lazily on first use. `embed` runs in eval mode under `torch.inference_mode()`
    in batches of `batch_size`, and is safe to call from several threads.
    """

    def __init__(
        self,
        path: Path,
        *,
        device: str | None = None,
        batch_size: int = 32,
        require_thresholds: bool = False,
        threads: int = 0,
    ) -> None:
        """``require_thresholds``: refuse (ModelLoadError) a model whose card has no calibrated thresholds,
        as a served model must have them. ``threads`` > 0 sets PyTorch's (process-wide) intra-op threads."""
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._path = Path(path)
        self._device = torch.device(device if device is not None else self._default_device())
        self._batch_size = batch_size
        self._require_thresholds = require_thresholds
        self._threads = threads

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

    def _load(self) -> _Loaded:
        """Read, verify and move the model to the device. Raises `ModelLoadError` if the file is missing,
        corrupt or inconsistent."""
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{self._path}: cannot read model file: {exc}") from exc
        model, card = load_checkpoint_bytes(data, source=str(self._path))
        if self._require_thresholds and not card.thresholds:
            raise ModelLoadError(uncalibrated_message(str(self._path)))
        model = model.to(self._device).eval()
        if self._threads:
            torch.set_num_threads(self._threads)
        return _Loaded(model=model, card=card, checksum=hashlib.sha256(data).hexdigest())

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed faces.

        Args:
            images: uint8 RGB arrays of shape (H, W, 3), any sizes; each whole image is the face.

        Returns:
            float32 array (N, card.embedding_dim), each row with unit L2 norm; (0, D) for N = 0.

        Raises:
            ValueError: if an image is not a non-empty uint8 (H, W, 3) array.
        """
        loaded = self._state()
        if not images:
            return np.zeros((0, loaded.card.embedding_dim), dtype=np.float32)

        def forward(x: np.ndarray) -> np.ndarray:
            return np.asarray(loaded.model(torch.from_numpy(x).to(self._device)).float().cpu().numpy())

        with torch.inference_mode():
            return embed_faces(forward, images, loaded.card.input, batch_size=self._batch_size)
