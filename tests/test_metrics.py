"""Prometheus metrics: exact values in base units, counters that only go up, bounded scrapes.

Every exposition is read back with `prometheus_client`'s own parser, as a
scraper would; the README's alerting rules are checked against it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from incident_fsm.errors import StoreUnavailable
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import MachinePolicy
from incident_fsm.models import ActionRun, HealthCheck
from incident_fsm.persistence.store import Store
from incident_fsm.reports.figures import AgentStatus, TargetStatus
from incident_fsm.reports.metrics import AgentMetrics
from incident_fsm.testing import ManualClock

pytestmark = pytest.mark.anyio
README = Path(__file__).resolve().parents[1] / "README.md"

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def parse(text: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][frozenset(labels.items())]


def status(clock: ManualClock, **target: Any) -> AgentStatus:
    return AgentStatus(running=True, role="single", replica="host:7",
                       targets=(TargetStatus("api", **target),), queues={"incident_drivers": 2})


class Counting:
    """The store, with the name of every coroutine a scrape awaits kept."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await found(*args, **kwargs)

        return counted


async def test_gauges_are_exact_and_in_base_units(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    polled = datetime(2026, 11, 29, 2, 59, 58, 123456, tzinfo=clock.now().tzinfo)
    detected = (await engine.open(target="api", kind="disk_high", severity="critical",
                                  reason="disk 91%")).incident
    clock.advance(60)
    other = (await engine.open(target="web", kind="memory_high", severity="critical",
                               reason="memory 92%")).incident
    await engine.fire(other.incident_id, "escalate", actor="alice", reason="mine")
    clock.advance(1940.25)
    counting = Counting(store)
    text = await AgentMetrics().exposition(
        status(clock, last_poll_at=polled, memory_pct=81.5, disk_pct=91.25, cpu_pct=7.0),
        counting, clock.now())  # type: ignore[arg-type]
    samples = parse(text)

    assert value(samples, "incident_fsm_last_poll_timestamp_seconds",
                 target="api") == polled.timestamp()
    assert value(samples, "incident_fsm_reading_ratio", target="api", metric="memory") == 0.815
    assert value(samples, "incident_fsm_reading_ratio", target="api", metric="disk") == 0.9125
    assert value(samples, "incident_fsm_open_incidents", state="detected") == 1
    assert value(samples, "incident_fsm_open_incidents", state="escalated") == 1
    assert value(samples, "incident_fsm_open_incidents", state="verifying") == 0
    assert value(samples, "incident_fsm_open_incident_age_seconds", state="detected") == 2000.25
    assert value(samples, "incident_fsm_open_incident_age_seconds",
                 state="escalated") == 1940.25
    assert value(samples, "incident_fsm_unacknowledged_escalation_age_seconds") == 1940.25
    assert value(samples, "incident_fsm_leader", replica="host:7") == 1
    assert value(samples, "incident_fsm_database_readable") == 1
    # Only what is open or pending is read: no statistics, no history.
    assert sorted(counting.calls) == ["open_incidents", "pending_notifications"]

    await engine.fire(other.incident_id, "acknowledge", actor="alice", reason="on it")
    again = parse(await AgentMetrics().exposition(status(clock), store, clock.now()))
    assert "incident_fsm_unacknowledged_escalation_age_seconds" not in again
    assert detected.id is not None


async def test_counters_count_what_happened_and_only_go_up(
    store: Store, clock: ManualClock
) -> None:
    metrics = AgentMetrics()
    engine = IncidentEngine(store, clock=clock, policy=MachinePolicy(),
                            on_step=metrics.stepped)
    opened = (await engine.open(target="api", kind="disk_high", severity="critical",
                                reason="disk 91%")).incident
    await engine.fire(opened.incident_id, "escalate", actor="alice", reason="mine")
    await engine.open(target="api", kind="disk_high", severity="critical", reason="again")
    metrics.attempt_finished(ActionRun(incident_id=1, attempt=1, action="disk_cleanup",
                                       tier="safe", idempotency_key="k", outcome="ok",
                                       started_at=clock.now()))
    metrics.delivered("pam", "failed")
    metrics.delivered("pam", "delivered")
    metrics.checked([
        HealthCheck(target="api", at=clock.now(), source="/health/system", ok=True,
                    latency_ms=120.0),
        HealthCheck(target="api", at=clock.now(), source="dependency:redis", ok=False,
                    latency_ms=3.0, error="down"),
    ])
    first = parse(await metrics.exposition(status(clock), store, clock.now()))
    metrics.delivered("pam", "delivered")
    second = parse(await metrics.exposition(status(clock), store, clock.now()))

    assert value(first, "incident_fsm_transitions_total", trigger="open", dest="detected") == 1
    assert value(first, "incident_fsm_transitions_total", trigger="escalate",
                 dest="escalated") == 1
    assert value(first, "incident_fsm_action_attempts_total", action="disk_cleanup",
                 outcome="ok") == 1
    assert value(first, "incident_fsm_notifications_total", channel="pam",
                 result="failed") == 1
    assert value(second, "incident_fsm_notifications_total", channel="pam",
                 result="delivered") == 2
    assert value(first, "incident_fsm_health_checks_total", target="api", result="failed") == 1
    # The probe's latency in seconds, in its bucket; a dependency check is no probe.
    assert value(first, "incident_fsm_probe_duration_seconds_count", target="api") == 1
    assert value(first, "incident_fsm_probe_duration_seconds_sum", target="api") == 0.12
    assert value(first, "incident_fsm_probe_duration_seconds_bucket", target="api",
                 le="0.1") == 0
    assert value(first, "incident_fsm_probe_duration_seconds_bucket", target="api",
                 le="0.25") == 1


class _Unreachable:
    async def open_incidents(self, *, limit: int = 1000) -> list[Any]:
        raise StoreUnavailable("database unavailable (OperationalError)")

    async def pending_notifications(self) -> dict[str, int]:
        raise StoreUnavailable("database unavailable (OperationalError)")


async def test_without_the_database_the_agent_figures_are_still_scraped(
    clock: ManualClock
) -> None:
    metrics = AgentMetrics()
    metrics.delivered("log", "delivered")
    samples = parse(await metrics.exposition(status(clock, memory_pct=50.0), _Unreachable(),
                                             clock.now()))
    assert value(samples, "incident_fsm_database_readable") == 0
    assert value(samples, "incident_fsm_up") == 1
    assert value(samples, "incident_fsm_reading_ratio", target="api", metric="memory") == 0.5
    assert "incident_fsm_open_incidents" not in samples  # unknown, not zero


def _alert_rules() -> list[tuple[str, str]]:
    """(alert, expr) of the README's example alerting rules."""
    text = README.read_text(encoding="utf-8")
    [block] = re.findall(r"```yaml\n(groups:.*?)```", text, flags=re.S)
    alerts = re.findall(r"- alert: (\w+)\n\s+expr: (.+)", block)
    return [(name, expr.strip()) for name, expr in alerts]


async def test_the_readme_alerting_rules_use_what_the_agent_exports(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    opened = (await engine.open(target="api", kind="disk_high", severity="critical",
                                reason="disk 91%")).incident
    await engine.fire(opened.incident_id, "escalate", actor="alice", reason="mine")
    metrics = AgentMetrics()
    metrics.delivered("pam", "failed")
    metrics.delivered("pam", "dead")
    samples = parse(await metrics.exposition(
        status(clock, last_poll_at=clock.now() - timedelta(seconds=5)), store, clock.now()))
    rules = _alert_rules()
    assert {name for name, _ in rules} >= {
        "IncidentFsmNoAgent", "IncidentFsmNoLeader", "IncidentFsmEscalationUnacknowledged",
        "IncidentFsmChannelFailing"}
    for name, expr in rules:
        used = set(re.findall(r"\bincident_fsm_\w+", expr))
        assert used, f"{name} uses no metric of the agent"
        for metric in used:
            assert metric in samples, f"{name}: {metric} is not exported"
        for metric, selector in re.findall(r"\b(incident_fsm_\w+)\{([^}]*)\}", expr):
            for label, wanted in re.findall(r'(\w+)=~?"([^"]*)"', selector):
                seen = {dict(k).get(label) for k in samples[metric]}
                assert seen - {None}, f"{name}: {metric} has no label {label}"
                assert any(v is not None and re.fullmatch(wanted, v) for v in seen), (
                    f"{name}: no {metric} sample matches {label}=~{wanted!r}")
