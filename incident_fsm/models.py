"""The database tables: the incident's current copy and its append-only history.

`incident` holds the current state of each incident (a copy, guarded by a
version number for optimistic concurrency); `transition`, `action_run` and
`notification` are the history and the outbox. The agent appends to history
and never rewrites it; the only updates it makes are the incident copy, the
outcome of an action that was recorded before it ran, and the delivery status
of an outbox row.

The tables live on their own SQLAlchemy registry (not SQLModel's global
one) so a host application that also uses SQLModel never sees them in its own
metadata, and the metadata carries a constraint naming convention so
Alembic's autogenerate produces stable names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, NewType, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import class_mapper, registry
from sqlmodel import Field, SQLModel

from incident_fsm.vocabulary import AttemptOutcome, Label, NotificationStatus, State

IncidentId = NewType("IncidentId", int)

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# The values the schema's CHECK constraints allow, from the one vocabulary.
STATES = tuple(s.value for s in State)
OPEN_STATES = tuple(s.value for s in State if s is not State.RESOLVED)
ACTION_OUTCOMES = tuple(o.value for o in AttemptOutcome)
#: the outcome of an attempt found not applicable: it changed nothing at the service
OUTCOME_SKIPPED = AttemptOutcome.SKIPPED
NOTIFICATION_STATUSES = tuple(n.value for n in NotificationStatus)
LABELS = tuple(lb.value for lb in Label)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime on every database.

    SQLite has no time zones and hands back naive values; Postgres converts
    to the session zone. Both are normalised to UTC here so comparisons in
    Python never mix naive and aware values.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite stores text; store it without an offset so lexical order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class _Base(SQLModel, registry=registry(metadata=metadata)):
    pass


#: The partial indexes' predicate, as a literal: an upsert naming it must spell it the
#: same way (a bound parameter there cannot be matched once the statement is prepared).
OPEN_PREDICATE = sa.text("state != 'resolved'")


M = TypeVar("M", bound=SQLModel)


def from_row(model: type[M], values: Mapping[Any, Any]) -> M:
    """A table model built the way the ORM builds what it loads: no `__init__`, the values
    straight into its attributes. Eight times faster than `model(**values)`, which sets
    each one through the ORM's instrumentation; the object is as usable (and mutable)."""
    built: M = class_mapper(model).class_manager.new_instance()
    built.__dict__.update(values)
    return built


