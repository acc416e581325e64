"""The agent's Prometheus metrics, written by `prometheus_client`: exact values, base units.

`AgentMetrics` holds one registry per agent (never the process-global one,
so a host's own metrics and a second agent do not collide). Its counters
and histogram are plain numbers kept here, and `prometheus_client` is
imported at the first scrape (see `lazy`): an agent nobody scrapes never
loads it, and counting a poll is a dictionary update.

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

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Final, Protocol

from incident_fsm.detection.probe import LOCAL_SOURCE
from incident_fsm.errors import StoreError
from incident_fsm.lazy import prometheus_client, prometheus_core
from incident_fsm.models import ActionRun, HealthRow
from incident_fsm.persistence.statistics import OpenIncident
from incident_fsm.reports.figures import AgentStatus
from incident_fsm.vocabulary import State

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily, Metric

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
    """The figures of one agent, and the observers its parts call as things happen."""

    def __init__(self) -> None:
        self._transitions = _Counter(
            "incident_fsm_transitions", "Steps this agent took, by trigger and new state.",
            ("trigger", "dest"))
        self._attempts = _Counter(
            "incident_fsm_action_attempts", "Action attempts that ended, by action and outcome.",
            ("action", "outcome"))
        self._deliveries = _Counter(
            "incident_fsm_notifications", "Delivery attempts by channel and result "
            "(delivered, failed, unavailable; dead when given up).", ("channel", "result"))
        self._checks = _Counter(
            "incident_fsm_health_checks", "Health checks by target and result.",
            ("target", "result"))
        self._probe = _Histogram(
            "incident_fsm_probe_duration_seconds", "How long each probe of a target took.",
            ("target",), PROBE_BUCKETS)
        self._gauges: list[Metric] = []
        self._registry: prometheus_client.CollectorRegistry | None = None

    @property
    def content_type(self) -> str:
        """The Content-Type of `exposition`'s text."""
        return str(prometheus_client.exposition.CONTENT_TYPE_LATEST)

    # --- observers: called by the parts as things happen ---------------------------

    def stepped(self, trigger: str, dest: str) -> None:
        self._transitions.inc((trigger, dest))

    def attempt_finished(self, run: ActionRun) -> None:
        if not run.dry_run and run.outcome is not None:
            self._attempts.inc((run.action, run.outcome))

    def delivered(self, channel: str, result: str) -> None:
        self._deliveries.inc((channel, result))

    def checked(self, rows: Sequence[HealthRow]) -> None:
        for row in rows:
            self._checks.inc((row.target, "ok" if row.ok else "failed"))
            if not row.source.startswith(_NOT_A_PROBE):
                self._probe.observe((row.target,), max(0.0, row.latency_ms) / 1000.0)

    # --- a scrape ------------------------------------------------------------------

    async def exposition(self, status: AgentStatus, store: OpenReadModel,
                         now: datetime) -> bytes:
        """The text Prometheus scrapes: the counters, and the gauges read now."""
        try:
            open_ = await store.open_incidents()
            pending: dict[str, int] | None = await store.pending_notifications()
        except StoreError:
            open_, pending = [], None
        if self._registry is None:
            self._registry = prometheus_client.CollectorRegistry(auto_describe=True)
            self._registry.register(self)
        self._gauges = list(_gauges(status, open_, pending, now))
        return bytes(prometheus_client.generate_latest(self._registry))

    def collect(self) -> Iterator[Metric]:
        """Every family, as the registry reads it: the counters, then this scrape's gauges."""
        for counter in (self._transitions, self._attempts, self._deliveries, self._checks):
            yield counter.family()
        yield self._probe.family()
        yield from self._gauges

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _Counter:
    """A labelled counter: per label values, the count and when it was first counted."""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labels = name, help_, labels
        self.values: dict[tuple[str, ...], list[float]] = {}

    def inc(self, key: tuple[str, ...]) -> None:
        entry = self.values.get(key)
        if entry is None:
            self.values[key] = [1.0, time.time()]
        else:
            entry[0] += 1.0

    def family(self) -> Metric:
        family = prometheus_core.CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, (count, created) in self.values.items():
            family.add_metric(key, count, created=created)
        return family


class _Histogram:
    """A labelled histogram: per label values, the count in each bucket, the sum, created."""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...],
                 buckets: Sequence[float]) -> None:
        self.name, self.help, self.labels = name, help_, labels
        self.bounds = (*buckets, float("inf"))
        # As prometheus_client writes `le` (Go's float format) for bounds of this size.
        self.les = (*(repr(float(b)) for b in buckets), "+Inf")
        self.values: dict[tuple[str, ...], _Buckets] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        entry = self.values.get(key)
        if entry is None:
            entry = self.values[key] = _Buckets(len(self.bounds))
        # Prometheus's buckets are "less than or equal": the first bound not below the value.
        entry.counts[bisect_left(self.bounds, value)] += 1
        entry.sum += value

    def family(self) -> Metric:
        family = prometheus_core.HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for key, entry in self.values.items():
            cumulative, buckets = 0, []
            for le, count in zip(self.les, entry.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(list(key), buckets, entry.sum)
            family.add_sample(f"{self.name}_created", dict(zip(self.labels, key, strict=True)),
                              entry.created)
        return family


class _Buckets:
    __slots__ = ("counts", "created", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0
        self.created = time.time()


def _gauge(name: str, help_: str, labels: Sequence[str],
           samples: Sequence[tuple[Sequence[str], float]]) -> GaugeMetricFamily:
    family = prometheus_core.GaugeMetricFamily(name, help_, labels=list(labels))
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
