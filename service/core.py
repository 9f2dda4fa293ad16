"""The service's operations, shared by the HTTP API and the CLI. Inputs and outputs are schema objects."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from embedding.embedder import Embedder
from embedding.errors import ImageError
from embedding.facepath import (
    DetectorPool,
    FaceImage,
    FaceRejectedError,
    decode,
    decode_crop,
    encode_crop,
    enrolment_face,
    probe_faces,
    whole_image,
)
from embedding.openset import OpenSetCalibration
from index import Tuning
from index.gallery import Hit
from service import registry, schemas
from service.batching import MicroBatcher
from service.crypto import CropCipher
from service.db import crud
from service.db.engine import Database
from service.db.migrate import check_schema
from service.db.models import Face, Gallery, Identity, ModelStatus, ModelVersion
from service.errors import FacedbError, not_found
from service.indexing import IndexManager
from service.registry import ModelInfo
from service.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_GALLERY = "default"


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name as the client sent it and its bytes."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class Serving:
    """One model version with its embedder and indexes; requests use one such snapshot throughout.

    ``open_set``: the model's 1:N calibration (`embedding.openset`), None for a card without one or with fewer than
    two 1:1 thresholds (identify then decides at the 1:1 default threshold).
    """

    model: ModelInfo
    embedder: Embedder
    indexes: IndexManager
    open_set: OpenSetCalibration | None


ENROL_ATTEMPTS: Final = 50
"""Catch-up-and-lock rounds an enrolment tries before answering 503 busy."""


@dataclass(frozen=True)
class Screen:
    """Which enrolment checks run: ``conflict`` (identity_conflict) and ``mismatch`` (face_mismatch)."""

    conflict: bool = True
    mismatch: bool = True


@dataclass(frozen=True)
class Lookalike:
    """An accepted face (``position`` in the request's kept faces) that identify would name as another identity
    (``hit``, below the conflict bar) at ``threshold``: enrolment warns of it as ``possible_duplicate``."""

    position: int
    hit: Hit
    other: Identity | None
    threshold: float


@dataclass(frozen=True)
class Decision:
    """The threshold a decision used and where it came from: "request", "setting" (FACEDB_THRESHOLD),
    "calibrated" (1:N at ``target_fpir`` for ``gallery_size`` identities or faces, with the card's table for the
    face's photo ``condition``, `embedding.openset.CONDITIONS`) or "model" (the card's 1:1 default)."""

    threshold: float
    source: Literal["request", "setting", "calibrated", "model"]
    target_fpir: float | None = None
    gallery_size: int | None = None
    condition: str | None = None


class FaceService:
    """Composes the database, the embedders and the indexes into the product's operations.

    The database names the active model version. Each request takes the current :class:`Serving` once and
    uses only it, so a model switch (swapping that reference) never mixes two models in one answer.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        embedder: Embedder,
        batcher: MicroBatcher | None = None,
        detector: DetectorPool | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.crops = CropCipher.from_setting(settings.crop_key)
        self.on_stage: Callable[[str, float], None] = lambda _stage, _seconds: None
        self.configured = embedder
        self.detector = detector
        self._batcher = batcher
        self._serving: Serving | None = None
        # Versions being built by a re-index: enrolments are embedded with them too.
        self._building: dict[int, Embedder] = {}
        self._sync_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the schema, settle the active model version, and bring its indexes up to date."""
        check_schema(self.db.engine)
        self.configured.load()
        if self.detector is not None:
            self.detector.load()
        with self._sync_lock:
            mv, embedder = self._resolve_active()
            self._serving = self._build_serving(mv, embedder)
            self._refresh_building()

    def stop(self) -> None:
        """Write index snapshots so that the next start only replays newer changes."""
        if self._serving is not None:
            self._serving.indexes.save_snapshots()

    def sync(self) -> None:
        """Catch up with other processes: index changes, versions being built, and model switches."""
        with self._sync_lock:
            self.serving.indexes.catch_up()
            self._refresh_building()
            with self.db.read() as session:
                active = crud.active_model_version(session)
            if active is not None and active.checksum != self.serving.model.checksum:
                self._switch(active)

    @property
    def serving(self) -> Serving:
        if self._serving is None:
            raise RuntimeError("FaceService.start() has not run")
        return self._serving

    @property
    def indexes(self) -> IndexManager:
        return self.serving.indexes

    @property
    def active(self) -> ModelInfo:
        return self.serving.model

    def _resolve_active(self) -> tuple[ModelVersion, Embedder]:
        """The database's active version; the configured model becomes it when nothing is enrolled yet."""
        conf = self.configured
        with self.db.write() as session:
            crud.lock_changes(session)  # processes starting together register the model once
            active = crud.active_model_version(session)
            if active is not None and active.checksum == conf.checksum:
                crud.store_model_file(session, model_version_id=active.id, data=self._configured_bytes())
                return active, conf
            if active is None or crud.count_all_faces(session) == 0:
                mv = registry.register(
                    session, embedder=conf, path=self.settings.resolved_model_path, status=ModelStatus.ACTIVE
                )
                crud.activate_model_version(session, model_version=mv)
                return mv, conf
            log.warning(
                "the configured model %s@%s is not the active one; serving the active %s@%s. "
                "Run `facedb reindex --model %s` to switch.",
                conf.card.name,
                conf.card.version,
                active.name,
                active.version,
                self.settings.resolved_model_path,
            )
            return active, registry.load_version(session, mv=active, settings=self.settings)

    def _configured_bytes(self) -> bytes:
        return self.settings.resolved_model_path.read_bytes()

    def _build_serving(self, mv: ModelVersion, embedder: Embedder) -> Serving:
        info = ModelInfo.of(mv)
        indexes = IndexManager(
            db=self.db,
            model_version_id=info.id,
            model_checksum=info.checksum,
            dim=info.dim,
            snapshot_dir=self.settings.resolved_index_dir / info.checksum[:16],
            backend=self.settings.index_backend,
            identity_score=self.settings.identity_score,
            mean_parts=embedder.card.parts,
            backfill=lambda face_ids: self.backfill_templates(info.id, embedder, face_ids),
            kind=self.settings.index_kind,
            tuning=Tuning(
                ef_search=self.settings.hnsw_ef_search,
                nprobe=self.settings.ivf_nprobe,
                rerank=self.settings.ivf_rerank,
            ),
            milvus_uri=self.settings.resolved_milvus_uri,
            milvus_token=self.settings.milvus_token.get_secret_value() if self.settings.milvus_token else "",
        )
        indexes.start()
        return Serving(model=info, embedder=embedder, indexes=indexes, open_set=embedder.card.open_set_calibration())

    def _refresh_building(self) -> None:
        with self.db.read() as session:
            building = crud.building_model_versions(session)
            for mv in building:
                if mv.id not in self._building:
                    self._building[mv.id] = registry.load_version(session, mv=mv, settings=self.settings)
        keep = {mv.id for mv in building}
        for mv_id in list(self._building):
            if mv_id not in keep:
                del self._building[mv_id]

    def _switch(self, mv: ModelVersion) -> None:
        started = time.monotonic()
        old = self.serving
        embedder = self._building.get(mv.id)
        if embedder is None:
            with self.db.read() as session:
                embedder = registry.load_version(session, mv=mv, settings=self.settings)
        self._serving = self._build_serving(mv, embedder)
        log.info(
            "switched from model %s to %s in %.2f s",
            old.model.label,
            mv.name + "@" + mv.version,
            time.monotonic() - started,
        )
        old.indexes.save_snapshots()  # rolling back to it later starts from here

    def backfill_templates(self, model_version_id: int, embedder: Embedder, face_ids: Sequence[int]) -> int:
        """Compute and store the templates of one version for faces that lack them, from their crops."""
        if not face_ids:
            return 0
        with self.db.read() as session:
            crops = {
                f: decode_crop(self.crops.open(f, c.data), aligned=c.aligned)
                for f in face_ids
                if (c := crud.face_crop(session, face_id=f)) is not None
            }
        if not crops:
            return 0
        ids = sorted(crops)
        x = self._embed_faces(embedder, [crops[f] for f in ids])
        with self.db.write() as session:
            crud.insert_templates(session, model_version_id=model_version_id, face_ids=ids, embeddings=x)
        log.info("made %d missing templates of model version %d", len(ids), model_version_id)
        return len(ids)

    # --- galleries ------------------------------------------------------------------------------------

    def list_galleries(self) -> schemas.GalleriesPublic:
        with self.db.read() as session:
            return schemas.GalleriesPublic(
                items=[self._gallery_public(session, g) for g in crud.list_galleries(session)]
            )

    def get_gallery(self, name: str) -> schemas.GalleryPublic:
        with self.db.read() as session:
            return self._gallery_public(session, self._gallery(session, name))

    def create_gallery(self, data: schemas.GalleryCreate) -> schemas.GalleryPublic:
        try:
            with self.db.write() as session:
                gallery = crud.create_gallery(session, name=data.name)
        except IntegrityError as exc:
            raise FacedbError(409, "gallery_exists", f"gallery {data.name!r} already exists") from exc
        return schemas.GalleryPublic(name=gallery.name, created_at=gallery.created_at, identity_count=0, face_count=0)

    def delete_gallery(self, name: str) -> None:
        if name == DEFAULT_GALLERY:
            raise FacedbError(409, "gallery_protected", "the default gallery cannot be deleted")
        with self.db.write() as session:
            crud.delete_gallery(session, gallery=self._gallery(session, name))
        self.serving.indexes.catch_up()

    def _gallery_public(self, session: Session, gallery: Gallery) -> schemas.GalleryPublic:
        identities, faces = crud.gallery_counts(session, gallery_id=gallery.id)
        return schemas.GalleryPublic(
            name=gallery.name, created_at=gallery.created_at, identity_count=identities, face_count=faces
        )

    @staticmethod
    def _gallery(session: Session, name: str) -> Gallery:
        # A name that could not have been created is not looked up (NUL bytes would reach the database).
        gallery = crud.get_gallery(session, name=name) if re.fullmatch(schemas.GALLERY_NAME_PATTERN, name) else None
        if gallery is None:
            raise not_found("gallery", repr(name))
        return gallery

    # --- identities -----------------------------------------------------------------------------------

    def create_identity(self, gallery: str, data: schemas.IdentityCreate) -> schemas.IdentityPublic:
        try:
            with self.db.write() as session:
                g = self._gallery(session, gallery)
                identity = crud.create_identity(
                    session,
                    gallery_id=g.id,
                    external_id=data.external_id,
                    display_name=data.display_name,
                    meta=data.metadata,
                )
        except IntegrityError as exc:
            raise _duplicate_external_id(data.external_id, gallery) from exc
        return _identity_public(identity, gallery, 0)

    def list_identities(
        self, gallery: str, *, limit: int, cursor: int | None, q: str | None = None
    ) -> schemas.IdentitiesPublic:
        if not 1 <= limit <= self.settings.max_page_size:
            raise FacedbError(422, "invalid_limit", f"limit must be between 1 and {self.settings.max_page_size}")
        with self.db.read() as session:
            g = self._gallery(session, gallery)
            rows = crud.list_identities(session, gallery_id=g.id, limit=limit + 1, after=cursor, contains=q or None)
            page = rows[:limit]
            counts = crud.face_counts(session, identity_ids=[r.id for r in page])
        return schemas.IdentitiesPublic(
            items=[_identity_public(r, gallery, counts.get(r.id, 0)) for r in page],
            next_cursor=page[-1].id if len(rows) > limit else None,
        )

    def get_identity(self, gallery: str, identity_id: int) -> schemas.IdentityPublic:
        with self.db.read() as session:
            identity = self._identity(session, gallery, identity_id)
            count = crud.face_counts(session, identity_ids=[identity.id]).get(identity.id, 0)
        return _identity_public(identity, gallery, count)

    def find_identity(self, gallery: str, external_id: str) -> schemas.IdentityPublic | None:
        with self.db.read() as session:
            g = self._gallery(session, gallery)
            identity = crud.get_identity_by_external_id(session, gallery_id=g.id, external_id=external_id)
            if identity is None:
                return None
            count = crud.face_counts(session, identity_ids=[identity.id]).get(identity.id, 0)
        return _identity_public(identity, gallery, count)

    def update_identity(self, gallery: str, identity_id: int, data: schemas.IdentityUpdate) -> schemas.IdentityPublic:
        changes = data.model_dump(exclude_unset=True)
        if changes.get("external_id", "") is None:
            raise FacedbError(422, "invalid_external_id", "external_id cannot be null")
        if "metadata" in changes and changes["metadata"] is None:
            changes["metadata"] = {}
        try:
            with self.db.write() as session:
                identity = self._identity(session, gallery, identity_id)
                crud.update_identity(session, identity=identity, changes=changes)
                count = crud.face_counts(session, identity_ids=[identity.id]).get(identity.id, 0)
        except IntegrityError as exc:
            raise _duplicate_external_id(str(changes.get("external_id")), gallery) from exc
        return _identity_public(identity, gallery, count)

    def delete_identity(self, gallery: str, identity_id: int) -> None:
        with self.db.write() as session:
            crud.delete_identity(session, identity=self._identity(session, gallery, identity_id))
        self.serving.indexes.catch_up()

    def _identity(self, session: Session, gallery: str, identity_id: int) -> Identity:
        g = self._gallery(session, gallery)
        identity = crud.get_identity(session, gallery_id=g.id, identity_id=identity_id)
        if identity is None:
            raise not_found("identity", identity_id)
        return identity

    # --- faces ----------------------------------------------------------------------------------------

    def list_faces(self, gallery: str, identity_id: int) -> schemas.FacesPublic:
        with self.db.read() as session:
            identity = self._identity(session, gallery, identity_id)
            faces = crud.list_faces(session, identity_id=identity.id)
            with_crop = crud.crop_presence(session, face_ids=[f.id for f in faces])
        return schemas.FacesPublic(
            items=[
                schemas.FacePublic(
                    id=f.id,
                    identity_id=f.identity_id,
                    image_sha256=f.image_sha256,
                    reindexable=f.id in with_crop,
                    created_at=f.created_at,
                )
                for f in faces
            ]
        )

    def enroll(
        self,
        gallery: str,
        identity_id: int,
        uploads: Sequence[Upload],
        *,
        detect: bool = True,
        multiple_faces: Literal["reject", "largest"] | None = None,
        allow_conflict: bool = False,
        allow_mismatch: bool = False,
    ) -> schemas.EnrollPublic:
        """Add faces to an identity; each file is accepted or rejected on its own, with a reason code.

        With ``detect`` the photo must pass the quality gates (one face unless ``multiple_faces="largest"``,
        big, sharp, lit and frontal enough; see ``FACEDB_QUALITY__*``); without it the whole image is the
        face. A face that is near-certainly a *different* identity of the gallery (1:N at FACEDB_CONFLICT_FPIR) is
        rejected as ``identity_conflict`` unless ``allow_conflict``; one that does not look like the identity's
        own faces (1:1 at FACEDB_MISMATCH_FAR) as ``face_mismatch`` unless ``allow_mismatch``. A face accepted below
        the conflict bar that identify would still name as another identity is reported in ``warnings`` as
        ``possible_duplicate`` (FACEDB_POSSIBLE_DUPLICATE_WARNINGS; not with ``allow_conflict``). Each face is
        embedded by the active model and by every version a re-index is building, and its crop is kept (unless
        ``FACEDB_STORE_CROPS=false``) so that later models can re-embed it.
        """
        self._check_count(len(uploads))
        serving, building = self.serving, dict(self._building)
        with self.db.read() as session:
            target = self._identity(session, gallery, identity_id)
            known = crud.identity_image_hashes(session, identity_id=target.id)
        rejected: list[schemas.RejectedFile] = []
        kept: list[tuple[Upload, str, FaceImage]] = []
        for upload in uploads:
            digest = hashlib.sha256(upload.data).hexdigest()
            try:
                self._check_size(upload)
                if digest in known:
                    raise FacedbError(409, "duplicate_image", "this identity already has a face from this image")
                face = self._enrolment_face(upload, detect=detect, multiple_faces=multiple_faces)
            except (ImageError, FacedbError) as exc:
                rejected.append(schemas.RejectedFile(filename=upload.filename, code=exc.code, message=exc.message))
                continue
            known.add(digest)
            kept.append((upload, digest, face))
        accepted: list[schemas.AcceptedFace] = []
        warnings: list[schemas.EnrollWarning] = []
        if kept:
            faces_in = [f for _, _, f in kept]
            templates = {serving.model.id: self._embed_faces(serving.embedder, faces_in)}
            for mv_id, embedder in building.items():
                templates[mv_id] = self._embed_faces(embedder, faces_in)
            screen = Screen(conflict=not allow_conflict, mismatch=not allow_mismatch)
            lookalikes: list[Lookalike] = []
            stored = self._store_faces(serving, gallery, identity_id, kept, templates, screen, rejected, lookalikes)
            face_of = {i: f.id for i, f in stored}
            warnings = [_possible_duplicate(kept[w.position][0].filename, face_of[w.position], w) for w in lookalikes]
            accepted = [
                schemas.AcceptedFace(
                    filename=kept[i][0].filename,
                    face_id=f.id,
                    reindexable=self.settings.store_crops,
                    face=_face_box(kept[i][2]),
                )
                for i, f in stored
            ]
            self.serving.indexes.catch_up()
        result = schemas.EnrollPublic(identity_id=identity_id, accepted=accepted, rejected=rejected, warnings=warnings)
        if not accepted:
            raise FacedbError(
                422,
                "no_face_enrolled",
                "no file was accepted: " + "; ".join(f"{r.filename}: {r.code}" for r in rejected),
                details={"rejected": [r.model_dump() for r in rejected]},
            )
        return result

    def _enrolment_face(
        self, upload: Upload, *, detect: bool, multiple_faces: Literal["reject", "largest"] | None
    ) -> FaceImage:
        image = self._decode(upload)
        if not detect or self.detector is None:
            return whole_image(image, max_side=self.settings.crop_max_side)
        gates = self.settings.quality
        if multiple_faces is not None:
            gates = gates.model_copy(update={"multiple_faces": multiple_faces})
        try:
            with self._stage("detect"):
                return enrolment_face(image, self.detector, gates)
        except FaceRejectedError as exc:
            raise FacedbError(422, exc.code, str(exc), details={"codes": exc.codes}) from exc

    def _store_faces(
        self,
        serving: Serving,
        gallery: str,
        identity_id: int,
        kept: list[tuple[Upload, str, FaceImage]],
        templates: dict[int, np.ndarray],
        screen: Screen,
        rejected: list[schemas.RejectedFile],
        lookalikes: list[Lookalike],
    ) -> list[tuple[int, Face]]:
        """Screen the faces and store those that pass, in one transaction that holds the change-log lock with the
        index caught up to it, so that no face committed meanwhile escapes the check (two enrolments of one person
        into two identities cannot both pass). Returns (position in ``kept``, stored face) pairs."""
        for _ in range(ENROL_ATTEMPTS):
            serving.indexes.catch_up()  # outside the lock: catching up may itself write (template backfill)
            try:
                with self.db.write() as session:
                    crud.lock_changes(session)
                    if crud.max_seq(session) != serving.indexes.applied_seq:
                        continue  # another writer committed since the catch-up: catch up again
                    identity = self._identity(session, gallery, identity_id)
                    x = templates[serving.model.id]
                    keep = self._screen(session, serving, identity, kept, x, screen, rejected, lookalikes)
                    if not keep:
                        return []
                    faces = crud.add_faces(
                        session,
                        identity=identity,
                        templates={mv: x[keep] for mv, x in templates.items()},
                        image_hashes=[kept[i][1] for i in keep],
                        crops=[self._stored_crop(kept[i][2]) for i in keep],
                        detections=[kept[i][2].detection_record() for i in keep],
                        seal=self.crops.seal,
                    )
                    return list(zip(keep, faces, strict=True))
            except IntegrityError as exc:  # the same image, enrolled by a concurrent request
                raise FacedbError(
                    409, "duplicate_image", "this identity already has a face from one of these images"
                ) from exc
        raise FacedbError(503, "busy", "the gallery changed too often to check this enrolment; try again")

    def _screen(
        self,
        session: Session,
        serving: Serving,
        identity: Identity,
        kept: list[tuple[Upload, str, FaceImage]],
        x: np.ndarray,
        screen: Screen,
        rejected: list[schemas.RejectedFile],
        lookalikes: list[Lookalike],
    ) -> list[int]:
        """Positions of the faces that pass: not another identity's (``identity_conflict``: another identity scores,
        as identify scores it (FACEDB_IDENTITY_SCORE), at or above the 1:N conflict threshold) and, where the
        identity already has faces (or an earlier face of this request was kept), like them (else ``face_mismatch``:
        the best of its faces scores below the 1:1 mismatch threshold). A face that passes although identify would
        name another identity for it (at identify's threshold, below the conflict bar) goes to ``lookalikes``."""
        hits: list[list[Hit]] = [[] for _ in kept]
        refs: dict[int, Identity] = {}
        t_conflicts = [self._conflict_threshold(serving, identity.gallery_id, face) for _, _, face in kept]
        if screen.conflict:
            with self._stage("search"):
                hits = serving.indexes.search(identity.gallery_id, x, 2)
            others = sorted({h.identity_id for row in hits for h in row if h.identity_id != identity.id})
            refs = crud.identity_refs(session, identity_ids=others)
        t_mismatches = [self._mismatch_threshold(serving, face) for _, _, face in kept]
        own = crud.identity_embeddings(session, identity_id=identity.id, model_version_id=serving.model.id)
        keep: list[int] = []
        for i, (row, t_conflict, t_mismatch) in enumerate(zip(hits, t_conflicts, t_mismatches, strict=True)):
            filename = kept[i][0].filename
            clash = next((h for h in row if h.identity_id != identity.id and h.score >= t_conflict), None)
            if clash is not None:
                rejected.append(_conflict(filename, clash, refs.get(clash.identity_id), t_conflict))
                continue
            score = float((own @ x[i]).max()) if len(own) else None
            if screen.mismatch and score is not None and score < t_mismatch:
                rejected.append(_mismatch(filename, identity, score, t_mismatch))
                continue
            keep.append(i)
            own = np.vstack([own.reshape(-1, x.shape[1]), x[i : i + 1]])
        if self.settings.possible_duplicate_warnings:
            t_warn = [
                self._identify_threshold(serving, identity.gallery_id, None, face=f).threshold for _, _, f in kept
            ]
            lookalikes += _lookalikes(identity.id, hits, refs, keep, own, x, t_warn)
        return keep

    def delete_face(self, gallery: str, identity_id: int, face_id: int) -> None:
        with self.db.write() as session:
            identity = self._identity(session, gallery, identity_id)
            face = crud.get_face(session, identity_id=identity.id, face_id=face_id)
            if face is None:
                raise not_found("face", face_id)
            crud.delete_face(session, face=face)
        self.serving.indexes.catch_up()

    # --- identify and verify --------------------------------------------------------------------------

    def identify(
        self,
        gallery: str,
        upload: Upload,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        detect: bool = True,
        max_faces: int | None = None,
    ) -> schemas.IdentifyPublic:
        """1:N for every face in the photo (largest first); the top-level answer is the largest face's."""
        k = self.settings.default_top_k if top_k is None else top_k
        if not 1 <= k <= self.settings.max_top_k:
            raise FacedbError(422, "invalid_top_k", f"top_k must be between 1 and {self.settings.max_top_k}")
        n_max = self.settings.max_faces if max_faces is None else max_faces
        if not 1 <= n_max <= self.settings.max_faces:
            raise FacedbError(422, "invalid_max_faces", f"max_faces must be between 1 and {self.settings.max_faces}")
        serving = self.serving
        self._check_threshold(threshold)
        with self.db.read() as session:
            g = self._gallery(session, gallery)
        faces = self._probe_faces(upload, detect=detect)[:n_max]
        decisions = [self._identify_threshold(serving, g.id, threshold, face=f) for f in faces]
        x = self._embed_faces(serving.embedder, faces) if faces else None
        with self._stage("search"):
            hits = serving.indexes.search(g.id, x, k) if x is not None else []
        with self.db.read() as session:
            refs = crud.identity_refs(session, identity_ids=[h.identity_id for row in hits for h in row])
        results = []
        for face, row, decision in zip(faces, hits, decisions, strict=True):
            candidates = [
                schemas.Candidate(
                    identity=schemas.IdentityRef(id=r.id, external_id=r.external_id, display_name=r.display_name),
                    score=h.score,
                    face_id=h.face_id,
                )
                for h in row
                if (r := refs.get(h.identity_id)) is not None  # deleted between search and lookup
            ]
            match = candidates[0] if candidates and candidates[0].score >= decision.threshold else None
            results.append(
                schemas.FaceResult(
                    face=_face_box(face),
                    quality=_quality(face),
                    candidates=candidates,
                    match=match,
                    threshold=decision.threshold,
                    condition=decision.condition,
                )
            )
        first = results[0] if results else None
        decision = decisions[0] if decisions else self._identify_threshold(serving, g.id, threshold)
        return schemas.IdentifyPublic(
            gallery=gallery,
            model_version=serving.model.label,
            threshold=decision.threshold,
            threshold_source=decision.source,
            target_fpir=decision.target_fpir,
            gallery_size=decision.gallery_size,
            condition=decision.condition,
            candidates=first.candidates if first else [],
            match=first.match if first else None,
            faces=results,
        )

    def verify_identity(
        self, gallery: str, identity_id: int, upload: Upload, *, threshold: float | None = None, detect: bool = True
    ) -> schemas.VerifyPublic:
        """1:1: is the (largest) person in the image this identity? Score = best face's cosine similarity."""
        serving = self.serving
        self._check_threshold(threshold)
        with self.db.read() as session:
            identity = self._identity(session, gallery, identity_id)
            templates = crud.identity_embeddings(session, identity_id=identity.id, model_version_id=serving.model.id)
        if len(templates) == 0:
            raise FacedbError(409, "identity_has_no_faces", f"identity {identity_id} has no enrolled faces")
        face = self._largest_face(upload, detect=detect)
        t, condition = self._verify_threshold(serving, threshold, [face])
        q = self._embed_faces(serving.embedder, [face])
        score = float((templates @ q[0]).max())
        return schemas.VerifyPublic(
            model_version=serving.model.label,
            score=score,
            threshold=t,
            match=score >= t,
            condition=condition,
            faces=[_face_box(face)],
        )

    def verify_pair(
        self, a: Upload, b: Upload, *, threshold: float | None = None, detect: bool = True
    ) -> schemas.VerifyPublic:
        """1:1 between the largest faces of two photos."""
        serving = self.serving
        self._check_threshold(threshold)
        faces = [self._largest_face(a, detect=detect), self._largest_face(b, detect=detect)]
        t, condition = self._verify_threshold(serving, threshold, faces)
        x = self._embed_faces(serving.embedder, faces)
        score = float(x[0] @ x[1])
        return schemas.VerifyPublic(
            model_version=serving.model.label,
            score=score,
            threshold=t,
            match=score >= t,
            condition=condition,
            faces=[_face_box(f) for f in faces],
        )

    def _probe_faces(self, upload: Upload, *, detect: bool) -> list[FaceImage]:
        """Every face of a probe photo, largest first, each with its quality measured (not gated)."""
        self._check_size(upload)
        try:
            image = self._decode(upload)
        except ImageError as exc:
            raise FacedbError(422, exc.code, f"{upload.filename or 'image'}: {exc.message}") from exc
        if not detect or self.detector is None:
            return [whole_image(image, max_side=self.settings.crop_max_side)]
        with self._stage("detect"):
            return probe_faces(image, self.detector, self.settings.quality)

    def _largest_face(self, upload: Upload, *, detect: bool) -> FaceImage:
        faces = self._probe_faces(upload, detect=detect)
        if not faces:
            raise FacedbError(422, "no_face", f"{upload.filename or 'image'}: no face found in the image")
        return faces[0]

    # --- health ---------------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """(ready, checks): model loaded, database reachable, index caught up."""
        checks: dict[str, object] = {"model": self._serving is not None}
        try:
            lag = self.indexes.lag() if self._serving is not None else None
            checks["database"] = True
        except Exception as exc:  # any driver error means "not reachable"
            log.warning("readiness: database check failed: %s", exc)
            checks["database"] = False
            lag = None
        checks["index_lag"] = lag
        checks["index_faces"] = self.indexes.stats().faces if self._serving is not None else None
        checks["index_kinds"] = (
            {str(g): kind for g, kind in self.indexes.kinds().items()} if self._serving is not None else None
        )
        checks["model_version"] = self.active.label if self._serving is not None else None
        ready = bool(checks["model"]) and bool(checks["database"]) and lag == 0
        return ready, checks

    # --- helpers --------------------------------------------------------------------------------------

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        """Report the time spent in one stage of the face path (decode, detect, embed, search) to ``on_stage``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.on_stage(name, time.perf_counter() - started)

    def _decode(self, upload: Upload) -> np.ndarray:
        """RGB (H, W, 3) uint8 pixels of an upload, within the image limits (ImageError otherwise)."""
        with self._stage("decode"):
            return decode(
                upload.data,
                max_pixels=self.settings.max_pixels,
                max_aspect=self.settings.max_aspect_ratio,
                max_side=self.settings.max_side,
            )

    def _embed(self, embedder: Embedder, images: Sequence[np.ndarray]) -> np.ndarray:
        with self._stage("embed"):
            if self._batcher is not None:
                return self._batcher.embed(embedder.embed, images)
            return embedder.embed(images)

    def _embed_faces(self, embedder: Embedder, faces: Sequence[FaceImage]) -> np.ndarray:
        """float32 (N, D): each face cut to the framing this embedder's model expects, then embedded."""
        return self._embed(embedder, [f.for_model(embedder.card.input) for f in faces])

    def _stored_crop(self, face: FaceImage) -> tuple[bytes, int, int, bool] | None:
        if not self.settings.store_crops:
            return None
        return encode_crop(face.image), int(face.image.shape[1]), int(face.image.shape[0]), face.aligned

    def _check_size(self, upload: Upload) -> None:
        if len(upload.data) > self.settings.max_upload_bytes:
            raise FacedbError(
                413,
                "image_too_large",
                f"{upload.filename or 'image'} is larger than {self.settings.max_upload_bytes} bytes",
            )

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise FacedbError(422, "no_images", "send at least one `image` file")
        if n > self.settings.max_images_per_request:
            raise FacedbError(
                413,
                "too_many_images",
                f"at most {self.settings.max_images_per_request} images per request",
            )

    @staticmethod
    def _check_threshold(threshold: float | None) -> None:
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise FacedbError(422, "invalid_threshold", "threshold must be between -1 and 1")

    def _threshold(self, serving: Serving, threshold: float | None) -> float:
        """1:1 (verify): the request's threshold, FACEDB_THRESHOLD, or the model card's default."""
        self._check_threshold(threshold)
        if threshold is not None:
            return threshold
        if self.settings.threshold is not None:
            return self.settings.threshold
        return serving.model.default_threshold

    def _verify_threshold(
        self, serving: Serving, threshold: float | None, faces: Sequence[FaceImage]
    ) -> tuple[float, str | None]:
        """1:1 (verify): (threshold, photo condition). The request's threshold or FACEDB_THRESHOLD as given; the
        card's default is moved, when either face is in a photo condition the card has a table for (grey), by as
        much as that table sits above the colour one at the default's FAR, so the FAR holds for a grey camera too."""
        t = self._threshold(serving, threshold)
        if threshold is not None or self.settings.threshold is not None or serving.open_set is None:
            return t, None
        for face in faces:
            condition, cal = _conditioned(serving.open_set, face)
            if condition is not None:
                far = serving.embedder.card.default_threshold_far
                return t + cal.threshold_at_far(far) - serving.open_set.threshold_at_far(far), condition
        return t, None

    def _identify_threshold(
        self, serving: Serving, gallery_id: int, threshold: float | None, *, face: FaceImage | None = None
    ) -> Decision:
        """1:N: the request's threshold, FACEDB_THRESHOLD, or the one for FACEDB_TARGET_FPIR at the gallery's size,
        from the card's table for ``face``'s photo condition (grey) where it carries one."""
        if threshold is not None:
            return Decision(threshold, "request")
        if self.settings.threshold is not None:
            return Decision(self.settings.threshold, "setting")
        if serving.open_set is None:
            return Decision(serving.model.default_threshold, "model")
        n = serving.indexes.gallery_size(gallery_id)
        fpir = self.settings.target_fpir
        condition, cal = _conditioned(serving.open_set, face)
        return Decision(cal.threshold(n, fpir), "calibrated", target_fpir=fpir, gallery_size=n, condition=condition)

    def _conflict_threshold(self, serving: Serving, gallery_id: int, face: FaceImage | None = None) -> float:
        """Enrolment's bar for "this face is another identity": 1:N at FACEDB_CONFLICT_FPIR for every *face* of the
        gallery, even where identities score by the mean of their faces.

        Scoring by the mean names a person more surely than their best face does (re-enrolments caught: 90.6%
        against 89.3% at the same 0.33% refusals, benchmarks/README.md), but a bar set for the people compared is
        lower than one set for their faces: with AT&T's 40 people of 10 photos it called two of them one person.
        The faces' count keeps the bar where a face-by-face check had it, and the calibration split agrees: the mean
        of two or three faces meets strangers about as often as two or three single photos do
        (`python -m benchmarks.open_set_ablations templates`). A grey ``face`` gets the card's grey table, as identify
        does."""
        if serving.open_set is None:
            return serving.model.default_threshold
        faces = serving.indexes.gallery_size(gallery_id, by="best")
        return _conditioned(serving.open_set, face)[1].threshold(faces, self.settings.conflict_fpir)

    def _mismatch_threshold(self, serving: Serving, face: FaceImage | None = None) -> float:
        """Enrolment's bar for "this face is the identity it is added to": 1:1 at FACEDB_MISMATCH_FAR, from the
        card's table for ``face``'s photo condition (grey) where it carries one."""
        if serving.open_set is None:
            return serving.model.default_threshold
        return _conditioned(serving.open_set, face)[1].threshold_at_far(self.settings.mismatch_far)


def _conditioned(cal: OpenSetCalibration, face: FaceImage | None) -> tuple[str | None, OpenSetCalibration]:
    """(condition, calibration for it) of a probe face: the card's table for a grey photo where it carries one."""
    if face is None:
        return None, cal
    condition = face.condition
    if condition not in cal.condition_thresholds:
        return None, cal
    return condition, cal.under(condition)


def _conflict(filename: str, clash: Hit, other: Identity | None, threshold: float) -> schemas.RejectedFile:
    name = other.external_id if other is not None else str(clash.identity_id)
    return schemas.RejectedFile(
        filename=filename,
        code="identity_conflict",
        message=f"this face is identity {clash.identity_id} ({name}): score {clash.score:.3f} >= {threshold:.3f}; "
        "send allow_conflict=true to enrol it anyway",
        other_identity=clash.identity_id,
        score=clash.score,
        threshold=threshold,
    )


def _lookalikes(
    identity_id: int,
    hits: list[list[Hit]],
    refs: dict[int, Identity],
    keep: list[int],
    own: np.ndarray,
    x: np.ndarray,
    thresholds: Sequence[float],
) -> list[Lookalike]:
    """The kept faces (positions ``keep`` in ``x``) whose best other identity in ``hits`` scores at or above
    their ``thresholds`` (identify's, one per face of ``x``) and above every other face of their own identity
    (``own`` (M, D): its faces, this request's kept ones last), so that a person enrolled with several photos is
    warned about only where a photo looks more like someone else than like any of theirs."""
    first = len(own) - len(keep)
    out: list[Lookalike] = []
    for n, i in enumerate(keep):
        other = next((h for h in hits[i] if h.identity_id != identity_id), None)
        if other is None or other.score < thresholds[i]:
            continue
        mine = np.delete(own, first + n, axis=0)
        if len(mine) == 0 or other.score > float((mine @ x[i]).max()):
            out.append(Lookalike(i, other, refs.get(other.identity_id), thresholds[i]))
    return out


def _possible_duplicate(filename: str, face_id: int, lookalike: Lookalike) -> schemas.EnrollWarning:
    hit, other = lookalike.hit, lookalike.other
    name = other.external_id if other is not None else str(hit.identity_id)
    return schemas.EnrollWarning(
        filename=filename,
        face_id=face_id,
        code="possible_duplicate",
        message=f"accepted, but identify would name this face as identity {hit.identity_id} ({name}): score "
        f"{hit.score:.3f} >= {lookalike.threshold:.3f}; if it is that person, delete face {face_id} (or this identity)",
        other_identity=hit.identity_id,
        score=hit.score,
        threshold=lookalike.threshold,
    )


def _mismatch(filename: str, identity: Identity, score: float, threshold: float) -> schemas.RejectedFile:
    return schemas.RejectedFile(
        filename=filename,
        code="face_mismatch",
        message=f"this face does not look like identity {identity.id} ({identity.external_id}): its best score "
        f"against that identity's faces is {score:.3f} < {threshold:.3f}; send allow_mismatch=true to add it anyway",
        other_identity=identity.id,
        score=score,
        threshold=threshold,
    )


def _face_box(face: FaceImage) -> schemas.FaceBox | None:
    d = face.detection
    if d is None:
        return None
    return schemas.FaceBox(
        box=[round(float(v), 2) for v in d.box],
        landmarks=[[round(float(v), 2) for v in p] for p in d.landmarks],
        score=float(d.score),
        detector=d.detector,
    )


def _quality(face: FaceImage) -> schemas.QualityPublic | None:
    q = face.quality
    if q is None:
        return None
    return schemas.QualityPublic(passed=q.passed, codes=q.codes, measures=q.measures())


def _identity_public(identity: Identity, gallery: str, face_count: int) -> schemas.IdentityPublic:
    return schemas.IdentityPublic(
        id=identity.id,
        gallery=gallery,
        external_id=identity.external_id,
        display_name=identity.display_name,
        metadata=identity.meta or {},
        face_count=face_count,
        created_at=identity.created_at,
        updated_at=identity.updated_at,
    )


def _duplicate_external_id(external_id: str, gallery: str) -> FacedbError:
    return FacedbError(
        409,
        "duplicate_external_id",
        f"an identity with external_id {external_id!r} exists in gallery {gallery!r}",
    )
