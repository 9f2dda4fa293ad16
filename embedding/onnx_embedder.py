"""ONNX models: the facedb card inside an ONNX file, and an onnxruntime `Embedder` (no torch needed).

Our card travels inside the ONNX file as `metadata_props`:

- `facedb.card`: the `ModelCard` JSON;
- `facedb.graph_sha256`: sha256 of the serialised graph (weights included, metadata excluded). On
  load it must match the graph, so a card can never describe other weights than the ones it sits on.

Versions: a model exported from a facedb `.pt` keeps the card version of that file (same weights, same
embeddings to float precision). A foreign ONNX model (no card) gets version = the first 12 hex digits of
its graph hash; `facedb calibrate` only writes metadata, so calibrating never changes a version.

Foreign models (e.g. InsightFace's) are read with the InsightFace convention: RGB, 112x112 unless the
graph fixes another size, (x - 127.5) / 127.5 (= (x / 255 - 0.5) / 0.5), output dimension from the
graph. **Thresholds are not guessed**: a cosine threshold is a property of one model's embedding
space, and a wrong default silently accepts impostors (too low) or rejects everyone (too high). A model
without calibrated thresholds (empty `card.thresholds`, which every foreign model starts with) is
refused by `OnnxEmbedder.load` and by `load_embedder` with a `ModelLoadError` saying how to calibrate;
evaluation and calibration open it with `allow_uncalibrated=True`. The uncalibrated card carries
`default_threshold = 1.0` (nothing but identical embeddings would match) only to fill the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from embedding.card import InputSpec, ModelCard
from embedding.embedder import LazyEmbedder, uncalibrated_message
from embedding.errors import ModelLoadError
from embedding.preprocess import embed_faces

CARD_KEY: Final = "facedb.card"
GRAPH_HASH_KEY: Final = "facedb.graph_sha256"
_INSIGHTFACE: dict[str, object] = {"height": 112, "width": 112, "channels": 3, "mean": 0.5, "std": 0.5}
if "face_template" in InputSpec.model_fields:  # ArcFace 5-point alignment, where the card supports templates
    _INSIGHTFACE["face_template"] = "arcface_112"
INSIGHTFACE_INPUT: Final = InputSpec.model_validate(_INSIGHTFACE)
"""Input convention assumed for ONNX models without a facedb card (InsightFace recognition models):
112x112 RGB, (x - 127.5) / 127.5, ArcFace-aligned crops."""
UNCALIBRATED_THRESHOLD: Final = 1.0


def graph_sha256(model: Any) -> str:
    """sha256 hex digest of an `onnx.ModelProto`'s graph (weights included, metadata_props excluded)."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def _metadata(model: Any) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def _set_metadata(model: Any, values: dict[str, str]) -> None:
    """Replace/add `metadata_props` entries of an `onnx.ModelProto`."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*keep, *values.items()]:
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = value


def _static_dims(value_info: Any) -> list[int | None]:
    """Dimensions of a graph input/output: int when fixed, None when symbolic or unknown."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def read_onnx_card(model: Any, source: str) -> ModelCard | None:
    """The facedb card stored in an `onnx.ModelProto`, verified against its graph; None if it has none.

    Raises `ModelLoadError` if the card is invalid or the graph changed since the card was written.
    """
    meta = _metadata(model)
    if CARD_KEY not in meta:
        return None
    try:
        card = ModelCard.model_validate_json(meta[CARD_KEY])
    except ValueError as exc:
        raise ModelLoadError(f"{source}: invalid facedb card in the ONNX metadata: {exc}") from exc
    recorded = meta.get(GRAPH_HASH_KEY)
    if recorded != graph_sha256(model):
        raise ModelLoadError(f"{source}: the ONNX graph does not match its facedb card (weights changed?)")
    return card


