"""Face embedding: image decoding, preprocessing, model files and embedders.

Inference-side package used by the service; it imports neither fastapi nor sqlalchemy.
"""

from embedding.backbones import BACKBONES, build_backbone
from embedding.card import InputSpec, ModelCard
from embedding.checkpoint import load_checkpoint, save_checkpoint
from embedding.embedder import Embedder, TorchEmbedder, compact_model_path, default_model_path
from embedding.errors import ImageError, ModelLoadError
from embedding.heads import HEADS, build_head
from embedding.image import decode_image
from embedding.onnx_embedder import OnnxEmbedder, export_onnx, load_embedder
from embedding.preprocess import to_model_input

__all__ = [
    "BACKBONES",
    "HEADS",
    "Embedder",
    "ImageError",
    "InputSpec",
    "ModelCard",
    "ModelLoadError",
    "OnnxEmbedder",
    "TorchEmbedder",
    "build_backbone",
    "build_head",
    "compact_model_path",
    "decode_image",
    "default_model_path",
    "export_onnx",
    "load_checkpoint",
    "load_embedder",
    "save_checkpoint",
    "to_model_input",
]

# Face detection, alignment and quality gates (issue #4); dlib models load lazily, not on import.
from embedding.align import ARCFACE_112, TEMPLATES, FaceTemplate, HEAD_92x112, align_face, template_for_spec
from embedding.detect import LANDMARK_NAMES, DetectedFace, Detector, DlibDetector
from embedding.quality import QUALITY_CODES, Failure, QualityReport, QualitySettings, assess, assess_image

__all__ += [
    "ARCFACE_112",
    "LANDMARK_NAMES",
    "QUALITY_CODES",
    "TEMPLATES",
    "DetectedFace",
    "Detector",
    "DlibDetector",
    "FaceTemplate",
    "Failure",
    "HEAD_92x112",
    "QualityReport",
    "QualitySettings",
    "align_face",
    "assess",
    "assess_image",
    "template_for_spec",
]
