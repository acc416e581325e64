"""The store calls that wait for the database, outage or not: passed straight through.

Statistics, history, health-check reads, leases, heartbeats' end and the
dispatcher's queue have no offline answer worth giving: a lease or a
delivery decided on a stale copy would be worse than waiting. The outage
journal (`persistence.journal`) inherits these pass-throughs; every other
call it answers itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from incident_fsm.models import HealthCheck, Incident, Lease, Notification, Silence, Transition
from incident_fsm.persistence.health_checks import PRUNE_BATCH
from incident_fsm.persistence.leases import AgentSeen
from incident_fsm.persistence.statistics import ChannelState, OpenIncident, Statistics
from incident_fsm.persistence.store import Store


class OnlineOnly:
    """Pass-throughs to `online` for the calls that never fall back to a local copy."""

    online: Store

    async def end_beat(self, replica: str) -> None:
        await self.online.end_beat(replica)

    async def agents_seen(self, now: datetime) -> list[tuple[str, datetime]]:
        return await self.online.agents_seen(now)

    async def agents(self, now: datetime, **kwargs: Any) -> list[AgentSeen]:
        return await self.online.agents(now, **kwargs)

    async def silences(self, *, now: datetime, **kwargs: Any) -> list[Silence]:
        return await self.online.silences(now=now, **kwargs)

    async def acquire_lease(self, name: str, holder: str, *, now: datetime, ttl: float,
                            **kwargs: Any) -> Lease:
        return await self.online.acquire_lease(name, holder, now=now, ttl=ttl, **kwargs)

    async def release_lease(self, name: str, holder: str) -> None:
        await self.online.release_lease(name, holder)

    async def history(self, **kwargs: Any) -> list[tuple[Transition, Incident]]:
        return await self.online.history(**kwargs)

    async def statistics(self, *, since: datetime | None = None) -> Statistics:
        return await self.online.statistics(since=since)

    async def open_incidents(self, *, limit: int = 1000) -> list[OpenIncident]:
        return await self.online.open_incidents(limit=limit)

    async def pending_notifications(self) -> dict[str, int]:
        return await self.online.pending_notifications()

    async def channel_states(self) -> list[ChannelState]:
        return await self.online.channel_states()

    async def latest_checks(self, *, since: datetime, **kwargs: Any
                            ) -> dict[str, list[HealthCheck]]:
        return await self.online.latest_checks(since=since, **kwargs)

    async def health_checks(self, **kwargs: Any) -> list[HealthCheck]:
        return await self.online.health_checks(**kwargs)

    async def prune_health_checks(self, older_than: datetime, *, limit: int = PRUNE_BATCH
                                  ) -> int:
        return await self.online.prune_health_checks(older_than, limit=limit)

    async def due_notifications(self, channel: str, *, now: datetime,
                                limit: int = 50) -> list[Notification]:
        return await self.online.due_notifications(channel, now=now, limit=limit)

    async def next_notification_due(self, channel: str) -> datetime | None:
        return await self.online.next_notification_due(channel)

    async def claim_notifications(self, ids: Sequence[int], **kwargs: Any) -> list[Notification]:
        return await self.online.claim_notifications(ids, **kwargs)

    async def mark_delivered(self, ids: Sequence[int], *, at: datetime) -> None:
        await self.online.mark_delivered(ids, at=at)

    async def reschedule_notification(self, notification_id: int, **kwargs: Any) -> None:
        await self.online.reschedule_notification(notification_id, **kwargs)

    async def mark_dead(self, notification_id: int, *, error: str) -> None:
        await self.online.mark_dead(notification_id, error=error)

    async def release_notifications(self, ids: Sequence[int], **kwargs: Any) -> None:
        await self.online.release_notifications(ids, **kwargs)

    async def skip_notifications(self, *, keep_channels: Iterable[str], reason: str) -> int:
        return await self.online.skip_notifications(keep_channels=keep_channels, reason=reason)
