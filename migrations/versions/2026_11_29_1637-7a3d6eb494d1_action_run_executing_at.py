"""action_run executing_at

Revision ID: 7a3d6eb494d1
Revises: d181634f6b33
Create Date: 2026-11-29 16:37:14.686726
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a3d6eb494d1"
down_revision: str | None = "d181634f6b33"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("action_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("executing_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("action_run", schema=None) as batch_op:
        batch_op.drop_column("executing_at")

