"""Templates per (face, model version), stored face crops, model files, re-index jobs.

Embeddings move out of `faces` into `templates`, so that one face can carry templates of several model
versions while a re-index runs. Faces enrolled before this revision have no stored crop and so cannot be
re-embedded by a new model.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("filename", sa.String(256), nullable=False, server_default="model.pt"))
        batch.add_column(sa.Column("activated_at", TS, nullable=True))
    with op.batch_alter_table("changes") as batch:
        batch.add_column(sa.Column("model_version_id", sa.BigInteger(), nullable=True))

    op.create_table(
        "model_files",
        sa.Column("model_version_id", IdType, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_files_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_version_id", name=op.f("pk_model_files")),
    )
    op.create_table(
        "templates",
        sa.Column("face_id", IdType, nullable=False),
        sa.Column("model_version_id", IdType, nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["face_id"], ["faces.id"], name=op.f("fk_templates_face_id_faces"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_templates_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("face_id", "model_version_id", name=op.f("pk_templates")),
    )
    op.create_index("ix_templates_model_version_id_face_id", "templates", ["model_version_id", "face_id"])
    op.create_table(
        "face_crops",
        sa.Column("face_id", IdType, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["face_id"], ["faces.id"], name=op.f("fk_face_crops_face_id_faces"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("face_id", name=op.f("pk_face_crops")),
    )
    op.create_table(
        "reindex_jobs",
        sa.Column("id", IdType, nullable=False),
        sa.Column("model_version_id", IdType, nullable=False),
        sa.Column(
            "status",
            sa.Enum("running", "completed", "failed", name="jobstatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("errors", JSONType, nullable=False),
        sa.Column("message", sa.String(1024), nullable=True),
        sa.Column("worker", sa.String(256), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("switch_seconds", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_reindex_jobs_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reindex_jobs")),
    )
    op.create_index(op.f("ix_reindex_jobs_model_version_id"), "reindex_jobs", ["model_version_id"])

    op.execute(
        "INSERT INTO templates (face_id, model_version_id, embedding, embedding_dim, created_at) "
        "SELECT id, model_version_id, embedding, embedding_dim, created_at FROM faces"
    )
    with op.batch_alter_table("faces", naming_convention=NAMING) as batch:
        batch.drop_index("ix_faces_gallery_model")
        batch.drop_constraint("fk_faces_model_version_id_model_versions", type_="foreignkey")
        batch.drop_column("model_version_id")
        batch.drop_column("embedding")
        batch.drop_column("embedding_dim")
        batch.create_index(batch.f("ix_faces_gallery_id"), ["gallery_id"])


def downgrade() -> None:
    with op.batch_alter_table("faces", naming_convention=NAMING) as batch:
        batch.drop_index(batch.f("ix_faces_gallery_id"))
        batch.add_column(sa.Column("model_version_id", IdType, nullable=True))
        batch.add_column(sa.Column("embedding", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("embedding_dim", sa.Integer(), nullable=True))
    # Keep the active version's template where there is one, else any one.
    op.execute(
        """
        UPDATE faces SET
          model_version_id = (SELECT t.model_version_id FROM templates t JOIN model_versions m
                              ON m.id = t.model_version_id WHERE t.face_id = faces.id
                              ORDER BY CASE WHEN m.status = 'active' THEN 0 ELSE 1 END, t.model_version_id
                              LIMIT 1)
        """
    )
    op.execute(
        """
        UPDATE faces SET
          embedding = (SELECT t.embedding FROM templates t
                       WHERE t.face_id = faces.id AND t.model_version_id = faces.model_version_id),
          embedding_dim = (SELECT t.embedding_dim FROM templates t
                           WHERE t.face_id = faces.id AND t.model_version_id = faces.model_version_id)
        """
    )
    op.execute("DELETE FROM faces WHERE model_version_id IS NULL")
    with op.batch_alter_table("faces", naming_convention=NAMING) as batch:
        batch.alter_column("model_version_id", existing_type=IdType, nullable=False)
        batch.alter_column("embedding", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("embedding_dim", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(
            "fk_faces_model_version_id_model_versions", "model_versions", ["model_version_id"], ["id"]
        )
        batch.create_index("ix_faces_gallery_model", ["gallery_id", "model_version_id"])

    op.drop_index(op.f("ix_reindex_jobs_model_version_id"), table_name="reindex_jobs")
    op.drop_table("reindex_jobs")
    op.drop_table("face_crops")
    op.drop_index("ix_templates_model_version_id_face_id", table_name="templates")
    op.drop_table("templates")
    op.drop_table("model_files")
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("model_version_id")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("activated_at")
        batch.drop_column("filename")
