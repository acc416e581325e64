"""What a backtest reads: the recorded health checks of a window, and the incidents that opened.

Both are read-only and bounded by the window. Health checks are read one
target at a time through the `(target, at)` index, as plain tuples: a
backtest replays hundreds of thousands of them, and ORM objects would cost
more than the replay. An incident's *episodes* are the stretches it was
open: from its `open` or `reopen` step to the next step into `resolved`
(a reopened incident has one per opening).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import col

from incident_fsm.models import HealthCheck, Incident, IncidentId, IncidentLabel, Transition
from incident_fsm.persistence.core import StoreCore
from incident_fsm.vocabulary import OPEN_TRIGGER, State, Trigger


class CheckRow(NamedTuple):
    """One recorded `health_check` row, in the columns a replay needs."""

    at: datetime
    source: str
    ok: bool
    latency_ms: float
    memory_pct: float | None
    disk_pct: float | None
    cpu_pct: float | None
    error: str
    cause: str | None


@dataclass(frozen=True)
class LiveEpisode:
    """A stretch an incident was open, as its history records it (`end` None: still open)."""

    incident_id: IncidentId
    target: str
    kind: str
    start: datetime
    end: datetime | None
    #: the incident's latest operator label (real, noise), if any
    label: str | None = None


_CHECK_COLUMNS = (col(HealthCheck.at), col(HealthCheck.source), col(HealthCheck.ok),
                  col(HealthCheck.latency_ms), col(HealthCheck.memory_pct),
                  col(HealthCheck.disk_pct), col(HealthCheck.cpu_pct),
                  col(HealthCheck.error), col(HealthCheck.cause))


class RecordedRepository(StoreCore):
    """The recorded readings and incident episodes of a time window."""

    async def recorded_targets(self, *, since: datetime, until: datetime) -> dict[str, int]:
        """Target -> how many health-check rows it has in [since, until)."""
        def work() -> dict[str, int]:
            query = (sa.select(col(HealthCheck.target), sa.func.count())
                     .where(col(HealthCheck.at) >= since, col(HealthCheck.at) < until)
                     .group_by(col(HealthCheck.target)))
            with self._reading() as session:
                return {str(t): int(n) for t, n in session.execute(query).all()}
        return await self._run(work)

    async def recorded_checks(self, target: str, *, since: datetime,
                              until: datetime) -> Sequence[CheckRow]:
        """The target's rows in [since, until), in the order they were written."""
        def work() -> Sequence[CheckRow]:
            query = (sa.select(*_CHECK_COLUMNS)
                     .where(col(HealthCheck.target) == target, col(HealthCheck.at) >= since,
                            col(HealthCheck.at) < until)
                     .order_by(col(HealthCheck.at), col(HealthCheck.id)))
            with self._reading() as session:
                # Plain tuples: reading a driver row's fields by name costs three
                # times as much, and a replay reads each several times.
                return list(map(CheckRow._make, session.execute(query)))
        return await self._run(work)

    async def oldest_check(self) -> datetime | None:
        """When the oldest health-check row still kept was taken."""
        def work() -> datetime | None:
            query = sa.select(col(HealthCheck.at)).order_by(col(HealthCheck.at)).limit(1)
            with self._reading() as session:
                value: datetime | None = session.execute(query).scalar_one_or_none()
                return value
        return await self._run(work)

    async def episodes(self, *, since: datetime, until: datetime) -> list[LiveEpisode]:
        """Every stretch an incident was open that overlaps [since, until)."""
        def work() -> list[LiveEpisode]:
            opening = (col(Transition.trigger).in_([OPEN_TRIGGER, Trigger.REOPEN.value]))
            query = (
                sa.select(col(Transition.incident_id), col(Incident.target), col(Incident.kind),
                          col(Transition.trigger), col(Transition.at))
                .join(Incident, col(Incident.id) == col(Transition.incident_id))
                .where(col(Incident.opened_at) < until,
                       sa.or_(col(Incident.resolved_at).is_(None),
                              col(Incident.resolved_at) >= since),
                       col(Transition.at) < until,
                       sa.or_(opening, col(Transition.dest) == State.RESOLVED.value))
                .order_by(col(Transition.incident_id), col(Transition.seq)))
            with self._reading() as session:
                rows = session.execute(query).all()
                labels = self._latest_labels(session, {row[0] for row in rows})
            found: list[LiveEpisode] = []
            current: dict[int, LiveEpisode] = {}
            for incident_id, target, kind, trigger, at in rows:
                if trigger in (OPEN_TRIGGER, Trigger.REOPEN.value):
                    current[incident_id] = LiveEpisode(IncidentId(incident_id), target, kind,
                                                       at, None, labels.get(incident_id))
                elif incident_id in current:
                    found.append(replace(current.pop(incident_id), end=at))
            found += current.values()
            return sorted((e for e in found if e.end is None or e.end >= since),
                          key=lambda e: (e.start, e.incident_id))
        return await self._run(work)

    @staticmethod
    def _latest_labels(session: Any, ids: set[int]) -> dict[int, str]:
        labels: dict[int, str] = {}
        if not ids:
            return labels
        query = (sa.select(col(IncidentLabel.incident_id), col(IncidentLabel.label))
                 .where(col(IncidentLabel.incident_id).in_(sorted(ids)))
                 .order_by(col(IncidentLabel.id)))
        for incident_id, label in session.execute(query).all():
            labels[incident_id] = label  # the latest wins
        return labels
