"""The store: the only code that talks to the database.

Every public method is a coroutine that runs one short synchronous
SQLAlchemy unit of work in a worker thread (`anyio.to_thread.run_sync`,
bounded by a capacity limiter). We chose worker threads over an async
engine because one code path then serves Postgres (psycopg 3) and SQLite
alike, Alembic and the CLI share the same engine setup, and each unit of
work is a few statements long -- the thread hop costs microseconds while
the event loop never waits on the database.

Invariants the store keeps:
- one transition = one transaction: the version-checked update of the
  incident copy, the `transition` row, the attempt it starts and its outbox
  rows commit together or not at all;
- `incident.version` equals the number of `transition` rows of the incident
  (the opening row is seq 1), so the version is also the next row's seq;
- strikes are recomputed from the incident's `action_run` rows whenever
  those change; nothing counts them in memory;
- history rows are only ever inserted.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, col, select

from . import database
from .errors import (
    ConcurrentUpdate,
    IncidentNotFound,
    InvalidInput,
    InvalidTransition,
    SchemaNotReady,
    StoreError,
    StoreUnavailable,
)
from .machine import (
    OPEN_TRIGGER,
    ActionIntent,
    State,
    StepRequest,
    edge_destinations,
    operator_triggers_from,
)
from .models import (
    OUTCOME_SKIPPED,
    ActionRun,
    HealthCheck,
    Incident,
    IncidentId,
    Lease,
    Notification,
    OutboxMessage,
    Transition,
)

T = TypeVar("T")

MAX_REASON = 4000
MAX_ACTOR = 200
MAX_EXCERPT = 4000
#: How often `open_incident` retries after losing a race on the fingerprint.
OPEN_RETRIES = 3
#: Names of the `lease` rows that are heartbeats (`Store.beat`), not leases.
HEARTBEAT_PREFIX = "heartbeat:"


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


@dataclass(frozen=True)
class ActionStats:
    kind: str
    action: str
    attempts: int
    #: attempts that worked: the action returned ok and verification passed after it
    verified: int
    #: attempts that did not: see `failed_condition`
    failed: int
    dry_runs: int

    @property
    def success_rate(self) -> float | None:
        judged = self.verified + self.failed
        return None if judged == 0 else self.verified / judged


@dataclass(frozen=True)
class KindStats:
    kind: str
    incidents: int
    open: int
    resolved: int
    escalated_ever: int
    resolution_p50_s: float | None
    resolution_p95_s: float | None

    @property
    def escalation_rate(self) -> float | None:
        return None if self.incidents == 0 else self.escalated_ever / self.incidents


@dataclass(frozen=True)
class ChannelStats:
    channel: str
    delivered: int
    pending: int
    dead: int
    skipped: int

    @property
    def delivery_rate(self) -> float | None:
        done = self.delivered + self.dead
        return None if done == 0 else self.delivered / done


@dataclass(frozen=True)
class CheckStats:
    target: str
    checks: int
    failed: int
    latency_avg_ms: float | None
    latency_max_ms: float | None


@dataclass(frozen=True)
class Statistics:
    """What `incident-fsm stats` and the metrics endpoint report."""

    states: dict[str, int]
    kinds: list[KindStats]
    actions: list[ActionStats]
    channels: list[ChannelStats]
    checks: list[CheckStats]


#: Outcomes of an attempt whose action did not work, whatever the problem did afterwards.
FAILED_OUTCOMES = ("failed", "timed_out", "interrupted")
#: The only outcome of an action that did what it was asked.
OUTCOME_OK = "ok"


def succeeded_condition() -> sa.ColumnElement[bool]:
    """An attempt succeeded if its action worked (`ok`) and the problem cleared after it.

    The one definition of success: the learned ranking and `stats` both count
    it. `verified` alone only says the problem cleared after the attempt; an
    action that failed (an HTTP error, not available, timed out, interrupted)
    did not make it clear, so it never counts as a success.
    """
    return sa.and_(
        col(ActionRun.dry_run).is_(False),
        col(ActionRun.outcome) == OUTCOME_OK,
        col(ActionRun.verified).is_(True),
    )


def failed_condition() -> sa.ColumnElement[bool]:
    """An attempt failed if verification said no, or its action failed, timed out or was
    interrupted -- even when the problem cleared after it. Every strike is a failure; the
    learned ranking and `stats` count failures against the action."""
    return sa.and_(
        col(ActionRun.dry_run).is_(False),
        sa.or_(col(ActionRun.verified).is_(False), col(ActionRun.outcome).in_(FAILED_OUTCOMES)),
    )


def cleared_without_working_action(run: ActionRun) -> bool:
    """The problem cleared after the attempt, but its action had failed: no success."""
    return not run.dry_run and run.verified is True and run.outcome in FAILED_OUTCOMES


def strike_count_of(runs: Iterable[ActionRun]) -> int:
    """`strike_condition` for attempts held in memory (the journal's local copy)."""
    return sum(
        1 for r in runs
        if not r.dry_run and (r.verified is False
                              or (r.verified is None and r.outcome in ("failed", "timed_out")))
    )


def strike_condition() -> sa.ColumnElement[bool]:
    """An attempt is a strike if verification said no, or it failed and was never judged."""
    return sa.and_(
        col(ActionRun.dry_run).is_(False),
        sa.or_(
            col(ActionRun.verified).is_(False),
            sa.and_(
                col(ActionRun.verified).is_(None),
                col(ActionRun.outcome).in_(("failed", "timed_out")),
            ),
        ),
    )


class Store:
    """Async access to incidents and their history. Create one per process and share it."""

    def __init__(self, url: str, *, max_threads: int = 4,
                 call_timeout: float = database.STATEMENT_TIMEOUT + 5) -> None:
        self.url = database.resolve_url(url)
        self.engine: Engine = database.create_engine(self.url)
        self._limiter = anyio.CapacityLimiter(max_threads)
        self.call_timeout = call_timeout
        self._in_flight = 0
        self._threads = 0  # includes calls abandoned after `call_timeout`
        self._threads_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({database.redact(self.url)!r})"

    async def close(self, *, grace: float = 5.0) -> None:
        """Release the connections, after giving abandoned calls `grace` seconds to end."""
        with anyio.move_on_after(grace):
            while self._threads:  # noqa: ASYNC110 - worker threads cannot set an anyio.Event
                await anyio.sleep(0.05)
        await anyio.to_thread.run_sync(self.engine.dispose)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def idle(self) -> bool:
        """No database call is in flight (lets virtual-time tests settle, see ManualClock)."""
        return self._in_flight == 0

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        # The server's statement_timeout cannot help when the network goes
        # silent under an open connection: this client-side deadline does. The
        # abandoned thread finishes (or fails) on its own once the socket does;
        # a write it still commits is recognised by the journal's replay.
        self._in_flight += 1
        try:
            with anyio.fail_after(self.call_timeout):
                return await anyio.to_thread.run_sync(
                    partial(self._guarded, fn, *args, **kwargs), limiter=self._limiter,
                    abandon_on_cancel=True,
                )
        except TimeoutError:
            raise StoreUnavailable(
                f"database did not answer within {self.call_timeout:g}s; "
                "nothing is known to be written"
            ) from None
        finally:
            self._in_flight -= 1

    def _guarded(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        with self._threads_lock:
            self._threads += 1
        try:
            return fn(*args, **kwargs)
        except IntegrityError:
            raise
        except sa.exc.TimeoutError:
            # The connection pool had nothing to give within its timeout.
            raise StoreUnavailable("database connections exhausted; nothing was written") from None
        except DBAPIError as exc:
            # The driver's text can carry SQL and parameters: only our words for its cause.
            cause = database.describe_failure(exc)
            if _is_missing_table(exc):
                raise SchemaNotReady(f"database {database.redact(self.url)}: {cause}; "
                                     "nothing was written") from None
            if exc.connection_invalidated or _is_unavailable(exc):
                raise StoreUnavailable(
                    f"database unavailable: {cause}; nothing was written") from None
            raise
        finally:
            with self._threads_lock:
                self._threads -= 1

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- incidents ---------------------------------------------------------

    async def open_incident(
        self,
        *,
        target: str,
        kind: str,
        severity: str,
        at: datetime,
        deadline_at: datetime | None,
        reason: str,
        actor: str = "agent",
        summary: str = "",
        details: Mapping[str, Any] | None = None,
        notifications: Sequence[OutboxMessage] = (),
    ) -> Opened:
        """Open an incident for `target:kind`, or return the one already open.

        Safe under races between processes: the partial unique index on open
        fingerprints lets exactly one insert win; the losers read the winner.
        """
        _check_text("reason", reason, MAX_REASON)
        _check_text("actor", actor, MAX_ACTOR)
        _check_text("target", target, 200)
        _check_text("kind", kind, 100)
        payload = _json_safe("details", details or {})
        return await self._run(
            self._open_incident, target=target, kind=kind, severity=severity, at=at,
            deadline_at=deadline_at, reason=reason.strip(), actor=actor.strip(),
            summary=summary[:2000], details=payload, notifications=tuple(notifications),
        )

    def _open_incident(self, *, target: str, kind: str, severity: str, at: datetime,
                       deadline_at: datetime | None, reason: str, actor: str, summary: str,
                       details: dict[str, Any],
                       notifications: tuple[OutboxMessage, ...]) -> Opened:
        fingerprint = f"{target}:{kind}"
        for _ in range(OPEN_RETRIES):
            with self._session() as session:
                existing = session.exec(_open_by_fingerprint(fingerprint)).first()
                if existing is not None:
                    return Opened(existing, created=False)
                incident = Incident(
                    fingerprint=fingerprint, target=target, kind=kind, severity=severity,
                    state=State.DETECTED.value, version=1, summary=summary, details=details,
                    deadline_at=deadline_at, opened_at=at, updated_at=at,
                )
                session.add(incident)
                try:
                    session.flush()
                except IntegrityError:
                    # Another opener committed first; read theirs on the next round.
                    session.rollback()
                    continue
                session.add(Transition(
                    incident_id=incident.incident_id, seq=1, trigger=OPEN_TRIGGER, source=None,
                    dest=State.DETECTED.value, actor=actor, reason=reason, details=details, at=at,
                ))
                _add_outbox(session, incident.incident_id, 1, notifications, at)
                session.commit()
                return Opened(incident, created=True)
        raise StoreError(
            f"could neither open nor find an open incident for {fingerprint} "
            f"after {OPEN_RETRIES} tries"
        )

    async def get_incident(self, incident_id: IncidentId) -> Incident:
        return await self._run(self._get_incident, incident_id)

    def _get_incident(self, incident_id: IncidentId) -> Incident:
        with self._session() as session:
            incident = session.get(Incident, incident_id)
            if incident is None:
                raise IncidentNotFound(incident_id)
            return incident

    async def find_open(self, fingerprint: str) -> Incident | None:
        """The open incident for a fingerprint, if any."""
        def work() -> Incident | None:
            with self._session() as session:
                found: Incident | None = session.exec(_open_by_fingerprint(fingerprint)).first()
                return found
        return await self._run(work)

    async def last_resolved(self, fingerprint: str) -> Incident | None:
        """The most recently resolved incident of a fingerprint (a `reopen` candidate)."""
        def work() -> Incident | None:
            with self._session() as session:
                query = (
                    select(Incident)
                    .where(Incident.fingerprint == fingerprint,
                           Incident.state == State.RESOLVED.value)
                    .order_by(col(Incident.opened_at).desc(), col(Incident.id).desc())
                    .limit(1)
                )
                return session.exec(query).first()
        return await self._run(work)

    async def list_incidents(
        self,
        *,
        states: Iterable[str] = (),
        kind: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[Incident]:
        """Incidents opened in [since, until), newest first, filtered by state, kind and target."""
        wanted = tuple(states)
        unknown = set(wanted) - {s.value for s in State}
        if unknown:
            raise InvalidInput(f"unknown state(s) {sorted(unknown)}; "
                               f"states are {[s.value for s in State]}")
        if limit < 1:
            raise InvalidInput("limit must be at least 1")

        def work() -> list[Incident]:
            query = select(Incident)
            if wanted:
                query = query.where(col(Incident.state).in_(wanted))
            if kind is not None:
                query = query.where(Incident.kind == kind)
            if target is not None:
                query = query.where(Incident.target == target)
            if since is not None:
                query = query.where(Incident.opened_at >= since)
            if until is not None:
                query = query.where(Incident.opened_at < until)
            query = query.order_by(col(Incident.opened_at).desc(), col(Incident.id).desc())
            with self._session() as session:
                return list(session.exec(query.limit(limit)).all())
        return await self._run(work)

    async def overdue(self, now: datetime, *, limit: int = 100) -> list[Incident]:
        """Open incidents whose deadline has passed, most overdue first."""
        def work() -> list[Incident]:
            query = (
                select(Incident)
                .where(Incident.state != State.RESOLVED.value,
                       col(Incident.deadline_at).is_not(None),
                       col(Incident.deadline_at) <= now)
                .order_by(col(Incident.deadline_at))
                .limit(limit)
            )
            with self._session() as session:
                return list(session.exec(query).all())
        return await self._run(work)

    # --- transitions -------------------------------------------------------

    async def apply_transition(self, step: StepRequest) -> Incident:
        """Persist one step in one transaction; see the module docstring.

        Raises `InvalidTransition` if (trigger, source, dest) is not an edge of
        the graph, `IncidentNotFound`, or `ConcurrentUpdate` if the incident is
        no longer at `expected_version` in `source`. Nothing is written then.
        """
        if step.dest not in edge_destinations(step.trigger, step.source):
            raise InvalidTransition(
                incident_id=step.incident_id, state=step.source, trigger=step.trigger,
                allowed=operator_triggers_from(step.source),
                detail=f"no edge leads from '{step.source}' to '{step.dest}'",
            )
        _check_text("reason", step.reason, MAX_REASON)
        _check_text("actor", step.actor, MAX_ACTOR)
        details = _json_safe("details", step.details)
        return await self._run(self._apply_transition, step, details)

    def _apply_transition(self, step: StepRequest, details: dict[str, Any]) -> Incident:
        new_version = step.expected_version + 1
        with self._session() as session:
            updated = session.execute(
                sa.update(Incident)
                .where(col(Incident.id) == step.incident_id,
                       col(Incident.version) == step.expected_version,
                       col(Incident.state) == step.source)
                .values(state=step.dest, version=new_version, deadline_at=step.deadline_at,
                        flap_count=step.flap_count, resolved_at=step.resolved_at,
                        updated_at=step.at)
            )
            if updated.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                current = session.get(Incident, step.incident_id)
                if current is None:
                    raise IncidentNotFound(step.incident_id)
                raise ConcurrentUpdate(
                    incident_id=step.incident_id, expected_version=step.expected_version,
                    found_version=current.version, found_state=current.state,
                )
            session.add(Transition(
                incident_id=step.incident_id, seq=new_version, trigger=step.trigger,
                source=step.source, dest=step.dest, actor=step.actor, reason=step.reason,
                details=details, at=step.at,
            ))
            if step.intent is not None:
                _add_action_run(session, step.incident_id, step.intent, step.at)
            _add_outbox(session, step.incident_id, new_version, step.notifications, step.at)
            session.flush()
            incident = session.get(Incident, step.incident_id, populate_existing=True)
            session.commit()
            assert incident is not None
            return incident

    # --- action runs -------------------------------------------------------

    async def record_action(self, incident_id: IncidentId, intent: ActionIntent,
                            *, at: datetime) -> ActionRun:
        """Record an attempt on its own (e.g. a dry run in monitor-only mode).

        Attempts that move the incident are recorded by `apply_transition`
        in the same transaction as the `remediate`/`approve` step instead.
        """
        def work() -> ActionRun:
            with self._session() as session:
                if session.get(Incident, incident_id) is None:
                    raise IncidentNotFound(incident_id)
                run = _add_action_run(session, incident_id, intent, at)
                session.commit()
                return run
        return await self._run(work)

    async def finish_action(
        self,
        run_id: int,
        *,
        outcome: str,
        finished_at: datetime,
        output_excerpt: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> ActionRun:
        """Record how an attempt ended. An outcome, once written, is never overwritten."""
        if outcome not in ("ok", "failed", "timed_out", "interrupted", "skipped"):
            raise InvalidInput(f"unknown action outcome {outcome!r}")
        payload = _json_safe("evidence", evidence or {})

        def finish(run: ActionRun) -> None:
            if run.finished_at is not None:
                raise InvalidInput(f"action run {run_id} already finished as '{run.outcome}'")
            run.outcome = outcome
            run.finished_at = finished_at
            run.output_excerpt = output_excerpt[:MAX_EXCERPT]
            run.evidence = payload

        return await self._run(self._update_run, run_id, finish)

    async def judge_action(self, run_id: int, *, verified: bool) -> ActionRun:
        """Record whether the problem cleared after an attempt (see `succeeded_condition`)."""
        def judge(run: ActionRun) -> None:
            if run.verified is not None and run.verified != verified:
                raise InvalidInput(
                    f"action run {run_id} was already judged verified={run.verified}"
                )
            run.verified = verified

        return await self._run(self._update_run, run_id, judge)

    def _update_run(self, run_id: int, change: Callable[[ActionRun], None]) -> ActionRun:
        """Change one attempt and recount its incident's strikes, in one transaction."""
        with self._session() as session:
            run = _get_run(session, run_id)
            change(run)
            session.add(run)
            session.flush()
            _refresh_strikes(session, run.incident_id)
            session.commit()
            return run

    async def claim_attempt(self, run_id: int, *, at: datetime) -> bool:
        """Mark an attempt as being run now; True for exactly one caller, ever.

        The claim is what tells, after a crash, an attempt that never ran (an
        approval not yet acted on: run it) from one that was running (judge it,
        never run it twice), whichever process or replica looks.
        """
        def work() -> bool:
            with self._session() as session:
                claimed = session.execute(
                    sa.update(ActionRun)
                    .where(col(ActionRun.id) == run_id, col(ActionRun.executing_at).is_(None),
                           col(ActionRun.finished_at).is_(None))
                    .values(executing_at=at)
                )
                session.commit()
                return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]
        return await self._run(work)

    async def count_strikes(self, incident_id: IncidentId) -> int:
        """Strikes of an incident, counted from its persisted attempts."""
        def work() -> int:
            with self._session() as session:
                return int(session.execute(_strike_count(incident_id)).scalar_one())
        return await self._run(work)

    # --- history -----------------------------------------------------------

    async def timeline(self, incident_id: IncidentId) -> Timeline:
        """An incident with its transitions, attempts and notifications, each in order."""
        def work() -> Timeline:
            with self._session() as session:
                incident = session.get(Incident, incident_id)
                if incident is None:
                    raise IncidentNotFound(incident_id)
                transitions = session.exec(
                    select(Transition).where(Transition.incident_id == incident_id)
                    .order_by(col(Transition.seq))
                ).all()
                actions = session.exec(
                    select(ActionRun).where(ActionRun.incident_id == incident_id)
                    .order_by(col(ActionRun.attempt))
                ).all()
                notes = session.exec(
                    select(Notification).where(Notification.incident_id == incident_id)
                    .order_by(col(Notification.id))
                ).all()
                return Timeline(incident, list(transitions), list(actions), list(notes))
        return await self._run(work)

    async def history(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        target: str | None = None,
        kind: str | None = None,
        limit: int = 1000,
    ) -> list[tuple[Transition, Incident]]:
        """Transitions across incidents in [since, until), oldest first, with their incident."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1")

        def work() -> list[tuple[Transition, Incident]]:
            query = select(Transition, Incident).join(
                Incident, col(Incident.id) == col(Transition.incident_id)
            )
            if since is not None:
                query = query.where(Transition.at >= since)
            if until is not None:
                query = query.where(Transition.at < until)
            if target is not None:
                query = query.where(Incident.target == target)
            if kind is not None:
                query = query.where(Incident.kind == kind)
            query = query.order_by(col(Transition.at), col(Transition.id)).limit(limit)
            with self._session() as session:
                return [(t, i) for t, i in session.exec(query).all()]
        return await self._run(work)

    # --- notification delivery: the dispatcher's queries ---------------------
    #
    # A row moves pending -> delivered | dead | skipped, and nothing else
    # changes it. The dispatcher *claims* due rows before sending them: the
    # claim counts the attempt and moves `next_attempt_at` to the end of a
    # lease, so another replica will not send the same row meanwhile, and a
    # row whose sender died is sent again once the lease ends (at least once).

    async def has_notifications(self, incident_id: IncidentId) -> bool:
        """Whether the incident has any outbox row (it has told someone something)."""
        def work() -> bool:
            with self._session() as session:
                found = session.execute(
                    sa.select(col(Notification.id))
                    .where(col(Notification.incident_id) == incident_id).limit(1)
                ).first()
                return found is not None
        return await self._run(work)

    async def due_notifications(self, channel: str, *, now: datetime,
                                limit: int = 50) -> list[Notification]:
        """Pending rows of `channel` due at `now`, oldest first, each only if no earlier
        pending row of the same incident and channel is still waiting (order per incident)."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1")

        def work() -> list[Notification]:
            earlier = sa.orm.aliased(Notification)
            blocked = sa.exists().where(
                col(earlier.incident_id) == col(Notification.incident_id),
                col(earlier.channel) == col(Notification.channel),
                col(earlier.status) == "pending",
                col(earlier.id) < col(Notification.id),
                col(earlier.next_attempt_at) > now,
            )
            query = (
                select(Notification)
                .where(col(Notification.channel) == channel, col(Notification.status) == "pending",
                       col(Notification.next_attempt_at) <= now, ~blocked)
                .order_by(col(Notification.id))
                .limit(limit)
            )
            with self._session() as session:
                return list(session.exec(query).all())
        return await self._run(work)

    async def next_notification_due(self, channel: str) -> datetime | None:
        """When the earliest pending row of `channel` is due (None: nothing pending)."""
        def work() -> datetime | None:
            with self._session() as session:
                found: datetime | None = session.exec(
                    select(sa.func.min(Notification.next_attempt_at))
                    .where(col(Notification.channel) == channel,
                           col(Notification.status) == "pending")
                ).one()
                return found
        return await self._run(work)

    async def claim_notifications(self, ids: Sequence[int], *, now: datetime,
                                  lease_until: datetime) -> list[Notification]:
        """Take the rows that are still pending and due: count an attempt and lease them.

        Returns the rows this call claimed, oldest first; rows another claimer
        got first are left out.
        """
        if not ids:
            return []

        def work() -> list[Notification]:
            with self._session() as session:
                claimed = session.execute(
                    sa.update(Notification)
                    .where(col(Notification.id).in_(list(ids)),
                           col(Notification.status) == "pending",
                           col(Notification.next_attempt_at) <= now)
                    .values(attempts=col(Notification.attempts) + 1, next_attempt_at=lease_until)
                    .returning(col(Notification.id))
                ).scalars().all()
                session.commit()
                if not claimed:
                    return []
                return list(session.exec(
                    select(Notification).where(col(Notification.id).in_(claimed))
                    .order_by(col(Notification.id))
                ).all())
        return await self._run(work)

    async def mark_delivered(self, ids: Sequence[int], *, at: datetime) -> None:
        """The channel took these rows."""
        await self._settle(ids, status="delivered", delivered_at=at, last_error="")

    async def reschedule_notification(self, notification_id: int, *, next_attempt_at: datetime,
                                      error: str) -> None:
        """An attempt failed (already counted by the claim): try again at `next_attempt_at`.

        `error` must be free of secrets; channels report status codes and
        exception class names, never URLs with tokens or response bodies.
        """
        await self._settle([notification_id], status="pending", next_attempt_at=next_attempt_at,
                           last_error=error)

    async def mark_dead(self, notification_id: int, *, error: str) -> None:
        """Give up on a row after its last allowed attempt; its incident's timeline shows it."""
        await self._settle([notification_id], status="dead", last_error=error)

    async def release_notifications(self, ids: Sequence[int], *,
                                    next_attempt_at: datetime) -> None:
        """Hand claimed rows back unsent (channel unavailable): the attempt does not count."""
        await self._settle(ids, status="pending", next_attempt_at=next_attempt_at,
                           uncount=True)

    async def skip_notifications(self, *, keep_channels: Iterable[str], reason: str) -> int:
        """Mark pending rows of every channel not in `keep_channels` skipped; returns how many."""
        keep = sorted(set(keep_channels))

        def work() -> int:
            with self._session() as session:
                done = session.execute(
                    sa.update(Notification)
                    .where(col(Notification.status) == "pending",
                           col(Notification.channel).not_in(keep))
                    .values(status="skipped", last_error=reason[:2000])
                )
                session.commit()
                return int(done.rowcount)  # type: ignore[attr-defined]
        return await self._run(work)

    async def _settle(self, ids: Sequence[int], *, status: str, uncount: bool = False,
                      **values: Any) -> None:
        if not ids:
            return
        if "last_error" in values:
            values["last_error"] = str(values["last_error"])[:2000]
        if uncount:
            attempts = col(Notification.attempts)
            values["attempts"] = sa.case((attempts > 0, attempts - 1), else_=0)

        def work() -> None:
            with self._session() as session:
                # Only pending rows move: a final status is never rewritten.
                session.execute(
                    sa.update(Notification)
                    .where(col(Notification.id).in_(list(ids)),
                           col(Notification.status) == "pending")
                    .values(status=status, **values)
                )
                session.commit()
        await self._run(work)

    # --- leases (leader election between replicas) ---------------------------

    async def acquire_lease(self, name: str, holder: str, *, now: datetime,
                            ttl: float) -> Lease:
        """Take or renew lease `name` for `holder` if it is free, expired, or already theirs.

        One atomic upsert, so two replicas can never both get it. Returns the
        lease as it stands afterwards: the caller holds it iff `.holder == holder`.
        """
        expires = now + timedelta(seconds=ttl)

        def work() -> Lease:
            table = Lease.__table__  # type: ignore[attr-defined]
            lease = self._upsert_lease(
                name, holder, now=now, expires=expires,
                keep_first=table.c.holder == holder,
                only_if=sa.or_(table.c.holder == holder, table.c.expires_at < now))
            assert lease is not None
            return lease
        return await self._run(work)

    def _upsert_lease(self, name: str, holder: str, *, now: datetime, expires: datetime,
                      keep_first: sa.ColumnElement[bool],
                      only_if: sa.ColumnElement[bool] | None) -> Lease | None:
        """Insert or update row `name` of `lease` in one statement (a worker-thread call).

        `acquired_at` is kept where `keep_first` holds; the update happens only
        where `only_if` holds (None: always).
        """
        table = Lease.__table__  # type: ignore[attr-defined]
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        stmt = insert(table).values(name=name, holder=holder, acquired_at=now,
                                    renewed_at=now, expires_at=expires)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.name],
            set_={
                "holder": stmt.excluded.holder,
                "acquired_at": sa.case((keep_first, table.c.acquired_at),
                                       else_=stmt.excluded.acquired_at),
                "renewed_at": stmt.excluded.renewed_at,
                "expires_at": stmt.excluded.expires_at,
            },
            where=only_if,
        )
        with self._session() as session:
            session.execute(stmt)
            lease = session.get(Lease, name, populate_existing=True)
            session.commit()
            return lease

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once (on clean shutdown), if `holder` still has it."""
        def work() -> None:
            with self._session() as session:
                session.execute(sa.delete(Lease).where(col(Lease.name) == name,
                                                       col(Lease.holder) == holder))
                session.commit()
        await self._run(work)

    # --- heartbeats: which agents are alive (rows `heartbeat:<replica>` in `lease`) -----
    # A heartbeat row is no lease: nobody competes for it, each replica only ever
    # writes its own. It lives in the `lease` table because it has the same shape
    # (who, since when, until when), so knowing who is alive needs no migration.

    async def beat(self, replica: str, *, now: datetime, ttl: float) -> bool:
        """Record that `replica` is alive until `now + ttl`; True once written.

        The row keeps the time of the replica's first beat (`acquired_at`).
        See `incident_fsm.heartbeat.Heartbeat` for the loop that calls this.
        """
        _check_text("replica", replica, MAX_ACTOR)
        if ttl <= 0:
            raise InvalidInput("a heartbeat's ttl must be greater than 0")
        name = _heartbeat_name(replica)
        expires = now + timedelta(seconds=ttl)

        def work() -> bool:
            table = Lease.__table__  # type: ignore[attr-defined]
            # Each replica writes only its own row: no condition, the first beat's time kept.
            self._upsert_lease(name, replica, now=now, expires=expires,
                               keep_first=table.c.holder == replica, only_if=None)
            return True
        return await self._run(work)

    async def end_beat(self, replica: str) -> None:
        """Remove `replica`'s heartbeat at once (it is stopping cleanly)."""
        await self.release_lease(_heartbeat_name(replica), replica)

    async def agents_seen(self, now: datetime) -> list[tuple[str, datetime]]:
        """(replica, alive until) of every agent whose last heartbeat is still valid at `now`."""
        query = (
            sa.select(col(Lease.holder), col(Lease.expires_at))
            .where(col(Lease.name).startswith(HEARTBEAT_PREFIX, autoescape=True),
                   col(Lease.expires_at) > now)
            .order_by(col(Lease.holder))
        )

        def work() -> list[tuple[str, datetime]]:
            with self._session() as session:
                return [(str(holder), until) for holder, until in session.execute(query).all()]
        return await self._run(work)

    # --- statistics --------------------------------------------------------------

    async def statistics(self, *, since: datetime | None = None) -> Statistics:
        """Aggregates over incidents opened (and checks made) since `since` (default: all)."""
        def work() -> Statistics:
            with self._session() as session:
                return _statistics(session, since)
        return await self._run(work)

    # --- health checks (written by the monitor; prunable, unlike history) -------

    async def record_health_check(self, *checks: HealthCheck) -> None:
        """Insert the rows of one poll (probe, fallback, dependencies) in one transaction."""
        rows = [_clipped_check(check) for check in checks]
        if not rows:
            return

        def work() -> None:
            with self._session() as session:
                session.add_all(rows)
                session.commit()
        await self._run(work)

    async def health_checks(
        self,
        *,
        target: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[HealthCheck]:
        """Health-check rows at or after `since`, oldest first."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1")

        def work() -> list[HealthCheck]:
            query = select(HealthCheck)
            if target is not None:
                query = query.where(HealthCheck.target == target)
            if since is not None:
                query = query.where(HealthCheck.at >= since)
            query = query.order_by(col(HealthCheck.at), col(HealthCheck.id)).limit(limit)
            with self._session() as session:
                return list(session.exec(query).all())
        return await self._run(work)

    async def prune_health_checks(self, older_than: datetime) -> int:
        """Delete health-check rows older than `older_than`; returns how many went."""
        def work() -> int:
            with self._session() as session:
                result = session.execute(
                    sa.delete(HealthCheck).where(col(HealthCheck.at) < older_than)
                )
                session.commit()
                return int(result.rowcount)  # type: ignore[attr-defined]
        return await self._run(work)

    # --- remediation: attempts, the learned record, guardrail counts --------------
    # Read-only queries for the remediator (incident_fsm/remediator.py). Success is
    # `succeeded_condition` and failure `failed_condition`, the same ones `stats`
    # counts: every strike is a failure, so the ranking never learns from an attempt
    # the three-strike rule counted as failed. The one failure that is no strike: an
    # action that failed while the problem cleared anyway (that incident is over).

    async def attempts(self, incident_id: IncidentId) -> list[ActionRun]:
        """The incident's action runs (dry runs included), in attempt order."""
        def work() -> list[ActionRun]:
            with self._session() as session:
                return list(session.exec(
                    select(ActionRun).where(ActionRun.incident_id == incident_id)
                    .order_by(col(ActionRun.attempt))
                ).all())
        return await self._run(work)

    async def action_record(self, kind: str) -> dict[str, ActionTally]:
        """Per action, successes and failures on incidents of `kind` (no dry runs)."""
        success = sa.case((succeeded_condition(), 1), else_=0)
        failure = sa.case((failed_condition(), 1), else_=0)
        query = (
            sa.select(col(ActionRun.action), sa.func.sum(success), sa.func.sum(failure))
            .join(Incident, col(Incident.id) == col(ActionRun.incident_id))
            .where(col(Incident.kind) == kind, col(ActionRun.dry_run).is_(False))
            .group_by(col(ActionRun.action))
        )

        def work() -> dict[str, ActionTally]:
            with self._session() as session:
                return {
                    str(name): ActionTally(int(wins or 0), int(losses or 0))
                    for name, wins, losses in session.execute(query).all()
                }
        return await self._run(work)

    async def count_actions(self, *, target: str, since: datetime) -> int:
        """Real attempts on `target` started at or after `since`, all incidents.

        Neither dry runs nor attempts found not applicable (`skipped`: they
        changed nothing at the service) spend the action budget.
        """
        query = (
            sa.select(sa.func.count()).select_from(ActionRun)
            .join(Incident, col(Incident.id) == col(ActionRun.incident_id))
            .where(col(Incident.target) == target, col(ActionRun.dry_run).is_(False),
                   sa.or_(col(ActionRun.outcome).is_(None),
                          col(ActionRun.outcome) != OUTCOME_SKIPPED),
                   col(ActionRun.started_at) >= since)
        )
        return await self._run(self._count, query)

    async def count_reopenings(self, *, fingerprint: str, since: datetime) -> int:
        """`reopen` transitions of `fingerprint` at or after `since`."""
        query = (
            sa.select(sa.func.count()).select_from(Transition)
            .join(Incident, col(Incident.id) == col(Transition.incident_id))
            .where(col(Incident.fingerprint) == fingerprint,
                   col(Transition.trigger) == "reopen", col(Transition.at) >= since)
        )
        return await self._run(self._count, query)

    def _count(self, query: sa.Select[Any]) -> int:
        with self._session() as session:
            return int(session.execute(query).scalar_one())


# --- helpers (run inside a session, in the worker thread) --------------------------


def _heartbeat_name(replica: str) -> str:
    """The `lease` row of `replica`'s heartbeat (the column holds 100 characters)."""
    name = HEARTBEAT_PREFIX + replica
    if len(name) <= 100:
        return name
    # Two long replica names with the same beginning must not share a row.
    digest = hashlib.sha256(replica.encode()).hexdigest()[:16]
    return f"{name[:83]}~{digest}"


def _open_by_fingerprint(fingerprint: str) -> Any:
    return select(Incident).where(
        Incident.fingerprint == fingerprint, Incident.state != State.RESOLVED.value
    )


def _strike_count(incident_id: int) -> sa.Select[int]:
    return (
        sa.select(sa.func.count())
        .select_from(ActionRun)
        .where(col(ActionRun.incident_id) == incident_id, strike_condition())
    )


def _refresh_strikes(session: Session, incident_id: int) -> None:
    session.execute(
        sa.update(Incident)
        .where(col(Incident.id) == incident_id)
        .values(strikes=_strike_count(incident_id).scalar_subquery())
    )


def _add_action_run(session: Session, incident_id: int, intent: ActionIntent,
                    at: datetime) -> ActionRun:
    attempt = 1 + int(session.execute(
        sa.select(sa.func.coalesce(sa.func.max(ActionRun.attempt), 0))
        .where(col(ActionRun.incident_id) == incident_id)
    ).scalar_one())
    run = ActionRun(
        incident_id=incident_id, attempt=attempt, action=intent.action, tier=intent.tier,
        # Unique per attempt: a resumed attempt finds its row instead of running again.
        idempotency_key=f"incident-{incident_id}-attempt-{attempt}-{intent.action}",
        dry_run=intent.dry_run, started_at=at,
    )
    session.add(run)
    session.flush()
    return run


def _add_outbox(session: Session, incident_id: int, seq: int,
                messages: Sequence[OutboxMessage], at: datetime) -> None:
    for message in messages:
        session.add(Notification(
            incident_id=incident_id, transition_seq=seq, channel=message.channel,
            payload=_json_safe("notification payload", message.payload),
            dedupe_key=f"incident-{incident_id}-seq-{seq}-{message.channel}",
            status="pending", attempts=0, next_attempt_at=at, created_at=at,
        ))


def _get_run(session: Session, run_id: int) -> ActionRun:
    run = session.get(ActionRun, run_id)
    if run is None:
        raise InvalidInput(f"no action run with id {run_id}")
    return run


def _check_text(name: str, value: str, limit: int) -> None:
    if not value or not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value)} characters long; the limit is {limit}")


