"""FastAPI application: thin routes over :class:`FaceService`, one error envelope from one set of handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import schemas
from service.admin import AdminService
from service.core import FaceService, Upload
from service.errors import FacedbError
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


MAX_ID = 2**63 - 1
"""Ids are 64-bit signed integers in both databases; anything larger is a validation error, not a query."""
IdentityId = Annotated[int, Path(ge=0, le=MAX_ID, description="An identity's id.")]
FaceId = Annotated[int, Path(ge=0, le=MAX_ID, description="A face's id.")]
JobId = Annotated[int, Path(ge=0, le=MAX_ID, description="A re-index job's id.")]

ServiceDep = Annotated[FaceService, Depends(_service)]
AdminDep = Annotated[AdminService, Depends(_admin)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ImageFile = Annotated[UploadFile, File(description="The probe photo.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorPublic} for code in (400, 404, 409, 413, 422, 429)
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


@health.get("/readyz", responses={503: {"model": schemas.HealthPublic}})
def readyz(service: ServiceDep, response: Response) -> schemas.HealthPublic:
    """Model loaded, database reachable, index caught up with the database."""
    ready, checks = service.readiness()
    if not ready:
        response.status_code = 503
    return schemas.HealthPublic(status="ready" if ready else "not_ready", checks=checks)


@v1.post("/galleries", status_code=201, tags=["galleries"])
def create_gallery(service: ServiceDep, body: schemas.GalleryCreate) -> schemas.GalleryPublic:
    return service.create_gallery(body)


@v1.get("/galleries", tags=["galleries"])
def list_galleries(service: ServiceDep) -> schemas.GalleriesPublic:
    return service.list_galleries()


@v1.get("/galleries/{gallery}", tags=["galleries"])
def get_gallery(service: ServiceDep, gallery: str) -> schemas.GalleryPublic:
    return service.get_gallery(gallery)


@v1.delete("/galleries/{gallery}", status_code=204, tags=["galleries"])
def delete_gallery(service: ServiceDep, gallery: str) -> None:
    """Delete a gallery with all its identities and faces (not the `default` gallery)."""
    service.delete_gallery(gallery)


@v1.post("/galleries/{gallery}/identities", status_code=201, tags=["identities"])
def create_identity(service: ServiceDep, gallery: str, body: schemas.IdentityCreate) -> schemas.IdentityPublic:
    return service.create_identity(gallery, body)


@v1.get("/galleries/{gallery}/identities", tags=["identities"])
def list_identities(
    service: ServiceDep,
    gallery: str,
    limit: Annotated[int, Query(description="Page size.")] = 100,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_ID, description="`next_cursor` of the previous page.")] = None,
) -> schemas.IdentitiesPublic:
    return service.list_identities(gallery, limit=limit, cursor=cursor)


@v1.get("/galleries/{gallery}/identities/{identity_id}", tags=["identities"])
def get_identity(service: ServiceDep, gallery: str, identity_id: IdentityId) -> schemas.IdentityPublic:
    return service.get_identity(gallery, identity_id)


@v1.patch("/galleries/{gallery}/identities/{identity_id}", tags=["identities"])
def update_identity(
    service: ServiceDep, gallery: str, identity_id: IdentityId, body: schemas.IdentityUpdate
) -> schemas.IdentityPublic:
    return service.update_identity(gallery, identity_id, body)


@v1.delete("/galleries/{gallery}/identities/{identity_id}", status_code=204, tags=["identities"])
def delete_identity(service: ServiceDep, gallery: str, identity_id: IdentityId) -> None:
    """Delete an identity and its faces; it disappears from results at once."""
    service.delete_identity(gallery, identity_id)


@v1.get("/galleries/{gallery}/identities/{identity_id}/faces", tags=["faces"])
def list_faces(service: ServiceDep, gallery: str, identity_id: IdentityId) -> schemas.FacesPublic:
    return service.list_faces(gallery, identity_id)


@v1.post(
    "/galleries/{gallery}/identities/{identity_id}/faces",
    status_code=201,
    tags=["faces"],
    dependencies=[one_of_each("image")],
)
def enroll_faces(
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

    If no file is accepted the answer is 422 `no_face_enrolled` with every rejection in `details`.
    """
    if len(image) > settings.max_images_per_request:
        raise FacedbError(413, "too_many_images", f"at most {settings.max_images_per_request} images per request")
    return service.enroll(
        gallery,
        identity_id,
        [_upload(f, settings) for f in image],
        detect=detect,
        multiple_faces=multiple_faces,
        allow_conflict=allow_conflict,
        allow_mismatch=allow_mismatch,
    )


