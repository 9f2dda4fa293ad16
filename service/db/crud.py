"""Data functions: keyword-only, the session first. They never commit; the caller's transaction does."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from service.db.models import Change, ChangeKind, Face, Gallery, Identity, ModelStatus, ModelVersion

# Any constant works; it only has to be the same in every process that writes.
_CHANGE_LOCK_KEY = 0x66616365


def record_change(
    session: Session,
    *,
    kind: ChangeKind,
    gallery_id: int,
    identity_id: int | None = None,
    face_ids: Sequence[int | None] = (None,),
) -> None:
    """Append change rows; call last in a write transaction.

    On PostgreSQL a transaction-scoped advisory lock makes sequence order equal commit order, so a reader
    that has seen sequence N can never later see a smaller one commit. SQLite writers are serialised anyway.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHANGE_LOCK_KEY})
    session.add_all([Change(kind=kind, gallery_id=gallery_id, identity_id=identity_id, face_id=f) for f in face_ids])
    session.flush()


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


def gallery_counts(session: Session, *, gallery_id: int, model_version_id: int) -> tuple[int, int]:
    """(identities, faces of this model version) in a gallery."""
    identities = session.scalar(select(func.count()).select_from(Identity).where(Identity.gallery_id == gallery_id))
    faces = session.scalar(
        select(func.count())
        .select_from(Face)
        .where(Face.gallery_id == gallery_id, Face.model_version_id == model_version_id)
    )
    return int(identities or 0), int(faces or 0)


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


def list_identities(session: Session, *, gallery_id: int, limit: int, after: int | None) -> list[Identity]:
    """A page of identities ordered by id, starting after the cursor ``after``."""
    stmt = select(Identity).where(Identity.gallery_id == gallery_id)
    if after is not None:
        stmt = stmt.where(Identity.id > after)
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
    model_version_id: int,
    embeddings: np.ndarray,
    image_hashes: Sequence[str],
) -> list[Face]:
    """Insert one face per row of ``embeddings`` (float32 (N, D)) and log each addition."""
    faces = [
        Face(
            identity_id=identity.id,
            gallery_id=identity.gallery_id,
            model_version_id=model_version_id,
            embedding=np.ascontiguousarray(row, dtype="<f4").tobytes(),
            embedding_dim=int(row.shape[0]),
            image_sha256=digest,
        )
        for row, digest in zip(embeddings, image_hashes, strict=True)
    ]
    session.add_all(faces)
    session.flush()
    record_change(
        session,
        kind=ChangeKind.FACE_ADDED,
        gallery_id=identity.gallery_id,
        identity_id=identity.id,
        face_ids=[f.id for f in faces],
    )
    return faces


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
        select(Face.embedding, Face.embedding_dim).where(
            Face.identity_id == identity_id, Face.model_version_id == model_version_id
        )
    ).all()
    return _stack(rows)


def face_embeddings(
    session: Session, *, face_ids: Sequence[int], model_version_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face_ids int64 (N,), identity_ids int64 (N,), embeddings float32 (N, D)) for the faces that exist."""
    rows = session.execute(
        select(Face.id, Face.identity_id, Face.embedding, Face.embedding_dim).where(
            Face.id.in_(list(face_ids)), Face.model_version_id == model_version_id
        )
    ).all()
    return _columns(rows)


def iter_gallery_embeddings(
    session: Session, *, gallery_id: int, model_version_id: int, chunk: int = 10_000
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """All (face_ids, identity_ids, embeddings) of a gallery in chunks, by keyset pagination on face id."""
    after = 0
    while True:
        rows = session.execute(
            select(Face.id, Face.identity_id, Face.embedding, Face.embedding_dim)
            .where(Face.gallery_id == gallery_id, Face.model_version_id == model_version_id, Face.id > after)
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
    return np.stack([np.frombuffer(blob, dtype="<f4", count=dim) for blob, dim in rows]).astype(np.float32)


def _columns(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    face_ids = np.array([r[0] for r in rows], dtype=np.int64)
    identity_ids = np.array([r[1] for r in rows], dtype=np.int64)
    return face_ids, identity_ids, _stack([(r[2], r[3]) for r in rows])


# --- model versions ----------------------------------------------------------------------------------


def get_model_version(session: Session, *, checksum: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.checksum == checksum))


def active_model_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE))


def count_faces(session: Session, *, model_version_id: int) -> int:
    return int(
        session.scalar(select(func.count()).select_from(Face).where(Face.model_version_id == model_version_id)) or 0
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
) -> ModelVersion:
    mv = ModelVersion(
        name=name,
        version=version,
        checksum=checksum,
        embedding_dim=embedding_dim,
        input_spec=input_spec,
        thresholds=thresholds,
        default_threshold=default_threshold,
        status=status,
    )
    session.add(mv)
    session.flush()
    return mv
