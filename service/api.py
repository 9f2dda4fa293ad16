"""FastAPI application: thin routes over :class:`FaceService`, one error envelope from one set of handlers."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from service import auth, schemas
from service.admin import AdminService
from service.audit import AuditLog
from service.auth import ANONYMOUS, Authenticator, Caller, Scope
from service.core import FaceService, Upload
from service.errors import FacedbError
from service.logs import RequestIdMiddleware
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.metrics import Metrics, MetricsMiddleware
from service.runtime import Runtime, build_runtime
from service.settings import Settings

log = logging.getLogger(__name__)


def _service(request: Request) -> FaceService:
    service: FaceService = request.app.state.runtime.service
    return service


def _admin(request: Request) -> AdminService:
    admin: AdminService = request.app.state.runtime.admin
    return admin


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _audit_log(request: Request) -> AuditLog:
    audit_log: AuditLog = request.app.state.runtime.audit
    return audit_log


_bearer = HTTPBearer(
    auto_error=False,
    description="An API key's secret: the bootstrap admin key in data_dir/admin.key, or one from `facedb keys create`.",
)


def require(scope: Scope | None) -> Callable[..., Caller]:
    """A dependency admitting callers whose key has ``scope`` (admin has every scope) and, on a route with a
    ``{gallery}``, may use that gallery: 403 ``insufficient_scope`` or ``gallery_forbidden`` otherwise. The key
    itself was checked by :class:`AuthMiddleware` before the body was read."""

    def check(
        request: Request,
        # Read by the middleware; declared here so that the OpenAPI schema (and /docs' Authorize) shows it.
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        caller: Caller | None = getattr(request.state, "caller", None)
        if caller is None:  # the middleware was not in front of this route: fail closed
            raise FacedbError(401, "missing_api_key", "this route needs an API key")
        if caller is not ANONYMOUS and scope is not None:
            request.app.state.authenticator.authorize(caller, scope, request.path_params.get("gallery"))
        return caller

    return check


AdminKey = Annotated[Caller, Depends(require(Scope.ADMIN))]
EnrollKey = Annotated[Caller, Depends(require(Scope.ENROLL))]
IdentifyKey = Annotated[Caller, Depends(require(Scope.IDENTIFY))]
ReadKey = Annotated[Caller, Depends(require(Scope.READ))]


@dataclass
class AuditNote:
    """Ids a route adds to its audit event (what it created or found); the path's ids are added for it."""

    target: dict[str, Any] = field(default_factory=dict)

    def add(self, **ids: Any) -> None:
        self.target.update(ids)


_PATH_IDS = ("identity_id", "face_id", "job_id", "key_id")


def _audited(request: Request) -> Iterator[AuditNote]:
    """Record the request in the audit log once it is answered, whatever the outcome. Requests without a valid
    key are logged, not stored: the log must not be a way for anyone to fill the database."""
    note = AuditNote()
    route = request.scope.get("route")
    status, outcome = getattr(route, "status_code", None) or 200, "ok"
    try:
        yield note
    except Exception as exc:
        status, outcome = _error_status_code(exc)
        raise
    finally:
        _record(request, note, action=getattr(route, "name", request.url.path), status=status, outcome=outcome)


def _record(request: Request, note: AuditNote, *, action: str, status: int, outcome: str) -> None:
    client = request.client.host if request.client else None
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        return
    target = {k: int(v) for k in _PATH_IDS if (v := request.path_params.get(k)) is not None and v.isdigit()}
    target.update(note.target)
    try:
        _audit_log(request).record(
            key_name=caller.name,
            action=action,
            gallery=request.path_params.get("gallery"),
            target=target,
            status=status,
            outcome=outcome,
            client=client,
        )
    except Exception:  # the action itself has already happened; losing its record must be loud, not fatal
        log.exception("audit event not recorded: %s %s by %s -> %s", action, target, caller.name, outcome)


AuditDep = Annotated[AuditNote, Depends(_audited, scope="function")]

MAX_ID = 2**63 - 1
"""Ids are 64-bit signed integers in both databases; anything larger is a validation error, not a query."""
IdentityId = Annotated[int, Path(ge=0, le=MAX_ID, description="An identity's id.")]
FaceId = Annotated[int, Path(ge=0, le=MAX_ID, description="A face's id.")]
JobId = Annotated[int, Path(ge=0, le=MAX_ID, description="A re-index job's id.")]
KeyId = Annotated[int, Path(ge=0, le=MAX_ID, description="An API key's id.")]

