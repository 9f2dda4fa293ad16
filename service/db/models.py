"""SQLAlchemy 2 typed models. Alembic migrations (``migrations/``) are the only authority on the schema."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
IdType = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Timezone-aware now, the one clock for every timestamp column."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A timestamp in UTC with its zone: naive ones are UTC (SQLite hands back naive datetimes; all are written in
    UTC), aware ones are converted."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ModelStatus(enum.StrEnum):
    ACTIVE = "active"
    BUILDING = "building"
    RETIRED = "retired"


class ChangeKind(enum.StrEnum):
    FACE_ADDED = "face_added"
    FACE_REMOVED = "face_removed"
    IDENTITY_REMOVED = "identity_removed"
    GALLERY_REMOVED = "gallery_removed"
    MODEL_ACTIVATED = "model_activated"


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Gallery(Base):
    __tablename__ = "galleries"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Identity(Base):
    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("gallery_id", "external_id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(256))
    display_name: Mapped[str | None] = mapped_column(String(256))
    # `metadata` is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    faces: Mapped[list[Face]] = relationship(
        back_populates="identity", cascade="all, delete-orphan", passive_deletes=True
    )


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    checksum: Mapped[str] = mapped_column(String(64), unique=True)
    embedding_dim: Mapped[int] = mapped_column(Integer)
    input_spec: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    default_threshold: Mapped[float] = mapped_column(Float)
    status: Mapped[ModelStatus] = mapped_column(
        Enum(ModelStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])
    )
    # The file name it was registered from; its suffix tells the loader the format.
    filename: Mapped[str] = mapped_column(String(256), default="model.pt")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelFile(Base):
    """The model file's bytes, so that every process and machine can load any registered version."""

    __tablename__ = "model_files"

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Face(Base):
    __tablename__ = "faces"
    __table_args__ = (
        # One face per source image per identity; also serves lookups by identity.
        UniqueConstraint("identity_id", "image_sha256"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"))
    # Denormalised from the identity so that an index rebuild is one range scan.
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    # Detector, box, landmarks, score and quality measures in the source image; null without detection.
    detection: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    identity: Mapped[Identity] = relationship(back_populates="faces")


class Template(Base):
    """One face's embedding by one model version; search only ever compares templates of one version."""

    __tablename__ = "templates"
    __table_args__ = (Index("ix_templates_model_version_id_face_id", "model_version_id", "face_id"),)

    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    embedding_dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FaceCrop(Base):
    """The face image every template was computed from, kept so that a new model can re-embed it."""

    __tablename__ = "face_crops"

    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # True: aligned to embedding.align.CANONICAL (any model's framing can be cut from it); False: whole image.
    aligned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ReindexJob(Base):
    """Progress of re-embedding every stored face with one model version; the work itself is resumable."""

    __tablename__ = "reindex_jobs"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])
    )
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    message: Mapped[str | None] = mapped_column(String(1024))
    worker: Mapped[str | None] = mapped_column(String(256))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    switch_seconds: Mapped[float | None] = mapped_column(Float)


class Change(Base):
    """Append-only change log; ``seq`` is the position the index catches up from."""

    __tablename__ = "changes"

    seq: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    kind: Mapped[ChangeKind] = mapped_column(
        Enum(ChangeKind, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])
    )
    gallery_id: Mapped[int] = mapped_column(BigInteger, index=True)
    identity_id: Mapped[int | None] = mapped_column(BigInteger)
    face_id: Mapped[int | None] = mapped_column(BigInteger)
    model_version_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key: a public prefix to find it by, the SHA-256 of its secret (never the secret), and its grants."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # None: every gallery; else the names of the galleries the key may touch.
    galleries: Mapped[list[str] | None] = mapped_column(JSONType)
    # Requests per second; None: the service's default.
    rate_limit: Mapped[float | None] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """Who did what, where and with what outcome; never images or embeddings."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    key_name: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    gallery: Mapped[str | None] = mapped_column(String(64), index=True)
    # Ids the action was about or produced (identity_id, face_ids, matched identity, job_id, key_id...).
    target: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[int] = mapped_column(Integer)
    # "ok", or the error code the caller got.
    outcome: Mapped[str] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(128))
