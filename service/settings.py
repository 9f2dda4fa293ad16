"""Service configuration: one settings class, read from ``FACEDB_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from embedding.quality import QualitySettings

if TYPE_CHECKING:
    from embedding.card import InputSpec
    from embedding.facepath import LandmarkSource


class Settings(BaseSettings):
    """Every tunable of the service; override any field with ``FACEDB_<FIELD>`` (e.g. ``FACEDB_DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="FACEDB_", env_file=".env", extra="ignore", env_nested_delimiter="__")

    data_dir: Path = Field(default=Path("facedb_data"), description="Where the SQLite file and index live.")
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means a SQLite file `facedb.sqlite3` in data_dir.",
    )
    model_path: Path | None = Field(default=None, description="Embedder checkpoint; empty = shipped default.")
    index_dir: Path | None = Field(default=None, description="Index snapshots; empty = data_dir/index.")
    models_dir: Path | None = Field(
        default=None,
        description="The only folder POST /v1/admin/reindex reads model files from (its model_path names a file "
        "in it); empty = the shipped models, embedding/models.",
    )
    max_model_bytes: int = Field(default=1024**3, gt=0, description="Largest model file the API will read.")
    index_backend: Literal["faiss", "numpy", "milvus"] = Field(
        default="faiss",
        description="Where galleries are searched: FAISS in this process (snapshots in index_dir), numpy (exact, "
        "for tests), or Milvus (milvus_uri), which several service processes and machines can share.",
    )
    index_kind: Literal["auto", "flat", "fp16", "sq8", "hnsw", "pq", "ivfpq", "gpu_flat", "gpu_ivf"] = Field(
        default="auto",
        description="FAISS index kind of every gallery; auto = chosen per gallery from its size and the hardware "
        "(README: Search at scale). Changing it converts galleries in the background.",
    )
    hnsw_ef_search: int = Field(default=256, ge=16, le=4096, description="HNSW kind: candidates kept per search.")
    ivf_nprobe: int = Field(
        default=0,
        ge=0,
        le=65536,
        description="IVF kinds: lists scanned per search, of ~4 sqrt(n) for n faces (0: 32% of them, at least 1280).",
    )
    ivf_rerank: int = Field(
        default=700,
        ge=10,
        le=100_000,
        description="pq and ivfpq kinds: candidates re-ranked exactly from float32 per search (pq: per 128"
        " dimensions of the model's vectors, so twice as many for a 256-d fusion).",
    )
    milvus_uri: str = Field(
        default="",
        description="Milvus address (http://host:19530) or a milvus-lite file (*.db); empty = data_dir/milvus.db.",
    )
    milvus_token: SecretStr | None = Field(
        default=None, description="Milvus credentials (user:password or an API key)."
    )
    identity_score: Literal["best", "mean"] = Field(
        default="mean",
        description="How an identity with several faces scores in identify: the normalised mean of its faces, or its "
        "best face (benchmarks/open_set.py: FNIR at FPIR 1% 0.062 against 0.077 with three photos per person).",
    )
    index_sync_interval_s: float = Field(
        default=1.0, gt=0, description="How often the index catches up with writes made by other processes."
    )
    snapshot_interval_s: float = Field(default=60.0, gt=0, description="How often index snapshots are saved.")
    device: str | None = Field(default=None, description="Embedder device (cpu, cuda, cuda:N); empty = auto.")
    runtime: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="How a .pt model runs: auto = onnxruntime on CPU (its ONNX export, made once into "
        "onnx_cache_dir; same version, scores within cosine 0.999), PyTorch where CUDA is present.",
    )
    onnx_cache_dir: Path | None = Field(
        default=None,
        description="Where ONNX exports of .pt models are kept, named by the .pt file's SHA-256; "
        "empty = $XDG_CACHE_HOME/facedb/onnx (~/.cache/facedb/onnx).",
    )

    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="One fixed threshold for identify and verify alike; empty = calibrated ones: verify at the "
        "model card's 1:1 default, identify at target_fpir for the gallery's current size.",
    )
    target_fpir: float = Field(
        default=1e-2,
        gt=0,
        lt=1,
        description="Identify's share of strangers (people not enrolled) allowed a match, whatever the gallery size: "
        "its threshold rises with the number of people (or faces) enrolled (embedding/openset.py).",
    )
    conflict_fpir: float = Field(
        default=1e-3,
        gt=0,
        lt=1,
        description="Enrolment refuses a face as identity_conflict only above the 1:N threshold at this FPIR for the "
        "faces in the gallery (near-certain duplicates of another identity's face; benchmarks/README.md, "
        "open_set.py, shows the trade-off with re-enrolments caught).",
    )
    possible_duplicate_warnings: bool = Field(
        default=True,
        description="Enrolment accepts a face below the identity_conflict bar that identify would still name as "
        "another identity with a possible_duplicate warning naming it (false: no warnings).",
    )
    mismatch_far: float = Field(
        default=1e-2,
        gt=0,
        lt=1,
        description="Enrolment refuses a face that scores below the 1:1 threshold at this FAR against the faces of "
        "the identity it is added to (face_mismatch).",
    )

    detector: Literal["yunet", "hog", "cnn"] = Field(
        default="yunet",
        description="YuNet on onnxruntime (MIT, 5 landmarks, ~3 ms), dlib's HOG (~30 ms) or dlib's CNN (0.3-2 s).",
    )
    detector_landmarks: Literal["auto", "5", "68", "yunet"] = Field(
        default="auto",
        description="Landmarks faces are aligned by: auto = what the model card says it was calibrated with "
        "(else 5); dlib's public-domain 5-point model; the 68-point model (opt-in: trained on iBUG 300-W, whose "
        "terms forbid commercial use); or YuNet's own points.",
    )
    detector_pool_size: int = Field(default=2, gt=0, description="Detectors for concurrent requests.")
    max_faces: int = Field(default=10, gt=0, description="Faces per image that identify answers for.")
    quality: QualitySettings = Field(
        default_factory=QualitySettings,
        description="Enrolment gates, e.g. FACEDB_QUALITY__MIN_INTER_EYE_PX=30 (see embedding/quality.py).",
    )
    store_crops: bool = Field(
        default=True, description="Keep each enrolled face crop so that a new model can re-embed it."
    )
    crop_max_side: int = Field(default=256, ge=32, description="Longest side of a stored face crop, pixels.")
    reindex_batch_size: int = Field(default=256, gt=0, description="Faces per re-index transaction.")
    job_stale_s: float = Field(default=30.0, gt=0, description="A job without heartbeat this long is taken over.")

    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="Per image file.")
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="Whole HTTP request body.")
    max_pixels: int = Field(default=40_000_000, gt=0, description="Width x height of one decoded image.")
    max_side: int = Field(
        default=16384, ge=64, description="Longest side of one image, pixels (checked from the header before decoding)."
    )
    max_aspect_ratio: float = Field(
        default=20.0, ge=1.0, description="Longer side over shorter side of one image (a 1x100000 strip is refused)."
    )
    max_images_per_request: int = Field(default=32, gt=0)
    default_top_k: int = Field(default=5, gt=0)
    max_top_k: int = Field(default=100, gt=0)
    max_page_size: int = Field(default=500, gt=0)

    embed_batch_size: int = Field(default=32, gt=0, description="Faces per embedder forward pass.")
    embed_batch_wait_ms: float = Field(default=2.0, ge=0, description="How long a micro-batch waits to fill.")
    embed_queue_size: int = Field(default=256, gt=0, description="Queued images before requests get 429.")
    index_threads: int = Field(default=1, gt=0, description="FAISS OpenMP threads per search.")
    torch_threads: int | None = Field(
        default=None,
        gt=0,
        description="Embedder intra-op threads (PyTorch or onnxruntime); empty = 1 when serving, else the runtime's.",
    )

    auth: Literal["on", "off"] = Field(
        default="on",
        description="off: every /v1 route open to anyone who can reach the port, for local experiments only.",
    )
    admin_key_file: Path | None = Field(
        default=None,
        description="Where the first start writes the bootstrap admin key's secret (mode 0600) when no usable key "
        "exists; empty = data_dir/admin.key.",
    )
    auth_cache_s: float = Field(
        default=2.0, ge=0, description="How long a key is trusted without a database read (revocation elsewhere lag)."
    )
    rate_limit_per_s: float = Field(
        default=100.0, ge=0, description="Requests per second per API key unless the key sets its own; 0 = no limit."
    )
    rate_limit_burst_s: float = Field(
        default=2.0, gt=0, description="A key may burst this many seconds' worth of its rate at once."
    )
    audit_retention_days: float = Field(
        default=365.0, gt=0, description="Audit events older than this are deleted (checked with each snapshot)."
    )
    crop_key: SecretStr | None = Field(
        default=None,
        description="Encrypt stored face crops (AES-256-GCM): 32 random bytes, base64 (`facedb keys crop-key` makes "
        "one). Crops stored before stay readable; crops stored with it need it to re-index.",
    )
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Behind a TLS proxy: the proxy's address(es), whose X-Forwarded-For/-Proto are then trusted "
        "(the audit log's client address comes from them).",
    )

    log_format: Literal["text", "json"] = Field(
        default="text", description="Server log lines: text, or one JSON object per line; both carry the request id."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_require_key: bool = Field(
        default=False,
        description="true: /metrics needs an API key with the read scope (else open, like /healthz, for scrapers).",
    )

    host: str = "127.0.0.1"
    port: int = 8000

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        if self.crop_key is not None:
            from service.crypto import parse_key  # noqa: PLC0415 - keeps settings import light

            parse_key(self.crop_key.get_secret_value())
        return self

    def landmarks_for(self, spec: InputSpec) -> LandmarkSource:
        """The landmark source to build detectors with for a model with this input spec."""
        if self.detector_landmarks != "auto":
            return self.detector_landmarks
        from embedding.facepath import landmarks_for  # noqa: PLC0415 - keeps settings import light

        return landmarks_for(spec, self.detector)

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / 'facedb.sqlite3'}"

    @property
    def resolved_models_dir(self) -> Path:
        """Where the admin API may read model files."""
        if self.models_dir is not None:
            return self.models_dir
        from embedding.embedder import default_model_path  # noqa: PLC0415 - keeps settings import light

        return default_model_path().parent

    @property
    def resolved_admin_key_file(self) -> Path:
        """Where the bootstrap admin key's secret is written."""
        return self.admin_key_file or self.data_dir / "admin.key"

    @property
    def resolved_milvus_uri(self) -> str:
        """The Milvus address, or the milvus-lite file in data_dir."""
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    @property
    def resolved_index_dir(self) -> Path:
        """Where index snapshots are written."""
        return self.index_dir or self.data_dir / "index"

    @property
    def resolved_onnx_cache_dir(self) -> Path:
        """Where ONNX exports of .pt models are cached (shared by every data directory: names are checksums)."""
        if self.onnx_cache_dir is not None:
            return self.onnx_cache_dir
        cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache_home) / "facedb" / "onnx"

    @property
    def resolved_model_path(self) -> Path:
        """The embedder checkpoint to load."""
        if self.model_path is not None:
            return self.model_path
        from embedding.embedder import default_model_path  # noqa: PLC0415 - keeps settings import light

        return default_model_path()
