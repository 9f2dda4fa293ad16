"""Face detection: crops aligned to the canonical template, and each face's detection record.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("face_crops") as batch:
        batch.add_column(sa.Column("aligned", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("faces") as batch:
        batch.add_column(sa.Column("detection", JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("faces") as batch:
        batch.drop_column("detection")
    with op.batch_alter_table("face_crops") as batch:
        batch.drop_column("aligned")
