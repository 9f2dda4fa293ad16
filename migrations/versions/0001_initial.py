"""Initial schema: galleries, identities, model versions, faces, change log; the default gallery.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    galleries = op.create_table(
        "galleries",
        sa.Column("id", IdType, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_galleries")),
        sa.UniqueConstraint("name", name=op.f("uq_galleries_name")),
    )
    op.create_table(
        "identities",
        sa.Column("id", IdType, nullable=False),
        sa.Column("gallery_id", IdType, nullable=False),
        sa.Column("external_id", sa.String(256), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=True),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.ForeignKeyConstraint(
            ["gallery_id"],
            ["galleries.id"],
            name=op.f("fk_identities_gallery_id_galleries"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("gallery_id", "external_id", name=op.f("uq_identities_gallery_id_external_id")),
    )
    op.create_index(op.f("ix_identities_gallery_id"), "identities", ["gallery_id"])
    op.create_table(
        "model_versions",
        sa.Column("id", IdType, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("input_spec", JSONType, nullable=False),
        sa.Column("thresholds", JSONType, nullable=False),
        sa.Column("default_threshold", sa.Float(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("active", "building", "retired", name="modelstatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("checksum", name=op.f("uq_model_versions_checksum")),
    )
    op.create_table(
        "faces",
        sa.Column("id", IdType, nullable=False),
        sa.Column("identity_id", IdType, nullable=False),
        sa.Column("gallery_id", IdType, nullable=False),
        sa.Column("model_version_id", IdType, nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_faces")),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_faces_identity_id_identities"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["gallery_id"], ["galleries.id"], name=op.f("fk_faces_gallery_id_galleries"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"], name=op.f("fk_faces_model_version_id_model_versions")
        ),
        sa.UniqueConstraint("identity_id", "image_sha256", name=op.f("uq_faces_identity_id_image_sha256")),
    )
    op.create_index("ix_faces_gallery_model", "faces", ["gallery_id", "model_version_id"])
    op.create_table(
        "changes",
        sa.Column("seq", IdType, autoincrement=True, nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "face_added",
                "face_removed",
                "identity_removed",
                "gallery_removed",
                name="changekind",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("gallery_id", sa.BigInteger(), nullable=False),
        sa.Column("identity_id", sa.BigInteger(), nullable=True),
        sa.Column("face_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_changes")),
    )
    op.create_index(op.f("ix_changes_gallery_id"), "changes", ["gallery_id"])
    op.bulk_insert(galleries, [{"name": "default", "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_index(op.f("ix_changes_gallery_id"), table_name="changes")
    op.drop_table("changes")
    op.drop_index("ix_faces_gallery_model", table_name="faces")
    op.drop_table("faces")
    op.drop_table("model_versions")
    op.drop_index(op.f("ix_identities_gallery_id"), table_name="identities")
    op.drop_table("identities")
    op.drop_table("galleries")
