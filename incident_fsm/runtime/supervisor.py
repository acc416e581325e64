"""The supervisor: one driver task per active incident (detected, remediating, verifying).

A driver runs `Remediator.drive` for its incident, sequential per incident,
parallel across incidents, bounded by `max_concurrent_incidents`. The agent's
own findings start theirs at once (`confirmed`). Everything else is found by
a look at the database (`run`): incidents another process moved (an
operator's approval), and drivers an error stopped. While other processes'
writes wake the agent (`heard`, see `persistence.wakeups`) that look is a
safety net once a minute; otherwise, and after a driver stopped short, it
comes at the short period (`max(1 s, fast_poll_interval)`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Final, Protocol

import anyio
from anyio.abc import TaskGroup
from loguru import logger

from incident_fsm.clock import Clock, sleep_or_wake
from incident_fsm.errors import StoreError
from incident_fsm.fsm.graph import AUTOMATED_STATES
from incident_fsm.logfail import log_failure
from incident_fsm.models import Incident, IncidentId
from incident_fsm.persistence.wakeups import SAFETY_LOOK

#: The states an incident has a driver in.
ACTIVE: Final = tuple(s.value for s in AUTOMATED_STATES)


class ActiveIncidents(Protocol):
    """What the supervisor reads: the incidents in given states."""

    async def list_incidents(self, *, states: Sequence[str] = (), kind: str | None = None,
                             target: str | None = None, since: datetime | None = None,
                             until: datetime | None = None, limit: int = 100
                             ) -> list[Incident]: ...


class Supervisor:
    """Keeps a driver running for every active incident that needs one."""

    def __init__(self, store: ActiveIncidents, drive: Callable[[IncidentId], Awaitable[Incident]],
                 *, clock: Clock, short: float, heard: Callable[[], bool],
                 real_id: Callable[[int], int] = lambda i: i,
                 max_concurrent: int = 256) -> None:
        self._store = store
        self._drive = drive
        self._clock = clock
        self._short = max(1.0, short)
        self._heard = heard
        # A driver that began under a provisional id (store outage) is the same driver
        # once the journal is replayed: compare by the id the database knows.
        self._real = real_id
        #: incidents with a driver running now
        self.drivers: set[int] = set()
        self._parked: dict[int, int] = {}
        self._limit = anyio.CapacityLimiter(max_concurrent)
        #: set by `wake`: look now
        self._look_now = False
        #: a driver stopped short (an error, or left its incident active): look again soon
        self._again_soon = False
        #: set by either: the wait between two looks is reconsidered
        self._changed = anyio.Event()
        self._group: TaskGroup | None = None

    def wake(self) -> None:
        """Look at the database now."""
        self._look_now = True
        self._changed.set()

    def _stopped_short(self) -> None:
        self._again_soon = True
        self._changed.set()

    def confirmed(self, incident_id: int) -> None:
        """The agent confirmed a problem of this incident: drive it now, parked or not."""
        self._parked.pop(incident_id, None)
        self.start(incident_id)

    async def run(self) -> None:
        """Look, start the drivers missing, wait; until cancelled (which stops the drivers)."""
        async with anyio.create_task_group() as drivers:
            self._group = drivers
            try:
                while True:
                    self._look_now = self._again_soon = False
                    try:
                        active = await self._store.list_incidents(states=ACTIVE, limit=10000)
                    except StoreError as exc:
                        logger.warning("❌ Failed to list incidents: {}", exc)
                        active, self._again_soon = [], True
                    for incident in active:
                        if self._parked.get(incident.incident_id) != incident.version:
                            self.start(incident.incident_id)
                    # Forget incidents that left the active states (memory stays flat).
                    still = {i.incident_id for i in active}
                    for gone in set(self._parked) - still:
                        del self._parked[gone]
                    await self._until_next_look()
            finally:
                self._group = None

    async def _until_next_look(self) -> None:
        # Reconsidered whenever a driver stops short after the wait began.
        started = self._clock.now()
        while not self._look_now:
            changed = self._changed = anyio.Event()
            quiet = self._heard() and not self._again_soon
            left = ((SAFETY_LOOK if quiet else self._short)
                    - (self._clock.now() - started).total_seconds())
            if left <= 0:
                return
            await sleep_or_wake(self._clock, left, changed)

    def start(self, incident_id: int) -> None:
        """A driver for the incident, unless one runs (or the supervisor does not)."""
        incident_id = self._real(incident_id)
        if self._group is None or incident_id in {self._real(d) for d in self.drivers}:
            return
        self.drivers.add(incident_id)
        self._group.start_soon(self.drive, incident_id, name=f"incident:{incident_id}")

    async def drive(self, incident_id: int) -> None:
        """Drive one incident as far as it goes now; never raises (but cancellation)."""
        try:
            async with self._limit:
                incident = await self._drive(IncidentId(incident_id))
            if incident.state == "detected":
                # Waiting on the world (monitor-only, a held action): drive again on change.
                # Never park remediating/verifying: those must always have a driver.
                self._parked[incident_id] = incident.version
            else:
                self._parked.pop(incident_id, None)
                if incident.state in ACTIVE:
                    self._stopped_short()
        except StoreError as exc:
            self._stopped_short()
            logger.bind(incident_id=incident_id).warning(
                "incident {}: store unavailable ({}); retried at the next scan", incident_id, exc)
        except Exception as exc:
            self._stopped_short()
            # One incident's bug must never stop the others or the agent.
            log_failure("driver of incident {} failed", incident_id, error=exc,
                        log=logger.bind(incident_id=incident_id))
        finally:
            self.drivers.discard(incident_id)
