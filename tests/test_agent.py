"""The agent end to end against the loopback simulator: the PRD's four scenarios, unattended."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from loguru import logger

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.models import Incident, IncidentId
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.agent import Agent
from incident_fsm.settings import Settings, TargetSettings
from incident_fsm.testing import ManualClock

from .logcapture import captured_logs, diagnosed_logs
from .pam_server import ACCEPTS, FakePam
from .scenario import ENV, PAM_TOKEN, fast_agent, incident_state, old_logs, sim_settings, until
from .support import remediating_without_attempt, run_with_waits

pytestmark = pytest.mark.anyio


async def _resolved(store: Store, fingerprint: str) -> bool:
    return await incident_state(store, fingerprint) == "resolved"


async def test_memory_pressure_is_remediated_and_recovers(db_url: str, tmp_path: Path) -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)  # 90 %
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent:
            await until(lambda: _resolved(agent.store, "api:memory_high"))
            (incident,) = await agent.store.list_incidents(kind="memory_high")
            timeline = await agent.store.timeline(incident.incident_id)
    assert [t.trigger for t in timeline.transitions] == [
        "open", "remediate", "action_finished", "recovered"]
    (run,) = timeline.actions
    assert (run.action, run.outcome, run.verified) == ("render_restart", "ok", True)
    assert state.requests["POST /v1/services/srv-web/restart"] == 1  # acted once, really
    assert state.memory_pct() == 40.0


async def test_disk_spike_is_cleaned_with_real_files(db_url: str, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    written = old_logs(logs, files=9, size=100_000)
    state = ServiceState(disk_dir=logs, disk_capacity_bytes=1_000_000)  # 90 %
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url, cleanup_root=logs)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent:
            await until(lambda: _resolved(agent.store, "api:disk_high"))
            (incident,) = await agent.store.list_incidents(kind="disk_high")
            timeline = await agent.store.timeline(incident.incident_id)
    (run,) = timeline.actions
    assert (run.action, run.outcome, run.verified) == ("disk_cleanup", "ok", True)
    assert run.evidence.get("bytes_freed") == written
    assert list(logs.iterdir()) == []
    assert incident.severity == "critical"


async def test_dead_worker_is_restarted(db_url: str, tmp_path: Path) -> None:
    state = ServiceState(worker_alive=False)
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent:
            await until(lambda: _resolved(agent.store, "api:service_down:celery"))
            (incident,) = await agent.store.list_incidents(kind="service_down:celery")
            timeline = await agent.store.timeline(incident.incident_id)
    assert [r.action for r in timeline.actions] == ["restart_celery_workers"]
    assert state.worker_alive
    assert state.requests["POST /v1/services/srv-worker/restart"] == 1


async def test_pam_down_the_agent_works_on_and_delivers_later(db_url: str,
                                                              tmp_path: Path) -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)
    pam = FakePam(token=PAM_TOKEN, accepts=ACCEPTS)  # not started: PAM refuses connections
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url, pam_url=pam.url)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent:
            await until(lambda: _resolved(agent.store, "api:memory_high"))
            assert pam.received == []
            (incident,) = await agent.store.list_incidents(kind="memory_high")
            async with pam:
                await until(lambda: _delivered(pam, 4))
                # PAM has a frame before the agent has its reply and marks the row
                # delivered: a read right after the fourth frame can see one still pending.
                await until(lambda: _all_delivered(agent.store, incident.incident_id))
            timeline = await agent.store.timeline(incident.incident_id)
    texts = [m["message"] for m in pam.system_messages]
    assert [t.split(" ", 1)[0] for t in texts] == ["⚠️", "🔧", "🔧", "✅"]
    # The restart is announced as it starts, and reported once it returned, with its outcome.
    assert "starting render_restart" in texts[1]
    assert "Action taken: render_restart finished" in texts[2]
    assert len({m["metadata"]["dedupe_key"] for m in pam.system_messages}) == 4
    assert all(n.status == "delivered" for n in timeline.notifications if n.channel == "pam")


async def _delivered(pam: FakePam, count: int) -> bool:
    return len(pam.system_messages) >= count


async def _all_delivered(store: Store, incident_id: IncidentId) -> bool:
    timeline = await store.timeline(incident_id)
    pam = [n for n in timeline.notifications if n.channel == "pam"]
    return len(pam) == 4 and all(n.status == "delivered" for n in pam)


async def test_a_failing_part_is_restarted_and_the_rest_keeps_working(
    db_url: str, tmp_path: Path
) -> None:
    state = ServiceState()
    async with Simulator(state) as sim:
        agent = Agent(sim_settings(sim, db_url), environ=ENV, journal_path=tmp_path / "j")
        calls = {"n": 0}

        async def broken_sweep() -> None:
            calls["n"] += 1
            raise RuntimeError("a bug in the sweeper")

        agent._sweep = broken_sweep  # type: ignore[method-assign]
        errors: list[str] = []
        # With the traceback, had there been one: its frames' variables can hold secrets.
        sink = logger.add(errors.append, level="ERROR", format="{message}\n{exception}")
        try:
            async with agent:
                state.leaked_memory_pct = 50.0
                await until(lambda: _resolved(agent.store, "api:memory_high"))
                assert agent.running
        finally:
            logger.remove(sink)
        assert calls["n"] >= 1
    restarts = [e for e in errors if e.startswith("agent sweeper stopped")]
    assert restarts[0].startswith("agent sweeper stopped (RuntimeError: a bug in the sweeper); "
                                  "restarting it in 1 s")
    assert len(restarts) == calls["n"]  # once per failure
    assert not any("Traceback" in e for e in errors)


SECRET = "rnd_Sup3rS3cretKeyInAFrame"


def bare_agent(db_url: str, store: Store, clock: ManualClock, http: httpx.AsyncClient) -> Agent:
    """An agent not started: its parts are called one by one."""
    target = TargetSettings(name="api", base_url="http://127.0.0.1:9", fallback_local=False)
    return Agent(Settings(agent=fast_agent(db_url), targets=(target,)), clock=clock, store=store,
                 http=http, environ={})


def use(api_key: str) -> Incident:
    raise RuntimeError("a bug in the part")


async def test_a_failing_part_is_logged_without_the_variables_of_its_frames(
    db_url: str, store: Store, clock: ManualClock
) -> None:
    calls: list[int] = []

    async def broken_sweep() -> None:
        calls.append(1)
        if len(calls) == 1:
            api_key = SECRET
            use(api_key)

    async with httpx.AsyncClient() as http:
        agent = bare_agent(db_url, store, clock, http)
        with diagnosed_logs() as lines:
            await run_with_waits(clock, lambda: agent._keep_running("sweeper", broken_sweep),
                                 [1.0])
    said = "agent sweeper stopped (RuntimeError: a bug in the part); restarting it in 1 s"
    (failed,) = [line for line in lines if said in line]
    assert "RuntimeError: a bug in the part" in failed
    assert SECRET not in "\n".join(lines)
    assert len(calls) == 2  # and it was restarted


async def test_a_failing_driver_is_logged_without_the_variables_of_its_frames(
    db_url: str, store: Store, clock: ManualClock
) -> None:
    async def drive(incident_id: IncidentId) -> Incident:
        api_key = SECRET
        return use(api_key)

    async with httpx.AsyncClient() as http:
        agent = bare_agent(db_url, store, clock, http)
        agent.remediator.drive = drive  # type: ignore[method-assign]
        with diagnosed_logs() as lines:
            await agent.supervisor.drive(7)
    (failed,) = [line for line in lines if "driver of incident 7 failed" in line]
    assert "RuntimeError: a bug in the part" in failed
    assert SECRET not in "\n".join(lines)
    assert agent.status().queues["incident_drivers"] == 0


async def test_remediating_with_no_attempt_on_record_is_handled_once_not_every_scan(
    db_url: str, store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    iid = await remediating_without_attempt(engine, store)
    async with httpx.AsyncClient() as http:
        agent = bare_agent(db_url, store, clock, http)
        with captured_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.supervisor.run)
                await clock.run_for(10)  # ten scans (one a second)
                tg.cancel_scope.cancel()
    timeline = await store.timeline(iid)
    assert [t.trigger for t in timeline.transitions] == ["open", "remediate", "escalate"]
    assert timeline.transitions[-1].reason == "remediating with no attempt on record"
    warned = [line for line in logs if line.startswith("WARNING|")]
    assert len(warned) == 1 and "no attempt on record" in warned[0]
