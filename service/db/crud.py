"""Data functions: keyword-only, the session first. They never commit; the caller's transaction does."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.db.models import (
    ApiKey,
    AuditEvent,
    Change,
    ChangeKind,
    Face,
    FaceCrop,
    Gallery,
    Identity,
    JobStatus,
    ModelFile,
    ModelStatus,
    ModelVersion,
    ReindexJob,
    Template,
    utcnow,
)

# Any constant works; it only has to be the same in every process that writes.
CHANGE_LOCK_KEY = 0x66616365


def record_change(
    session: Session,
    *,
    kind: ChangeKind,
    gallery_id: int,
    identity_id: int | None = None,
    face_ids: Sequence[int | None] = (None,),
    model_version_id: int | None = None,
) -> None:
    """Append change rows; call last in a write transaction.

    On PostgreSQL a transaction-scoped advisory lock makes sequence order equal commit order, so a reader
    that has seen sequence N can never later see a smaller one commit. SQLite writers are serialised anyway.
    """
    lock_changes(session)
    session.add_all([Change(kind=kind, gallery_id=gallery_id, identity_id=identity_id, face_id=f) for f in face_ids])
    session.flush()


def lock_changes(session: Session) -> None:
    """Serialise with every other writer of the change log until this transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: write transactions already hold the database's
    write lock from their start (``BEGIN IMMEDIATE``).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHANGE_LOCK_KEY})


def max_seq(session: Session) -> int:
    """The newest change sequence number, 0 when there is none."""
    return int(session.scalar(select(func.coalesce(func.max(Change.seq), 0))) or 0)


def changes_after(session: Session, *, seq: int, limit: int) -> list[Change]:
    """Up to ``limit`` changes with sequence > ``seq``, oldest first."""
    return list(session.scalars(select(Change).where(Change.seq > seq).order_by(Change.seq).limit(limit)))


# --- galleries ---------------------------------------------------------------------------------------


def get_gallery(session: Session, *, name: str) -> Gallery | None:
    return session.scalar(select(Gallery).where(Gallery.name == name))


def list_galleries(session: Session) -> list[Gallery]:
    return list(session.scalars(select(Gallery).order_by(Gallery.name)))


def gallery_counts(session: Session, *, gallery_id: int) -> tuple[int, int]:
    """(identities, faces) in a gallery."""
    identities = session.scalar(select(func.count()).select_from(Identity).where(Identity.gallery_id == gallery_id))
    faces = session.scalar(select(func.count()).select_from(Face).where(Face.gallery_id == gallery_id))
    return int(identities or 0), int(faces or 0)


def count_templates(session: Session, *, gallery_id: int, model_version_id: int) -> int:
    """Faces of a gallery that have a template of this model version."""
    n = session.scalar(
        select(func.count())
        .select_from(Template)
        .join(Face, Face.id == Template.face_id)
        .where(Face.gallery_id == gallery_id, Template.model_version_id == model_version_id)
    )
    return int(n or 0)


def create_gallery(session: Session, *, name: str) -> Gallery:
    gallery = Gallery(name=name)
    session.add(gallery)
    session.flush()
    return gallery


def delete_gallery(session: Session, *, gallery: Gallery) -> None:
    # Faces and identities go by ON DELETE CASCADE.
    session.execute(delete(Gallery).where(Gallery.id == gallery.id))
    record_change(session, kind=ChangeKind.GALLERY_REMOVED, gallery_id=gallery.id)


# --- identities --------------------------------------------------------------------------------------


def get_identity(session: Session, *, gallery_id: int, identity_id: int) -> Identity | None:
    return session.scalar(select(Identity).where(Identity.id == identity_id, Identity.gallery_id == gallery_id))


def get_identity_by_external_id(session: Session, *, gallery_id: int, external_id: str) -> Identity | None:
    return session.scalar(
        select(Identity).where(Identity.gallery_id == gallery_id, Identity.external_id == external_id)
    )


def list_identities(
    session: Session, *, gallery_id: int, limit: int, after: int | None, contains: str | None = None
) -> list[Identity]:
    """A page of identities ordered by id, starting after the cursor ``after``; with ``contains``, only those whose
    external_id or display_name contains it, in any case."""
    stmt = select(Identity).where(Identity.gallery_id == gallery_id)
    if after is not None:
        stmt = stmt.where(Identity.id > after)
    if contains is not None:
        pattern = "%" + contains.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(
            or_(
                func.lower(Identity.external_id).like(pattern, escape="\\"),
                func.lower(Identity.display_name).like(pattern, escape="\\"),
            )
        )
    return list(session.scalars(stmt.order_by(Identity.id).limit(limit)))


