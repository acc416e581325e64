"""lease table

Revision ID: d181634f6b33
Revises: 5dd28e473290
Create Date: 2026-11-29 16:17:42.099589
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d181634f6b33"
down_revision: str | None = "5dd28e473290"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table("lease",
    sa.Column("name", sa.String(length=100), nullable=False),
    sa.Column("holder", sa.String(length=200), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("name", name=op.f("pk_lease"))
    )


def downgrade() -> None:
    op.drop_table("lease")