def _json_safe(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name} must be JSON-serialisable: {exc}") from None
    result: dict[str, Any] = json.loads(text)
    return result


def _percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _statistics(session: Session, since: datetime | None) -> Statistics:
    opened = [] if since is None else [col(Incident.opened_at) >= since]
    state = col(Incident.state)
    states = {str(name): int(n) for name, n in session.execute(
        sa.select(state, sa.func.count()).where(*opened).group_by(state))}

    escalated_ids = (
        sa.select(col(Transition.incident_id)).where(col(Transition.dest) == State.ESCALATED.value)
        .distinct().scalar_subquery()
    )
    kinds: list[KindStats] = []
    for kind, total, open_, resolved, escalated in session.execute(
        sa.select(
            col(Incident.kind),
            sa.func.count(),
            sa.func.sum(sa.case((col(Incident.state) != State.RESOLVED.value, 1), else_=0)),
            sa.func.sum(sa.case((col(Incident.state) == State.RESOLVED.value, 1), else_=0)),
            sa.func.sum(sa.case((col(Incident.id).in_(escalated_ids), 1), else_=0)),
        ).where(*opened).group_by(col(Incident.kind)).order_by(col(Incident.kind))
    ):
        durations = sorted(
            (r - o).total_seconds() for o, r in session.execute(
                sa.select(col(Incident.opened_at), col(Incident.resolved_at)).where(
                    col(Incident.kind) == kind, col(Incident.resolved_at).is_not(None), *opened))
        )
        kinds.append(KindStats(str(kind), int(total), int(open_ or 0), int(resolved or 0),
                               int(escalated or 0), _percentile(durations, 0.5),
                               _percentile(durations, 0.95)))

    # The same success and failure as the learned ranking (`action_record`).
    judged_ok = sa.func.sum(sa.case((succeeded_condition(), 1), else_=0))
    judged_bad = sa.func.sum(sa.case((failed_condition(), 1), else_=0))
    dry = sa.func.sum(sa.case((col(ActionRun.dry_run).is_(True), 1), else_=0))
    actions = [
        ActionStats(str(kind), str(action), int(n), int(ok or 0), int(bad or 0), int(d or 0))
        for kind, action, n, ok, bad, d in session.execute(
            sa.select(col(Incident.kind), col(ActionRun.action), sa.func.count(), judged_ok,
                      judged_bad, dry)
            .join(Incident, col(Incident.id) == col(ActionRun.incident_id))
            .where(*opened).group_by(col(Incident.kind), col(ActionRun.action))
            .order_by(col(Incident.kind), col(ActionRun.action))
        )
    ]

    def status_sum(status: str) -> Any:
        return sa.func.sum(sa.case((col(Notification.status) == status, 1), else_=0))

    created = [] if since is None else [col(Notification.created_at) >= since]
    channels = [
        ChannelStats(str(channel), int(d or 0), int(p or 0), int(x or 0), int(k or 0))
        for channel, d, p, x, k in session.execute(
            sa.select(col(Notification.channel), status_sum("delivered"), status_sum("pending"),
                      status_sum("dead"), status_sum("skipped"))
            .where(*created).group_by(col(Notification.channel)).order_by(col(Notification.channel))
        )
    ]

    checked = [] if since is None else [col(HealthCheck.at) >= since]
    checks = [
        CheckStats(str(target), int(n), int(failed or 0),
                   None if avg is None else float(avg), None if top is None else float(top))
        for target, n, failed, avg, top in session.execute(
            sa.select(col(HealthCheck.target), sa.func.count(),
                      sa.func.sum(sa.case((col(HealthCheck.ok).is_(False), 1), else_=0)),
                      sa.func.avg(col(HealthCheck.latency_ms)),
                      sa.func.max(col(HealthCheck.latency_ms)))
            .where(*checked).group_by(col(HealthCheck.target)).order_by(col(HealthCheck.target))
        )
    ]
    return Statistics(states, kinds, actions, channels, checks)


def _is_missing_table(exc: DBAPIError) -> bool:
    name = type(exc.orig).__name__
    text = str(exc.orig).lower()
    return name == "UndefinedTable" or (name == "OperationalError" and "no such table" in text)


def _is_unavailable(exc: DBAPIError) -> bool:
    name = type(exc.orig).__name__
    return name in {"OperationalError", "InterfaceError", "QueryCanceled", "ConnectionTimeout"}


# --- helpers: health checks ----------------------------------------------------------


def _clipped_check(check: HealthCheck) -> HealthCheck:
    """A copy whose texts fit their columns (reasons come from remote answers)."""
    return HealthCheck(
        target=check.target[:200], at=check.at, source=check.source[:200], ok=check.ok,
        latency_ms=check.latency_ms, memory_pct=check.memory_pct, disk_pct=check.disk_pct,
        cpu_pct=check.cpu_pct, error=check.error[:1000],
    )

# --- remediation helpers -----------------------------------------------------------


@dataclass(frozen=True)
class ActionTally:
    """Verified successes and failures of one action for one problem kind."""

    successes: int
    failures: int
