"""`facedb enroll DIR --url ...`: a folder enrolled through a running server's API with the Python client."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx
from facedb_client import Client
from facedb_client import FacedbError as ClientError
from facedb_client.types import EnrollWarning, RejectedFile
from tqdm import tqdm

from service.cli import enrol_summary
from service.errors import FacedbError

MAX_PER_REQUEST = 32
"""Photos per enrolment request (the server's default FACEDB_MAX_IMAGES_PER_REQUEST)."""


def enroll_over_http(
    url: str,
    key: str,
    jobs: Sequence[tuple[Path, Sequence[Path]]],
    *,
    gallery: str,
    create_gallery: bool,
    detect: bool,
    allow_conflict: bool,
    allow_mismatch: bool,
) -> str:
    """Enrol each (person folder, photos): the folder's name is the external_id. Returns the summary line.

    An identity that exists already (same external_id) gets the new photos; each rejected photo is reported on
    stderr with its code. Errors that stop the whole run (no key, no server) are raised as FacedbError."""
    accepted, reasons, warned = 0, Counter[str](), 0
    total = sum(len(files) for _, files in jobs)
    try:
        with Client(url, key=key) as client:
            _ensure_gallery(client, gallery, create=create_gallery)
            with tqdm(total=total, unit="img", desc=f"enrolling into {gallery} at {url}", file=sys.stderr) as bar:
                for person, files in jobs:
                    identity = _identity(client, gallery, person.name)
                    for i in range(0, len(files), MAX_PER_REQUEST):
                        batch = list(files[i : i + MAX_PER_REQUEST])
                        n_accepted, rejected, warnings = _enrol(
                            client,
                            gallery,
                            identity,
                            batch,
                            detect=detect,
                            allow_conflict=allow_conflict,
                            allow_mismatch=allow_mismatch,
                        )
                        accepted += n_accepted
                        for r in rejected:
                            reasons[r["code"]] += 1
                            line = f"rejected {person.name}/{r['filename']}: {r['code']}: {r['message']}"
                            tqdm.write(line, file=sys.stderr)
                        for w in warnings:
                            line = f"warning {person.name}/{w['filename']}: {w['code']}: {w['message']}"
                            tqdm.write(line, file=sys.stderr)
                        warned += len(warnings)
                        bar.update(len(batch))
    except ClientError as exc:
        raise FacedbError(exc.status, exc.code, f"{url}: {exc.message}") from None
    except httpx.TransportError as exc:
        raise FacedbError(503, "server_unreachable", f"{url}: {exc or type(exc).__name__}") from None
    return enrol_summary(len(jobs), accepted, reasons, warned)


def _ensure_gallery(client: Client, gallery: str, *, create: bool) -> None:
    if gallery in {g["name"] for g in client.list_galleries()["items"]}:
        return
    if not create:
        raise FacedbError(404, "gallery_not_found", f"gallery {gallery!r} does not exist")
    client.create_gallery(gallery)


def _identity(client: Client, gallery: str, external_id: str) -> int:
    """The id of the identity with this external_id, created when there is none."""
    try:
        return client.create_identity(gallery, external_id, display_name=external_id)["id"]
    except ClientError as exc:
        if exc.code != "duplicate_external_id":
            raise
    for item in client.list_identities(gallery, q=external_id, limit=500)["items"]:
        if item["external_id"] == external_id:
            return item["id"]
    raise FacedbError(409, "duplicate_external_id", f"{external_id!r} exists but could not be found")


def _enrol(
    client: Client,
    gallery: str,
    identity: int,
    photos: list[Path],
    *,
    detect: bool,
    allow_conflict: bool,
    allow_mismatch: bool,
) -> tuple[int, list[RejectedFile], list[EnrollWarning]]:
    """(photos accepted, the rejected ones with their codes, warnings) of one enrolment request."""
    try:
        result = client.enroll(
            gallery,
            identity,
            list(photos),
            detect=detect,
            allow_conflict=allow_conflict,
            allow_mismatch=allow_mismatch,
        )
        return len(result["accepted"]), result["rejected"], result.get("warnings", [])
    except ClientError as exc:
        if exc.code != "no_face_enrolled":
            raise
        return 0, list(exc.details.get("rejected", [])), []
