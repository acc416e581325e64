"""Statistics from the database: resolution times, escalation, action success, delivery, checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import HealthCheck, Incident, Notification, OutboxMessage
from incident_fsm.persistence.statistics import _percentile
from incident_fsm.persistence.store import Store
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

pytestmark = pytest.mark.anyio

CLEANUP = ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "safe")
RESTART = ActionIntent("render_restart", "major", Verdict.NOTIFY, "major")


async def _attempt(store: Store, engine: IncidentEngine, clock: ManualClock, iid: int,
                   *, ok: bool) -> None:
    run = (await store.timeline(iid)).actions[-1]  # type: ignore[arg-type]
    await store.finish_action(run.id or 0, outcome="ok", finished_at=clock.advance(10))
    await engine.fire(iid, "action_finished", actor="agent", reason="returned")  # type: ignore[arg-type]
    await store.judge_action(run.id or 0, verified=ok)


async def test_statistics_over_a_seeded_history(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    start = clock.now()
    # disk #1: cleanup works, resolved after 100 s.
    a = (await engine.open(target="api", kind="disk_high", severity="critical", reason="91%",
                           notifications=[OutboxMessage("pam", {"text": "open"})])).incident
    await engine.fire(a.incident_id, "remediate", actor="agent", reason="go", intent=CLEANUP)
    await _attempt(store, engine, clock, a.incident_id, ok=True)
    clock.advance(90)
    await engine.fire(a.incident_id, "recovered", actor="agent", reason="60%",
                      notifications=[OutboxMessage("pam", {"text": "resolved"})])
    # disk #2: cleanup fails, escalated, an operator resolves it 1000 s after opening.
    b = (await engine.open(target="worker", kind="disk_high", severity="critical",
                           reason="95%")).incident
    opened_b = clock.now()
    await engine.fire(b.incident_id, "remediate", actor="agent", reason="go", intent=CLEANUP)
    await _attempt(store, engine, clock, b.incident_id, ok=False)
    await engine.fire(b.incident_id, "still_failing", actor="agent", reason="nothing left")
    clock.advance(1000 - (clock.now() - opened_b).total_seconds())
    await engine.fire(b.incident_id, "resolve", actor="alice", reason="disk replaced")
    # memory: still open, one dry run.
    c = (await engine.open(target="api", kind="memory_high", severity="warning",
                           reason="82%")).incident
    await store.record_action(c.incident_id, ActionIntent(
        "render_restart", "major", Verdict.NOTIFY, "monitor-only", dry_run=True), at=clock.now())
    engine_ = store.engine
    with engine_.begin() as conn:
        first = sa.select(sa.func.min(Notification.id)).scalar_subquery()
        conn.execute(sa.update(Notification).where(Notification.id == first)
                     .values(status="delivered", delivered_at=clock.now()))
        for i, (ok, latency) in enumerate([(True, 10.0), (True, 30.0), (False, 5000.0)]):
            conn.execute(sa.insert(HealthCheck).values(
                target="api", at=start + timedelta(seconds=30 * i), source="/health/resources",
                ok=ok, latency_ms=latency, error="" if ok else "timeout"))

    stats = await store.statistics()
    assert stats.states == {"resolved": 2, "detected": 1}
    disk = next(k for k in stats.kinds if k.kind == "disk_high")
    assert (disk.incidents, disk.open, disk.resolved, disk.escalated_ever) == (2, 0, 2, 1)
    assert disk.escalation_rate == 0.5
    assert disk.resolution_p50_s == 100.0 and disk.resolution_p95_s == 1000.0
    memory = next(k for k in stats.kinds if k.kind == "memory_high")
    assert (memory.open, memory.resolution_p50_s) == (1, None)
    (cleanup,) = [a for a in stats.actions if a.action == "disk_cleanup"]
    assert (cleanup.attempts, cleanup.verified, cleanup.failed, cleanup.success_rate) == (
        2, 1, 1, 0.5)
    (dry,) = [a for a in stats.actions if a.action == "render_restart"]
    assert (dry.attempts, dry.dry_runs, dry.success_rate) == (1, 1, None)
    (pam,) = stats.channels
    assert (pam.channel, pam.delivered, pam.pending, pam.delivery_rate) == ("pam", 1, 1, 1.0)
    (api,) = stats.checks
    assert (api.checks, api.failed, api.latency_max_ms) == (3, 1, 5000.0)
    assert api.latency_avg_ms == pytest.approx(5040.0 / 3)
    later = await store.statistics(since=clock.now() + timedelta(seconds=1))
    assert later.kinds == [] and later.states == {}


async def test_resolution_percentiles_are_nearest_rank_on_every_database(store: Store) -> None:
    # Ten incidents resolved after 1..10 minutes, plus one still open. Nearest rank:
    # p50 is the 5th value and p95 the 10th; interpolation would give 5.5 and 9.55.
    opened = datetime(2026, 1, 1, tzinfo=UTC)
    with store.engine.begin() as conn:
        for minutes in (*range(1, 11), None):
            conn.execute(sa.insert(Incident).values(
                fingerprint=f"api:disk_high:{minutes}", target="api", kind="disk_high",
                severity="critical", state="detected" if minutes is None else "resolved",
                version=1, summary="", details={}, opened_at=opened, updated_at=opened,
                resolved_at=None if minutes is None else opened + timedelta(minutes=minutes)))
    (disk,) = (await store.statistics()).kinds
    assert (disk.incidents, disk.resolved, disk.open) == (11, 10, 1)
    assert (disk.resolution_p50_s, disk.resolution_p95_s) == (300.0, 600.0)


def test_percentile_rule() -> None:
    assert _percentile([], 0.5) is None
    assert _percentile([7.0], 0.95) == 7.0
    assert [_percentile([1.0, 2.0, 3.0, 4.0], f) for f in (0.0, 0.25, 0.26, 0.5, 0.95, 1.0)] == [
        1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