class Incident(_Base, table=True):
    """One problem on one target, from detection to resolution (and maybe back)."""

    __tablename__ = "incident"
    __table_args__ = (
        sa.CheckConstraint(_in("state", STATES), name="state"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
        # Dedup: at most one open incident per fingerprint, also across replicas.
        sa.Index(
            "uq_incident_open_fingerprint",
            "fingerprint",
            unique=True,
            postgresql_where=OPEN_PREDICATE,
            sqlite_where=OPEN_PREDICATE,
        ),
        # The sweeper's query: open incidents whose deadline has passed.
        sa.Index(
            "ix_incident_open_deadline",
            "deadline_at",
            postgresql_where=OPEN_PREDICATE,
            sqlite_where=OPEN_PREDICATE,
        ),
        sa.Index("ix_incident_state_opened_at", "state", "opened_at"),
        sa.Index("ix_incident_target_opened_at", "target", "opened_at"),
        sa.Index("ix_incident_kind_opened_at", "kind", "opened_at"),
        sa.Index("ix_incident_fingerprint_opened_at", "fingerprint", "opened_at"),
        sa.Index("ix_incident_opened_at", "opened_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(max_length=300)
    target: str = Field(max_length=200)
    kind: str = Field(max_length=100)
    severity: str = Field(max_length=20)
    state: str = Field(max_length=20)
    strikes: int = Field(default=0)
    flap_count: int = Field(default=0)
    version: int = Field(default=1)
    summary: str = Field(default="", max_length=2000)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    deadline_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    opened_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def incident_id(self) -> IncidentId:
        if self.id is None:
            raise ValueError("incident has not been stored yet")
        return IncidentId(self.id)

    @property
    def is_open(self) -> bool:
        return self.state != "resolved"


class Transition(_Base, table=True):
    """One step of an incident's history; append-only."""

    __tablename__ = "transition"
    __table_args__ = (
        sa.UniqueConstraint("incident_id", "seq"),
        sa.Index("ix_transition_at", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id")
    seq: int
    trigger: str = Field(max_length=50)
    source: str | None = Field(default=None, max_length=20)
    dest: str = Field(max_length=20)
    actor: str = Field(max_length=200)
    reason: str = Field(max_length=4000)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    at: datetime = Field(sa_type=UTCDateTime)


class ActionRun(_Base, table=True):
    """One remediation attempt: recorded before it runs, completed after."""

    __tablename__ = "action_run"
    __table_args__ = (
        sa.UniqueConstraint("incident_id", "attempt"),
        sa.UniqueConstraint("idempotency_key"),
        sa.CheckConstraint(
            f"outcome IS NULL OR {_in('outcome', ACTION_OUTCOMES)}", name="outcome"
        ),
        sa.Index("ix_action_run_action_started_at", "action", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id")
    attempt: int
    action: str = Field(max_length=100)
    tier: str = Field(max_length=20)
    idempotency_key: str = Field(max_length=200)
    dry_run: bool = Field(default=False)
    started_at: datetime = Field(sa_type=UTCDateTime)
    #: set (once, atomically) when an agent actually begins running the attempt;
    #: unset on an unfinished attempt means it never ran (e.g. approved, not yet started)
    executing_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    outcome: str | None = Field(default=None, max_length=20)
    # The verdict of the verification that followed: did the problem clear after this attempt?
    # A success also needs the action itself to have worked (`store.succeeded_condition`).
    verified: bool | None = Field(default=None)
    output_excerpt: str = Field(default="", max_length=4000)
    evidence: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)


class Notification(_Base, table=True):
    """An outbox row, written in the transaction of the transition it reports."""

    __tablename__ = "notification"
    __table_args__ = (
        sa.UniqueConstraint("dedupe_key"),
        sa.CheckConstraint(_in("status", NOTIFICATION_STATUSES), name="status"),
        sa.Index("ix_notification_status_next_attempt_at", "status", "next_attempt_at"),
        sa.Index("ix_notification_incident_id", "incident_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id")
    transition_seq: int
    channel: str = Field(max_length=50)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    dedupe_key: str = Field(max_length=200)
    status: str = Field(default="pending", max_length=20)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str = Field(default="", max_length=2000)


@dataclass(frozen=True)
class OutboxMessage:
    """A notification to write into the outbox together with a transition."""

    channel: str
    payload: Mapping[str, Any]


class HealthCheck(_Base, table=True):
    """One probe of one target: what it read, where from, how long it took, or why it failed.

    Kept for statistics (check frequency and latency) and for explaining a
    detection afterwards. Unlike incident history these rows may be pruned
    after a retention period.
    """

    __tablename__ = "health_check"
    __table_args__ = (
        sa.Index("ix_health_check_target_at", "target", "at"),
        sa.Index("ix_health_check_at", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(max_length=200)
    at: datetime = Field(sa_type=UTCDateTime)
    #: where the reading came from: an endpoint path, "local", or a dependency name
    source: str = Field(max_length=200)
    ok: bool
    latency_ms: float
    memory_pct: float | None = None
    disk_pct: float | None = None
    cpu_pct: float | None = None
    error: str = Field(default="", max_length=1000)
    #: why a probe gave no reading (`down`, `throttled`, `unusable`), so a backtest can
    #: replay the failure as the detector saw it; None on readings and on older rows
    cause: str | None = Field(default=None, max_length=20)


class HealthRow(NamedTuple):
    """A `health_check` row on its way to the table: what the monitor writes each poll.

    A plain tuple, not a `HealthCheck`: building a model object per row cost
    more than the rest of writing it. The store accepts either.
    """

    target: str
    at: datetime
    source: str
    ok: bool
    latency_ms: float
    memory_pct: float | None = None
    disk_pct: float | None = None
    cpu_pct: float | None = None
    error: str = ""
    cause: str | None = None


class Lease(_Base, table=True):
    """A named lease: who may act, until when. Used for leader election between replicas."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=100)
    holder: str = Field(max_length=200)
    acquired_at: datetime = Field(sa_type=UTCDateTime)
    renewed_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    #: of a heartbeat row: the version of the agent that beats
    version: str | None = Field(default=None, max_length=40)


class IncidentLabel(_Base, table=True):
    """An operator's judgement of an incident (real or noise), kept with who and why.

    Appended, never changed: the latest one is the incident's label. A label
    moves no state; it is what detection precision is read from.
    """

    __tablename__ = "incident_label"
    __table_args__ = (
        sa.CheckConstraint(_in("label", LABELS), name="label"),
        sa.Index("ix_incident_label_incident_id", "incident_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id")
    label: str = Field(max_length=20)
    actor: str = Field(max_length=200)
    reason: str = Field(max_length=1000)
    at: datetime = Field(sa_type=UTCDateTime)


class Silence(_Base, table=True):
    """A maintenance window: while it lasts, the agent runs no automatic action on what it
    matches (a target, or one problem kind of it); it still detects and records.

    Ended early by `expired_at` (an operator's `silence expire`), else by `ends_at`.
    """

    __tablename__ = "silence"
    __table_args__ = (sa.Index("ix_silence_ends_at", "ends_at"),)

    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(max_length=200)
    #: None: every problem kind of the target
    kind: str | None = Field(default=None, max_length=100)
    starts_at: datetime = Field(sa_type=UTCDateTime)
    ends_at: datetime = Field(sa_type=UTCDateTime)
    actor: str = Field(max_length=200)
    reason: str = Field(max_length=1000)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expired_by: str | None = Field(default=None, max_length=200)

    def active(self, now: datetime) -> bool:
        """In force at `now`: started, not ended, not expired by hand."""
        return self.starts_at <= now < self.ends_at and (
            self.expired_at is None or now < self.expired_at)

    def matches(self, target: str, kind: str) -> bool:
        return self.target == target and self.kind in (None, kind)

    def describe(self) -> str:
        what = self.target if self.kind is None else f"{self.kind} on {self.target}"
        return (f"silence {self.id} ({what}) by {self.actor} until "
                f"{self.ends_at.strftime('%Y-%m-%d %H:%M UTC')}: {self.reason}")


@dataclass(frozen=True)
class Opened:
    """The result of `open_incident`: the open incident, and whether this call created it."""

    incident: Incident
    created: bool


@dataclass(frozen=True)
class Timeline:
    """One incident and everything that happened to it, each list in order."""

    incident: Incident
    transitions: list[Transition]
    actions: list[ActionRun]
    notifications: list[Notification]
