"""Alembic is the only authority on the schema: up, down, matches the models, and the service checks it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from service.db import migrate
from service.db.engine import Database
from service.db.models import Base, Gallery
from service.runtime import build_runtime
from service.settings import Settings

TABLES = {"galleries", "identities", "faces", "model_versions", "changes"}


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    try:
        assert migrate.current_revision(db.engine) is None
        migrate.upgrade(db.engine)
        assert migrate.current_revision(db.engine) == migrate.head_revision(db.engine)
        assert set(inspect(db.engine).get_table_names()) >= TABLES
        with db.read() as s:
            assert [g.name for g in s.scalars(select(Gallery))] == ["default"]

        migrate.downgrade(db.engine, "base")
        assert migrate.current_revision(db.engine) is None
        assert not TABLES & set(inspect(db.engine).get_table_names())

        migrate.upgrade(db.engine)
        assert migrate.current_revision(db.engine) == migrate.head_revision(db.engine)
    finally:
        db.dispose()


def test_migrations_match_models(db_url: str) -> None:
    """Autogenerate finds nothing to do: the models and the migrations describe the same schema."""
    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        db.dispose()


def test_service_refuses_out_of_date_schema(empty_db_url: str, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=empty_db_url)
    with pytest.raises(migrate.SchemaError, match="facedb db upgrade"):
        build_runtime(settings)


def test_service_refuses_older_revision(db_url: str, make_settings: Callable[..., Settings]) -> None:
    db = Database(db_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    finally:
        db.dispose()
    with pytest.raises(migrate.SchemaError, match="at revision 0000"):
        build_runtime(make_settings())


def test_foreign_keys_cascade(db_url: str) -> None:
    """Deleting a gallery removes its identities and faces (SQLite needs foreign keys switched on)."""
    db = Database(db_url)
    try:
        with db.write() as s:
            s.execute(text("INSERT INTO galleries (name, created_at) VALUES ('tmp', CURRENT_TIMESTAMP)"))
            gid = s.scalar(text("SELECT id FROM galleries WHERE name = 'tmp'"))
            s.execute(
                text(
                    "INSERT INTO identities (gallery_id, external_id, metadata, created_at, updated_at) "
                    "VALUES (:g, 'x', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"g": gid},
            )
        with db.write() as s:
            s.execute(text("DELETE FROM galleries WHERE name = 'tmp'"))
        with db.read() as s:
            assert s.scalar(text("SELECT count(*) FROM identities")) == 0
    finally:
        db.dispose()