ServiceDep = Annotated[FaceService, Depends(_service)]
AdminDep = Annotated[AdminService, Depends(_admin)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ImageFile = Annotated[UploadFile, File(description="The probe photo.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorPublic} for code in (400, 401, 403, 404, 409, 413, 422, 429)
}


def one_of_each(*repeatable: str) -> Any:
    """A dependency refusing a multipart field sent more than once (only ``repeatable`` ones may repeat), instead of
    silently using the last: 422 ``repeated_field``."""

    async def check(request: Request) -> None:
        if not request.headers.get("content-type", "").startswith("multipart/"):
            return
        form = await request.form()  # already parsed for the route's parameters: Starlette caches it
        for name in set(form.keys()) - set(repeatable):
            if len(form.getlist(name)) > 1:
                raise FacedbError(422, "repeated_field", f"the field {name!r} may be sent only once")

    return Depends(check)


def _upload(file: UploadFile, settings: Settings) -> Upload:
    """Read one uploaded file, refusing it before reading when it is over the byte limit."""
    name = file.filename or "image"
    if file.size is not None and file.size > settings.max_upload_bytes:
        raise FacedbError(413, "image_too_large", f"{name} is larger than {settings.max_upload_bytes} bytes")
    return Upload(filename=name, data=file.file.read(settings.max_upload_bytes + 1))


# --- routes ------------------------------------------------------------------------------------------

health = APIRouter(tags=["health"])
v1 = APIRouter(prefix="/v1", responses=ERRORS)


@health.get("/healthz")
def healthz() -> schemas.HealthPublic:
    """The process is alive."""
    return schemas.HealthPublic(status="ok")


@health.get("/metrics", include_in_schema=False)
def metrics_route(request: Request, settings: SettingsDep) -> Response:
    """Prometheus metrics; with FACEDB_METRICS_REQUIRE_KEY=true, only for a key with the read scope."""
    if settings.metrics_require_key and settings.auth == "on":
        authenticator: Authenticator = request.app.state.authenticator
        caller = authenticator.authenticate(_bearer_secret(request.scope))
        authenticator.authorize(caller, Scope.READ)
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


@health.get("/readyz", responses={503: {"model": schemas.HealthPublic}})
def readyz(service: ServiceDep, response: Response) -> schemas.HealthPublic:
    """Model loaded, database reachable, index caught up with the database."""
    ready, checks = service.readiness()
    if not ready:
        response.status_code = 503
    return schemas.HealthPublic(status="ready" if ready else "not_ready", checks=checks)


@v1.post("/galleries", status_code=201, tags=["galleries"])
def create_gallery(
    audit: AuditDep, caller: AdminKey, service: ServiceDep, body: schemas.GalleryCreate
) -> schemas.GalleryPublic:
    audit.add(name=body.name)
    return service.create_gallery(body)


@v1.get("/galleries", tags=["galleries"])
def list_galleries(caller: ReadKey, service: ServiceDep) -> schemas.GalleriesPublic:
    """The galleries the key may use."""
    found = service.list_galleries()
    return schemas.GalleriesPublic(items=[g for g in found.items if caller.may_use(g.name)])


@v1.get("/me", tags=["keys"])
def who_am_i(caller: Annotated[Caller, Depends(require(None))]) -> schemas.CallerPublic:
    """The key making this request: its name, scopes and galleries (any valid key may ask)."""
    return schemas.CallerPublic(
        name=caller.name,
        scopes=sorted(s.value for s in caller.scopes),
        galleries=sorted(caller.galleries) if caller.galleries is not None else None,
    )


@v1.get("/galleries/{gallery}", tags=["galleries"])
def get_gallery(caller: ReadKey, service: ServiceDep, gallery: str) -> schemas.GalleryPublic:
    return service.get_gallery(gallery)


@v1.delete("/galleries/{gallery}", status_code=204, tags=["galleries"])
def delete_gallery(audit: AuditDep, caller: AdminKey, service: ServiceDep, gallery: str) -> None:
    """Delete a gallery with all its identities and faces (not the `default` gallery)."""
    service.delete_gallery(gallery)


@v1.post("/galleries/{gallery}/identities", status_code=201, tags=["identities"])
def create_identity(
    audit: AuditDep, caller: EnrollKey, service: ServiceDep, gallery: str, body: schemas.IdentityCreate
) -> schemas.IdentityPublic:
    created = service.create_identity(gallery, body)
    audit.add(identity_id=created.id)
    return created


@v1.get("/galleries/{gallery}/identities", tags=["identities"])
def list_identities(
    caller: ReadKey,
    service: ServiceDep,
    gallery: str,
    limit: Annotated[int, Query(description="Page size.")] = 100,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_ID, description="`next_cursor` of the previous page.")] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=256, description="Only identities whose external_id or display_name contains this (any case)."
        ),
    ] = None,
) -> schemas.IdentitiesPublic:
    return service.list_identities(gallery, limit=limit, cursor=cursor, q=q)


