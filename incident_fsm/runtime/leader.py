"""Leader election between agent replicas: one replica acts, the others stand by.

All replicas embed the agent against one Postgres; exactly one of them
(the leader) polls the targets and acts on incidents. Leadership is a row
in `lease`, taken and renewed by an atomic upsert every `renew_every`
seconds and valid for `ttl` seconds after each renewal.

The fence that keeps two replicas from ever acting at once: the leader
counts its own leadership as valid only until `t_sent + ttl - skew_margin`,
where `t_sent` is the time it *sent* its last successful renewal. Another
replica may take the lease only once the stored `expires_at` (= `t_sent +
ttl`) has passed on its own clock. So a leader that is cut off from the
database stops acting `skew_margin` seconds before anyone can take over,
as long as replica clocks agree within `skew_margin` (keep them NTP-synced).
A standby takes over at most `ttl + renew_every` seconds after the leader
died (defaults 15 + 5 s, inside the 30 s budget). With SQLite the agent is a
single process and is always its own leader.

Each replica logs when it becomes the leader or stops being it, and a
standby says who leads once per change of leader, never per renewal.
"""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Protocol

import anyio
from anyio.abc import TaskStatus
from loguru import logger

from incident_fsm.about import VERSION
from incident_fsm.clock import Clock
from incident_fsm.errors import StoreError
from incident_fsm.models import Lease
from incident_fsm.persistence.leases import LEADER
from incident_fsm.runtime.heartbeat import Heartbeat

LEADER_LEASE = LEADER


def replica_id() -> str:
    """A name for this process that is unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseStore(Protocol):
    """What leader election needs of a store: one named lease."""

    async def acquire_lease(self, name: str, holder: str, *, now: datetime, ttl: float,
                            beat_ttl: float | None = None,
                            version: str | None = None) -> Lease: ...

    async def release_lease(self, name: str, holder: str) -> None: ...


class LeaderElector:
    """Keeps trying to be the leader; `is_leader` says whether this replica may act now."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        clock: Clock,
        holder: str | None = None,
        name: str = LEADER_LEASE,
        ttl: float = 15.0,
        renew_every: float = 5.0,
        skew_margin: float = 2.0,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        if not 0 < renew_every < ttl - skew_margin:
            raise ValueError("need 0 < renew_every < ttl - skew_margin")
        self._store = store
        self._clock = clock
        self.holder = holder or replica_id()
        self.name = name
        self.ttl = ttl
        self.renew_every = renew_every
        self.skew_margin = skew_margin
        # Each renewal writes this replica's heartbeat too (one statement, not two); the
        # heartbeat's own loop beats only when renewals stop doing it.
        self._heartbeat = heartbeat
        self._valid_until: datetime | None = None
        #: the holder this replica last found leading (itself included)
        self._leader_seen: str | None = None
        self.changed = anyio.Event()

    @property
    def is_leader(self) -> bool:
        return self._valid_until is not None and self._clock.now() < self._valid_until

    @property
    def valid_until(self) -> datetime | None:
        return self._valid_until if self.is_leader else None

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease. Never raises for a database outage."""
        was = self.is_leader
        sent = self._clock.now()
        try:
            if self._heartbeat is None:
                lease = await self._store.acquire_lease(self.name, self.holder, now=sent,
                                                        ttl=self.ttl)
            else:
                lease = await self._store.acquire_lease(
                    self.name, self.holder, now=sent, ttl=self.ttl,
                    beat_ttl=self._heartbeat.ttl, version=VERSION)
                self._heartbeat.carried(sent)
        except StoreError as exc:
            logger.warning("leader lease not renewed ({}); leadership ends at {}",
                           type(exc).__name__, self._valid_until)
            self._notify(was)
            return self.is_leader
        if lease.holder == self.holder:
            self._valid_until = sent + timedelta(seconds=self.ttl - self.skew_margin)
        else:
            self._valid_until = None
        self._notify(was)
        if lease.holder != self._leader_seen:
            self._leader_seen = lease.holder
            if lease.holder != self.holder:
                # Once per leader, not per attempt: every few seconds for as long
                # as another replica leads would bury everything else.
                logger.bind(replica=self.holder).info(
                    "standing by: {} leads until {}", lease.holder, lease.expires_at.isoformat())
        return self.is_leader

    def _notify(self, was: bool) -> None:
        if was != self.is_leader:
            logger.info("replica {} is now {}", self.holder,
                        "the leader" if self.is_leader else "a standby")
            self.changed.set()
            self.changed = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Acquire and renew until cancelled; on cancellation hand the lease back."""
        await self.try_acquire()
        task_status.started()
        try:
            while True:
                await self._clock.sleep(self.renew_every)
                await self.try_acquire()
        finally:
            if self._valid_until is not None:
                self._valid_until = None
                # Shielded and bounded; if the database is away the lease simply expires.
                with anyio.CancelScope(shield=True), anyio.move_on_after(5), suppress(StoreError):
                    await self._store.release_lease(self.name, self.holder)
                    # When leadership ended: a standby may take over from this moment.
                    logger.info("replica {} released the leader lease", self.holder)
