"""Export of facedb `.pt` model files to ONNX (needs torch); the card travels in the ONNX metadata."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedding.card import ModelCard
from embedding.checkpoint import load_checkpoint
from embedding.errors import ModelLoadError
from embedding.onnx_embedder import write_onnx_card


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's registration warnings (missing torchvision ops) for the duration."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model_path: Path, out: Path, *, check_batch: int = 4, min_cosine: float = 0.999) -> ModelCard:
    """Export a facedb `.pt` model file to a self-contained ONNX file with its card in the metadata.

    The graph has a dynamic batch dimension, input `input` float32 (N, C, H, W) and output `embedding`
    float32 (N, D) (not normalised, like the backbone). The export is checked with onnxruntime on
    `check_batch` random inputs: every row must have cosine >= `min_cosine` with PyTorch's.

    Returns the card written (the `.pt` card, same version). Raises `ModelLoadError` on failure.
    """
    import onnxruntime as ort  # noqa: PLC0415

    model, card = load_checkpoint(model_path)
    spec = card.input
    example = torch.randn(
        max(2, check_batch), spec.channels, spec.height, spec.width, generator=torch.Generator().manual_seed(0)
    )
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                input_names=["input"],
                output_names=["embedding"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types
        raise ModelLoadError(f"{model_path}: ONNX export failed: {type(exc).__name__}: {exc}") from exc
    if program is None:
        raise ModelLoadError(f"{model_path}: ONNX export returned nothing")
    proto = program.model_proto
    proto.producer_name = "facedb"
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = F.normalize(model(example), dim=1).numpy()
    got = np.asarray(session.run(None, {"input": example.numpy()})[0], dtype=np.float32)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    cosine = float((expected * got).sum(axis=1).min())
    if cosine < min_cosine:
        raise ModelLoadError(f"{model_path}: ONNX output disagrees with PyTorch (min cosine {cosine:.6f})")
    write_onnx_card(proto, card, Path(out))
    return card
