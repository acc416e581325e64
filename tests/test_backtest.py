"""`backtest`: recorded readings replayed through the detector under candidate settings."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from incident_fsm.cli import main as cli
from incident_fsm.detection.dependencies import DependencyStatus
from incident_fsm.detection.payload import THROTTLED, UNUSABLE, ProbeFailure, ProbeResult
from incident_fsm.detection.replay import Gap, Replayed, polls, replay
from incident_fsm.detection.targets import Cadence, TargetProbes
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.models import HealthCheck
from incident_fsm.persistence.recorded import CheckRow
from incident_fsm.persistence.store import Store
from incident_fsm.reports.backtest import ADDED, REMOVED, UNCHANGED, backtest, backtest_text
from incident_fsm.runtime.monitor import Monitor
from incident_fsm.settings import AgentSettings, Settings, TargetSettings, Threshold, Thresholds
from incident_fsm.testing import ManualClock

from .monitor_helpers import ScriptedProbe, run_virtual, snap

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
API = TargetSettings(name="api", base_url="http://api.test", fallback_local=False)
DEFAULT = Cadence(30.0, 10.0)


def memory_rows(values: list[tuple[float, float]]) -> list[CheckRow]:
    """One poll per (seconds after T0, memory percent)."""
    return [CheckRow(T0 + timedelta(seconds=s), "/health/resources", True, 5.0, m, 60.0, 10.0,
                     "", None) for s, m in values]


def run(rows: list[CheckRow], target: TargetSettings = API, *, cadence: Cadence = DEFAULT,
        jitter: float = 0.0, until_s: float | None = None) -> Replayed:
    end = T0 + timedelta(seconds=until_s if until_s is not None
                         else (rows[-1].at - T0).total_seconds() + 1)
    return replay(target, polls(rows), cadence=cadence, jitter=jitter, since=T0, until=end)


def every(step: float, values: list[float], start: float = 0.0) -> list[tuple[float, float]]:
    return [(start + i * step, v) for i, v in enumerate(values)]


# --- the replay on hand-built histories -----------------------------------------------------


def test_a_spike_shorter_than_the_confirmation_is_no_incident() -> None:
    spike = run(memory_rows(every(30, [50, 50, 95, 50, 50])))
    assert spike.incidents == [] and spike.taken == 5
    # The control: a second sample over the trigger confirms.
    [held] = run(memory_rows(every(30, [50, 50, 95, 95, 50]))).incidents
    assert (held.kind, held.start, held.end, held.peak) == (
        "memory_high", T0 + timedelta(seconds=90), T0 + timedelta(seconds=120), 95.0)


def test_a_gap_is_reported_and_nothing_is_confirmed_across_it() -> None:
    rows = memory_rows([*every(30, [50, 50, 95]), (1260, 95), (1290, 50)])
    found = run(rows)
    assert found.incidents == []
    assert found.gaps == [Gap("api", T0 + timedelta(seconds=60), T0 + timedelta(seconds=1260))]
    # Without the gap the same two samples confirm.
    assert len(run(memory_rows(every(30, [50, 50, 95, 95, 50]))).incidents) == 1


def test_an_incident_open_across_a_gap_is_marked_and_a_window_without_record_is_a_gap() -> None:
    rows = memory_rows([*every(30, [95, 95]), (1230, 95), (1260, 50)])
    found = run(rows, until_s=2000)
    [incident] = found.incidents
    assert incident.across_gap and incident.end == T0 + timedelta(seconds=1260)
    assert [(g.start, g.end) for g in found.gaps] == [
        (T0 + timedelta(seconds=30), T0 + timedelta(seconds=1230)),
        (T0 + timedelta(seconds=1260), T0 + timedelta(seconds=2000))]


def test_a_slower_candidate_skips_the_records_fast_polls_and_a_faster_one_is_late() -> None:
    calm = memory_rows(every(10, [50.0] * 60))
    slow = run(calm, cadence=Cadence(30.0, 10.0))
    assert (slow.recorded, slow.taken, slow.late) == (60, 20, 0)
    # A record taken every 30 s while the candidate polls fast: confirmations come late.
    fast = run(memory_rows(every(30, [50, 95, 95, 95, 50])), cadence=Cadence(30.0, 10.0))
    assert fast.late == 3 and len(fast.incidents) == 1


def test_failures_recorded_without_their_cause_are_replayed_as_down_and_counted() -> None:
    rows = [CheckRow(T0 + timedelta(seconds=10 * n), "/health/resources", False, 5.0, None, None,
                     None, "HTTP 503", None) for n in range(3)]
    found = run(rows)
    assert found.cause_unknown == 3
    assert [i.kind for i in found.incidents] == ["health_endpoint_down"]
    # The same failures recorded as a 404 (the probe's fault) open the other kind.
    unusable = [r._replace(error="HTTP 404", cause=UNUSABLE) for r in rows]
    found = run(unusable)
    assert found.cause_unknown == 0
    assert [i.kind for i in found.incidents] == ["probe_misconfigured"]


def test_fallback_and_dependency_rows_are_read_back_into_the_observation() -> None:
    at = T0
    rows = [CheckRow(at, "/health/resources", False, 5.0, None, None, None, "timeout", "down"),
            CheckRow(at, "local", True, 1.0, 92.0, 50.0, 5.0, "", None),
            CheckRow(at, "dependency:celery", False, 3.0, None, None, None,
                     "down: no worker answered", None)]
    [poll] = list(polls(rows))
    assert poll.observation.fallback is not None and poll.observation.fallback.memory_pct == 92
    assert poll.observation.dependencies == (
        DependencyStatus("celery", "down", "no worker answered"),)


# --- the live monitor and the backtest on the same recorded history -------------------------


DOWN = ProbeFailure("/health/resources", "HTTP 503")
THROTTLE = ProbeFailure("/health/resources", "HTTP 429", cause=THROTTLED)
NOT_FOUND = ProbeFailure("/health/resources", "HTTP 404", cause=UNUSABLE)


def script(n: int) -> ProbeResult:
    """Poll n of the recorded day: every kind of finding the detector makes."""
    if n == 4:
        return snap(memory=95)  # a spike: suspect, then dismissed
    if 6 <= n <= 9:
        return snap(memory=85)  # over the default 80, under a candidate's 90
    if 12 <= n <= 15:
        return DOWN
    if n == 16:
        return THROTTLE
    if 17 <= n <= 19:
        return NOT_FOUND
    if 22 <= n <= 25:
        return snap(memory=96)  # back: the same incident reopened
    return snap()


class Celery:
    """A dependency that is down on its polls 28 to 30."""

    name = "celery"
    requests_per_check = 0

    def __init__(self) -> None:
        self.calls = 0

    async def check(self) -> DependencyStatus:
        self.calls += 1
        if 28 <= self.calls <= 30:
            return DependencyStatus("celery", "down", "no worker answered the ping")
        return DependencyStatus("celery", "up", "1 worker(s)")


LIVE = Settings(agent=AgentSettings(health_retention=0), targets=(API,))


async def record_a_day(engine: IncidentEngine, store: Store, clock: ManualClock) -> datetime:
    """Run the real monitor over `script` (with jitter); returns when it started."""
    start = clock.now()
    probes = TargetProbes(ScriptedProbe(clock, script), dependencies=(Celery(),))
    monitor = Monitor(targets=[API], agent=LIVE.agent, probes={"api": probes}, engine=engine,
                      store=store, clock=clock, random=random.Random(7).random)
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.run)
        await run_virtual(clock, monitor, 1200)
        tg.cancel_scope.cancel()
    return start


@pytest.mark.anyio
async def test_the_live_and_the_backtest_detector_agree_on_the_same_record(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    start = await record_a_day(engine, store, clock)
    report = await backtest(store, LIVE, since=start, until=clock.now(), candidate="live",
                            now=clock.now())
    kinds = sorted(r.kind for r in report.rows)
    assert kinds == ["health_endpoint_down", "memory_high", "memory_high", "probe_misconfigured",
                     "service_down:celery"]
    for row in report.rows:
        assert row.change == UNCHANGED, row
        assert row.would is not None and row.live is not None
        assert (row.would.start, row.would.end) == (row.live.start, row.live.end), row
    # The fast polls while suspect or open were all taken: the candidate is the live one.
    assert report.taken == report.recorded and report.gaps == [] and report.limits == []


@pytest.mark.anyio
async def test_a_raised_threshold_removes_one_incident_and_keeps_another(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    start = await record_a_day(engine, store, clock)
    raised = Thresholds(memory=Threshold(critical=90.0, clear=75.0, warning=65.0))
    candidate = replace(LIVE, targets=(replace(API, thresholds=raised),))
    report = await backtest(store, candidate, since=start, until=clock.now(),
                            candidate="raised.toml", now=clock.now())
    memory = [(r.change, r.live.start if r.live else None) for r in report.rows
              if r.kind == "memory_high"]
    episodes = [e for e in await store.episodes(since=start, until=clock.now())
                if e.kind == "memory_high"]
    assert memory == [(REMOVED, episodes[0].start), (UNCHANGED, episodes[1].start)]
    [kept] = [r for r in report.rows if r.kind == "memory_high" and r.change == UNCHANGED]
    assert kept.would is not None and kept.would.peak == 96.0
    assert report.count(ADDED) == 0
    text = backtest_text(report)
    assert "removed" in text and "would open 4 (0 added); opened live 5 (1 removed)" in text


# --- the command ----------------------------------------------------------------------------


def _seed_recent(url: str, now: datetime) -> None:
    """Two hours of readings up to `now`, one incident of 85 % memory, and a 20-minute gap."""
    async def work() -> None:
        async with Store(url) as store:
            start = now - timedelta(hours=2)
            for n in range(240):
                at = start + timedelta(seconds=30 * n)
                if timedelta(minutes=60) <= at - start < timedelta(minutes=80):
                    continue  # the agent was away
                memory = 85.0 if 20 <= n < 30 else 50.0
                await store.record_health_check(HealthCheck(
                    target="api", at=at, source="/health/resources", ok=True, latency_ms=4.0,
                    memory_pct=memory, disk_pct=60.0, cpu_pct=10.0))
            engine = IncidentEngine(store, clock=ManualClock(start + timedelta(seconds=630)))
            opened = await engine.open(target="api", kind="memory_high", severity="critical",
                                       reason="memory 85.0% > 80%")
            await store.label_incident(opened.incident.incident_id, "noise", actor="alice",
                                       reason="85 % is normal for this service", at=now)
    anyio.run(work)


def _counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one())
                    for t in ("incident", "transition", "health_check", "action_run",
                              "notification", "lease")}
    finally:
        engine.dispose()


def _config(tmp_path: Path, memory_critical: float = 80.0) -> str:
    path = tmp_path / "candidate.toml"
    path.write_text(f"""
