"""The silences repository: maintenance windows, added, listed and expired by operators.

A silence is only ever added and ended: `expire_silence` ends one early and
keeps who did it, nothing is deleted, so `show` and `status` can say which
silence kept the agent's hands off an incident, and until when.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from incident_fsm.errors import InvalidInput
from incident_fsm.models import Silence
from incident_fsm.persistence.core import MAX_ACTOR, MAX_REASON, StoreCore, _check_text
from incident_fsm.persistence.effects import _table

_SILENCE = _table(Silence)
#: The silences in force or to come, the soonest to end first.
_IN_FORCE = (sa.select(_SILENCE)
             .where(_SILENCE.c.ends_at > sa.bindparam("now"), _SILENCE.c.expired_at.is_(None))
             .order_by(_SILENCE.c.ends_at, _SILENCE.c.id).limit(sa.bindparam("limit")))


@functools.cache
def _silences_query(include_ended: bool, of_target: bool) -> sa.Select[Any]:
    """`silences`' statement for one combination of its options, built once: what the
    agent reads every few seconds is `_IN_FORCE`, the first of them."""
    if not include_ended and not of_target:
        return _IN_FORCE
    if include_ended:
        query = sa.select(_SILENCE).order_by(_SILENCE.c.ends_at.desc(), _SILENCE.c.id.desc())
    else:
        query = (sa.select(_SILENCE)
                 .where(_SILENCE.c.ends_at > sa.bindparam("now"),
                        _SILENCE.c.expired_at.is_(None))
                 .order_by(_SILENCE.c.ends_at, _SILENCE.c.id))
    if of_target:
        query = query.where(_SILENCE.c.target == sa.bindparam("target"))
    return query.limit(sa.bindparam("limit"))


class SilenceRepository(StoreCore):
    """Silences: add, list, expire."""

    async def add_silence(self, *, target: str, kind: str | None, starts_at: datetime,
                          ends_at: datetime, actor: str, reason: str,
                          at: datetime) -> Silence:
        """Silence `target` (one `kind` of it, or all) from `starts_at` until `ends_at`."""
        _check_text("target", target, 200)
        if kind is not None:
            _check_text("kind", kind, 100)
        _check_text("actor", actor, MAX_ACTOR)
        _check_text("reason", reason, MAX_REASON)
        if ends_at <= at:
            raise InvalidInput(f"a silence must end in the future, not at {_clock(ends_at)}")
        if ends_at <= starts_at:
            raise InvalidInput("a silence must end after it starts")
        silence = Silence(target=target.strip(), kind=kind.strip() if kind else None,
                          starts_at=starts_at, ends_at=ends_at, actor=actor.strip(),
                          reason=reason.strip(), created_at=at)

        def work() -> Silence:
            with self._session() as session:
                session.add(silence)
                session.commit()
                session.refresh(silence)
                return silence
        return await self._run(work)

    async def silences(self, *, now: datetime, include_ended: bool = False,
                       target: str | None = None, limit: int = 200) -> list[Silence]:
        """Silences in force or yet to start at `now`, the soonest to end first; with
        `include_ended`, every one, the latest to end first. `target`: only its own."""
        return await self._select(Silence, _silences_query(include_ended, target is not None),
                                  {"now": now, "target": target, "limit": limit})

    async def expire_silence(self, silence_id: int, *, actor: str, at: datetime) -> Silence:
        """End a silence now. An unknown or already ended one is refused, nothing changed."""
        _check_text("actor", actor, MAX_ACTOR)

        def work() -> Silence:
            with self._session() as session:
                silence = session.get(Silence, silence_id)
                if silence is None:
                    raise InvalidInput(f"no silence with id {silence_id}")
                if silence.expired_at is not None or silence.ends_at <= at:
                    ended = silence.expired_at or silence.ends_at
                    raise InvalidInput(f"silence {silence_id} already ended at {_clock(ended)}")
                silence.expired_at = at
                silence.expired_by = actor.strip()
                session.add(silence)
                session.commit()
                session.refresh(silence)
                return silence
        return await self._run(work)


def _clock(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")
