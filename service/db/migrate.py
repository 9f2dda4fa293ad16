"""Apply and check Alembic migrations programmatically (no ini file needed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

import migrations


class SchemaError(RuntimeError):
    """The database schema does not match the code."""


def alembic_config(engine: Engine) -> Config:
    """An Alembic config that points at the packaged migrations and reuses ``engine``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def head_revision(engine: Engine) -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if head is None:
        raise SchemaError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """One transaction for the whole migration; on SQLite with foreign keys off, as batch mode needs.

    SQLite batch mode copies and drops tables; with foreign keys on, dropping a parent table would
    cascade-delete its children. The pragma is a no-op inside a transaction, so it is set on the raw
    connection before SQLAlchemy begins one.
    """
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                yield conn
                if sqlite:
                    bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if bad:
                        raise SchemaError(f"migration left broken foreign keys: {bad[:5]}")
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    cfg = alembic_config(engine)
    with _migration_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` empties it)."""
    cfg = alembic_config(engine)
    with _migration_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def check_schema(engine: Engine) -> None:
    """Raise SchemaError, naming the fix, unless the database is at the newest revision."""
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        where = "empty" if current is None else f"at revision {current}"
        raise SchemaError(
            f"the database schema is {where} but this version of facedb needs {head}: "
            "run `facedb db upgrade` to migrate it"
        )
