"""The deadline sweeper: fires `timeout` for every incident whose state outlived its deadline.

Deadlines are columns (`incident.deadline_at`, set on entering each
automated state), so a deadline set before a crash still fires after it.
An incident overdue in `remediating` also gets its unfinished attempt
closed as `timed_out`: an action that does not finish by the deadline
counts as failed. The sweeper re-reads each incident right before firing
and leaves it alone if someone moved it meanwhile; losing a race
(`ConcurrentUpdate`) is normal, not an error.

Each sweep also reads the deadlines of the next `LOOKAHEAD` seconds, so its
caller can sleep until the nearest one (`pause`) instead of waking on a
fixed period; a step of this process wakes it sooner (the agent wires that),
and a deadline another process wrote is seen within `LOOKAHEAD`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from loguru import logger

from incident_fsm.clock import Clock
from incident_fsm.errors import (
    AttemptAlreadyFinished,
    ConcurrentUpdate,
    IncidentNotFound,
    InvalidTransition,
)
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.graph import AUTOMATED_STATES
from incident_fsm.models import ActionRun, Incident, IncidentId
from incident_fsm.vocabulary import Actor, AttemptOutcome, State

ACTOR: Final = Actor.AGENT
#: Seconds ahead a sweep looks for the next deadline; the longest `pause`.
LOOKAHEAD: Final = 30.0
#: Incidents one sweep reads at most.
BATCH: Final = 100
_WHAT_WAS_LATE: Final = {
    State.ESCALATED: "nobody acknowledged the escalation: escalating again",
    State.DETECTED: "no action started before the detect deadline",
    State.REMEDIATING: "the action did not finish before the action deadline",
    State.VERIFYING: "verification did not conclude before its deadline",
}


class DeadlineStore(Protocol):
    """What the sweeper needs of a store: overdue incidents and their attempts."""

    async def attempts(self, incident_id: IncidentId) -> list[ActionRun]: ...

    async def finish_action(
        self,
        run_id: int,
        *,
        outcome: str,
        finished_at: datetime,
        output_excerpt: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> ActionRun: ...

    async def get_incident(self, incident_id: IncidentId) -> Incident: ...

    async def overdue(self, now: datetime, *, limit: int = 100) -> list[Incident]: ...


class DeadlineSweeper:
    """Escalates overdue incidents; call `sweep` periodically (the controller does)."""

    def __init__(self, *, engine: IncidentEngine, store: DeadlineStore, clock: Clock,
                 on_attempt: Callable[[ActionRun], None] | None = None) -> None:
        self._engine = engine
        #: called with an attempt it closed as timed out (e.g. a metrics counter)
        self._on_attempt = on_attempt
        self._store = store
        self._clock = clock
        #: the nearest deadline after the last sweep, if it is within `LOOKAHEAD`
        self.next_deadline: datetime | None = None

    async def sweep(self, now: datetime | None = None) -> list[Incident]:
        """Fire `timeout` for each overdue incident; returns the ones this call escalated."""
        now = now or self._clock.now()
        ahead = await self._store.overdue(now + timedelta(seconds=LOOKAHEAD), limit=BATCH)
        due = [i for i in ahead if i.deadline_at is not None and i.deadline_at <= now]
        later = [i.deadline_at for i in ahead if i.deadline_at is not None and i.deadline_at > now]
        # A full batch of overdue ones: more may wait behind it, so sweep again at once.
        self.next_deadline = later[0] if later else (now if len(due) == BATCH else None)
        moved: list[Incident] = []
        for stale in due:
            incident = await self._timeout(stale.incident_id, now)
            if incident is not None:
                moved.append(incident)
        return moved

    def pause(self, now: datetime | None = None) -> float:
        """Seconds from `now` to the next sweep: the nearest deadline, `LOOKAHEAD` at most."""
        if self.next_deadline is None:
            return LOOKAHEAD
        now = now or self._clock.now()
        return min(LOOKAHEAD, max(0.0, (self.next_deadline - now).total_seconds()))

    async def _timeout(self, incident_id: IncidentId, now: datetime) -> Incident | None:
        try:
            current = await self._store.get_incident(incident_id)
            deadline = current.deadline_at
            if current.state not in (*AUTOMATED_STATES, State.ESCALATED) or deadline is None \
                    or deadline > now:
                return None  # moved on since the overdue query
            state = State(current.state)
            escalated = await self._engine.fire(
                incident_id, "timeout", actor=ACTOR,
                reason=f"deadline {deadline.isoformat()} passed in {state.value}: "
                       f"{_WHAT_WAS_LATE[state]}",
                details={"deadline_at": deadline.isoformat(), "overdue_state": state.value},
            )
        except (ConcurrentUpdate, InvalidTransition, IncidentNotFound) as exc:
            logger.bind(incident_id=incident_id).info("sweeper left incident {} alone: {}",
                                                      incident_id, exc)
            return None
        # Whatever state the timeout fired from, an attempt still open is now late.
        await self._close_attempt(incident_id, now)
        logger.bind(incident_id=incident_id, state=escalated.state,
                    target=escalated.target).warning(
            "❌ Failed to finish incident {} in time: {}", incident_id, _WHAT_WAS_LATE[state])
        return escalated

    async def _close_attempt(self, incident_id: IncidentId, now: datetime) -> None:
        for run in reversed(await self._store.attempts(incident_id)):
            if run.dry_run or run.id is None:
                continue
            if run.finished_at is None:
                # It finished a moment ago: its own outcome stands.
                with contextlib.suppress(AttemptAlreadyFinished):
                    closed = await self._store.finish_action(
                        run.id, outcome=AttemptOutcome.TIMED_OUT, finished_at=now,
                        output_excerpt="still running at the action deadline")
                    if self._on_attempt is not None:
                        self._on_attempt(closed)
            return
