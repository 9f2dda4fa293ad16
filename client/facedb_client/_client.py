"""Sync and async clients: one method per endpoint, errors raised as :class:`FacedbError` with their code."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import httpx

from facedb_client import _requests as R
from facedb_client import types as T
from facedb_client._requests import ImageInput, Request


class FacedbError(Exception):
    """An error answer: HTTP ``status``, the stable ``code`` (e.g. ``identity_not_found``), ``message``, ``details``."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def _headers(key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": "facedb-client"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    headers.update(extra or {})
    return headers


def _result(request: Request, response: httpx.Response) -> Any:
    if response.status_code >= 400 and response.status_code not in request.ok_statuses:
        try:
            error = response.json()["error"]
            status, code, message, details = response.status_code, error["code"], error["message"], error.get("details")
        except (ValueError, KeyError, TypeError):
            raise FacedbError(response.status_code, "http_error", response.text[:500]) from None
        raise FacedbError(status, code, message, details)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def _kwargs(request: Request) -> dict[str, Any]:
    return {"params": request.params, "json": request.json, "data": request.data, "files": request.files or None}


class Client:
    """A facedb server: ``Client("http://127.0.0.1:8000", key="fdb_...")``; use it as a context manager or
    ``close()`` it."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=_headers(key, headers), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: Request) -> Any:
        return _result(request, self._http.request(request.method, request.path, **_kwargs(request)))

    def health(self) -> T.Health:
        """Liveness: ``{"status": "ok"}``."""
        return cast(T.Health, self._send(R.build(R.HEALTH)))

    def ready(self) -> T.Health:
        """Readiness with its checks (a 503 answer is returned, not raised)."""
        return cast(T.Health, self._send(R.build(R.READY, ok_statuses=(200, 503))))

    def me(self) -> T.Caller:
        """The key making the requests: its name, scopes and galleries."""
        return cast(T.Caller, self._send(R.build(R.ME)))

    def list_galleries(self) -> T.Galleries:
        """The galleries this key may use."""
        return cast(T.Galleries, self._send(R.build(R.GALLERIES)))

    def create_gallery(self, name: str) -> T.Gallery:
        """Create a gallery (admin)."""
        return cast(T.Gallery, self._send(R.build(R.CREATE_GALLERY, json={"name": name})))

    def get_gallery(self, name: str) -> T.Gallery:
        """One gallery with its counts."""
        return cast(T.Gallery, self._send(R.build(R.GALLERY, gallery=name)))

    def delete_gallery(self, name: str) -> None:
        """Delete a gallery with everything in it (admin; not ``default``)."""
        self._send(R.build(R.DELETE_GALLERY, gallery=name))

    def list_identities(
        self, gallery: str, *, limit: int = 100, cursor: int | None = None, q: str | None = None
    ) -> T.Identities:
        """One page of identities (``q``: whose external_id or name contains it); ``next_cursor`` pages on."""
        return cast(T.Identities, self._send(R.identities(gallery, limit, cursor, q)))

    def create_identity(
        self, gallery: str, external_id: str, *, display_name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> T.Identity:
        """Create an identity (a person) with no faces yet."""
        return cast(T.Identity, self._send(R.create_identity(gallery, external_id, display_name, metadata)))

    def get_identity(self, gallery: str, identity_id: int) -> T.Identity:
        """One identity."""
        return cast(T.Identity, self._send(R.build(R.IDENTITY, gallery=gallery, identity_id=identity_id)))

    def update_identity(self, gallery: str, identity_id: int, **changes: Any) -> T.Identity:
        """Change ``external_id``, ``display_name`` or ``metadata``."""
        return cast(T.Identity, self._send(R.update_identity(gallery, identity_id, changes)))

    def delete_identity(self, gallery: str, identity_id: int) -> None:
        """Delete an identity with its faces."""
        self._send(R.build(R.DELETE_IDENTITY, gallery=gallery, identity_id=identity_id))

    def list_faces(self, gallery: str, identity_id: int) -> T.Faces:
        """An identity's faces."""
        return cast(T.Faces, self._send(R.build(R.FACES, gallery=gallery, identity_id=identity_id)))

    def enroll(
        self,
        gallery: str,
        identity_id: int,
        images: Sequence[ImageInput],
        *,
        detect: bool = True,
        multiple_faces: str | None = None,
        allow_conflict: bool = False,
        allow_mismatch: bool = False,
    ) -> T.Enrollment:
        """Enrol photos; each is accepted or rejected with a code. Raises ``no_face_enrolled`` if none is accepted."""
        return cast(
            T.Enrollment,
            self._send(
                R.enroll(
                    gallery,
                    identity_id,
                    list(images),
                    detect=detect,
                    multiple_faces=multiple_faces,
                    allow_conflict=allow_conflict,
                    allow_mismatch=allow_mismatch,
                )
            ),
        )

    def delete_face(self, gallery: str, identity_id: int, face_id: int) -> None:
        """Remove one face."""
        self._send(R.build(R.DELETE_FACE, gallery=gallery, identity_id=identity_id, face_id=face_id))

    def identify(
        self,
        gallery: str,
        image: ImageInput,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        detect: bool = True,
        max_faces: int | None = None,
    ) -> T.Identification:
        """1:N: who is this? One result per face, largest first."""
        return cast(
            T.Identification,
            self._send(
                R.identify(gallery, image, top_k=top_k, threshold=threshold, detect=detect, max_faces=max_faces)
            ),
        )

    def verify(
        self, gallery: str, identity_id: int, image: ImageInput, *, threshold: float | None = None, detect: bool = True
    ) -> T.Verification:
        """1:1: is the person in ``image`` the identity?"""
        return cast(
            T.Verification, self._send(R.verify(gallery, identity_id, image, threshold=threshold, detect=detect))
        )

    def verify_pair(
        self, image_a: ImageInput, image_b: ImageInput, *, threshold: float | None = None, detect: bool = True
    ) -> T.Verification:
        """1:1: are the people in two photos the same person?"""
        return cast(T.Verification, self._send(R.verify_pair(image_a, image_b, threshold=threshold, detect=detect)))

    def list_models(self) -> T.ModelVersions:
        """Registered model versions (admin)."""
        return cast(T.ModelVersions, self._send(R.build(R.MODELS)))

    def start_reindex(
        self, *, model_path: str | None = None, model_version: str | None = None, allow_missing: bool = False
    ) -> T.Job:
        """Re-embed every face with another model, then switch to it (admin)."""
        return cast(T.Job, self._send(R.reindex(model_path, model_version, allow_missing)))

    def get_reindex(self, job_id: int) -> T.Job:
        """A re-index job's progress (admin)."""
        return cast(T.Job, self._send(R.build(R.REINDEX_JOB, job_id=job_id)))

    def create_key(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        galleries: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        rate_limit: float | None = None,
    ) -> T.ApiKeyCreated:
        """Create an API key (admin); the answer's ``secret`` is shown only this once."""
        return cast(
            T.ApiKeyCreated,
            self._send(
                R.create_key(
                    name, list(scopes), list(galleries) if galleries is not None else None, expires_at, rate_limit
                )
            ),
        )

    def list_keys(self) -> T.ApiKeys:
        """Every API key, revoked ones included (admin)."""
        return cast(T.ApiKeys, self._send(R.build(R.KEYS)))

    def get_key(self, key_id: int) -> T.ApiKey:
        """One API key (admin)."""
        return cast(T.ApiKey, self._send(R.build(R.KEY, key_id=key_id)))

    def revoke_key(self, key_id: int) -> None:
        """Revoke an API key (admin)."""
        self._send(R.build(R.REVOKE_KEY, key_id=key_id))

    def audit(
        self,
        *,
        limit: int = 100,
        cursor: int | None = None,
        action: str | None = None,
        key: str | None = None,
        gallery: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> T.AuditEvents:
        """A page of the audit log, newest first (admin)."""
        return cast(
            T.AuditEvents,
            self._send(
                R.audit(limit=limit, cursor=cursor, action=action, key=key, gallery=gallery, since=since, until=until)
            ),
        )


class AsyncClient:
    """The same methods as :class:`Client`, awaitable: ``async with AsyncClient(url, key=...) as c``."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=_headers(key, headers), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, request: Request) -> Any:
        return _result(request, await self._http.request(request.method, request.path, **_kwargs(request)))

    async def health(self) -> T.Health:
        """Liveness: ``{"status": "ok"}``."""
        return cast(T.Health, await self._send(R.build(R.HEALTH)))

    async def ready(self) -> T.Health:
        """Readiness with its checks (a 503 answer is returned, not raised)."""
        return cast(T.Health, await self._send(R.build(R.READY, ok_statuses=(200, 503))))

    async def me(self) -> T.Caller:
        """The key making the requests: its name, scopes and galleries."""
        return cast(T.Caller, await self._send(R.build(R.ME)))

    async def list_galleries(self) -> T.Galleries:
        """The galleries this key may use."""
        return cast(T.Galleries, await self._send(R.build(R.GALLERIES)))

    async def create_gallery(self, name: str) -> T.Gallery:
        """Create a gallery (admin)."""
        return cast(T.Gallery, await self._send(R.build(R.CREATE_GALLERY, json={"name": name})))

    async def get_gallery(self, name: str) -> T.Gallery:
        """One gallery with its counts."""
        return cast(T.Gallery, await self._send(R.build(R.GALLERY, gallery=name)))

    async def delete_gallery(self, name: str) -> None:
        """Delete a gallery with everything in it (admin; not ``default``)."""
        await self._send(R.build(R.DELETE_GALLERY, gallery=name))

    async def list_identities(
        self, gallery: str, *, limit: int = 100, cursor: int | None = None, q: str | None = None
    ) -> T.Identities:
        """One page of identities (``q``: whose external_id or name contains it); ``next_cursor`` pages on."""
        return cast(T.Identities, await self._send(R.identities(gallery, limit, cursor, q)))

    async def create_identity(
        self, gallery: str, external_id: str, *, display_name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> T.Identity:
        """Create an identity (a person) with no faces yet."""
        return cast(T.Identity, await self._send(R.create_identity(gallery, external_id, display_name, metadata)))

    async def get_identity(self, gallery: str, identity_id: int) -> T.Identity:
        """One identity."""
        return cast(T.Identity, await self._send(R.build(R.IDENTITY, gallery=gallery, identity_id=identity_id)))

    async def update_identity(self, gallery: str, identity_id: int, **changes: Any) -> T.Identity:
        """Change ``external_id``, ``display_name`` or ``metadata``."""
        return cast(T.Identity, await self._send(R.update_identity(gallery, identity_id, changes)))

    async def delete_identity(self, gallery: str, identity_id: int) -> None:
        """Delete an identity with its faces."""
        await self._send(R.build(R.DELETE_IDENTITY, gallery=gallery, identity_id=identity_id))

    async def list_faces(self, gallery: str, identity_id: int) -> T.Faces:
        """An identity's faces."""
        return cast(T.Faces, await self._send(R.build(R.FACES, gallery=gallery, identity_id=identity_id)))

    async def enroll(
        self,
        gallery: str,
        identity_id: int,
        images: Sequence[ImageInput],
        *,
        detect: bool = True,
        multiple_faces: str | None = None,
        allow_conflict: bool = False,
        allow_mismatch: bool = False,
    ) -> T.Enrollment:
        """Enrol photos; each is accepted or rejected with a code. Raises ``no_face_enrolled`` if none is accepted."""
        return cast(
            T.Enrollment,
            await self._send(
                R.enroll(
                    gallery,
                    identity_id,
                    list(images),
                    detect=detect,
                    multiple_faces=multiple_faces,
                    allow_conflict=allow_conflict,
                    allow_mismatch=allow_mismatch,
                )
            ),
        )

    async def delete_face(self, gallery: str, identity_id: int, face_id: int) -> None:
        """Remove one face."""
        await self._send(R.build(R.DELETE_FACE, gallery=gallery, identity_id=identity_id, face_id=face_id))

    async def identify(
        self,
        gallery: str,
        image: ImageInput,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        detect: bool = True,
        max_faces: int | None = None,
    ) -> T.Identification:
        """1:N: who is this? One result per face, largest first."""
        return cast(
            T.Identification,
            await self._send(
                R.identify(gallery, image, top_k=top_k, threshold=threshold, detect=detect, max_faces=max_faces)
            ),
        )

    async def verify(
        self, gallery: str, identity_id: int, image: ImageInput, *, threshold: float | None = None, detect: bool = True
    ) -> T.Verification:
        """1:1: is the person in ``image`` the identity?"""
        return cast(
            T.Verification, await self._send(R.verify(gallery, identity_id, image, threshold=threshold, detect=detect))
        )

    async def verify_pair(
        self, image_a: ImageInput, image_b: ImageInput, *, threshold: float | None = None, detect: bool = True
    ) -> T.Verification:
        """1:1: are the people in two photos the same person?"""
        return cast(
            T.Verification, await self._send(R.verify_pair(image_a, image_b, threshold=threshold, detect=detect))
        )

    async def list_models(self) -> T.ModelVersions:
        """Registered model versions (admin)."""
        return cast(T.ModelVersions, await self._send(R.build(R.MODELS)))

    async def start_reindex(
        self, *, model_path: str | None = None, model_version: str | None = None, allow_missing: bool = False
    ) -> T.Job:
        """Re-embed every face with another model, then switch to it (admin)."""
        return cast(T.Job, await self._send(R.reindex(model_path, model_version, allow_missing)))

    async def get_reindex(self, job_id: int) -> T.Job:
        """A re-index job's progress (admin)."""
        return cast(T.Job, await self._send(R.build(R.REINDEX_JOB, job_id=job_id)))

    async def create_key(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        galleries: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        rate_limit: float | None = None,
    ) -> T.ApiKeyCreated:
        """Create an API key (admin); the answer's ``secret`` is shown only this once."""
        return cast(
            T.ApiKeyCreated,
            await self._send(
                R.create_key(
                    name, list(scopes), list(galleries) if galleries is not None else None, expires_at, rate_limit
                )
            ),
        )

    async def list_keys(self) -> T.ApiKeys:
        """Every API key, revoked ones included (admin)."""
        return cast(T.ApiKeys, await self._send(R.build(R.KEYS)))

    async def get_key(self, key_id: int) -> T.ApiKey:
        """One API key (admin)."""
        return cast(T.ApiKey, await self._send(R.build(R.KEY, key_id=key_id)))

    async def revoke_key(self, key_id: int) -> None:
        """Revoke an API key (admin)."""
        await self._send(R.build(R.REVOKE_KEY, key_id=key_id))

    async def audit(
        self,
        *,
        limit: int = 100,
        cursor: int | None = None,
        action: str | None = None,
        key: str | None = None,
        gallery: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> T.AuditEvents:
        """A page of the audit log, newest first (admin)."""
        return cast(
            T.AuditEvents,
            await self._send(
                R.audit(limit=limit, cursor=cursor, action=action, key=key, gallery=gallery, since=since, until=until)
            ),
        )
