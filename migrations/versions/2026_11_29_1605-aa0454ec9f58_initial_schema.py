"""initial schema: incident, transition, action_run, notification

Revision ID: aa0454ec9f58
Revises:
Create Date: 2026-11-29 16:05:27

Self-contained on purpose: it names plain SQLAlchemy types rather than the
package's models, so later model changes can never rewrite this history.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "aa0454ec9f58"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = sa.text("state != 'resolved'")


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts(name: str, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "incident",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=300), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=100), nullable=False),
        sa.Column("severity", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("strikes", sa.Integer(), nullable=False),
        sa.Column("flap_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("summary", sa.String(length=2000), nullable=False),
        sa.Column("details", _json(), nullable=False),
        _ts("deadline_at", True),
        _ts("opened_at", False),
        _ts("updated_at", False),
        _ts("resolved_at", True),
        sa.CheckConstraint(
            "state IN ('detected', 'remediating', 'verifying', 'resolved', 'escalated')",
            name=op.f("ck_incident_state"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_incident_version_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident")),
    )
    op.create_index("uq_incident_open_fingerprint", "incident", ["fingerprint"], unique=True,
                    postgresql_where=OPEN, sqlite_where=OPEN)
    op.create_index("ix_incident_open_deadline", "incident", ["deadline_at"],
                    postgresql_where=OPEN, sqlite_where=OPEN)
    op.create_index("ix_incident_state_opened_at", "incident", ["state", "opened_at"])
    op.create_index("ix_incident_target_opened_at", "incident", ["target", "opened_at"])
    op.create_index("ix_incident_kind_opened_at", "incident", ["kind", "opened_at"])
    op.create_index("ix_incident_fingerprint_opened_at", "incident", ["fingerprint", "opened_at"])
    op.create_index("ix_incident_opened_at", "incident", ["opened_at"])

    op.create_table(
        "transition",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=50), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=True),
        sa.Column("dest", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=4000), nullable=False),
        sa.Column("details", _json(), nullable=False),
        _ts("at", False),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"],
                                name=op.f("fk_transition_incident_id_incident")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transition")),
        sa.UniqueConstraint("incident_id", "seq", name=op.f("uq_transition_incident_id_seq")),
    )
    op.create_index("ix_transition_at", "transition", ["at"])

    op.create_table(
        "action_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("tier", sa.String(length=20), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        _ts("started_at", False),
        _ts("finished_at", True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("verified", sa.Boolean(), nullable=True),
        sa.Column("output_excerpt", sa.String(length=4000), nullable=False),
        sa.Column("evidence", _json(), nullable=False),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('ok', 'failed', 'timed_out', 'interrupted', 'skipped')",
            name=op.f("ck_action_run_outcome"),
        ),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"],
                                name=op.f("fk_action_run_incident_id_incident")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_action_run")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_action_run_idempotency_key")),
        sa.UniqueConstraint("incident_id", "attempt",
                            name=op.f("uq_action_run_incident_id_attempt")),
    )
    op.create_index("ix_action_run_action_started_at", "action_run", ["action", "started_at"])

    op.create_table(
        "notification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("transition_seq", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=50), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at", False),
        _ts("created_at", False),
        _ts("delivered_at", True),
        sa.Column("last_error", sa.String(length=2000), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'dead', 'skipped')",
                           name=op.f("ck_notification_status")),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"],
                                name=op.f("fk_notification_incident_id_incident")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_notification_dedupe_key")),
    )
    op.create_index("ix_notification_status_next_attempt_at", "notification",
                    ["status", "next_attempt_at"])
    op.create_index("ix_notification_incident_id", "notification", ["incident_id"])


def downgrade() -> None:
    op.drop_table("notification")
    op.drop_table("action_run")
    op.drop_table("transition")
    op.drop_table("incident")