def identity_refs(session: Session, *, identity_ids: Sequence[int]) -> dict[int, Identity]:
    """Identities by id; ids that no longer exist are absent."""
    if not identity_ids:
        return {}
    rows = session.scalars(select(Identity).where(Identity.id.in_(list(set(identity_ids)))))
    return {row.id: row for row in rows}


def face_counts(session: Session, *, identity_ids: Sequence[int]) -> dict[int, int]:
    if not identity_ids:
        return {}
    rows = session.execute(
        select(Face.identity_id, func.count()).where(Face.identity_id.in_(identity_ids)).group_by(Face.identity_id)
    )
    return {int(i): int(n) for i, n in rows}


def create_identity(
    session: Session, *, gallery_id: int, external_id: str, display_name: str | None, meta: dict[str, Any]
) -> Identity:
    identity = Identity(gallery_id=gallery_id, external_id=external_id, display_name=display_name, meta=meta)
    session.add(identity)
    session.flush()
    return identity


def update_identity(session: Session, *, identity: Identity, changes: dict[str, Any]) -> Identity:
    for key, value in changes.items():
        setattr(identity, "meta" if key == "metadata" else key, value)
    session.flush()
    return identity


def delete_identity(session: Session, *, identity: Identity) -> None:
    session.execute(delete(Identity).where(Identity.id == identity.id))
    record_change(session, kind=ChangeKind.IDENTITY_REMOVED, gallery_id=identity.gallery_id, identity_id=identity.id)


# --- faces -------------------------------------------------------------------------------------------


def identity_image_hashes(session: Session, *, identity_id: int) -> set[str]:
    return set(session.scalars(select(Face.image_sha256).where(Face.identity_id == identity_id)))


def add_faces(
    session: Session,
    *,
    identity: Identity,
    templates: dict[int, np.ndarray],
    image_hashes: Sequence[str],
    crops: Sequence[tuple[bytes, int, int, bool] | None],
    detections: Sequence[dict[str, Any] | None] | None = None,
    seal: Callable[[int, bytes], bytes] | None = None,
) -> list[Face]:
    """Insert one face per image, with a template per model version (float32 (N, D) each), its crop
    (PNG bytes, width, height, aligned; None when crops are not kept; stored as ``seal(face_id, png)``), its
    detection record, and log each addition."""
    detections = detections if detections is not None else [None] * len(image_hashes)
    faces = [
        Face(identity_id=identity.id, gallery_id=identity.gallery_id, image_sha256=h, detection=d)
        for h, d in zip(image_hashes, detections, strict=True)
    ]
    session.add_all(faces)
    session.flush()
    face_ids = [f.id for f in faces]
    for model_version_id, x in templates.items():
        insert_templates(session, model_version_id=model_version_id, face_ids=face_ids, embeddings=x)
    seal = seal or (lambda _face_id, data: data)
    session.add_all(
        [
            FaceCrop(face_id=f, data=seal(f, c[0]), width=c[1], height=c[2], aligned=c[3])
            for f, c in zip(face_ids, crops, strict=True)
            if c is not None
        ]
    )
    session.flush()
    record_change(
        session,
        kind=ChangeKind.FACE_ADDED,
        gallery_id=identity.gallery_id,
        identity_id=identity.id,
        face_ids=face_ids,
    )
    return faces


def insert_templates(
    session: Session, *, model_version_id: int, face_ids: Sequence[int], embeddings: np.ndarray
) -> None:
    """Store templates (float32 (N, D)); a template that already exists is left as it is."""
    if not face_ids:
        return
    rows = [
        {
            "face_id": int(f),
            "model_version_id": model_version_id,
            "embedding": np.ascontiguousarray(x, dtype="<f4").tobytes(),
            "embedding_dim": int(x.shape[0]),
            "created_at": utcnow(),
        }
        for f, x in zip(face_ids, embeddings, strict=True)
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert(Template).values(rows).on_conflict_do_nothing(index_elements=["face_id", "model_version_id"])
    )


def faces_missing_templates(
    session: Session, *, model_version_id: int, after: int, limit: int, gallery_id: int | None = None
) -> list[tuple[int, FaceCrop | None]]:
    """Up to ``limit`` (face id, stored crop or None) with id > ``after`` lacking a template of the version."""
    has_template = (
        select(Template.face_id)
        .where(Template.face_id == Face.id, Template.model_version_id == model_version_id)
        .exists()
    )
    stmt = (
        select(Face.id, FaceCrop)
        .outerjoin(FaceCrop, FaceCrop.face_id == Face.id)
        .where(Face.id > after, ~has_template)
        .order_by(Face.id)
        .limit(limit)
    )
    if gallery_id is not None:
        stmt = stmt.where(Face.gallery_id == gallery_id)
    return [(int(i), c) for i, c in session.execute(stmt)]


