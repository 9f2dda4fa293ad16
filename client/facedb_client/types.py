"""The JSON the server answers with, as TypedDicts (timestamps are ISO 8601 strings in UTC)."""

from __future__ import annotations

from typing import Any, TypedDict


class Gallery(TypedDict):
    name: str
    created_at: str
    identity_count: int
    face_count: int


class Galleries(TypedDict):
    items: list[Gallery]


class Identity(TypedDict):
    id: int
    gallery: str
    external_id: str
    display_name: str | None
    metadata: dict[str, Any]
    face_count: int
    created_at: str
    updated_at: str


class Identities(TypedDict):
    items: list[Identity]
    next_cursor: int | None


class Face(TypedDict):
    id: int
    identity_id: int
    image_sha256: str
    reindexable: bool
    created_at: str


class Faces(TypedDict):
    items: list[Face]


class FaceBox(TypedDict):
    box: list[float]
    landmarks: list[list[float]]
    score: float
    detector: str


class AcceptedFace(TypedDict):
    filename: str
    face_id: int
    reindexable: bool
    face: FaceBox | None


class RejectedFile(TypedDict):
    filename: str
    code: str
    message: str
    other_identity: int | None
    score: float | None
    threshold: float | None


class EnrollWarning(TypedDict):
    filename: str
    face_id: int
    code: str
    message: str
    other_identity: int
    score: float
    threshold: float


class Enrollment(TypedDict):
    identity_id: int
    accepted: list[AcceptedFace]
    rejected: list[RejectedFile]
    warnings: list[EnrollWarning]


class IdentityRef(TypedDict):
    id: int
    external_id: str
    display_name: str | None


class Candidate(TypedDict):
    identity: IdentityRef
    score: float
    face_id: int


class FaceResult(TypedDict):
    face: FaceBox | None
    quality: dict[str, Any] | None
    candidates: list[Candidate]
    match: Candidate | None
    threshold: float | None
    condition: str | None


class Identification(TypedDict):
    gallery: str
    model_version: str
    threshold: float
    threshold_source: str
    target_fpir: float | None
    gallery_size: int | None
    condition: str | None
    candidates: list[Candidate]
    match: Candidate | None
    faces: list[FaceResult]


class Verification(TypedDict):
    model_version: str
    score: float
    threshold: float
    match: bool
    condition: str | None
    faces: list[FaceBox | None]


class ModelVersion(TypedDict):
    id: int
    name: str
    version: str
    checksum: str
    status: str
    embedding_dim: int
    default_threshold: float
    thresholds: dict[str, float]
    templates: int
    created_at: str
    activated_at: str | None


class ModelVersions(TypedDict):
    items: list[ModelVersion]


class Job(TypedDict):
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
    started_at: str
    heartbeat_at: str
    finished_at: str | None
    switch_seconds: float | None


class ApiKey(TypedDict):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    galleries: list[str] | None
    rate_limit: float | None
    created_by: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class ApiKeyCreated(ApiKey):
    secret: str


class ApiKeys(TypedDict):
    items: list[ApiKey]


class AuditEvent(TypedDict):
    id: int
    at: str
    key_name: str | None
    action: str
    gallery: str | None
    target: dict[str, Any]
    status: int
    outcome: str
    client: str | None


class AuditEvents(TypedDict):
    items: list[AuditEvent]
    next_cursor: int | None


class Health(TypedDict):
    status: str
    checks: dict[str, Any]


class Caller(TypedDict):
    name: str
    scopes: list[str]
    galleries: list[str] | None
