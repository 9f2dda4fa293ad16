"""Model versions: register a model file in the database, and load any registered version in any process."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from embedding.embedder import Embedder, load_embedder
from service.db import crud
from service.db.models import ModelStatus, ModelVersion
from service.errors import FacedbError
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know of a registered model version."""

    id: int
    name: str
    version: str
    checksum: str
    dim: int
    default_threshold: float

    @property
    def label(self) -> str:
        """``name@version``, as API answers report it."""
        return f"{self.name}@{self.version}"

    @classmethod
    def of(cls, mv: ModelVersion) -> ModelInfo:
        return cls(mv.id, mv.name, mv.version, mv.checksum, mv.embedding_dim, mv.default_threshold)


def open_embedder(path: Path, settings: Settings) -> Embedder:
    """An embedder for a model file (our .pt checkpoints or .onnx models; not loaded yet).

    Loading refuses a model without calibrated thresholds: run `facedb calibrate` on it first.
    """
    return load_embedder(
        path,
        device=settings.device,
        batch_size=settings.embed_batch_size,
        runtime=settings.runtime,
        onnx_cache=settings.resolved_onnx_cache_dir,
        threads=settings.torch_threads or 0,
    )


def register(session: Session, *, embedder: Embedder, path: Path, status: ModelStatus) -> ModelVersion:
    """Register a loaded model file (idempotent by checksum); a new version gets ``status``."""
    mv = crud.get_model_version(session, checksum=embedder.checksum)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != embedder.checksum:
        raise FacedbError(409, "model_changed", f"{path} changed while it was being registered")
    if mv is not None:
        crud.store_model_file(session, model_version_id=mv.id, data=data)
        return mv
    card = embedder.card
    return crud.create_model_version(
        session,
        name=card.name,
        version=card.version,
        checksum=embedder.checksum,
        embedding_dim=card.embedding_dim,
        input_spec=card.input.model_dump(mode="json"),
        thresholds=dict(card.thresholds),
        default_threshold=card.default_threshold,
        status=status,
        filename=path.name,
        data=data,
    )


def load_version(session: Session, *, mv: ModelVersion, settings: Settings) -> Embedder:
    """Load a registered version from the bytes stored in the database (cached under the data directory)."""
    cache = settings.data_dir / "models" / f"{mv.checksum}{Path(mv.filename).suffix or '.pt'}"
    if not cache.exists() or hashlib.sha256(cache.read_bytes()).hexdigest() != mv.checksum:
        data = crud.model_file(session, model_version_id=mv.id)
        if data is None:
            raise FacedbError(409, "model_file_missing", f"model version {mv.version} has no stored file")
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, cache)
    embedder = open_embedder(cache, settings)
    embedder.load()
    if embedder.checksum != mv.checksum:
        raise FacedbError(409, "model_changed", f"the stored file of model version {mv.version} is corrupt")
    return embedder