@v1.get("/galleries/{gallery}/identities/{identity_id}", tags=["identities"])
def get_identity(caller: ReadKey, service: ServiceDep, gallery: str, identity_id: IdentityId) -> schemas.IdentityPublic:
    return service.get_identity(gallery, identity_id)


@v1.patch("/galleries/{gallery}/identities/{identity_id}", tags=["identities"])
def update_identity(
    audit: AuditDep,
    caller: EnrollKey,
    service: ServiceDep,
    gallery: str,
    identity_id: IdentityId,
    body: schemas.IdentityUpdate,
) -> schemas.IdentityPublic:
    audit.add(fields=sorted(body.model_fields_set))
    return service.update_identity(gallery, identity_id, body)


@v1.delete("/galleries/{gallery}/identities/{identity_id}", status_code=204, tags=["identities"])
def delete_identity(
    audit: AuditDep, caller: EnrollKey, service: ServiceDep, gallery: str, identity_id: IdentityId
) -> None:
    """Delete an identity and its faces; it disappears from results at once."""
    service.delete_identity(gallery, identity_id)


@v1.get("/galleries/{gallery}/identities/{identity_id}/faces", tags=["faces"])
def list_faces(caller: ReadKey, service: ServiceDep, gallery: str, identity_id: IdentityId) -> schemas.FacesPublic:
    return service.list_faces(gallery, identity_id)


@v1.post(
    "/galleries/{gallery}/identities/{identity_id}/faces",
    status_code=201,
    tags=["faces"],
    dependencies=[one_of_each("image")],
)
def enroll_faces(
    audit: AuditDep,
    caller: EnrollKey,
    service: ServiceDep,
    settings: SettingsDep,
    gallery: str,
    identity_id: IdentityId,
    image: Annotated[list[UploadFile], File(description="One or more face photos.")],
    detect: Annotated[bool, Form(description="false for pre-cropped faces: the whole image is the face.")] = True,
    multiple_faces: Annotated[
        Literal["reject", "largest"] | None,
        Form(description="Photos with several faces: reject them (default), or enrol the largest face."),
    ] = None,
    allow_conflict: Annotated[
        bool, Form(description="Enrol even if the face is near-certainly another identity (identity_conflict).")
    ] = False,
    allow_mismatch: Annotated[
        bool, Form(description="Add the face even if it does not look like the identity's faces (face_mismatch).")
    ] = False,
) -> schemas.EnrollPublic:
    """Enrol faces. Partial success: each file is accepted with its face id or rejected with a code
    (`no_face`, `multiple_faces`, `face_too_small`, `too_blurry`, `too_dark`, `overexposed`, `extreme_pose`,
    `low_confidence`, `identity_conflict`, `duplicate_image`, or an image error).

    If no file is accepted the answer is 422 `no_face_enrolled` with every rejection in `details`. An accepted face
    that identify would name as another identity is listed in `warnings` as `possible_duplicate` (also kept in the
    audit event: face id -> the other identity).
    """
    if len(image) > settings.max_images_per_request:
        raise FacedbError(413, "too_many_images", f"at most {settings.max_images_per_request} images per request")
    result = service.enroll(
        gallery,
        identity_id,
        [_upload(f, settings) for f in image],
        detect=detect,
        multiple_faces=multiple_faces,
        allow_conflict=allow_conflict,
        allow_mismatch=allow_mismatch,
    )
    audit.add(
        face_ids=[a.face_id for a in result.accepted],
        rejected=[r.code for r in result.rejected],
        possible_duplicates={str(w.face_id): w.other_identity for w in result.warnings},
        allow_conflict=allow_conflict,
        allow_mismatch=allow_mismatch,
    )
    return result