[agent]
health_retention = 0

[[targets]]
name = "api"
base_url = "http://127.0.0.1:9"
fallback_local = false

[targets.thresholds.memory]
critical = {memory_critical}
clear = 75
""")
    return str(path)


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.cli, ["backtest", *args])


def test_the_command_reads_only_and_reports_the_comparison_and_the_gap(
    db_url: str, tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    _seed_recent(db_url, now)
    before = _counts(db_url)
    result = _invoke("--config", _config(tmp_path), "--database-url", db_url, "--since", "3h",
                     "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["summary"] == {"added": 0, "removed": 0, "unchanged": 1}
    [row] = found["incidents"]
    assert row["would"]["peak"] == 85.0 and row["live"]["incident_id"] >= 1
    assert row["live"]["label"] == "noise"
    gaps = [(g["target"], round(g["seconds"])) for g in found["gaps"]]
    # The hour before the record began, and the 20 minutes the agent was away.
    assert [g[0] for g in gaps] == ["api", "api"] and 1200 <= gaps[1][1] <= 1230
    assert _counts(db_url) == before  # nothing written

    text = _invoke("--config", _config(tmp_path, 90.0), "--database-url", db_url,
                   "--since", "3h")
    assert text.exit_code == 0, text.output
    [line] = [ln for ln in text.output.splitlines() if ln.startswith("removed")]
    assert line.split()[:3] == ["removed", "api", "memory_high"]
    assert line.endswith(", labelled noise")
    assert "of the removed: 0 labelled real, 1 labelled noise" in text.output
    assert "gap: api has no reading from" in text.output
    assert "nothing is confirmed across it" in text.output


def test_bad_input_is_refused_with_a_clear_error(db_url: str, tmp_path: Path) -> None:
    config = _config(tmp_path)
    unknown = _invoke("--config", config, "--database-url", db_url, "--target", "web")
    assert unknown.exit_code == 2 and "unknown target 'web'" in unknown.output
    empty = tmp_path / "empty.toml"
    empty.write_text("[agent]\npoll_interval = 30\n")
    none = _invoke("--config", str(empty), "--database-url", db_url)
    assert none.exit_code == 2 and "names no targets" in none.output
    backwards = _invoke("--config", config, "--database-url", db_url, "--since", "1h",
                        "--until", "2h")
    assert backwards.exit_code == 2 and "--since must be before --until" in backwards.output