def count_faces_missing_templates(session: Session, *, model_version_id: int, with_crop: bool | None = None) -> int:
    """Faces without a template of the version; ``with_crop`` narrows to those that can / cannot be re-embedded."""
    has_template = (
        select(Template.face_id)
        .where(Template.face_id == Face.id, Template.model_version_id == model_version_id)
        .exists()
    )
    has_crop = select(FaceCrop.face_id).where(FaceCrop.face_id == Face.id).exists()
    stmt = select(func.count()).select_from(Face).where(~has_template)
    if with_crop is True:
        stmt = stmt.where(has_crop)
    elif with_crop is False:
        stmt = stmt.where(~has_crop)
    return int(session.scalar(stmt) or 0)


def count_all_faces(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Face)) or 0)


def face_crop(session: Session, *, face_id: int) -> FaceCrop | None:
    return session.get(FaceCrop, face_id)


def crop_presence(session: Session, *, face_ids: Sequence[int]) -> set[int]:
    """The ids among ``face_ids`` that have a stored crop."""
    if not face_ids:
        return set()
    return set(session.scalars(select(FaceCrop.face_id).where(FaceCrop.face_id.in_(list(face_ids)))))


def get_face(session: Session, *, identity_id: int, face_id: int) -> Face | None:
    return session.scalar(select(Face).where(Face.id == face_id, Face.identity_id == identity_id))


def list_faces(session: Session, *, identity_id: int) -> list[Face]:
    return list(session.scalars(select(Face).where(Face.identity_id == identity_id).order_by(Face.id)))


def delete_face(session: Session, *, face: Face) -> None:
    session.execute(delete(Face).where(Face.id == face.id))
    record_change(
        session,
        kind=ChangeKind.FACE_REMOVED,
        gallery_id=face.gallery_id,
        identity_id=face.identity_id,
        face_ids=[face.id],
    )


def identity_embeddings(session: Session, *, identity_id: int, model_version_id: int) -> np.ndarray:
    """float32 (N, D) templates of one identity made by one model version."""
    rows = session.execute(
        select(Template.embedding, Template.embedding_dim)
        .join(Face, Face.id == Template.face_id)
        .where(Face.identity_id == identity_id, Template.model_version_id == model_version_id)
    ).all()
    return _stack(rows)


def face_embeddings(
    session: Session, *, face_ids: Sequence[int], model_version_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face_ids int64 (N,), identity_ids int64 (N,), embeddings float32 (N, D)) for the faces that exist."""
    rows = session.execute(
        select(Face.id, Face.identity_id, Template.embedding, Template.embedding_dim)
        .join(Template, Template.face_id == Face.id)
        .where(Face.id.in_(list(face_ids)), Template.model_version_id == model_version_id)
    ).all()
    return _columns(rows)


def iter_gallery_embeddings(
    session: Session, *, gallery_id: int, model_version_id: int, chunk: int = 10_000
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """All (face_ids, identity_ids, embeddings) of a gallery in chunks, by keyset pagination on face id."""
    after = 0
    while True:
        rows = session.execute(
            select(Face.id, Face.identity_id, Template.embedding, Template.embedding_dim)
            .join(Template, Template.face_id == Face.id)
            .where(Face.gallery_id == gallery_id, Template.model_version_id == model_version_id, Face.id > after)
            .order_by(Face.id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        yield _columns(rows)
        after = int(rows[-1][0])


def _stack(rows: Sequence[Any]) -> np.ndarray:
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    if len({int(dim) for _, dim in rows}) != 1:
        raise ValueError("templates of one model version must share one dimension")
    return np.stack([np.frombuffer(blob, dtype="<f4", count=dim) for blob, dim in rows]).astype(np.float32)


def _columns(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    face_ids = np.array([r[0] for r in rows], dtype=np.int64)
    identity_ids = np.array([r[1] for r in rows], dtype=np.int64)
    return face_ids, identity_ids, _stack([(r[2], r[3]) for r in rows])


# --- model versions ----------------------------------------------------------------------------------


def get_model_version(session: Session, *, checksum: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.checksum == checksum))


def find_model_version(session: Session, *, key: str) -> ModelVersion | None:
    """By numeric id, content version, checksum or checksum prefix (at least 8 hex digits)."""
    if key.isdigit():
        mv = session.get(ModelVersion, int(key))
        if mv is not None:
            return mv
    matches = [ModelVersion.version == key]
    if len(key) >= 8:
        matches.append(ModelVersion.checksum.startswith(key))
    rows = list(session.scalars(select(ModelVersion).where(or_(*matches))))
    return rows[0] if len(rows) == 1 else None


def list_model_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def active_model_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE))


def building_model_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).where(ModelVersion.status == ModelStatus.BUILDING)))


def count_templates_of(session: Session, *, model_version_id: int) -> int:
    return int(
        session.scalar(select(func.count()).select_from(Template).where(Template.model_version_id == model_version_id))
        or 0
    )


def create_model_version(
    session: Session,
    *,
    name: str,
    version: str,
    checksum: str,
    embedding_dim: int,
    input_spec: dict[str, Any],
    thresholds: dict[str, Any],
    default_threshold: float,
    status: ModelStatus,
    filename: str,
    data: bytes,
) -> ModelVersion:
    """Register a model version together with its file's bytes."""
    mv = ModelVersion(
        name=name,
        version=version,
        checksum=checksum,
        embedding_dim=embedding_dim,
        input_spec=input_spec,
        thresholds=thresholds,
        default_threshold=default_threshold,
        status=status,
        filename=filename,
    )
    session.add(mv)
    session.flush()
    session.add(ModelFile(model_version_id=mv.id, data=data))
    session.flush()
    return mv


