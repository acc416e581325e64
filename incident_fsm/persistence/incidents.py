"""The incidents repository: open, read, list and move incidents; their history."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select

from incident_fsm.errors import (
    ConcurrentUpdate,
    IncidentNotFound,
    InvalidInput,
    InvalidTransition,
    StoreError,
)
from incident_fsm.fsm.graph import edge_destinations, operator_triggers_from
from incident_fsm.fsm.steps import Stepped, StepRequest
from incident_fsm.models import (
    OPEN_PREDICATE,
    ActionRun,
    Incident,
    IncidentId,
    Notification,
    Opened,
    OutboxMessage,
    Timeline,
    Transition,
    from_row,
)
from incident_fsm.persistence import direct
from incident_fsm.persistence.core import (
    MAX_ACTOR,
    MAX_REASON,
    StoreCore,
    _check_text,
    _json_safe,
)
from incident_fsm.persistence.effects import (
    _table,
    history_values,
    insert_action_run,
    open_in_one_statement,
    outbox_values,
    step_in_one_statement,
    step_values,
)
from incident_fsm.persistence.snapshot import Read, read_snapshot, read_snapshot_direct
from incident_fsm.vocabulary import OPEN_TRIGGER, State

#: How often `open_incident` retries after losing a race on the fingerprint.
OPEN_RETRIES = 3


def _of_incident(model: type[Any], order: sa.ColumnElement[Any]) -> Read[Any]:
    table = _table(model)
    return Read(model, sa.select(table).where(table.c.incident_id == sa.bindparam("incident_id"))
                .order_by(order))


_INCIDENT = _table(Incident)
@functools.cache
def _list_query(states: bool, kind: bool, target: bool, since: bool, until: bool
                ) -> sa.Select[Any]:
    """`list_incidents`'s statement for one combination of filters, built when first used:
    building a statement costs more than running it, and the agent lists every few seconds."""
    c = _INCIDENT.c
    query = sa.select(_INCIDENT)
    for wanted, condition in (
            (states, c.state.in_(sa.bindparam("states", expanding=True))),
            (kind, c.kind == sa.bindparam("kind")), (target, c.target == sa.bindparam("target")),
            (since, c.opened_at >= sa.bindparam("since")),
            (until, c.opened_at < sa.bindparam("until"))):
        if wanted:
            query = query.where(condition)
    return query.order_by(c.opened_at.desc(), c.id.desc()).limit(sa.bindparam("limit"))


#: `open_incident`'s insert on SQLite: nothing when one of its fingerprint is open (on
#: Postgres an opening is one statement, `effects.open_in_one_statement`).
_OPEN_INSERT = (sqlite_insert(_INCIDENT)
                .on_conflict_do_nothing(index_elements=[_INCIDENT.c.fingerprint],
                                        index_where=OPEN_PREDICATE)
                .returning(*_INCIDENT.c))


#: What the monitor and the drivers ask of every breach and step, built once.
_BY_ID = sa.select(_INCIDENT).where(_INCIDENT.c.id == sa.bindparam("id"))
_OPEN = sa.select(_INCIDENT).where(_INCIDENT.c.fingerprint == sa.bindparam("fingerprint"),
                                   _INCIDENT.c.state != State.RESOLVED.value).limit(1)
_LAST_RESOLVED = (sa.select(_INCIDENT)
                  .where(_INCIDENT.c.fingerprint == sa.bindparam("fingerprint"),
                         _INCIDENT.c.state == State.RESOLVED.value)
                  .order_by(_INCIDENT.c.opened_at.desc(), _INCIDENT.c.id.desc()).limit(1))
#: Both of those in one round trip: what a confirmed breach needs to know before it opens.
_OPEN_OR_LAST_RESOLVED = sa.union_all(sa.select(_OPEN.subquery()),
                                      sa.select(_LAST_RESOLVED.subquery()))

#: What a step that matched no row reads to say why.
_VERSION_AND_STATE = sa.select(_INCIDENT.c.version, _INCIDENT.c.state).where(
    _INCIDENT.c.id == sa.bindparam("id"))

#: Open incidents whose deadline is at `now` or before, most overdue first.
_OVERDUE = (sa.select(_INCIDENT)
            .where(_INCIDENT.c.state != State.RESOLVED.value,
                   _INCIDENT.c.deadline_at.is_not(None),
                   _INCIDENT.c.deadline_at <= sa.bindparam("now"))
            .order_by(_INCIDENT.c.deadline_at).limit(sa.bindparam("limit")))

#: What `timeline` reads: the incident, then its history, each in its order.
_TIMELINE: tuple[Read[Any], ...] = (
    Read(Incident, sa.select(_table(Incident))
         .where(_table(Incident).c.id == sa.bindparam("incident_id"))),
    _of_incident(Transition, _table(Transition).c.seq),
    _of_incident(ActionRun, _table(ActionRun).c.attempt),
    _of_incident(Notification, _table(Notification).c.id),
)


def _could_not_open(fingerprint: str) -> NoReturn:
    raise StoreError(f"could neither open nor find an open incident for {fingerprint} "
                     f"after {OPEN_RETRIES} tries")


async def _open_in_one_statement(conn: direct.Connection, opening: direct.Prepared,
                                 find_open: direct.Prepared, bound: dict[str, Any]) -> Opened:
    # One round trip, committing on its own; its rows are written only if it inserted.
    for _ in range(OPEN_RETRIES):
        rows = await direct.fetch(conn, opening, bound)
        if rows:
            return Opened(from_row(Incident, rows[0]), created=True)
        existing = await direct.fetch(conn, find_open, {"fingerprint": bound["new_fingerprint"]})
        if existing:
            return Opened(from_row(Incident, existing[0]), created=False)
        # resolved in between: try again
    _could_not_open(bound["new_fingerprint"])


async def _step_in_one_statement(conn: direct.Connection, step: StepRequest,
                                 statement: direct.Prepared, version_and_state: direct.Prepared,
                                 values: dict[str, Any]) -> Stepped:
    rows = await direct.fetch(conn, statement, values)
    if not rows:
        found = await direct.fetch(conn, version_and_state, {"id": step.incident_id})
        _raise_not_moved(step, found[0] if found else None)
    return Stepped(from_row(Incident, rows[0]), None)


def _raise_not_moved(step: StepRequest, found: Mapping[Any, Any] | None) -> NoReturn:
    """Why the version-checked update of `step` matched no row, from the incident's
    version and state as they are now (`found`, None if there is no such incident)."""
    if found is None:
        raise IncidentNotFound(step.incident_id)
    raise ConcurrentUpdate(
        incident_id=step.incident_id, expected_version=step.expected_version,
        found_version=found["version"], found_state=found["state"],
    )


class IncidentRepository(StoreCore):
    """Incidents: the current copy, each step in one transaction, and the history rows."""

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
        fingerprint = f"{target}:{kind}"
        values = {"fingerprint": fingerprint, "target": target, "kind": kind,
                  "severity": severity, "state": State.DETECTED.value, "strikes": 0,
                  "flap_count": 0, "version": 1, "summary": summary[:2000],
                  "details": payload, "deadline_at": deadline_at, "opened_at": at,
                  "updated_at": at, "resolved_at": None}
        history = {"seq": 1, "trigger": OPEN_TRIGGER, "source": None,
                   "dest": State.DETECTED.value, "actor": actor.strip(),
                   "reason": reason.strip(), "details": payload, "at": at}
        if self._direct is not None:
            statement, bound = open_in_one_statement(values, history, notifications, at)
            return await self._run(_open_in_one_statement, self._prepared(statement),
                                   self._prepared(_OPEN), bound, _lane=self._detecting)
        return await self._run_detecting(self._open_incident, values, history,
                                         tuple(notifications))

    def _open_incident(self, values: dict[str, Any], history: dict[str, Any],
                       notifications: tuple[OutboxMessage, ...]) -> Opened:
        insert = _OPEN_INSERT
        fingerprint = values["fingerprint"]
        for _ in range(OPEN_RETRIES):
            # One transaction, SQLAlchemy Core: the insert yields to an open incident of
            # the same fingerprint (the partial unique index) instead of failing, so two
            # openers racing never both win, and the loser reads the winner's.
            with self.engine.begin() as conn:
                row = conn.execute(insert, values).first()
                if row is None:
                    existing = conn.execute(_OPEN, {"fingerprint": fingerprint}).first()
                    if existing is None:
                        continue  # resolved in between: try again
                    return Opened(from_row(Incident, existing._mapping), created=False)
                conn.execute(sa.insert(_table(Transition)).values(incident_id=row.id,
                                                                  **history))
                if notifications:
                    conn.execute(sa.insert(_table(Notification)),
                                 outbox_values(row.id, 1, notifications, history["at"]))
                return Opened(from_row(Incident, row._mapping), created=True)
        _could_not_open(fingerprint)

    async def get_incident(self, incident_id: IncidentId) -> Incident:
        found = await self._select(Incident, _BY_ID, {"id": incident_id})
        if not found:
            raise IncidentNotFound(incident_id)
        return found[0]

    async def find_open(self, fingerprint: str) -> Incident | None:
        """The open incident for a fingerprint, if any."""
        found = await self._select(Incident, _OPEN, {"fingerprint": fingerprint},
                                   lane=self._detecting)
        return found[0] if found else None

    async def last_resolved(self, fingerprint: str) -> Incident | None:
        """The most recently resolved incident of a fingerprint (a `reopen` candidate)."""
        found = await self._select(Incident, _LAST_RESOLVED, {"fingerprint": fingerprint})
        return found[0] if found else None

    async def opening_candidates(self, fingerprint: str
                                 ) -> tuple[Incident | None, Incident | None]:
        """(`find_open`, `last_resolved`) of a fingerprint, read in one statement: what a
        confirmed breach must know to open, reopen or join an incident. Under a thousand
        breaches at once each store call waits its turn, so one call instead of two opens
        them sooner."""
        found = await self._select(Incident, _OPEN_OR_LAST_RESOLVED,
                                   {"fingerprint": fingerprint}, lane=self._detecting)
        open_ = next((i for i in found if i.state != State.RESOLVED), None)
        resolved = next((i for i in found if i.state == State.RESOLVED), None)
        return open_, resolved

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

        shape = (bool(wanted), kind is not None, target is not None, since is not None,
                 until is not None)
        query = _list_query(*shape)
        params = {"states": list(wanted), "kind": kind, "target": target, "since": since,
                  "until": until, "limit": limit}
        return await self._select(Incident, query,
                                  {k: v for k, v in params.items() if v is not None and v != []})

    async def overdue(self, now: datetime, *, limit: int = 100) -> list[Incident]:
        """Open incidents whose deadline has passed, most overdue first."""
        return await self._select(Incident, _OVERDUE, {"now": now, "limit": limit})

    # --- transitions -------------------------------------------------------

    async def apply_transition(self, step: StepRequest) -> Stepped:
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
        if step.intent is None and self._direct is not None:
            # One round trip, no BEGIN or COMMIT: a statement commits on its own
            # (autocommit), and the history and outbox rows are written only if the update
            # matched.
            statement, values = step_in_one_statement(step, details)
            return await self._run(_step_in_one_statement, step, self._prepared(statement),
                                   self._prepared(_VERSION_AND_STATE), values)
        return await self._run(self._apply_transition, step, details)

    def _apply_transition(self, step: StepRequest, details: dict[str, Any]) -> Stepped:
        # SQLAlchemy Core, not the ORM: the version-checked update hands the row back
        # (RETURNING), so a step is its statements and one commit, with no unit of work.
        # A step that starts an attempt comes here on Postgres too: the attempt's number
        # is the incident's last one plus one, read inside the transaction.
        incident = _table(Incident)
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.update(incident)
                .where(incident.c.id == step.incident_id,
                       incident.c.version == step.expected_version,
                       incident.c.state == step.source)
                .values(**step_values(step))
                .returning(*incident.c)
            ).first()
            if row is None:
                self._not_moved(conn, step)
            conn.execute(sa.insert(_table(Transition)).values(**history_values(step, details)))
            run = None
            if step.intent is not None:
                run = insert_action_run(conn, step.incident_id, step.intent, step.at,
                                        step.attempt_key)
            if step.notifications:
                conn.execute(sa.insert(_table(Notification)),
                             outbox_values(step.incident_id, step.expected_version + 1,
                                           step.notifications, step.at))
        return Stepped(from_row(Incident, row._mapping), run)

    @staticmethod
    def _not_moved(conn: sa.Connection, step: StepRequest) -> NoReturn:
        """Why the version-checked update of `step` matched no row: raise it."""
        found = conn.execute(_VERSION_AND_STATE, {"id": step.incident_id}).first()
        _raise_not_moved(step, None if found is None else found._mapping)

    # --- history -----------------------------------------------------------

    async def timeline(self, incident_id: IncidentId) -> Timeline:
        """An incident with its transitions, attempts and notifications, each in order, all
        read from one snapshot (on Postgres in one round trip: see `snapshot`)."""
        params = {"incident_id": incident_id}
        if self._direct is not None:
            reads = await self._run(read_snapshot_direct, _TIMELINE, self.engine.dialect, params)
        else:
            reads = await self._run(read_snapshot, self.engine, _TIMELINE, params)
        (found, transitions, actions, notes) = reads
        if not found:
            raise IncidentNotFound(incident_id)
        return Timeline(found[0], transitions, actions, notes)

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
            with self._reading() as session:
                return [(t, i) for t, i in session.exec(query).all()]
        return await self._run(work)
