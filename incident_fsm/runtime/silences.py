"""The silences the agent obeys: kept in memory, refreshed from the store, never waited on.

The remediator asks `silence_for` before every choice and the monitor
before it opens an incident, so a lookup must cost nothing: the agent
refreshes the list every few seconds (`refresh`), and keeps the last one it
read while the database is away (a silence's end is a time, so it still
ends on time). A silence added while the database is away takes effect once
it answers again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from loguru import logger

from incident_fsm.errors import StoreError
from incident_fsm.models import Silence


class SilenceStore(Protocol):
    async def silences(self, *, now: datetime, include_ended: bool = False,
                       limit: int = 200) -> list[Silence]: ...


class Silences:
    """The silences in force or to come, as last read; `silence_for` answers from memory."""

    def __init__(self) -> None:
        self._known: tuple[Silence, ...] = ()
        self._failing = False

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

    def silence_for(self, target: str, kind: str, now: datetime) -> Silence | None:
        """The silence in force on `target` for `kind` at `now`, if any (the longest)."""
        matching = [s for s in self._known if s.matches(target, kind) and s.active(now)]
        return max(matching, key=lambda s: s.ends_at, default=None)
