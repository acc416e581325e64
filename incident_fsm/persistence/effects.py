"""What a step writes: the one definition of each step's effect on the rows, and of strikes.

The pure functions at the top (`step_values`, `stepped`, `new_attempt`,
`finish_run`, `judge_run`, `strike_count_of`) say what a step, an attempt
and its outcome do to the rows. The store applies them in its transactions;
the outage journal applies the same functions to its local copy, so a step
taken offline has exactly the effect it would have had online. The SQL
helpers below them are the store's side of the same definitions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlmodel import Session, col, select

from incident_fsm.errors import AttemptAlreadyFinished, AttemptAlreadyJudged
from incident_fsm.fsm.steps import ActionIntent, StepRequest
from incident_fsm.models import (
    OPEN_PREDICATE,
    ActionRun,
    Incident,
    Notification,
    OutboxMessage,
    Transition,
)
from incident_fsm.persistence.core import (
    _json_safe,
)
from incident_fsm.vocabulary import AttemptOutcome, NotificationStatus, State

MAX_EXCERPT = 4000


def step_values(step: StepRequest) -> dict[str, Any]:
    """The incident columns `step` sets: the one definition of a step's effect on the row."""
    return {
        "state": step.dest, "version": step.expected_version + 1,
        "deadline_at": step.deadline_at, "flap_count": step.flap_count,
        "resolved_at": step.resolved_at, "updated_at": step.at,
    }


def stepped(incident: Incident, step: StepRequest) -> Incident:
    """The incident as `step` leaves it: a new row, the argument unchanged."""
    return Incident(**{**incident.model_dump(), **step_values(step)})


def history_values(step: StepRequest, details: dict[str, Any]) -> dict[str, Any]:
    """The columns of the `transition` row of `step` (its seq is the incident's new version)."""
    return {"incident_id": step.incident_id, "seq": step.expected_version + 1,
            "trigger": step.trigger, "source": step.source, "dest": step.dest,
            "actor": step.actor, "reason": step.reason, "details": details, "at": step.at}


def _table(model: type[Any]) -> sa.Table:
    table: sa.Table = model.__table__
    return table


def attempt_key(incident_id: int, attempt: int, action: str) -> str:
    """Unique per attempt: a resumed attempt finds its row instead of running again."""
    return f"incident-{incident_id}-attempt-{attempt}-{action}"


def new_attempt(incident_id: int, *, after: int, intent: ActionIntent, at: datetime,
                run_id: int | None = None, key: str | None = None) -> ActionRun:
    """The attempt that follows attempt number `after` of an incident (numbered from 1)."""
    attempt = after + 1
    return ActionRun(
        id=run_id, incident_id=incident_id, attempt=attempt, action=intent.action,
        tier=intent.tier, idempotency_key=key or attempt_key(incident_id, attempt, intent.action),
        dry_run=intent.dry_run, started_at=at,
    )


def finish_run(run: ActionRun, *, outcome: str, finished_at: datetime, output_excerpt: str,
               evidence: dict[str, Any]) -> None:
    """Record how an attempt ended; an outcome, once written, is never overwritten."""
    if run.finished_at is not None:
        raise AttemptAlreadyFinished(run.id or 0, run.outcome)
    run.outcome = outcome
    run.finished_at = finished_at
    run.output_excerpt = output_excerpt[:MAX_EXCERPT]
    run.evidence = evidence


def judge_run(run: ActionRun, *, verified: bool) -> None:
    """Record whether the problem cleared after an attempt; a verdict is never reversed."""
    if run.verified is not None and run.verified != verified:
        raise AttemptAlreadyJudged(run.id or 0, run.verified)
    run.verified = verified


#: Outcomes of an attempt whose action did not work, whatever the problem did afterwards.
FAILED_OUTCOMES = (AttemptOutcome.FAILED, AttemptOutcome.TIMED_OUT, AttemptOutcome.INTERRUPTED)
#: Unjudged outcomes that count as a strike (an interrupted attempt waits for its verdict).
_STRIKING = (AttemptOutcome.FAILED, AttemptOutcome.TIMED_OUT)
#: The only outcome of an action that did what it was asked.
OUTCOME_OK = AttemptOutcome.OK


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
                              or (r.verified is None and r.outcome in _STRIKING))
    )