def model_file(session: Session, *, model_version_id: int) -> bytes | None:
    row = session.get(ModelFile, model_version_id)
    return None if row is None else row.data


def store_model_file(session: Session, *, model_version_id: int, data: bytes) -> None:
    if session.get(ModelFile, model_version_id) is None:
        session.add(ModelFile(model_version_id=model_version_id, data=data))
        session.flush()


def activate_model_version(session: Session, *, model_version: ModelVersion) -> None:
    """Make ``model_version`` the only active one and log the switch; other active ones are retired."""
    for other in session.scalars(
        select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE, ModelVersion.id != model_version.id)
    ):
        other.status = ModelStatus.RETIRED
    model_version.status = ModelStatus.ACTIVE
    model_version.activated_at = utcnow()
    session.flush()
    record_change(session, kind=ChangeKind.MODEL_ACTIVATED, gallery_id=0, model_version_id=model_version.id)


def delete_templates(session: Session, *, model_version_id: int) -> int:
    result = session.execute(delete(Template).where(Template.model_version_id == model_version_id))
    return int(getattr(result, "rowcount", 0) or 0)


# --- re-index jobs -----------------------------------------------------------------------------------


def get_job(session: Session, *, job_id: int) -> ReindexJob | None:
    return session.get(ReindexJob, job_id)


def running_job(session: Session, *, model_version_id: int | None = None) -> ReindexJob | None:
    stmt = select(ReindexJob).where(ReindexJob.status == JobStatus.RUNNING)
    if model_version_id is not None:
        stmt = stmt.where(ReindexJob.model_version_id == model_version_id)
    return session.scalar(stmt.order_by(ReindexJob.id.desc()).limit(1))


def list_jobs(session: Session, *, limit: int = 20) -> list[ReindexJob]:
    return list(session.scalars(select(ReindexJob).order_by(ReindexJob.id.desc()).limit(limit)))


# --- API keys and the audit log ------------------------------------------------------------------------


def create_api_key(
    session: Session,
    *,
    name: str,
    prefix: str,
    secret_sha256: str,
    scopes: list[str],
    galleries: list[str] | None,
    expires_at: datetime | None = None,
    rate_limit: float | None = None,
    created_by: str | None = None,
) -> ApiKey:
    key = ApiKey(
        name=name,
        prefix=prefix,
        secret_sha256=secret_sha256,
        scopes=scopes,
        galleries=galleries,
        expires_at=expires_at,
        rate_limit=rate_limit,
        created_by=created_by,
    )
    session.add(key)
    session.flush()
    return key


def get_api_key(session: Session, *, key_id: int) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def get_api_key_by_prefix(session: Session, *, prefix: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))


def get_api_key_by_name(session: Session, *, name: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.name == name))


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def count_usable_api_keys(session: Session, *, now: datetime) -> int:
    """Keys neither revoked nor expired at ``now``."""
    stmt = (
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
    )
    return int(session.scalar(stmt) or 0)


def add_audit_event(session: Session, *, event: AuditEvent) -> None:
    session.add(event)


def list_audit_events(
    session: Session,
    *,
    limit: int,
    before: int | None = None,
    action: str | None = None,
    key_name: str | None = None,
    gallery: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AuditEvent]:
    """Newest first: events with id < ``before`` matching every filter given."""
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(AuditEvent.id < before)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if key_name is not None:
        stmt = stmt.where(AuditEvent.key_name == key_name)
    if gallery is not None:
        stmt = stmt.where(AuditEvent.gallery == gallery)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.at < until)
    return list(session.scalars(stmt))


def purge_audit_events(session: Session, *, older_than: datetime) -> int:
    """Delete events recorded before ``older_than``; returns how many."""
    result = session.execute(delete(AuditEvent).where(AuditEvent.at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)
