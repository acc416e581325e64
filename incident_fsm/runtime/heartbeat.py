"""The agent's heartbeat: a database row, renewed on the agent's clock, saying it is alive.

Every replica beats, leader or standby: the row `heartbeat:<replica>` in the
`lease` table is valid until `ttl` seconds after the last beat
(`Store.beat`), so `Store.agents_seen(now)` lists the agents alive now.
With leader election each renewal of the lease writes the row in the same
statement (`LeaderElector`, `carried`); the loop then beats only when no
renewal has done so for an interval. An
operator's tool reads it: `incident-fsm force` warns when no agent has been
seen, because an approved attempt then waits for nobody and the step's
notifications stay in the outbox.

A beat that fails (database away, a driver error, no answer in time) is
skipped and logged -- a warning for the first of a run of failures, debug
for the rest, info when beating resumes -- and never raised: the agent's
work does not depend on it. On a clean stop the row is removed at once;
after a crash it simply expires.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Protocol

import anyio
from loguru import logger

from incident_fsm.about import VERSION
from incident_fsm.clock import Clock
from incident_fsm.errors import IncidentFSMError, InvalidInput


class HeartbeatStore(Protocol):
    """What the heartbeat needs of the store (`Store` and `JournalingStore` have it)."""

    async def beat(self, replica: str, *, now: datetime, ttl: float,
                   version: str | None = None) -> bool: ...

    async def end_beat(self, replica: str) -> None: ...


class Heartbeat:
    """Beats for `replica` every `every` seconds on `clock` until cancelled.

    `ttl` (default three intervals) is how long one beat keeps the replica
    alive; `timeout` (default: one interval, at most 10 s) bounds each call
    to the store, so a hanging database never delays the next beat.
    """

    def __init__(self, store: HeartbeatStore, clock: Clock, replica: str, *,
                 every: float = 10.0, ttl: float | None = None,
                 timeout: float | None = None) -> None:
        if not (every > 0 and math.isfinite(every)):
            raise InvalidInput("a heartbeat's every must be a number of seconds above 0")
        ttl = 3 * every if ttl is None else ttl
        if not ttl > every:
            raise InvalidInput(f"a heartbeat's ttl ({ttl:g} s) must be longer than its "
                               f"interval ({every:g} s), or the agent looks dead between beats")
        timeout = min(every, 10.0) if timeout is None else timeout
        if not timeout > 0:
            raise InvalidInput("a heartbeat's timeout must be greater than 0")
        self._store = store
        self._clock = clock
        self.replica = replica
        self.every = every
        self.ttl = ttl
        self.timeout = timeout
        #: when the last beat that was written was sent (None: none yet)
        self.last_beat: datetime | None = None
        self._missed = 0

    async def beat_once(self) -> bool:
        """One beat; False if it was not written (logged here, never raised)."""
        now = self._clock.now()
        try:
            with anyio.fail_after(self.timeout):
                written = await self._store.beat(self.replica, now=now, ttl=self.ttl,
                                                 version=VERSION)
        except TimeoutError:
            return self._missed_one(f"no answer within {self.timeout:g} s")
        except IncidentFSMError as exc:  # our own messages: free of SQL and secrets
            return self._missed_one(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # A driver's text can carry SQL or secrets: its class only.
            return self._missed_one(type(exc).__name__)
        if not written:
            return self._missed_one("the database is away")
        if self._missed:
            logger.info("heartbeat of {} beating again after {} missed beat(s)", self.replica,
                        self._missed)
        self._missed = 0
        self.last_beat = now
        return True

    def _missed_one(self, why: str) -> bool:
        self._missed += 1
        if self._missed == 1:
            logger.warning("heartbeat of {} not written ({}); without one for {:g} s operators "
                           "see this agent as gone", self.replica, why, self.ttl)
        else:
            logger.debug("heartbeat of {} still not written ({}), {} missed", self.replica, why,
                         self._missed)
        return False

    def carried(self, at: datetime) -> None:
        """A beat sent at `at` was written by another statement (the leader lease's renewal,
        see `LeaderElector`): `run` skips its own until `every` seconds after it."""
        if self._missed:
            logger.info("heartbeat of {} beating again after {} missed beat(s)", self.replica,
                        self._missed)
        self._missed = 0
        self.last_beat = at if self.last_beat is None else max(self.last_beat, at)

    async def run(self) -> None:
        """Beat now and every `every` seconds until cancelled (unless a beat was carried
        meanwhile, see `carried`); then remove the row."""
        try:
            while True:
                last = self.last_beat
                if last is None or (self._clock.now() - last).total_seconds() >= self.every:
                    await self.beat_once()
                await self._clock.sleep(self.every)
        finally:
            # Shielded and bounded: stopping must not wait on a database that is away
            # (the row then expires on its own).
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
                try:
                    await self._store.end_beat(self.replica)
                except Exception as exc:
                    logger.debug("heartbeat of {} not removed ({}); it expires by itself",
                                 self.replica, type(exc).__name__)