def foreign_card(model: Any, source: str) -> ModelCard:
    """An uncalibrated card for an ONNX model without one (InsightFace convention, see module doc)."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise ModelLoadError(f"{source}: expected one image input and an embedding output, found {len(inputs)} inputs")
    dims = _static_dims(inputs[0])
    if len(dims) != 4 or dims[1] not in (None, 3):
        raise ModelLoadError(f"{source}: expected an (N, 3, H, W) input, found {dims}")
    height = dims[2] or INSIGHTFACE_INPUT.height
    width = dims[3] or INSIGHTFACE_INPUT.width
    out_dims = _static_dims(graph.output[0])
    dim = out_dims[-1] if len(out_dims) == 2 and out_dims[-1] else 0
    return ModelCard(
        name=Path(source).stem,
        version=graph_sha256(model)[:12],
        arch="onnx",
        arch_params={"input": inputs[0].name, "output": graph.output[0].name, "source": Path(source).name},
        embedding_dim=dim or 1,  # corrected from a probe run when the graph leaves it symbolic
        input=INSIGHTFACE_INPUT.model_copy(update={"height": height, "width": width}),
        training={"note": "foreign ONNX model; training data unknown"},
        metrics={},
        thresholds={},
        default_threshold=UNCALIBRATED_THRESHOLD,
        default_threshold_far=0.0,
        notes="UNCALIBRATED foreign ONNX model (InsightFace input convention assumed); run `facedb calibrate`.",
    )


def write_onnx_card(model: Any, card: ModelCard, path: Path) -> None:
    """Store `card` (and the graph hash) in an `onnx.ModelProto`'s metadata and save it to `path` atomically."""
    import onnx  # noqa: PLC0415 - heavy; only needed when writing

    _set_metadata(model, {CARD_KEY: card.model_dump_json(), GRAPH_HASH_KEY: graph_sha256(model)})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    tmp.replace(path)


def load_onnx_model(path: Path) -> Any:
    """Read an ONNX file (external data next to it included) as `onnx.ModelProto`; `ModelLoadError` if unreadable."""
    import onnx  # noqa: PLC0415

    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError ...
        raise ModelLoadError(f"{path}: cannot read ONNX model: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class _Session:
    session: Any
    card: ModelCard
    checksum: str
    input_name: str


class OnnxEmbedder(LazyEmbedder[_Session]):
    """`Embedder` backed by an ONNX model run by onnxruntime.

    `device`: None picks CUDA when onnxruntime has the CUDA provider, else CPU; "cpu" or "cuda" force
    one. The file is read lazily on first use; `embed` is thread-safe (onnxruntime sessions are).
    Models without calibrated thresholds are refused unless `allow_uncalibrated=True` (see module doc).
    """

    def __init__(
        self,
        path: Path,
        *,
        device: str | None = None,
        batch_size: int = 32,
        allow_uncalibrated: bool = False,
        threads: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device not in (None, "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"device must be None, 'cpu' or 'cuda[:N]', got {device!r}")
        self._path = Path(path)
        self._device = device
        self._batch_size = batch_size
        self._allow_uncalibrated = allow_uncalibrated
        self._threads = threads

    @property
    def path(self) -> Path:
        """The model file."""
        return self._path

    @property
    def batch_size(self) -> int:
        """Images per forward pass."""
        return self._batch_size

    def _providers(self) -> list[Any]:
        import onnxruntime as ort  # noqa: PLC0415

        available = ort.get_available_providers()
        if self._device is None:
            return (
                ["CUDAExecutionProvider", "CPUExecutionProvider"]
                if "CUDAExecutionProvider" in available
                else ["CPUExecutionProvider"]
            )
        if self._device == "cpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in available:
            raise ModelLoadError(
                f"{self._path}: device {self._device!r} requested but onnxruntime has no CUDA provider"
            )
        index = int(self._device.split(":", 1)[1]) if ":" in self._device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]

    def _load(self) -> _Session:
        """Read and verify the model and start an onnxruntime session; the checksum is the ONNX file's."""
        return self._open(file_checksum(self._path))

    def _open(self, checksum: str) -> _Session:
        """Start a session on ``self._path`` for a model named by ``checksum``.

        Raises `ModelLoadError` for a missing/unreadable file, a card that does not match the graph,
        an output that does not match the card, or (unless allowed) a model without thresholds.
        """
        import onnxruntime as ort  # noqa: PLC0415

        source = str(self._path)
        proto = load_onnx_model(self._path)
        card = read_onnx_card(proto, source) or foreign_card(proto, source)
        if not card.thresholds and not self._allow_uncalibrated:
            raise ModelLoadError(uncalibrated_message(source))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(self._path), sess_options=options, providers=self._providers())
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{source}: onnxruntime cannot load the model: {exc}") from exc
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{source}: expected one input, found {[i.name for i in inputs]}")
        probe = np.zeros((1, card.input.channels, card.input.height, card.input.width), dtype=np.float32)
        try:
            out = np.asarray(session.run(None, {inputs[0].name: probe})[0])
        except Exception as exc:  # onnxruntime's own types
            raise ModelLoadError(f"{source}: the model does not accept the card's input spec: {exc}") from exc
        if out.ndim != 2 or out.shape[0] != 1:
            raise ModelLoadError(f"{source}: expected an (N, D) output, got shape {out.shape}")
        if card.arch == "onnx" and card.embedding_dim != out.shape[1] and not card.thresholds:
            card = card.model_copy(update={"embedding_dim": int(out.shape[1])})
        if out.shape[1] != card.embedding_dim:
            raise ModelLoadError(
                f"{source}: the model outputs {out.shape[1]}-d embeddings, card says {card.embedding_dim}"
            )
        return _Session(session=session, card=card, checksum=checksum, input_name=inputs[0].name)

    @property
    def providers(self) -> list[str]:
        """onnxruntime execution providers in use (loads the model)."""
        return list(self._state().session.get_providers())

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) RGB images of any sizes -> float32 (N, D) unit rows; (0, D) if N = 0.

        Raises ValueError if an image is not a non-empty uint8 (H, W, 3) array.
        """
        loaded = self._state()
        if not images:
            return np.zeros((0, loaded.card.embedding_dim), dtype=np.float32)

        def forward(x: np.ndarray) -> np.ndarray:
            return np.asarray(loaded.session.run(None, {loaded.input_name: x})[0])

        return embed_faces(forward, images, loaded.card.input, batch_size=self._batch_size)


def file_checksum(path: Path) -> str:
    """sha256 hex digest of a model file; `ModelLoadError` when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read model file: {exc}") from exc