def strike_condition() -> sa.ColumnElement[bool]:
    """An attempt is a strike if verification said no, or it failed and was never judged."""
    return sa.and_(
        col(ActionRun.dry_run).is_(False),
        sa.or_(
            col(ActionRun.verified).is_(False),
            sa.and_(
                col(ActionRun.verified).is_(None),
                col(ActionRun.outcome).in_(_STRIKING),
            ),
        ),
    )


def _open_by_fingerprint(fingerprint: str) -> Any:
    return select(Incident).where(
        Incident.fingerprint == fingerprint, Incident.state != State.RESOLVED.value
    )


def _add_action_run(session: Session, incident_id: int, intent: ActionIntent,
                    at: datetime, key: str | None = None) -> ActionRun:
    last = int(session.execute(
        sa.select(sa.func.coalesce(sa.func.max(ActionRun.attempt), 0))
        .where(col(ActionRun.incident_id) == incident_id)
    ).scalar_one())
    run = new_attempt(incident_id, after=last, intent=intent, at=at, key=key)
    session.add(run)
    session.flush()
    return run


def insert_action_run(conn: sa.Connection, incident_id: int, intent: ActionIntent,
                      at: datetime, key: str | None = None) -> ActionRun:
    """`_add_action_run` on a Core connection: the next attempt's row, with its id."""
    table = _table(ActionRun)
    last = int(conn.execute(
        sa.select(sa.func.coalesce(sa.func.max(table.c.attempt), 0))
        .where(table.c.incident_id == incident_id)
    ).scalar_one())
    run = new_attempt(incident_id, after=last, intent=intent, at=at, key=key)
    run.id = conn.execute(sa.insert(table).values(**run.model_dump(exclude={"id"}))
                          .returning(table.c.id)).scalar_one()
    return run


def dedupe_key(incident_id: int, seq: int, channel: str) -> str:
    """An outbox row's key: one per incident, step and channel (a receiver drops repeats)."""
    return f"incident-{incident_id}-seq-{seq}-{channel}"


def dedupe_key_sql(incident_id: Any, seq: Any, channel: Any) -> sa.ColumnElement[str]:
    """`dedupe_key` computed by Postgres, for rows whose incident id it assigns."""
    return sa.func.concat("incident-", incident_id, "-seq-", seq, "-", channel)


def outbox_values(incident_id: int, seq: int, messages: Sequence[OutboxMessage],
                  at: datetime) -> list[dict[str, Any]]:
    """The columns of the outbox rows a step at `seq` writes for `messages`."""
    return [{"incident_id": incident_id, "transition_seq": seq, "channel": m.channel,
             "payload": _json_safe("notification payload", m.payload),
             "dedupe_key": dedupe_key(incident_id, seq, m.channel),
             "status": NotificationStatus.PENDING, "attempts": 0, "next_attempt_at": at,
             "created_at": at, "delivered_at": None, "last_error": ""}
            for m in messages]


def _add_outbox(session: Session, incident_id: int, seq: int,
                messages: Sequence[OutboxMessage], at: datetime) -> None:
    for values in outbox_values(incident_id, seq, messages, at):
        session.add(Notification(**values))


def _outbox_rows() -> Any:
    """The outbox rows a one-statement write takes as one JSON array (as many as it has
    messages), read back as rows of the table's own type; `outbox_values` sets every
    column but the id."""
    outbox = _table(Notification)
    return sa.func.jsonb_populate_recordset(
        sa.literal_column(f"NULL::{outbox.name}"), sa.bindparam("outbox", type_=JSONB),
    ).table_valued(*(c.name for c in outbox.c if not c.primary_key))


def _json_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{c: v.isoformat() if isinstance(v, datetime) else v for c, v in row.items()}
            for row in rows]


