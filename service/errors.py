"""The one error type of the service; the HTTP layer turns it into ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any


class FacedbError(Exception):
    """An error with an HTTP status, a stable machine-readable code, and a human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def not_found(what: str, key: object) -> FacedbError:
    """404 with code ``<what>_not_found``."""
    return FacedbError(404, f"{what}_not_found", f"{what.replace('_', ' ')} {key!s} does not exist")


class OverloadedError(FacedbError):
    """Too much queued work: the client should retry later (429)."""

    def __init__(self, message: str = "the embedder queue is full; retry shortly") -> None:
        super().__init__(429, "overloaded", message)
