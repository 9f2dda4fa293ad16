"""Face embedding: image decoding, preprocessing, model files and embedders.

Inference-side package used by the service; it imports neither fastapi nor sqlalchemy.
"""

from embedding.card import InputSpec, ModelCard
from embedding.checkpoint import load_checkpoint, save_checkpoint
from embedding.embedder import Embedder, TorchEmbedder, default_model_path
from embedding.errors import ImageError, ModelLoadError
from embedding.image import decode_image
from embedding.preprocess import to_model_input

__all__ = [
    "Embedder",
    "ImageError",
    "InputSpec",
    "ModelCard",
    "ModelLoadError",
    "TorchEmbedder",
    "decode_image",
    "default_model_path",
    "load_checkpoint",
    "save_checkpoint",
    "to_model_input",
]
