"""Request and response models, in ``XCreate`` / ``XUpdate`` / ``XPublic`` families."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from service.db.models import as_utc

GALLERY_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_METADATA_BYTES: Final = 16 * 1024
"""Largest metadata object, as compact JSON (UTF-8)."""
MAX_METADATA_DEPTH: Final = 16


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    return value


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """JSON that every database stores alike: no NUL in keys or strings, finite numbers, bounded depth and size."""

    def walk(node: Any, depth: int) -> None:
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata may nest at most {MAX_METADATA_DEPTH} levels")
        if isinstance(node, str):
            _no_nul(node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError("metadata numbers must be finite (no NaN or Infinity)")
        elif isinstance(node, dict):
            for key, item in node.items():
                _no_nul(key)
                walk(item, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(value, 0)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")
    return value


# Every timestamp in and out is UTC with its zone; a naive input means UTC.
UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]
GalleryName = Annotated[str, StringConstraints(pattern=GALLERY_NAME_PATTERN)]
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=256, strip_whitespace=True), AfterValidator(_no_nul)
]
DisplayName = Annotated[str, StringConstraints(max_length=256), AfterValidator(_no_nul)]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]


class GalleryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: GalleryName = Field(description="Lower-case letters, digits, '-' and '_'; at most 64 characters.")


class GalleryPublic(BaseModel):
    name: str
    created_at: UtcDateTime
    identity_count: int
    face_count: int


class GalleriesPublic(BaseModel):
    items: list[GalleryPublic]


class IdentityCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_id: ExternalId = Field(description="Your key for this person; unique within the gallery.")
    display_name: DisplayName | None = None
    metadata: Metadata = Field(
        default_factory=dict, description=f"Any JSON object of at most {MAX_METADATA_BYTES} bytes, finite numbers."
    )


class IdentityUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_id: ExternalId | None = None
    display_name: DisplayName | None = None
    metadata: Metadata | None = None


class IdentityPublic(BaseModel):
    id: int
    gallery: str
    external_id: str
    display_name: str | None
    metadata: dict[str, Any]
    face_count: int
    created_at: UtcDateTime
    updated_at: UtcDateTime


class IdentitiesPublic(BaseModel):
    items: list[IdentityPublic]
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class FacePublic(BaseModel):
    id: int
    identity_id: int
    image_sha256: str
    reindexable: bool = Field(description="Its crop is stored, so a new model can re-embed it.")
    created_at: UtcDateTime


class FacesPublic(BaseModel):
    items: list[FacePublic]


class FaceBox(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in pixels of the uploaded image.")
    landmarks: list[list[float]] = Field(
        description="(x, y) of the eye centres, nose tip and mouth corners, image-left first."
    )
    score: float = Field(description="The detector's confidence (its own scale).")
    detector: str


class QualityPublic(BaseModel):
    passed: bool = Field(description="Would pass the enrolment gates.")
    codes: list[str] = Field(description="Gates it fails: face_too_small, too_blurry, extreme_pose, ...")
    measures: dict[str, float]


class AcceptedFace(BaseModel):
    filename: str
    face_id: int
    reindexable: bool = Field(description="false when crops are not kept (FACEDB_STORE_CROPS=false).")
    face: FaceBox | None = Field(description="Where the face was found; null with detect=false.")


class RejectedFile(BaseModel):
    filename: str
    code: str
    message: str
    other_identity: int | None = Field(
        default=None,
        description="identity_conflict: the identity the face matched; face_mismatch: the identity it was added to.",
    )
    score: float | None = Field(default=None, description="The score that decided a conflict or mismatch.")
    threshold: float | None = Field(default=None, description="The threshold it was compared with.")


class EnrollWarning(BaseModel):
    filename: str
    face_id: int = Field(description="The accepted face the warning is about (delete it if it is a duplicate).")
    code: str = Field(description="possible_duplicate: identify would name another identity for this face.")
    message: str
    other_identity: int = Field(description="The identity the face looks like.")
    score: float = Field(description="Its score, as identify scores it.")
    threshold: float = Field(description="Identify's threshold for the gallery (below the identity_conflict bar).")


class EnrollPublic(BaseModel):
    identity_id: int
    accepted: list[AcceptedFace]
    rejected: list[RejectedFile]
    warnings: list[EnrollWarning] = Field(
        default_factory=list,
        description="Accepted faces that identify would match to another identity, below the identity_conflict "
        "bar: possible duplicates for a person to review.",
    )


class IdentityRef(BaseModel):
    id: int
    external_id: str
    display_name: str | None


class Candidate(BaseModel):
    identity: IdentityRef
    score: float = Field(description="Cosine similarity of the probe to this person's best-matching face.")
    face_id: int


class FaceResult(BaseModel):
    face: FaceBox | None = Field(description="Null with detect=false (the whole image is the face).")
    quality: QualityPublic | None
    candidates: list[Candidate] = Field(description="Distinct identities, best first.")
    match: Candidate | None = Field(description="The top candidate if its score >= threshold, else null.")
    threshold: float | None = Field(
        default=None, description="This face's threshold (a grey photo has its own: `condition`)."
    )
    condition: str | None = Field(
        default=None,
        description="The photo condition whose calibration set this face's threshold (grey: a black-and-white or "
        "infrared photo); null: the model card's own (colour) table.",
    )


class IdentifyPublic(BaseModel):
    gallery: str
    model_version: str
    threshold: float = Field(description="`match` means the largest face's top candidate's score is >= this.")
    threshold_source: Literal["request", "setting", "calibrated", "model"] = Field(
        description="request: the request's `threshold`; setting: FACEDB_THRESHOLD; calibrated: set for "
        "`target_fpir` against `gallery_size` from the model card's 1:N calibration; model: the card's 1:1 "
        "default (a card without calibration)."
    )
    target_fpir: float | None = Field(
        description="The share of people not enrolled that may get a match (calibrated thresholds only)."
    )
    gallery_size: int | None = Field(
        description="What the probe was compared with when the threshold was set: the gallery's identities "
        "(FACEDB_IDENTITY_SCORE=mean, the default) or faces (best)."
    )
    condition: str | None = Field(
        default=None, description="The largest face's photo condition, when its calibration set `threshold`."
    )
    candidates: list[Candidate] = Field(description="The largest face's candidates: distinct identities, best first.")
    match: Candidate | None = Field(description="The largest face's decision: its top candidate if >= threshold.")
    faces: list[FaceResult] = Field(description="One result per detected face, largest first (max_faces).")


class VerifyPublic(BaseModel):
    model_version: str
    score: float
    threshold: float
    match: bool
    condition: str | None = Field(
        default=None,
        description="The photo condition (grey) of a face compared, when the card's table for it moved the default "
        "`threshold`.",
    )
    faces: list[FaceBox | None] = Field(
        default_factory=list, description="The face compared in each image: the largest one detected."
    )


class HealthPublic(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorPublic(BaseModel):
    error: ErrorBody


class ModelVersionPublic(BaseModel):
    id: int
    name: str
    version: str
    checksum: str
    status: str
    embedding_dim: int
    default_threshold: float
    thresholds: dict[str, float]
    templates: int = Field(description="Faces that have a template of this version.")
    created_at: UtcDateTime
    activated_at: UtcDateTime | None


class ModelVersionsPublic(BaseModel):
    items: list[ModelVersionPublic]


class ReindexCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_path: str | None = Field(
        default=None,
        max_length=255,
        description="A model file in the server's FACEDB_MODELS_DIR (its name) to register and switch to.",
    )
    model_version: str | None = Field(
        default=None, description="A registered version (id, version or checksum prefix), e.g. to roll back."
    )
    allow_missing: bool = Field(
        default=False, description="Switch even if some faces have no stored crop (they drop out of search)."
    )


class JobPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    id: int
    model_version: str
    status: str
    total: int
    done: int
    failed: int
    rate_per_s: float | None
    eta_s: float | None
    errors: list[dict[str, Any]]
    message: str | None
    started_at: UtcDateTime
    heartbeat_at: UtcDateTime
    finished_at: UtcDateTime | None
    switch_seconds: float | None


KeyName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")]
ScopeName = Literal["admin", "enroll", "identify", "read"]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: KeyName = Field(description="Unique; letters, digits, '_', '.', '@' and '-'; at most 64 characters.")
    scopes: list[ScopeName] = Field(
        min_length=1,
        max_length=4,
        description="admin: everything; enroll: create, change and delete identities and faces; identify: identify "
        "and verify; read: listings and reads.",
    )
    galleries: list[GalleryName] | None = Field(
        default=None, max_length=1000, description="Only these galleries (not for admin keys); null = every gallery."
    )
    expires_at: UtcDateTime | None = Field(default=None, description="When the key stops working; null = never.")
    rate_limit: float | None = Field(
        default=None, gt=0, le=1e6, description="Requests per second; null = the service's FACEDB_RATE_LIMIT_PER_S."
    )


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="The public part of the secret (fdb_<prefix>_...), to tell keys apart.")
    scopes: list[str]
    galleries: list[str] | None
    rate_limit: float | None
    created_by: str | None
    created_at: UtcDateTime
    expires_at: UtcDateTime | None
    revoked_at: UtcDateTime | None


class ApiKeyCreated(ApiKeyPublic):
    secret: str = Field(description="Send as `Authorization: Bearer <secret>`. Shown only now; only a hash is kept.")


class ApiKeysPublic(BaseModel):
    items: list[ApiKeyPublic]


class AuditEventPublic(BaseModel):
    id: int
    at: UtcDateTime
    key_name: str | None
    action: str
    gallery: str | None
    target: dict[str, Any]
    status: int
    outcome: str = Field(description="ok, or the error code the caller got.")
    client: str | None


class AuditEventsPublic(BaseModel):
    items: list[AuditEventPublic] = Field(description="Newest first.")
    next_cursor: int | None = Field(description="Pass as `cursor` for older events; null on the last page.")


class CallerPublic(BaseModel):
    name: str = Field(description="The key's name.")
    scopes: list[str]
    galleries: list[str] | None = Field(description="null: every gallery.")
