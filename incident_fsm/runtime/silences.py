"""The silences the agent obeys: read when a decision needs them, at most every few seconds.

The remediator asks `silence_for` before every choice and the monitor
before it opens an incident. The list is read from the store only then,
and only if the last read is older than `MAX_AGE` seconds, so an idle agent
reads nothing and a thousand openings at once read it once; a silence an
operator adds is obeyed by the next decision at most `MAX_AGE` seconds later.
A read waits at most `WAIT` seconds: a slow or absent database must not
hold up an opening (the journal takes those while it is away). Until a read
succeeds the last list stays in force, and a silence's end is a time, so it
still ends on time; a silence added while the database is away takes effect
once it answers again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Protocol

import anyio
from loguru import logger

from incident_fsm.errors import StoreError
from incident_fsm.models import Silence

#: Seconds a list read from the store is used before a decision reads it again.
MAX_AGE: Final = 5.0
#: Seconds a decision waits for that read before it goes on with the last list.
WAIT: Final = 1.0


class SilenceStore(Protocol):
    async def silences(self, *, now: datetime, include_ended: bool = False,
                       limit: int = 200) -> list[Silence]: ...


class Silences:
    """The silences in force or to come, as last read from `store` (if any)."""

    def __init__(self, store: SilenceStore | None = None, *, max_age: float = MAX_AGE,
                 wait: float = WAIT) -> None:
        self._store = store
        self._max_age = max_age
        self._wait = wait
        self._known: tuple[Silence, ...] = ()
        self._read_at: datetime | None = None
        self._failing = False
        self._reading = anyio.Lock()

    async def refresh(self, store: SilenceStore, now: datetime) -> None:
        """Read the silences again; on a database error keep the last list (said once)."""
        try:
            self._known = tuple(await store.silences(now=now))
        except StoreError as exc:
            if not self._failing:
                logger.warning("silences not refreshed, the last known ones stay in force: {}",
                               exc)
            self._failing = True
            return
        self._failing = False

    async def silence_for(self, target: str, kind: str, now: datetime) -> Silence | None:
        """The silence in force on `target` for `kind` at `now` (the longest), after reading
        the list again if it is older than `max_age` seconds."""
        if self._store is not None and self._stale(now):
            async with self._reading:
                if self._stale(now):  # another decision may have read it meanwhile
                    with anyio.move_on_after(self._wait) as waited:
                        await self.refresh(self._store, now)
                    if waited.cancelled_caught and not self._failing:
                        logger.warning("silences not read within {:g} s, the last known ones "
                                       "stay in force", self._wait)
                    # Read or not, the next attempt waits its turn: a database that is away
                    # must not cost every decision a wait.
                    self._read_at = now
        return self.known_for(target, kind, now)

    def known_for(self, target: str, kind: str, now: datetime) -> Silence | None:
        """`silence_for` from the list as last read, reading nothing."""
        matching = [s for s in self._known if s.matches(target, kind) and s.active(now)]
        return max(matching, key=lambda s: s.ends_at, default=None)

    def _stale(self, now: datetime) -> bool:
        # A clock stepped back (`now` before the last read) counts as stale too.
        return (self._read_at is None or now < self._read_at
                or (now - self._read_at).total_seconds() >= self._max_age)
