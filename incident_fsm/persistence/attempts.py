"""The attempts repository: action runs, their outcomes and verdicts, the remediator's queries."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from incident_fsm.errors import (
    IncidentNotFound,
    InvalidInput,
)
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import (
    OUTCOME_SKIPPED,
    ActionRun,
    Incident,
    IncidentId,
    Transition,
    from_row,
)
from incident_fsm.persistence.core import (
    StoreCore,
    _json_safe,
)
from incident_fsm.persistence.effects import (
    _add_action_run,
    _table,
    failed_condition,
    finish_run,
    judge_run,
    strike_condition,
    succeeded_condition,
)
from incident_fsm.vocabulary import AttemptOutcome, State, Trigger

# What a remediation asks of its attempts, built once with bind parameters: building a
# statement costs more than running it, and a thousand incidents at once make these
# calls thousands of times (the agent's Python, under one GIL, is what they wait on).
_RUN = _table(ActionRun)
_INCIDENT = _table(Incident)
_RUN_BY_ID = sa.select(_RUN).where(_RUN.c.id == sa.bindparam("run_id"))
#: The columns an outcome or a verdict writes (`finish_run`, `judge_run`); the bound
#: names differ from the columns' (an update would take those for its SET).
_RUN_CHANGED = ("outcome", "finished_at", "output_excerpt", "evidence", "verified")
_CHANGE_RUN = (sa.update(_RUN).where(_RUN.c.id == sa.bindparam("run_id"))
               .values({c: sa.bindparam(f"new_{c}", type_=_RUN.c[c].type)
                        for c in _RUN_CHANGED}))
_COUNT_STRIKES = (sa.select(sa.func.count()).select_from(_RUN)
                  .where(_RUN.c.incident_id == sa.bindparam("of_incident"), strike_condition()))
_REFRESH_STRIKES = (sa.update(_INCIDENT).where(_INCIDENT.c.id == sa.bindparam("of_incident"))
                    .values(strikes=_COUNT_STRIKES.scalar_subquery()))
_ATTEMPTS = (sa.select(_RUN).where(_RUN.c.incident_id == sa.bindparam("incident_id"))
             .order_by(_RUN.c.attempt))
_UNCLAIMED = (_RUN.c.id == sa.bindparam("run_id"), _RUN.c.executing_at.is_(None),
              _RUN.c.finished_at.is_(None))
_CLAIM = sa.update(_RUN).where(*_UNCLAIMED).values(executing_at=sa.bindparam("at"))
_CLAIM_AT_VERSION = (sa.update(_RUN).where(*_UNCLAIMED, sa.exists().where(
    _INCIDENT.c.id == _RUN.c.incident_id,
    _INCIDENT.c.version == sa.bindparam("incident_version"),
    _INCIDENT.c.state == State.REMEDIATING.value)).values(executing_at=sa.bindparam("at")))


@dataclass(frozen=True)
class ActionTally:
    """Verified successes and failures of one action for one problem kind."""

    successes: int
    failures: int


class AttemptRepository(StoreCore):
    """Attempts: recorded before they run, claimed once, finished and judged once."""

    # --- action runs -------------------------------------------------------

    async def record_action(self, incident_id: IncidentId, intent: ActionIntent,
                            *, at: datetime, key: str | None = None) -> ActionRun:
        """Record an attempt on its own (e.g. a dry run in monitor-only mode).

        Attempts that move the incident are recorded by `apply_transition`
        in the same transaction as the `remediate`/`approve` step instead.
        `key`: the idempotency key it already has (recorded offline), if any.
        """
        def work() -> ActionRun:
            with self._session() as session:
                if session.get(Incident, incident_id) is None:
                    raise IncidentNotFound(incident_id)
                run = _add_action_run(session, incident_id, intent, at, key)
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
        if outcome not in set(AttemptOutcome):
            raise InvalidInput(f"unknown action outcome {outcome!r}")
        payload = _json_safe("evidence", evidence or {})

        def finish(run: ActionRun) -> None:
            finish_run(run, outcome=outcome, finished_at=finished_at,
                       output_excerpt=output_excerpt, evidence=payload)

        return await self._run(self._update_run, run_id, finish)

    async def judge_action(self, run_id: int, *, verified: bool) -> ActionRun:
        """Record whether the problem cleared after an attempt (see `succeeded_condition`)."""
        def judge(run: ActionRun) -> None:
            judge_run(run, verified=verified)

        return await self._run(self._update_run, run_id, judge)

    def _update_run(self, run_id: int, change: Callable[[ActionRun], None]) -> ActionRun:
        """Change one attempt and recount its incident's strikes, in one transaction."""
        with self.engine.begin() as conn:
            found = conn.execute(_RUN_BY_ID, {"run_id": run_id}).first()
            if found is None:
                raise InvalidInput(f"no action run with id {run_id}")
            run = from_row(ActionRun, found._mapping)
            change(run)
            conn.execute(_CHANGE_RUN, {"run_id": run_id,
                                       **{f"new_{c}": getattr(run, c) for c in _RUN_CHANGED}})
            conn.execute(_REFRESH_STRIKES, {"of_incident": run.incident_id})
            return run

    async def claim_attempt(self, run_id: int, *, at: datetime,
                            incident_version: int | None = None) -> bool:
        """Mark an attempt as being run now; True for exactly one caller, ever.

        The claim is what tells, after a crash, an attempt that never ran (an
        approval not yet acted on: run it) from one that was running (judge it,
        never run it twice), whichever process or replica looks. With
        `incident_version`, it is also refused unless the incident is still
        in `remediating` at that version: a driver holding the incident runs
        nothing for it once someone else moved it.
        """
        statement = _CLAIM if incident_version is None else _CLAIM_AT_VERSION
        values = {"run_id": run_id, "at": at, "incident_version": incident_version}

        def work() -> bool:
            with self._one_statement() as conn:  # one statement: atomic on its own
                claimed = conn.execute(statement, values)
                return bool(claimed.rowcount == 1)
        return await self._run(work)

    async def count_strikes(self, incident_id: IncidentId) -> int:
        """Strikes of an incident, counted from its persisted attempts."""
        def work() -> int:
            with self._reading() as session:
                return int(session.execute(_COUNT_STRIKES,
                                           {"of_incident": incident_id}).scalar_one())
        return await self._run(work)

    # --- remediation: attempts, the learned record, guardrail counts --------------
    # Read-only queries for the remediator (incident_fsm/remediator.py). Success is
    # `succeeded_condition` and failure `failed_condition`, the same ones `stats`
    # counts: every strike is a failure, so the ranking never learns from an attempt
    # the three-strike rule counted as failed. The one failure that is no strike: an
    # action that failed while the problem cleared anyway (that incident is over).

    async def attempts(self, incident_id: IncidentId) -> list[ActionRun]:
        """The incident's action runs (dry runs included), in attempt order."""
        return await self._select(ActionRun, _ATTEMPTS, {"incident_id": incident_id})

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
            with self._reading() as session:
                return {
                    str(name): ActionTally(int(wins or 0), int(losses or 0))
                    for name, wins, losses in session.execute(query).all()
                }
        return await self._run(work)

    async def count_actions(self, *, target: str, since: datetime) -> int:
        """Real attempts on `target` started at or after `since`, all incidents."""
        return len(await self.budget_attempts(target=target, since=since))

    async def budget_attempts(self, *, target: str,
                              since: datetime) -> list[tuple[int, datetime]]:
        """(incident id, started_at) of the attempts on `target` since `since` that spend
        its budget (an incident starts at most one attempt at a time).

        Neither dry runs nor attempts found not applicable (`skipped`: they
        changed nothing at the service) spend the action budget.
        """
        query = (
            sa.select(col(ActionRun.incident_id), col(ActionRun.started_at))
            .join(Incident, col(Incident.id) == col(ActionRun.incident_id))
            .where(col(Incident.target) == target, col(ActionRun.dry_run).is_(False),
                   sa.or_(col(ActionRun.outcome).is_(None),
                          col(ActionRun.outcome) != OUTCOME_SKIPPED),
                   col(ActionRun.started_at) >= since)
            .order_by(col(ActionRun.started_at))
        )
        return await self._run(self._pairs, query)

    async def count_reopenings(self, *, fingerprint: str, since: datetime) -> int:
        """`reopen` transitions of `fingerprint` at or after `since`."""
        return len(await self.reopenings(fingerprint=fingerprint, since=since))

    async def reopenings(self, *, fingerprint: str, since: datetime) -> list[datetime]:
        """When `fingerprint` reopened at or after `since`, oldest first."""
        query = (
            sa.select(col(Transition.incident_id), col(Transition.at))
            .join(Incident, col(Incident.id) == col(Transition.incident_id))
            .where(col(Incident.fingerprint) == fingerprint,
                   col(Transition.trigger) == Trigger.REOPEN.value, col(Transition.at) >= since)
            .order_by(col(Transition.at))
        )
        return [at for _, at in await self._run(self._pairs, query)]

