"""The statistics read model: counts and rates per state, kind, action, channel and target."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from incident_fsm.fsm.graph import OPEN_STATES
from incident_fsm.models import (
    ActionRun,
    HealthCheck,
    Incident,
    Notification,
    Transition,
)
from incident_fsm.persistence.core import (
    StoreCore,
)
from incident_fsm.persistence.effects import (
    failed_condition,
    succeeded_condition,
)
from incident_fsm.vocabulary import NotificationStatus, State, Trigger, Verdict


@dataclass(frozen=True)
class ActionStats:
    kind: str
    action: str
    attempts: int
    #: attempts that worked: the action returned ok and verification passed after it
    verified: int
    #: attempts that did not: see `failed_condition`
    failed: int
    dry_runs: int

    @property
    def success_rate(self) -> float | None:
        judged = self.verified + self.failed
        return None if judged == 0 else self.verified / judged


@dataclass(frozen=True)
class KindStats:
    kind: str
    incidents: int
    open: int
    resolved: int
    escalated_ever: int
    resolution_p50_s: float | None
    resolution_p95_s: float | None

    @property
    def escalation_rate(self) -> float | None:
        return None if self.incidents == 0 else self.escalated_ever / self.incidents


@dataclass(frozen=True)
class ChannelStats:
    channel: str
    delivered: int
    pending: int
    dead: int
    skipped: int

    @property
    def delivery_rate(self) -> float | None:
        done = self.delivered + self.dead
        return None if done == 0 else self.delivered / done


@dataclass(frozen=True)
class CheckStats:
    target: str
    checks: int
    failed: int
    latency_avg_ms: float | None
    latency_max_ms: float | None


@dataclass(frozen=True)
class Statistics:
    """What `incident-fsm stats` and the metrics endpoint report."""

    states: dict[str, int]
    kinds: list[KindStats]
    actions: list[ActionStats]
    channels: list[ChannelStats]
    checks: list[CheckStats]


#: The resolution-time percentiles `stats` reports.
P50, P95 = 0.5, 0.95


def _percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile: the smallest value at least `fraction` of them do not
    exceed. Postgres's `percentile_disc` is the same rule, so both databases agree."""
    if not sorted_values:
        return None
    rank = math.ceil(fraction * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


def _resolution_percentiles(session: Session, opened: list[Any]
                            ) -> dict[str, tuple[float | None, float | None]]:
    """Per kind, the p50 and p95 of the time from opening to resolution."""
    resolved = (col(Incident.resolved_at).is_not(None), *opened)
    if session.get_bind().dialect.name == "postgresql":
        # Computed where the rows are: fetching 100,000 pairs of timestamps to sort them
        # here cost as much again as the rest of the statistics together.
        took = col(Incident.resolved_at) - col(Incident.opened_at)
        return {str(kind): (p50.total_seconds(), p95.total_seconds())
                for kind, p50, p95 in session.execute(
                    sa.select(col(Incident.kind),
                              sa.func.percentile_disc(P50).within_group(took),
                              sa.func.percentile_disc(P95).within_group(took))
                    .where(*resolved).group_by(col(Incident.kind)))}
    durations: dict[str, list[float]] = {}
    for kind, o, r in session.execute(
            sa.select(col(Incident.kind), col(Incident.opened_at), col(Incident.resolved_at))
            .where(*resolved)):
        durations.setdefault(str(kind), []).append((r - o).total_seconds())
    return {kind: (_percentile(sorted(d), P50), _percentile(sorted(d), P95))
            for kind, d in durations.items()}


def _statistics(session: Session, since: datetime | None) -> Statistics:
    opened = [] if since is None else [col(Incident.opened_at) >= since]
    state = col(Incident.state)
    states = {str(name): int(n) for name, n in session.execute(
        sa.select(state, sa.func.count()).where(*opened).group_by(state))}

    escalated_ids = (
        sa.select(col(Transition.incident_id)).where(col(Transition.dest) == State.ESCALATED.value)
        .distinct().scalar_subquery()
    )
    percentiles = _resolution_percentiles(session, opened)
    kinds: list[KindStats] = []
    for kind, total, open_, resolved, escalated in session.execute(
        sa.select(
            col(Incident.kind),
            sa.func.count(),
            sa.func.sum(sa.case((col(Incident.state) != State.RESOLVED.value, 1), else_=0)),
            sa.func.sum(sa.case((col(Incident.state) == State.RESOLVED.value, 1), else_=0)),
            sa.func.sum(sa.case((col(Incident.id).in_(escalated_ids), 1), else_=0)),
        ).where(*opened).group_by(col(Incident.kind)).order_by(col(Incident.kind))
    ):
        p50, p95 = percentiles.get(str(kind), (None, None))
        kinds.append(KindStats(str(kind), int(total), int(open_ or 0), int(resolved or 0),
                               int(escalated or 0), p50, p95))

    # The same success and failure as the learned ranking (`action_record`).
    judged_ok = sa.func.sum(sa.case((succeeded_condition(), 1), else_=0))
    judged_bad = sa.func.sum(sa.case((failed_condition(), 1), else_=0))
    dry = sa.func.sum(sa.case((col(ActionRun.dry_run).is_(True), 1), else_=0))
    actions = [
        ActionStats(str(kind), str(action), int(n), int(ok or 0), int(bad or 0), int(d or 0))
        for kind, action, n, ok, bad, d in session.execute(
            sa.select(col(Incident.kind), col(ActionRun.action), sa.func.count(), judged_ok,
                      judged_bad, dry)
            .join(Incident, col(Incident.id) == col(ActionRun.incident_id))
            .where(*opened).group_by(col(Incident.kind), col(ActionRun.action))
            .order_by(col(Incident.kind), col(ActionRun.action))
        )
    ]

    def status_sum(status: str) -> Any:
        return sa.func.sum(sa.case((col(Notification.status) == status, 1), else_=0))

    created = [] if since is None else [col(Notification.created_at) >= since]
    channels = [
        ChannelStats(str(channel), int(d or 0), int(p or 0), int(x or 0), int(k or 0))
        for channel, d, p, x, k in session.execute(
            sa.select(col(Notification.channel), status_sum(NotificationStatus.DELIVERED),
                      status_sum(NotificationStatus.PENDING), status_sum(NotificationStatus.DEAD),
                      status_sum(NotificationStatus.SKIPPED))
            .where(*created).group_by(col(Notification.channel)).order_by(col(Notification.channel))
        )
    ]

    checked = [] if since is None else [col(HealthCheck.at) >= since]
    checks = [
        CheckStats(str(target), int(n), int(failed or 0),
                   None if avg is None else float(avg), None if top is None else float(top))
        for target, n, failed, avg, top in session.execute(
            sa.select(col(HealthCheck.target), sa.func.count(),
                      sa.func.sum(sa.case((col(HealthCheck.ok).is_(False), 1), else_=0)),
                      sa.func.avg(col(HealthCheck.latency_ms)),
                      sa.func.max(col(HealthCheck.latency_ms)))
            .where(*checked).group_by(col(HealthCheck.target)).order_by(col(HealthCheck.target))
        )
    ]
    return Statistics(states, kinds, actions, channels, checks)


@dataclass(frozen=True)
class OpenIncident:
    """An open incident, when it entered the state it is in and with which step, and who
    acknowledged it last (None: nobody)."""

    incident: Incident
    entered_at: datetime
    entered_by: Transition | None = None
    acknowledged_by: str | None = None

    @property
    def held_action(self) -> str | None:
        """The action waiting for an operator's approval, if that is why it is escalated."""
        step = self.entered_by
        if self.incident.state != State.ESCALATED or step is None:
            return None
        held = step.trigger == Trigger.HOLD or step.details.get("verdict") == Verdict.HOLD
        action = step.details.get("action")
        return action if held and isinstance(action, str) else None


@dataclass(frozen=True)
class ChannelState:
    """One channel's queue: rows waiting, of which failing (tried, not delivered), the
    latest error and since when the oldest has waited."""

    channel: str
    pending: int
    failing: int
    last_error: str
    oldest_pending_at: datetime | None


class StatisticsRepository(StoreCore):
    """`incident-fsm stats` and the status page's figures."""

    # --- statistics --------------------------------------------------------------

    async def statistics(self, *, since: datetime | None = None) -> Statistics:
        """Aggregates over incidents opened (and checks made) since `since` (default: all)."""
        def work() -> Statistics:
            with self._reading() as session:
                return _statistics(session, since)
        return await self._run(work)

    # --- what a scrape reads: bounded by what is open or pending, never the history ------

    async def open_incidents(self, *, limit: int = 1000) -> list[OpenIncident]:
        """The open incidents, oldest first, each with the step that put it in its state and
        its last acknowledgement.

        Bounded by the open set (the incident index on state, the transition
        key on incident and seq): a million resolved incidents cost nothing.
        """
        open_states = [s.value for s in OPEN_STATES]
        incidents = (select(Incident).where(col(Incident.state).in_(open_states))
                     .order_by(col(Incident.opened_at), col(Incident.id)).limit(limit))

        def work() -> list[OpenIncident]:
            with self._reading() as session:
                rows = list(session.exec(incidents).all())
                ids = [i.id for i in rows]
                steps = session.exec(select(Transition).where(
                    col(Transition.incident_id).in_(ids)).order_by(col(Transition.seq))).all()
                entered: dict[int, Transition] = {}
                state = {i.id: i.state for i in rows}
                for t in steps:
                    if t.dest == state[t.incident_id] and t.source != t.dest:
                        entered[t.incident_id] = t
                acknowledged = _acknowledged(steps)
                return [OpenIncident(i, entered[i.id].at if i.id in entered else i.updated_at,
                                     entered.get(i.id or 0), acknowledged.get(i.id or 0))
                        for i in rows]
        return await self._run(work)

    async def acknowledgements(self, incident_ids: Sequence[int]) -> dict[int, str]:
        """Who acknowledged each of these incidents in the state it is in (none: left out)."""
        def work() -> dict[int, str]:
            with self._reading() as session:
                return _acknowledged(session.exec(select(Transition).where(
                    col(Transition.incident_id).in_(list(incident_ids)))
                    .order_by(col(Transition.incident_id), col(Transition.seq))).all())
        return await self._run(work) if incident_ids else {}

    async def channel_states(self) -> list[ChannelState]:
        """Each channel with rows waiting: how many, how many failing, the latest error."""
        pending = col(Notification.status) == NotificationStatus.PENDING.value
        query = (
            sa.select(col(Notification.channel), sa.func.count(),
                      sa.func.sum(sa.case((col(Notification.attempts) > 0, 1), else_=0)),
                      sa.func.min(col(Notification.created_at)))
            .where(pending).group_by(col(Notification.channel))
            .order_by(col(Notification.channel))
        )

        def work() -> list[ChannelState]:
            with self._reading() as session:
                out = []
                for channel, n, failing, oldest in session.execute(query).all():
                    error = session.execute(
                        sa.select(col(Notification.last_error))
                        .where(pending, col(Notification.channel) == channel,
                               col(Notification.attempts) > 0)
                        .order_by(col(Notification.next_attempt_at).desc()).limit(1)
                    ).scalar_one_or_none()
                    out.append(ChannelState(str(channel), int(n), int(failing or 0),
                                            str(error or ""), _utc(oldest)))
                return out
        return await self._run(work)

    async def latest_checks(self, *, since: datetime, per_target: int = 6
                            ) -> dict[str, list[HealthCheck]]:
        """Per target, its last probe rows since `since` (newest first; no dependency
        checks): the last reading, and the gaps between polls (the cadence)."""
        probes = (col(HealthCheck.at) >= since,
                  sa.not_(col(HealthCheck.source).startswith("dependency:", autoescape=True)))
        targets = (sa.select(col(HealthCheck.target)).where(*probes).distinct()
                   .order_by(col(HealthCheck.target)))

        def work() -> dict[str, list[HealthCheck]]:
            with self._reading() as session:
                return {
                    str(target): list(session.exec(
                        select(HealthCheck).where(col(HealthCheck.target) == target, *probes)
                        .order_by(col(HealthCheck.at).desc()).limit(per_target)).all())
                    for (target,) in session.execute(targets).all()
                }
        return await self._run(work)
    async def pending_notifications(self) -> dict[str, int]:
        """Notifications waiting for delivery, per channel (the outbox's status index)."""
        query = (
            sa.select(col(Notification.channel), sa.func.count())
            .where(col(Notification.status) == NotificationStatus.PENDING.value)
            .group_by(col(Notification.channel))
        )

        def work() -> dict[str, int]:
            with self._reading() as session:
                return {str(c): int(n) for c, n in session.execute(query).all()}
        return await self._run(work)


def _utc(value: datetime | None) -> datetime | None:
    # An aggregate (min) comes back as the driver gives it: naive UTC from SQLite.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _acknowledged(steps: Sequence[Transition]) -> dict[int, str]:
    """Per incident, who last acknowledged it, unless it moved to another state since."""
    found: dict[int, str] = {}
    for t in steps:  # in seq order per incident
        if t.trigger == Trigger.ACKNOWLEDGE:
            found[t.incident_id] = t.actor
        elif t.dest != t.source:
            found.pop(t.incident_id, None)  # moved on: it is to be acknowledged anew
    return found
