"""The outbox repository: the dispatcher's queue of notifications, claimed and settled."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from incident_fsm.errors import (
    InvalidInput,
)
from incident_fsm.models import (
    IncidentId,
    Notification,
)
from incident_fsm.persistence.core import (
    StoreCore,
)
from incident_fsm.vocabulary import NotificationStatus

#: When the earliest pending row of a channel is due: asked by every idle dispatcher pass.
_NEXT_DUE = (sa.select(sa.func.min(col(Notification.next_attempt_at)))
             .where(col(Notification.channel) == sa.bindparam("channel"),
                    col(Notification.status) == NotificationStatus.PENDING.value))


class OutboxRepository(StoreCore):
    """Notification rows: due, claimed, delivered, rescheduled, dead or skipped."""

    # --- notification delivery: the dispatcher's queries ---------------------
    #
    # A row moves pending -> delivered | dead | skipped, and nothing else
    # changes it. The dispatcher *claims* due rows before sending them: the
    # claim counts the attempt and moves `next_attempt_at` to the end of a
    # lease, so another replica will not send the same row meanwhile, and a
    # row whose sender died is sent again once the lease ends (at least once).

    async def has_notifications(self, incident_id: IncidentId) -> bool:
        """Whether the incident has any outbox row (it has told someone something)."""
        def work() -> bool:
            with self._reading() as session:
                found = session.execute(
                    sa.select(col(Notification.id))
                    .where(col(Notification.incident_id) == incident_id).limit(1)
                ).first()
                return found is not None
        return await self._run(work)

    async def due_notifications(self, channel: str, *, now: datetime,
                                limit: int = 50) -> list[Notification]:
        """Pending rows of `channel` due at `now`, oldest first, each only if no earlier
        pending row of the same incident and channel is still waiting (order per incident)."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1")

        def work() -> list[Notification]:
            earlier = sa.orm.aliased(Notification)
            blocked = sa.exists().where(
                col(earlier.incident_id) == col(Notification.incident_id),
                col(earlier.channel) == col(Notification.channel),
                col(earlier.status) == NotificationStatus.PENDING,
                col(earlier.id) < col(Notification.id),
                col(earlier.next_attempt_at) > now,
            )
            query = (
                select(Notification)
                .where(col(Notification.channel) == channel,
                       col(Notification.status) == NotificationStatus.PENDING,
                       col(Notification.next_attempt_at) <= now, ~blocked)
                .order_by(col(Notification.id))
                .limit(limit)
            )
            with self._reading() as session:
                return list(session.exec(query).all())
        return await self._run(work)

    async def next_notification_due(self, channel: str) -> datetime | None:
        """When the earliest pending row of `channel` is due (None: nothing pending)."""
        def work() -> datetime | None:
            with self._autocommit.connect() as conn:
                found: datetime | None = conn.execute(_NEXT_DUE, {"channel": channel}
                                                      ).scalar_one()
                return found
        return await self._run(work)

    async def claim_notifications(self, ids: Sequence[int], *, now: datetime,
                                  lease_until: datetime) -> list[Notification]:
        """Take the rows that are still pending and due: count an attempt and lease them.

        Returns the rows this call claimed, oldest first; rows another claimer
        got first are left out.
        """
        if not ids:
            return []

        def work() -> list[Notification]:
            with self._session() as session:
                claimed = session.execute(
                    sa.update(Notification)
                    .where(col(Notification.id).in_(list(ids)),
                           col(Notification.status) == NotificationStatus.PENDING,
                           col(Notification.next_attempt_at) <= now)
                    .values(attempts=col(Notification.attempts) + 1, next_attempt_at=lease_until)
                    .returning(col(Notification.id))
                ).scalars().all()
                session.commit()
                if not claimed:
                    return []
                return list(session.exec(
                    select(Notification).where(col(Notification.id).in_(claimed))
                    .order_by(col(Notification.id))
                ).all())
        return await self._run(work)

    async def mark_delivered(self, ids: Sequence[int], *, at: datetime) -> None:
        """The channel took these rows."""
        await self._settle(ids, status=NotificationStatus.DELIVERED, delivered_at=at, last_error="")

    async def reschedule_notification(self, notification_id: int, *, next_attempt_at: datetime,
                                      error: str) -> None:
        """An attempt failed (already counted by the claim): try again at `next_attempt_at`.

        `error` must be free of secrets; channels report status codes and
        exception class names, never URLs with tokens or response bodies.
        """
        await self._settle([notification_id], status=NotificationStatus.PENDING,
                           next_attempt_at=next_attempt_at, last_error=error)

    async def mark_dead(self, notification_id: int, *, error: str) -> None:
        """Give up on a row after its last allowed attempt; its incident's timeline shows it."""
        await self._settle([notification_id], status=NotificationStatus.DEAD, last_error=error)

    async def release_notifications(self, ids: Sequence[int], *,
                                    next_attempt_at: datetime) -> None:
        """Hand claimed rows back unsent (channel unavailable): the attempt does not count."""
        await self._settle(ids, status=NotificationStatus.PENDING, next_attempt_at=next_attempt_at,
                           uncount=True)

    async def skip_notifications(self, *, keep_channels: Iterable[str], reason: str) -> int:
        """Mark pending rows of every channel not in `keep_channels` skipped; returns how many."""
        keep = sorted(set(keep_channels))

        def work() -> int:
            with self._session() as session:
                done = session.execute(
                    sa.update(Notification)
                    .where(col(Notification.status) == NotificationStatus.PENDING,
                           col(Notification.channel).not_in(keep))
                    .values(status=NotificationStatus.SKIPPED, last_error=reason[:2000])
                )
                session.commit()
                return int(done.rowcount)  # type: ignore[attr-defined]
        return await self._run(work)

    async def _settle(self, ids: Sequence[int], *, status: str, uncount: bool = False,
                      **values: Any) -> None:
        if not ids:
            return
        if "last_error" in values:
            values["last_error"] = str(values["last_error"])[:2000]
        if uncount:
            attempts = col(Notification.attempts)
            values["attempts"] = sa.case((attempts > 0, attempts - 1), else_=0)

        def work() -> None:
            with self._session() as session:
                # Only pending rows move: a final status is never rewritten.
                session.execute(
                    sa.update(Notification)
                    .where(col(Notification.id).in_(list(ids)),
                           col(Notification.status) == NotificationStatus.PENDING)
                    .values(status=status, **values)
                )
                session.commit()
        await self._run(work)
