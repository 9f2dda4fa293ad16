"""What each endpoint sends: one builder per route, shared by the sync and async clients."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import quote

ImageInput = bytes | str | Path | IO[bytes]
"""A photo: its bytes, a path to it, or an open binary file."""

Method = Literal["GET", "POST", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Request:
    """One HTTP call: method, path relative to the server's root, and what goes in it."""

    method: Method
    route: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: list[tuple[str, tuple[str, bytes]]] = field(default_factory=list)
    ok_statuses: tuple[int, ...] = ()
    """Error statuses returned as answers instead of raised (readiness: 503)."""


ROUTES: set[tuple[str, str]] = set()
"""(method, route template) of every builder below; a test checks it against the server's routes."""


def _route(method: Method, template: str) -> tuple[Method, str]:
    ROUTES.add((method, template))
    return method, template


def _seg(value: object) -> str:
    return quote(str(value), safe="")


def _file(image: ImageInput, default_name: str = "image") -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return default_name, image
    if isinstance(image, str | Path):
        path = Path(image)
        return path.name, path.read_bytes()
    if isinstance(image, io.IOBase) or hasattr(image, "read"):
        name = Path(str(getattr(image, "name", default_name))).name
        return name, image.read()
    raise TypeError(f"an image is bytes, a path or a binary file, not {type(image).__name__}")


def _form(**values: Any) -> dict[str, str]:
    """Multipart fields: None is left out, booleans are 'true'/'false'."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items() if v is not None}


ME = _route("GET", "/v1/me")
GALLERIES = _route("GET", "/v1/galleries")
CREATE_GALLERY = _route("POST", "/v1/galleries")
GALLERY = _route("GET", "/v1/galleries/{gallery}")
DELETE_GALLERY = _route("DELETE", "/v1/galleries/{gallery}")
IDENTITIES = _route("GET", "/v1/galleries/{gallery}/identities")
CREATE_IDENTITY = _route("POST", "/v1/galleries/{gallery}/identities")
IDENTITY = _route("GET", "/v1/galleries/{gallery}/identities/{identity_id}")
UPDATE_IDENTITY = _route("PATCH", "/v1/galleries/{gallery}/identities/{identity_id}")
DELETE_IDENTITY = _route("DELETE", "/v1/galleries/{gallery}/identities/{identity_id}")
FACES = _route("GET", "/v1/galleries/{gallery}/identities/{identity_id}/faces")
ENROLL = _route("POST", "/v1/galleries/{gallery}/identities/{identity_id}/faces")
DELETE_FACE = _route("DELETE", "/v1/galleries/{gallery}/identities/{identity_id}/faces/{face_id}")
IDENTIFY = _route("POST", "/v1/galleries/{gallery}/identify")
VERIFY = _route("POST", "/v1/galleries/{gallery}/verify")
VERIFY_PAIR = _route("POST", "/v1/verify")
MODELS = _route("GET", "/v1/admin/models")
REINDEX = _route("POST", "/v1/admin/reindex")
REINDEX_JOB = _route("GET", "/v1/admin/reindex/{job_id}")
CREATE_KEY = _route("POST", "/v1/admin/keys")
KEYS = _route("GET", "/v1/admin/keys")
KEY = _route("GET", "/v1/admin/keys/{key_id}")
REVOKE_KEY = _route("DELETE", "/v1/admin/keys/{key_id}")
AUDIT = _route("GET", "/v1/admin/audit")
HEALTH = _route("GET", "/healthz")
READY = _route("GET", "/readyz")


def build(route: tuple[Method, str], **parts: Any) -> Request:
    """A request for ``route`` with its path parameters filled in from ``parts`` (the rest passed through)."""
    method, template = route
    names = [n.split("}")[0] for n in template.split("{")[1:]]
    path = template.format(**{n: _seg(parts.pop(n)) for n in names})
    return Request(method=method, route=template, path=path, **parts)


def identities(gallery: str, limit: int, cursor: int | None, q: str | None) -> Request:
    return build(IDENTITIES, gallery=gallery, params=_clean({"limit": limit, "cursor": cursor, "q": q}))


def create_identity(
    gallery: str, external_id: str, display_name: str | None, metadata: dict[str, Any] | None
) -> Request:
    body = _clean({"external_id": external_id, "display_name": display_name, "metadata": metadata})
    return build(CREATE_IDENTITY, gallery=gallery, json=body)


def update_identity(gallery: str, identity_id: int, changes: dict[str, Any]) -> Request:
    return build(UPDATE_IDENTITY, gallery=gallery, identity_id=identity_id, json=changes)


def enroll(
    gallery: str,
    identity_id: int,
    images: list[ImageInput],
    *,
    detect: bool,
    multiple_faces: str | None,
    allow_conflict: bool,
    allow_mismatch: bool,
) -> Request:
    files = [("image", _file(image, f"image-{i}")) for i, image in enumerate(images)]
    form = _form(
        detect=detect, multiple_faces=multiple_faces, allow_conflict=allow_conflict, allow_mismatch=allow_mismatch
    )
    return build(ENROLL, gallery=gallery, identity_id=identity_id, files=files, data=form)


def identify(
    gallery: str, image: ImageInput, *, top_k: int | None, threshold: float | None, detect: bool, max_faces: int | None
) -> Request:
    form = _form(top_k=top_k, threshold=threshold, detect=detect, max_faces=max_faces)
    return build(IDENTIFY, gallery=gallery, files=[("image", _file(image))], data=form)


def verify(gallery: str, identity_id: int, image: ImageInput, *, threshold: float | None, detect: bool) -> Request:
    form = _form(identity_id=identity_id, threshold=threshold, detect=detect)
    return build(VERIFY, gallery=gallery, files=[("image", _file(image))], data=form)


def verify_pair(image_a: ImageInput, image_b: ImageInput, *, threshold: float | None, detect: bool) -> Request:
    files = [("image_a", _file(image_a, "a")), ("image_b", _file(image_b, "b"))]
    return build(VERIFY_PAIR, files=files, data=_form(threshold=threshold, detect=detect))


def reindex(model_path: str | None, model_version: str | None, allow_missing: bool) -> Request:
    body = _clean({"model_path": model_path, "model_version": model_version, "allow_missing": allow_missing})
    return build(REINDEX, json=body)


def create_key(
    name: str,
    scopes: list[str],
    galleries: list[str] | None,
    expires_at: datetime | None,
    rate_limit: float | None,
) -> Request:
    body = _clean(
        {"name": name, "scopes": scopes, "galleries": galleries, "expires_at": expires_at, "rate_limit": rate_limit}
    )
    return build(CREATE_KEY, json=body)


def audit(**filters: Any) -> Request:
    return build(AUDIT, params=_clean(filters))