@functools.cache
def _one_statement_step(step_columns: tuple[str, ...],
                        history_columns: tuple[str, ...]) -> sa.Select[Any]:
    incident, history, outbox = _table(Incident), _table(Transition), _table(Notification)
    moved = (sa.update(incident)
             .where(incident.c.id == sa.bindparam("where_id"),
                    incident.c.version == sa.bindparam("where_version"),
                    incident.c.state == sa.bindparam("where_state"))
             .values({c: sa.bindparam(f"set_{c}", type_=incident.c[c].type)
                      for c in step_columns})
             .returning(*incident.c).cte("moved"))
    matched = sa.exists(sa.select(moved.c.id))
    wrote_history = sa.insert(history).from_select(
        list(history_columns),
        sa.select(*(sa.bindparam(f"history_{c}", type_=history.c[c].type)
                    for c in history_columns)).where(matched),
    ).cte("wrote_history")
    rows = _outbox_rows()
    wrote_outbox = sa.insert(outbox).from_select(
        list(rows.c.keys()), sa.select(*rows.c).where(matched)).cte("wrote_outbox")
    return sa.select(moved).add_cte(wrote_history, wrote_outbox)


def step_in_one_statement(step: StepRequest,
                          details: dict[str, Any]) -> tuple[sa.Select[Any], dict[str, Any]]:
    """A step without an attempt as one Postgres statement, and its bound values.

    The version-checked update, then the history and outbox rows only if it matched
    (data-modifying CTEs): one round trip and one implicit transaction. The statement is
    built once per set of columns, taken from `step_values` and `history_values`, so
    those stay the one definition of what a step writes.
    """
    moved, history = step_values(step), history_values(step, details)
    # No value is named after a column: an update's execute() would take it for a SET.
    values: dict[str, Any] = {"where_id": step.incident_id,
                              "where_version": step.expected_version,
                              "where_state": step.source}
    values.update({f"set_{c}": v for c, v in moved.items()})
    values.update({f"history_{c}": v for c, v in history.items()})
    values["outbox"] = _json_rows(outbox_values(step.incident_id, step.expected_version + 1,
                                                step.notifications, step.at))
    return _one_statement_step(tuple(moved), tuple(history)), values


@functools.cache
def _one_statement_open(incident_columns: tuple[str, ...],
                        history_columns: tuple[str, ...]) -> sa.Select[Any]:
    incident, history, outbox = _table(Incident), _table(Transition), _table(Notification)
    opened = (pg_insert(incident)
              .values({c: sa.bindparam(f"new_{c}", type_=incident.c[c].type)
                       for c in incident_columns})
              .on_conflict_do_nothing(index_elements=[incident.c.fingerprint],
                                      index_where=OPEN_PREDICATE)
              .returning(*incident.c).cte("opened"))
    wrote_history = sa.insert(history).from_select(
        ["incident_id", *history_columns],
        sa.select(opened.c.id, *(sa.bindparam(f"history_{c}", type_=history.c[c].type)
                                 for c in history_columns)),
    ).cte("wrote_history")
    rows = _outbox_rows()
    # The incident's id is the database's to give: its rows take it from the insert.
    assigned = {"incident_id": opened.c.id,
                "dedupe_key": dedupe_key_sql(opened.c.id, rows.c.transition_seq, rows.c.channel)}
    wrote_outbox = sa.insert(outbox).from_select(
        list(rows.c.keys()),
        sa.select(*(assigned.get(c.key, c) for c in rows.c))
        .select_from(opened).join(rows, sa.true()),
    ).cte("wrote_outbox")
    return sa.select(opened).add_cte(wrote_history, wrote_outbox)


def open_in_one_statement(incident: dict[str, Any], history: dict[str, Any],
                          messages: Sequence[OutboxMessage],
                          at: datetime) -> tuple[sa.Select[Any], dict[str, Any]]:
    """An opening as one Postgres statement, and its bound values: the insert that yields
    to an open incident of the same fingerprint (the partial unique index), and its first
    history row and outbox rows only if it inserted. `history` is the first transition's
    columns but its incident id."""
    values: dict[str, Any] = {f"new_{c}": v for c, v in incident.items()}
    values.update({f"history_{c}": v for c, v in history.items()})
    values["outbox"] = _json_rows(
        {k: v for k, v in row.items() if k not in ("incident_id", "dedupe_key")}
        for row in outbox_values(0, history["seq"], messages, at))
    return _one_statement_open(tuple(incident), tuple(history)), values