@v1.delete("/galleries/{gallery}/identities/{identity_id}/faces/{face_id}", status_code=204, tags=["faces"])
def delete_face(
    audit: AuditDep, caller: EnrollKey, service: ServiceDep, gallery: str, identity_id: IdentityId, face_id: FaceId
) -> None:
    service.delete_face(gallery, identity_id, face_id)


@v1.post("/galleries/{gallery}/identify", tags=["search"], dependencies=[one_of_each()])
def identify(
    audit: AuditDep,
    caller: IdentifyKey,
    service: ServiceDep,
    settings: SettingsDep,
    gallery: str,
    image: ImageFile,
    top_k: Annotated[int | None, Form(description="How many distinct identities to return.")] = None,
    threshold: Annotated[float | None, Form(description="Decision threshold; default from the model.")] = None,
    detect: Annotated[bool, Form(description="false for pre-cropped faces: the whole image is the face.")] = True,
    max_faces: Annotated[int | None, Form(description="At most this many faces, largest first.")] = None,
) -> schemas.IdentifyPublic:
    """1:N: who is this? One result per detected face, largest first; the top-level `candidates` and
    `match` are the largest face's (candidates are distinct identities, best first)."""
    result = service.identify(
        gallery, _upload(image, settings), top_k=top_k, threshold=threshold, detect=detect, max_faces=max_faces
    )
    audit.add(
        faces=len(result.faces),
        matched_identity_ids=[f.match.identity.id if f.match else None for f in result.faces],
        threshold=result.threshold,
    )
    return result


@v1.post("/galleries/{gallery}/verify", tags=["search"], dependencies=[one_of_each()])
def verify_identity(
    audit: AuditDep,
    caller: IdentifyKey,
    service: ServiceDep,
    settings: SettingsDep,
    gallery: str,
    image: ImageFile,
    identity_id: Annotated[int, Form(ge=0, le=MAX_ID, description="The claimed identity.")],
    threshold: Annotated[float | None, Form()] = None,
    detect: Annotated[bool, Form()] = True,
) -> schemas.VerifyPublic:
    """1:1: is this person the claimed identity? With several faces, the largest is compared."""
    audit.add(identity_id=identity_id)
    result = service.verify_identity(gallery, identity_id, _upload(image, settings), threshold=threshold, detect=detect)
    audit.add(match=result.match, score=round(result.score, 4))
    return result


@v1.post("/verify", tags=["search"], dependencies=[one_of_each()])
def verify_pair(
    audit: AuditDep,
    caller: IdentifyKey,
    service: ServiceDep,
    settings: SettingsDep,
    image_a: Annotated[UploadFile, File()],
    image_b: Annotated[UploadFile, File()],
    threshold: Annotated[float | None, Form()] = None,
    detect: Annotated[bool, Form()] = True,
) -> schemas.VerifyPublic:
    """1:1: are the people in two photos the same person? The largest face of each is compared."""
    result = service.verify_pair(
        _upload(image_a, settings), _upload(image_b, settings), threshold=threshold, detect=detect
    )
    audit.add(match=result.match, score=round(result.score, 4))
    return result


admin = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ERRORS)


@admin.get("/models")
def list_models(caller: AdminKey, admin_service: AdminDep) -> schemas.ModelVersionsPublic:
    """Registered model versions: active, building, retired, with their template counts."""
    return admin_service.list_models()


@admin.post("/reindex", status_code=202)
def start_reindex(
    audit: AuditDep, caller: AdminKey, admin_service: AdminDep, body: schemas.ReindexCreate
) -> schemas.JobPublic:
    """Re-embed every stored face with another model, then switch to it; identify keeps working meanwhile.

    Give `model_path` (a file on the server) to register a new model, or `model_version` to go back to a
    registered one. Poll `GET /v1/admin/reindex/{job_id}` for progress.
    """
    audit.add(model_path=body.model_path, model_version=body.model_version)
    job = admin_service.start_reindex(body)
    audit.add(job_id=job.id)
    return job


@admin.get("/reindex/{job_id}")
def get_reindex(caller: AdminKey, admin_service: AdminDep, job_id: JobId) -> schemas.JobPublic:
    """Progress of a re-index job: done/total, rate, ETA, errors, and the switch once complete."""
    return admin_service.get_job(job_id)


