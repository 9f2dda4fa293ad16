"""Shared fixtures: a real SQLite file and a real PostgreSQL database per test, the real default model."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from embedding.detect import DlibDetector
from service import auth
from service.api import create_app
from service.db import migrate
from service.db.engine import Database
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FACEDB_DATA_ROOT", REPO.parent / "shared" / "data"))
ATT = DATA_ROOT / "att_faces"
PG_ADMIN_URL = os.environ.get("FACEDB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def require_data(path: Path) -> Path:
    """Skip the test, saying why, when the shared face data is not beside the repository."""
    if not path.exists():
        pytest.skip(f"face data not found at {path} (set FACEDB_DATA_ROOT or put ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """URL of a PostgreSQL database we may create and drop databases from."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        if os.environ.get("FACEDB_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (FACEDB_REQUIRE_POSTGRES=1) but {PG_ADMIN_URL} failed: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    finally:
        engine.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"facedb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind: a SQLite file, and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'facedb.sqlite3'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A database of each kind, migrated to the newest schema."""
    db = Database(empty_db_url)
    try:
        migrate.upgrade(db.engine)
    finally:
        db.dispose()
    return empty_db_url


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str) -> Callable[..., Settings]:
    """Settings for a test: its own data directory and database, no environment or .env file."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": db_url,
            "index_sync_interval_s": 0.2,
            "torch_threads": 2,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def api_operations(app: FastAPI) -> set[tuple[str, str]]:
    """(METHOD, path template) of every operation in the app's OpenAPI schema (FastAPI no longer flattens included
    routers into ``app.routes``, so the schema is the public list of what is served)."""
    return {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}


def admin_headers(settings: Settings) -> dict[str, str]:
    """The bootstrap admin key a started app or server wrote (settings.data_dir/admin.key), as request headers."""
    secret = settings.resolved_admin_key_file.read_text().strip()
    return {"Authorization": f"Bearer {secret}"}


def new_key_headers(settings: Settings, name: str, *scopes: str, galleries: list[str] | None = None) -> dict[str, str]:
    """Create an API key straight in the settings' database (as `facedb keys create` does), as request headers."""
    db = Database(settings.resolved_database_url)
    try:
        _, secret = auth.create_key(db, name=name, scopes=[auth.Scope(s) for s in scopes], galleries=galleries)
    finally:
        db.dispose()
    return {"Authorization": f"Bearer {secret}"}


@contextmanager
def admin_client(settings: Settings, **kwargs: Any) -> Iterator[TestClient]:
    """A client of a running app (lifespan entered) sending its bootstrap admin key."""
    with TestClient(create_app(settings), **kwargs) as c:
        if settings.auth == "on":
            c.headers.update(admin_headers(settings))
        yield c


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client of a running app (lifespan entered) on a fresh database, with the admin key."""
    with admin_client(settings) as c:
        yield c


# Synthetic blobs are no faces: tests that use them send no detection and skip the identity-conflict check
# (to a face model all blobs look alike).
SYNTHETIC_ENROL = {"detect": "false", "allow_conflict": "true", "allow_mismatch": "true"}
SYNTHETIC_PROBE = {"detect": "false"}


def image_bytes(seed: int, size: tuple[int, int] = (92, 112), fmt: str = "PNG", mode: str = "L") -> bytes:
    """A deterministic synthetic image: smooth random blobs, distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


@pytest.fixture(scope="session")
def detector() -> DlibDetector:
    """One loaded HOG + 68-point detector for the whole run (loading its models takes about a second)."""
    det = DlibDetector(landmarks="68")
    det.load()
    return det


def att_image(subject: int, index: int) -> Path:
    return require_data(ATT) / f"s{subject}" / f"{index}.pgm"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], log_path: Path, *, preexec_fn: Callable[[], None] | None = None, timeout_s: float = 90
) -> tuple[subprocess.Popen[bytes], str]:
    """`facedb serve` in a child process on a free port, once /readyz says ready: (process, base URL).

    The caller kills the process. Raises RuntimeError (with the log's tail) if it exits or is not ready in time.
    """
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - only resource limits, set before exec
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server not ready:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)


@pytest.fixture
def server_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`facedb serve` in a child process on the test's database and data directory (as the README starts it); its
    log is tmp_path/server.log. The server is killed afterwards."""
    env = os.environ | {
        "FACEDB_DATA_DIR": str(settings.data_dir),
        "FACEDB_DATABASE_URL": settings.resolved_database_url,
        "FACEDB_TORCH_THREADS": "1",
    }
    proc, url = start_server(env, tmp_path / "server.log")
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()
