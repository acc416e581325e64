"""The agent's Prometheus metrics, through `prometheus_client`: exact values, base units.

`AgentMetrics` holds one registry per agent (never the process-global one,
so a host's own metrics and a second agent do not collide):

- counters that only go up, counted where the event happens: steps taken
  (`incident_fsm_transitions_total`), attempts by outcome, deliveries by
  channel and result, health checks by target and result;
- the probe latency per target as a histogram (seconds);
- gauges read at scrape time: the agent (`up`, `leader`), per target the
  last memory, disk and CPU reading (a ratio, 0 to 1), when it was polled,
  whether it throttles; the open incidents per state and how long the
  oldest has been in it; the oldest unacknowledged escalation; pending
  notifications per channel; the agent's own queues.

A scrape reads only what is open or pending (`open_incidents`,
`pending_notifications`), so it costs the same with a million history rows
as with ten. If the database cannot answer, the in-memory figures are still
served and `incident_fsm_database_readable` is 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from incident_fsm.detection.probe import LOCAL_SOURCE
from incident_fsm.errors import StoreError
from incident_fsm.models import ActionRun, HealthRow
from incident_fsm.persistence.statistics import OpenIncident
from incident_fsm.reports.figures import AgentStatus
from incident_fsm.vocabulary import State

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: Probe latency buckets (seconds): a healthy endpoint answers well under one.
PROBE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The readings a target reports, each exported as a ratio.
READINGS: Final = ("memory", "disk", "cpu")
#: Health-check sources that are not a probe of the target's endpoint.
_NOT_A_PROBE: Final = ("dependency:", LOCAL_SOURCE)


class OpenReadModel(Protocol):
    """What a scrape reads of the database: only what is open or pending."""

    async def open_incidents(self, *, limit: int = 1000) -> list[OpenIncident]: ...

    async def pending_notifications(self) -> dict[str, int]: ...


class AgentMetrics:
    """The registry of one agent, and the observers its parts call as things happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._transitions = Counter(
            "incident_fsm_transitions", "Steps this agent took, by trigger and new state.",
            ["trigger", "dest"], registry=self.registry)
        self._attempts = Counter(
            "incident_fsm_action_attempts", "Action attempts that ended, by action and outcome.",
            ["action", "outcome"], registry=self.registry)
        self._deliveries = Counter(
            "incident_fsm_notifications", "Delivery attempts by channel and result "
            "(delivered, failed, unavailable; dead when given up).",
            ["channel", "result"], registry=self.registry)
        self._checks = Counter(
            "incident_fsm_health_checks", "Health checks by target and result.",
            ["target", "result"], registry=self.registry)
        self._probe = Histogram(
            "incident_fsm_probe_duration_seconds", "How long each probe of a target took.",
            ["target"], buckets=PROBE_BUCKETS, registry=self.registry)
        self._scrape = _Snapshot()
        self.registry.register(self._scrape)

    # --- observers: called by the parts as things happen ---------------------------

    def stepped(self, trigger: str, dest: str) -> None:
        self._transitions.labels(trigger, dest).inc()

    def attempt_finished(self, run: ActionRun) -> None:
        if not run.dry_run and run.outcome is not None:
            self._attempts.labels(run.action, run.outcome).inc()

    def delivered(self, channel: str, result: str) -> None:
        self._deliveries.labels(channel, result).inc()

    def checked(self, rows: Sequence[HealthRow]) -> None:
        for row in rows:
            self._checks.labels(row.target, "ok" if row.ok else "failed").inc()
            if not row.source.startswith(_NOT_A_PROBE):
                self._probe.labels(row.target).observe(max(0.0, row.latency_ms) / 1000.0)

    # --- a scrape ------------------------------------------------------------------

    async def exposition(self, status: AgentStatus, store: OpenReadModel,
                         now: datetime) -> bytes:
        """The text Prometheus scrapes: the counters, and the gauges read now."""
        try:
            open_ = await store.open_incidents()
            pending: dict[str, int] | None = await store.pending_notifications()
        except StoreError:
            open_, pending = [], None
        self._scrape.families = list(_gauges(status, open_, pending, now))
        return generate_latest(self.registry)


class _Snapshot:
    """The gauges of the scrape in progress (a collector the registry reads)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _gauge(name: str, help_: str, labels: Sequence[str],
           samples: Sequence[tuple[Sequence[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _gauges(status: AgentStatus, open_: Sequence[OpenIncident],
            pending: dict[str, int] | None, now: datetime) -> Iterator[GaugeMetricFamily]:
    targets = sorted(status.targets, key=lambda t: t.name)
    yield _gauge("incident_fsm_up", "1 while the agent runs.", [], [((), float(status.running))])
    yield _gauge("incident_fsm_leader", "1 if this replica may act (leader, or the only one).",
                 ["replica"], [((status.replica,), float(status.may_act))])
    yield _gauge("incident_fsm_database_readable",
                 "1 if the database answered this scrape's reads.", [],
                 [((), float(pending is not None))])
    yield _gauge("incident_fsm_reading_ratio",
                 "The last reading of each target (memory, disk, cpu), 0 to 1.",
                 ["target", "metric"],
                 [((t.name, m), v / 100.0) for t in targets for m in READINGS
                  if (v := getattr(t, f"{m}_pct")) is not None])
    yield _gauge("incident_fsm_last_poll_timestamp_seconds",
                 "When each target was last polled (Unix time).", ["target"],
                 [((t.name,), t.last_poll_at.timestamp()) for t in targets
                  if t.last_poll_at is not None])
    yield _gauge("incident_fsm_target_throttled",
                 "1 while the target answers the agent's polls with 429.", ["target"],
                 [((t.name,), float(t.throttled_polls > 0)) for t in targets])
    yield _gauge("incident_fsm_queue_depth", "Work waiting inside the agent.", ["queue"],
                 [((q,), float(n)) for q, n in sorted(status.queues.items())])
    counts = {s.value: 0 for s in State if s is not State.RESOLVED}
    oldest: dict[str, float] = {}
    unacknowledged: float | None = None
    for item in open_:
        state = item.incident.state
        counts[state] = counts.get(state, 0) + 1
        age = max(0.0, (now - item.entered_at).total_seconds())
        oldest[state] = max(oldest.get(state, 0.0), age)
        # Acknowledging an escalation clears its deadline (no more repeats).
        if state == State.ESCALATED and item.incident.deadline_at is not None:
            unacknowledged = max(unacknowledged or 0.0, age)
    if pending is not None:
        yield _gauge("incident_fsm_open_incidents", "Open incidents by state.", ["state"],
                     [((s,), float(n)) for s, n in sorted(counts.items())])
        yield _gauge("incident_fsm_open_incident_age_seconds",
                     "How long the oldest open incident of each state has been in it.",
                     ["state"], [((s,), a) for s, a in sorted(oldest.items())])
        yield _gauge("incident_fsm_unacknowledged_escalation_age_seconds",
                     "How long the oldest escalation nobody acknowledged has waited.", [],
                     [] if unacknowledged is None else [((), unacknowledged)])
        yield _gauge("incident_fsm_notifications_pending",
                     "Notifications waiting for delivery, per channel.", ["channel"],
                     [((c,), float(n)) for c, n in sorted(pending.items())])
