"""API keys: secrets, scopes, galleries, per-key rate limits, and the bootstrap admin key.

A secret is ``fdb_<prefix>_<token>``: the prefix (public, 12 hex digits) finds the key's row, and the SHA-256 of the
whole secret is compared with the stored one in constant time. Secrets carry 256 random bits, so a fast hash is
enough: there is nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from index.base import atomic_write_bytes
from service import schemas
from service.db import crud
from service.db.engine import Database
from service.db.models import ApiKey, as_utc, utcnow
from service.errors import FacedbError, not_found
from service.settings import Settings

log = logging.getLogger(__name__)

SECRET_PATTERN = re.compile(r"^fdb_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
BOOTSTRAP_KEY_NAME = "admin"


class Scope(enum.StrEnum):
    ADMIN = "admin"
    """Everything, including keys, models, re-index and the audit log."""
    ENROLL = "enroll"
    """Create, change and delete identities and faces."""
    IDENTIFY = "identify"
    """Identify and verify."""
    READ = "read"
    """Listings and reads."""


@dataclass(frozen=True)
class Caller:
    """Who is asking: the key's name and grants (``galleries`` None = every gallery)."""

    name: str
    scopes: frozenset[Scope]
    galleries: frozenset[str] | None = None
    key_id: int | None = None
    rate_limit: float | None = None

    def has(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def may_use(self, gallery: str) -> bool:
        return self.galleries is None or gallery in self.galleries


ANONYMOUS = Caller(name="anonymous (FACEDB_AUTH=off)", scopes=frozenset({Scope.ADMIN}))


@dataclass(frozen=True)
class NewSecret:
    """A freshly made secret: the text shown once, and what is stored of it."""

    secret: str
    prefix: str
    sha256: str


def new_secret() -> NewSecret:
    prefix = secrets.token_hex(6)
    secret = f"fdb_{prefix}_{secrets.token_urlsafe(32)}"
    return NewSecret(secret=secret, prefix=prefix, sha256=hashlib.sha256(secret.encode()).hexdigest())


def create_key(
    db: Database,
    *,
    name: str,
    scopes: list[Scope],
    galleries: list[str] | None = None,
    expires_at: datetime | None = None,
    rate_limit: float | None = None,
    created_by: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns its row and the secret, which is not kept anywhere."""
    if Scope.ADMIN in scopes and galleries is not None:
        raise FacedbError(422, "admin_key_galleries", "an admin key reaches every gallery; it cannot be limited")
    made = new_secret()
    exists = FacedbError(409, "api_key_exists", f"an API key named {name!r} exists")
    try:
        with db.write() as session:
            if crud.get_api_key_by_name(session, name=name) is not None:
                raise exists
            key = crud.create_api_key(
                session,
                name=name,
                prefix=made.prefix,
                secret_sha256=made.sha256,
                scopes=sorted(set(scopes)),
                galleries=sorted(set(galleries)) if galleries is not None else None,
                expires_at=expires_at,
                rate_limit=rate_limit,
                created_by=created_by,
            )
    except IntegrityError as exc:  # the same name created by a concurrent request
        raise exists from exc
    return key, made.secret


def key_public(key: ApiKey) -> schemas.ApiKeyPublic:
    return schemas.ApiKeyPublic(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=list(key.scopes),
        galleries=list(key.galleries) if key.galleries is not None else None,
        rate_limit=key.rate_limit,
        created_by=key.created_by,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
    )


def list_keys(db: Database) -> schemas.ApiKeysPublic:
    with db.read() as session:
        return schemas.ApiKeysPublic(items=[key_public(k) for k in crud.list_api_keys(session)])


def get_key(db: Database, *, key_id: int) -> ApiKey:
    """A key by id; 404 ``api_key_not_found``."""
    with db.read() as session:
        found = crud.get_api_key(session, key_id=key_id)
    if found is None:
        raise not_found("api_key", key_id)
    return found


def find_key(db: Database, *, key: str) -> ApiKey:
    """A key by name, else by id (the CLI's `keys revoke NAME|ID`); 404 ``api_key_not_found``."""
    with db.read() as session:
        found = crud.get_api_key_by_name(session, name=key)
    if found is None and key.isdigit() and int(key) <= 2**63 - 1:
        return get_key(db, key_id=int(key))
    if found is None:
        raise not_found("api_key", key)
    return found


def revoke_key(db: Database, *, key_id: int) -> ApiKey:
    """Mark a key revoked (kept for the audit log's sake); revoking it again changes nothing."""
    with db.write() as session:
        key = crud.get_api_key(session, key_id=key_id)
        if key is None:
            raise not_found("api_key", key_id)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        session.flush()
    return key


def ensure_bootstrap_key(db: Database, settings: Settings) -> Path | None:
    """On a database with no usable key, make an admin key and write its secret to ``settings.admin_key_file``
    (mode 0600, replaced atomically); returns that path, or None when a usable key exists."""
    path = settings.resolved_admin_key_file
    made = new_secret()
    with db.write() as session:
        crud.lock_changes(session)  # one bootstrap at a time across processes sharing a PostgreSQL database
        if crud.count_usable_api_keys(session, now=utcnow()) > 0:
            return None
        name = BOOTSTRAP_KEY_NAME
        if crud.get_api_key_by_name(session, name=name) is not None:
            name = f"{BOOTSTRAP_KEY_NAME}-{made.prefix}"
        crud.create_api_key(
            session,
            name=name,
            prefix=made.prefix,
            secret_sha256=made.sha256,
            scopes=[Scope.ADMIN.value],
            galleries=None,
            created_by="bootstrap",
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp makes the file 0600 before a byte is written; the rename keeps that mode.
        atomic_write_bytes(path, (made.secret + "\n").encode())
    log.warning("no API key existed: created admin key %r; its secret is in %s (owner-only file)", name, path.resolve())
    return path


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity``; thread-safe."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.clock = clock
        self.updated = clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """Take one token; returns 0 when granted, else the seconds until one is available."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


@dataclass(frozen=True)
class _Cached:
    key: ApiKey | None
    at: float


class Authenticator:
    """Turns a bearer secret into a :class:`Caller`, checks scopes and galleries, and throttles each key.

    Key rows are cached for ``settings.auth_cache_s`` so that a busy door costs no query per request; a key
    revoked through this process is forgotten at once, one revoked elsewhere within that time.
    """

    def __init__(self, db: Database, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._cache: dict[str, _Cached] = {}
        self._buckets: dict[int, TokenBucket] = {}
        self._lock = threading.Lock()

    def authenticate(self, secret: str | None) -> Caller:
        """The caller holding ``secret``; 401 ``missing_api_key``, ``invalid_api_key`` or ``expired_api_key``."""
        if not secret:
            raise _unauthorized("missing_api_key", "this route needs an API key: Authorization: Bearer <secret>")
        match = SECRET_PATTERN.match(secret)
        key = self._lookup(match.group(1)) if match else None
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if key is None or not hmac.compare_digest(digest, key.secret_sha256) or key.revoked_at is not None:
            raise _unauthorized("invalid_api_key", "the API key is not valid")
        if key.expires_at is not None and as_utc(key.expires_at) <= utcnow():
            raise _unauthorized("expired_api_key", f"the API key {key.name!r} has expired")
        return Caller(
            name=key.name,
            scopes=frozenset(Scope(s) for s in key.scopes),
            galleries=frozenset(key.galleries) if key.galleries is not None else None,
            key_id=key.id,
            rate_limit=key.rate_limit,
        )

    def authorize(self, caller: Caller, scope: Scope, gallery: str | None = None) -> None:
        """403 ``insufficient_scope`` or ``gallery_forbidden`` unless the caller may do this."""
        if not caller.has(scope):
            raise FacedbError(403, "insufficient_scope", f"the API key {caller.name!r} lacks the {scope.value!r} scope")
        if gallery is not None and not caller.may_use(gallery):
            raise FacedbError(403, "gallery_forbidden", f"the API key {caller.name!r} may not use gallery {gallery!r}")

    def throttle(self, caller: Caller) -> None:
        """429 ``rate_limited`` with Retry-After when the caller's key is over its rate."""
        rate = caller.rate_limit if caller.rate_limit is not None else self.settings.rate_limit_per_s
        if caller.key_id is None or rate <= 0:
            return
        with self._lock:
            bucket = self._buckets.get(caller.key_id)
            if bucket is None or bucket.rate != rate:
                capacity = max(1.0, rate * self.settings.rate_limit_burst_s)
                bucket = self._buckets[caller.key_id] = TokenBucket(rate, capacity, self.clock)
        wait = bucket.take()
        if wait > 0:
            raise FacedbError(
                429,
                "rate_limited",
                f"the API key {caller.name!r} is over its limit of {rate:g} requests per second",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def forget(self, prefix: str) -> None:
        """Drop a key from the cache (after it was revoked here)."""
        with self._lock:
            self._cache.pop(prefix, None)

    def _lookup(self, prefix: str) -> ApiKey | None:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(prefix)
        if cached is not None and now - cached.at < self.settings.auth_cache_s:
            return cached.key
        with self.db.read() as session:
            key = crud.get_api_key_by_prefix(session, prefix=prefix)
        with self._lock:
            if len(self._cache) > 10_000:  # unknown prefixes must not grow it without bound
                self._cache.clear()
            self._cache[prefix] = _Cached(key, now)
        return key


def _unauthorized(code: str, message: str) -> FacedbError:
    return FacedbError(401, code, message, headers={"WWW-Authenticate": "Bearer"})