@admin.post("/keys", status_code=201)
def create_key(
    audit: AuditDep, caller: AdminKey, settings: SettingsDep, request: Request, body: schemas.ApiKeyCreate
) -> schemas.ApiKeyCreated:
    """Create an API key. The answer carries its secret, shown only this once (only its SHA-256 is stored)."""
    key, secret = auth.create_key(
        request.app.state.runtime.db,
        name=body.name,
        scopes=[Scope(s) for s in body.scopes],
        galleries=body.galleries,
        expires_at=body.expires_at,
        rate_limit=body.rate_limit,
        created_by=caller.name,
    )
    audit.add(key_id=key.id, name=key.name, scopes=key.scopes, galleries=key.galleries)
    return schemas.ApiKeyCreated(**auth.key_public(key).model_dump(), secret=secret)


@admin.get("/keys")
def list_keys(caller: AdminKey, request: Request) -> schemas.ApiKeysPublic:
    """Every key, revoked ones included (secrets are never shown again)."""
    return auth.list_keys(request.app.state.runtime.db)


@admin.get("/keys/{key_id}")
def get_key(caller: AdminKey, request: Request, key_id: KeyId) -> schemas.ApiKeyPublic:
    return auth.key_public(auth.get_key(request.app.state.runtime.db, key_id=key_id))


@admin.delete("/keys/{key_id}", status_code=204)
def revoke_key(audit: AuditDep, caller: AdminKey, request: Request, key_id: KeyId) -> None:
    """Revoke a key: it stops working at once on this server, within FACEDB_AUTH_CACHE_S on others."""
    key = auth.revoke_key(request.app.state.runtime.db, key_id=key_id)
    audit.add(name=key.name)
    request.app.state.authenticator.forget(key.prefix)  # at once here; other servers within FACEDB_AUTH_CACHE_S


@admin.get("/audit")
def list_audit(
    caller: AdminKey,
    settings: SettingsDep,
    request: Request,
    limit: Annotated[int, Query(description="Page size (at most FACEDB_MAX_PAGE_SIZE).")] = 100,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_ID, description="`next_cursor` of the previous page.")] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. enroll_faces, identify.")] = None,
    key: Annotated[str | None, Query(max_length=64, description="The key's name.")] = None,
    gallery: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="Events at or after this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Events before this time.")] = None,
) -> schemas.AuditEventsPublic:
    """Who did what: every write and every identify and verify, newest first (never images or embeddings)."""
    if not 1 <= limit <= settings.max_page_size:
        raise FacedbError(422, "invalid_limit", f"limit must be between 1 and {settings.max_page_size}")
    return _audit_log(request).list(
        limit=limit, cursor=cursor, action=action, key_name=key, gallery=gallery, since=since, until=until
    )


# --- errors ------------------------------------------------------------------------------------------


