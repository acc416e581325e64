"""silences and agent versions

Revision ID: 7111130fc6fc
Revises: 7a3d6eb494d1
Create Date: 2026-12-02 14:17:56.994324
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7111130fc6fc"
down_revision: str | None = "7a3d6eb494d1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "silence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=100), nullable=True),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_silence")),
    )
    with op.batch_alter_table("silence", schema=None) as batch_op:
        batch_op.create_index("ix_silence_ends_at", ["ends_at"], unique=False)
    with op.batch_alter_table("lease", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lease", schema=None) as batch_op:
        batch_op.drop_column("version")
    with op.batch_alter_table("silence", schema=None) as batch_op:
        batch_op.drop_index("ix_silence_ends_at")
    op.drop_table("silence")