@v1.delete("/galleries/{gallery}/identities/{identity_id}/faces/{face_id}", status_code=204, tags=["faces"])
def delete_face(service: ServiceDep, gallery: str, identity_id: IdentityId, face_id: FaceId) -> None:
    service.delete_face(gallery, identity_id, face_id)


@v1.post("/galleries/{gallery}/identify", tags=["search"], dependencies=[one_of_each()])
def identify(
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
    return service.identify(
        gallery, _upload(image, settings), top_k=top_k, threshold=threshold, detect=detect, max_faces=max_faces
    )


@v1.post("/galleries/{gallery}/verify", tags=["search"], dependencies=[one_of_each()])
def verify_identity(
    service: ServiceDep,
    settings: SettingsDep,
    gallery: str,
    image: ImageFile,
    identity_id: Annotated[int, Form(ge=0, le=MAX_ID, description="The claimed identity.")],
    threshold: Annotated[float | None, Form()] = None,
    detect: Annotated[bool, Form()] = True,
) -> schemas.VerifyPublic:
    """1:1: is this person the claimed identity? With several faces, the largest is compared."""
    return service.verify_identity(gallery, identity_id, _upload(image, settings), threshold=threshold, detect=detect)


@v1.post("/verify", tags=["search"], dependencies=[one_of_each()])
def verify_pair(
    service: ServiceDep,
    settings: SettingsDep,
    image_a: Annotated[UploadFile, File()],
    image_b: Annotated[UploadFile, File()],
    threshold: Annotated[float | None, Form()] = None,
    detect: Annotated[bool, Form()] = True,
) -> schemas.VerifyPublic:
    """1:1: are the people in two photos the same person? The largest face of each is compared."""
    return service.verify_pair(
        _upload(image_a, settings), _upload(image_b, settings), threshold=threshold, detect=detect
    )


admin = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ERRORS)


@admin.get("/models")
def list_models(admin_service: AdminDep) -> schemas.ModelVersionsPublic:
    """Registered model versions: active, building, retired, with their template counts."""
    return admin_service.list_models()


@admin.post("/reindex", status_code=202)
def start_reindex(admin_service: AdminDep, body: schemas.ReindexCreate) -> schemas.JobPublic:
    """Re-embed every stored face with another model, then switch to it; identify keeps working meanwhile.

    Give `model_path` (a file on the server) to register a new model, or `model_version` to go back to a
    registered one. Poll `GET /v1/admin/reindex/{job_id}` for progress.
    """
    return admin_service.start_reindex(body)


@admin.get("/reindex/{job_id}")
def get_reindex(admin_service: AdminDep, job_id: JobId) -> schemas.JobPublic:
    """Progress of a re-index job: done/total, rate, ETA, errors, and the switch once complete."""
    return admin_service.get_job(job_id)


# --- errors ------------------------------------------------------------------------------------------


def _envelope(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    headers = {"Retry-After": "1"} if status == 429 else None
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
            return _envelope(cause.status, cause.code, cause.message, cause.details)
        if isinstance(cause, RecursionError):
            return _envelope(400, "malformed_json", "the JSON body is nested too deeply")
        cause = cause.__cause__
    return _envelope(400, "malformed_body", "the multipart body could not be parsed")


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": {"code", "message"}}``."""

    @app.exception_handler(FacedbError)
    async def _facedb(_: Request, exc: FacedbError) -> JSONResponse:
        return _envelope(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _envelope(*_validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 400 and "parsing the body" in message:
            return _body_error(exc)
        return _envelope(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _envelope(500, "internal_error", "an unexpected error occurred; it has been logged")


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413 before they are buffered."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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


# --- the application ---------------------------------------------------------------------------------


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
        stop = threading.Event()
        syncer = threading.Thread(target=runtime.sync_loop, args=(stop,), name="facedb-index-sync", daemon=True)
        syncer.start()
        try:
            yield
        finally:
            stop.set()
            syncer.join()
            runtime.close()

    app = FastAPI(
        title="facedb",
        version="0.1.0",
        summary="Face enrollment, 1:N identification and 1:1 verification.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.include_router(health)
    app.include_router(v1)
    app.include_router(admin)
    return app