def _envelope(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    if status == 429 and headers is None:
        headers = {"Retry-After": "1"}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed_json", "the request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return 422, "validation_error", "; ".join(parts) or "invalid request"


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _body_error(exc: Exception) -> JSONResponse:
    """FastAPI turns any failure while reading a body into one 400; answer for what actually went wrong: the body
    limit (413, raised by `BodyLimitMiddleware` while the body streamed in), JSON nested too deeply, or else a
    multipart body that does not parse."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, FacedbError):
            return _envelope(cause.status, cause.code, cause.message, cause.details, cause.headers)
        if isinstance(cause, RecursionError):
            return _envelope(400, "malformed_json", "the JSON body is nested too deeply")
        cause = cause.__cause__
    return _envelope(400, "malformed_body", "the multipart body could not be parsed")


def error_response(exc: Exception) -> JSONResponse:
    """The one envelope, ``{"error": {"code", "message"}}``, for any exception a request can end in."""
    if isinstance(exc, FacedbError):
        return _envelope(exc.status, exc.code, exc.message, exc.details, exc.headers)
    if isinstance(exc, RequestValidationError):
        return _envelope(*_validation_message(exc))
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 400 and "parsing the body" in message:
            return _body_error(exc)
        return _envelope(exc.status_code, code, message)
    return _envelope(500, "internal_error", "an unexpected error occurred; it has been logged")


def _error_status_code(exc: Exception) -> tuple[int, str]:
    """The status and error code a request ending in ``exc`` is answered with."""
    response = error_response(exc)
    return response.status_code, json.loads(bytes(response.body))["error"]["code"]


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": {"code", "message"}}``."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        response = error_response(exc)
        if response.status_code == 500:
            log.exception("unhandled error", exc_info=exc)
        elif isinstance(exc, FacedbError) and exc.code == "overloaded":
            app.state.metrics.overloaded.inc()
        return response

    for kind in (FacedbError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle)


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413 before they are buffered."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _envelope(413, "request_too_large", self._message())(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise FacedbError(413, "request_too_large", self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"


class AuthMiddleware:
    """Checks the API key of every ``/v1`` request, and the key's rate, before a byte of the body is read: a caller
    without a valid key costs one hash and (at most every ``FACEDB_AUTH_CACHE_S``) one indexed read, never a body
    parse. Sets ``request.state.caller`` for the routes' scope checks."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        enabled: bool,
        authenticator: Callable[[], Authenticator],
        on_rate_limited: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.authenticator = authenticator
        self.on_rate_limited = on_rate_limited

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        if scope["type"] != "http" or not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        if not self.enabled:  # FACEDB_AUTH=off
            scope.setdefault("state", {})["caller"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        authenticator = self.authenticator()  # made in the lifespan; failing here fails closed
        secret = _bearer_secret(scope)
        try:
            caller = await run_in_threadpool(authenticator.authenticate, secret)
            authenticator.throttle(caller)
        except FacedbError as exc:
            if exc.code == "rate_limited":
                self.on_rate_limited()
            client = scope.get("client")
            log.warning("refused %s %s from %s: %s", scope.get("method"), path, client[0] if client else None, exc.code)
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def _route_path(scope: AsgiScope) -> str:
    """The path the router matches: without the ``root_path`` a proxy prefix adds (e.g. ``--root-path /facedb``)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _bearer_secret(scope: AsgiScope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            kind, _, secret = value.decode("latin-1").partition(" ")
            return secret.strip() if kind.lower() == "bearer" and secret.strip() else None
    return None


# --- the application ---------------------------------------------------------------------------------


def _announce_auth(runtime: Runtime, settings: Settings) -> None:
    """Warn loudly when authentication is off; else make the bootstrap admin key on a database without keys."""
    if settings.auth == "off":
        banner = "!" * 100
        log.warning(
            "%s\nFACEDB_AUTH=off: EVERY /v1 ROUTE IS OPEN to anyone who can reach this port, admin routes included. "
            "For local experiments only.\n%s",
            banner,
            banner,
        )
        return
    auth.ensure_bootstrap_key(runtime.db, settings)


def create_app(
    settings: Settings | None = None, *, runtime_factory: Callable[[Settings], Runtime] | None = None
) -> FastAPI:
    """Build the application; resources are made in the lifespan, not at import."""
    settings = settings or Settings()
    factory = runtime_factory or build_runtime

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = factory(settings)
        app.state.runtime = runtime
        app.state.authenticator = Authenticator(runtime.db, settings)
        metrics.watch(runtime)
        runtime.service.on_stage = metrics.observe_stage
        _announce_auth(runtime, settings)
        stop = threading.Event()
        syncer = threading.Thread(target=runtime.sync_loop, args=(stop,), name="facedb-index-sync", daemon=True)
        syncer.start()
        try:
            yield
        finally:
            stop.set()
            syncer.join()
            runtime.close()

    metrics = Metrics()
    app = FastAPI(
        title="facedb",
        version="0.1.0",
        summary="Face enrollment, 1:N identification and 1:1 verification.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    # Each add_middleware wraps the ones before it: request ids outermost, then metrics, then the key check (an
    # unauthenticated request is answered before any other work), then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(
        AuthMiddleware,
        enabled=settings.auth == "on",
        authenticator=lambda: app.state.authenticator,
        on_rate_limited=metrics.rate_limited.inc,
    )
    app.add_middleware(MetricsMiddleware, metrics=lambda: metrics)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health)
    app.include_router(v1)
    app.include_router(admin)
    _mount_console(app)
    return app


CONSOLE_DIR = FilePath(__file__).resolve().parent / "console"
CONSOLE_HEADERS = {
    # Nothing but this server: no inline script, no CDN, no framing; blob: for the dropped photos it draws.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    """The console's static files, with a strict content security policy."""

    async def get_response(self, path: str, scope: AsgiScope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(CONSOLE_HEADERS)
        return response


def _mount_console(app: FastAPI) -> None:
    @app.get("/console", include_in_schema=False)
    def console() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=308)

    app.mount("/console/", ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")