class ExportedOnnxEmbedder(OnnxEmbedder):
    """A facedb ``.pt`` model served by onnxruntime through its ONNX export.

    The export is made once (the only time PyTorch is imported) into ``cache_dir`` as ``<sha256 of the .pt>.onnx``,
    checked against PyTorch (cosine >= 0.999 per row) and written atomically; later loads only read it. The card,
    version and checksum are the ``.pt`` file's, so the model is the same one to the registry and the user.
    """

    def __init__(self, pt_path: Path, *, cache_dir: Path | None, **kwargs: Any) -> None:
        self._pt_path = Path(pt_path)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "facedb-onnx"
        super().__init__(self._pt_path, **kwargs)

    @property
    def source(self) -> Path:
        """The ``.pt`` file the user configured."""
        return self._pt_path

    def _load(self) -> _Session:
        digest = file_checksum(self._pt_path)  # names the export and the model: read once
        target = self._cache_dir / f"{digest}.onnx"
        if not target.exists():
            self._export(target)
        self._path = target
        return self._open(digest)

    def _export(self, target: Path) -> None:
        from embedding.onnx_export import export_onnx  # noqa: PLC0415 - torch only for a missing export

        try:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._cache_dir, suffix=".onnx.tmp")
        except OSError as exc:
            raise ModelLoadError(
                f"cannot write the ONNX export of {self._pt_path} into {self._cache_dir} ({exc}); set "
                "FACEDB_ONNX_CACHE_DIR to a writable folder, or FACEDB_RUNTIME=torch"
            ) from exc
        os.close(fd)
        try:
            export_onnx(self._pt_path, Path(tmp))
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)


def card_json(card: ModelCard) -> str:
    """Pretty JSON of a card (for the CLI)."""
    return json.dumps(card.model_dump(mode="json"), indent=2)
