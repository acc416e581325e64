"""health_check table

Revision ID: 5dd28e473290
Revises: aa0454ec9f58
Create Date: 2026-11-29 16:11:32.961853
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '5dd28e473290'
down_revision: str | None = 'aa0454ec9f58'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('health_check',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('memory_pct', sa.Float(), nullable=True),
    sa.Column('disk_pct', sa.Float(), nullable=True),
    sa.Column('cpu_pct', sa.Float(), nullable=True),
    sa.Column('error', sa.String(length=1000), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_health_check'))
    )
    with op.batch_alter_table('health_check', schema=None) as batch_op:
        batch_op.create_index('ix_health_check_at', ['at'], unique=False)
        batch_op.create_index('ix_health_check_target_at', ['target', 'at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('health_check', schema=None) as batch_op:
        batch_op.drop_index('ix_health_check_target_at')
        batch_op.drop_index('ix_health_check_at')

    op.drop_table('health_check')
