"""incident labels

Revision ID: 6891c9122d01
Revises: 7111130fc6fc
Create Date: 2026-12-02 15:21:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "6891c9122d01"
down_revision: str | None = "7111130fc6fc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "incident_label",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("label IN ('real', 'noise')", name=op.f("ck_incident_label_label")),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"],
                                name=op.f("fk_incident_label_incident_id_incident")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_label")),
    )
    with op.batch_alter_table("incident_label", schema=None) as batch_op:
        batch_op.create_index("ix_incident_label_incident_id", ["incident_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("incident_label", schema=None) as batch_op:
        batch_op.drop_index("ix_incident_label_incident_id")
    op.drop_table("incident_label")
