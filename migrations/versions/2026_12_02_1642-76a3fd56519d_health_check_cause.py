"""health_check cause: why a probe gave no reading, so recorded failures can be replayed

Revision ID: 76a3fd56519d
Revises: 6891c9122d01
Create Date: 2026-12-02 16:42:56
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "76a3fd56519d"
down_revision: str | None = "6891c9122d01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("health_check") as batch_op:
        batch_op.add_column(sa.Column("cause", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("health_check") as batch_op:
        batch_op.drop_column("cause")
