"""What the real service answers that is not a reading: throttling and a wrong probe.

Against the loopback simulator, end to end through the agent: a 429 stretch
much longer than the down threshold opens nothing and runs nothing, and the
polls wait for `Retry-After`; a typo'd endpoint path is a misconfiguration,
escalated to humans with the URL and status, and nothing is restarted.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.runtime.agent import Agent

from .scenario import ENV, sim_settings, until

pytestmark = pytest.mark.anyio

RESOURCES = "GET /health/resources"


async def test_a_long_429_stretch_opens_nothing_runs_nothing_and_waits_for_retry_after(
    db_url: str, tmp_path: Path,
) -> None:
    state = ServiceState(leaked_memory_pct=0.0)
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url, policy={"health_endpoint_down": ("render_restart",)})
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent:
            await until(lambda: _polled(agent, "api"))
            # Throttled for 3.5 s: the down threshold is 3 polls, 0.6 s at these intervals.
            state.faults["/health/resources"] = "429"  # answered with Retry-After: 1
            before = state.requests[RESOURCES]
            started = time.monotonic()
            await anyio.sleep(3.5)
            during = state.requests[RESOURCES] - before
            status = agent.status().targets[0]
            assert status.last_cause == "throttled" and status.throttled_polls >= 2
            assert status.retry_after == 1.0
            state.faults.clear()
            await until(lambda: _answered(agent, "api"))
            elapsed = time.monotonic() - started
            assert agent.status().targets[0].throttled_polls == 0
            incidents = await agent.store.list_incidents()
    assert incidents == []
    assert not [r for r in state.requests if r.startswith("POST ")]  # nothing was run
    # Polls 0.2 s apart would have sent ~17 requests; Retry-After: 1 allows about 4,
    # and the second endpoint is never asked while the first is throttled.
    assert 2 <= during <= int(elapsed) + 1
    assert state.requests["GET /health/system"] == 0


async def test_a_typo_in_the_endpoint_path_is_escalated_as_misconfigured_never_restarted(
    db_url: str, tmp_path: Path,
) -> None:
    state = ServiceState()
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url, policy={"health_endpoint_down": ("render_restart",)})
        (target,) = settings.targets
        settings = replace(settings, targets=(replace(target, endpoints=("/health/resource",)),))
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent:
            await until(lambda: _state(agent, "api:probe_misconfigured", "escalated"))
            await anyio.sleep(1.0)  # long enough for a wrong restart to have happened
            incidents = await agent.store.list_incidents()
            (incident,) = incidents
            timeline = await agent.store.timeline(incident.incident_id)
            texts = [n.payload.get("text", "") for n in timeline.notifications]
    assert (incident.kind, incident.severity) == ("probe_misconfigured", "critical")
    # The humans told get the URL and the status.
    assert any(f"HTTP 404 from {sim.base_url}/health/resource" in t for t in texts), texts
    assert [t.trigger for t in timeline.transitions] == ["open", "hold"]
    assert timeline.actions == []
    assert not [r for r in state.requests if r.startswith("POST ")]


async def _polled(agent: Agent, name: str) -> bool:
    return agent.monitor.latest(name) is not None


async def _answered(agent: Agent, name: str) -> bool:
    reading = agent.monitor.latest(name)
    return reading is not None and reading.observation.reading is not None


async def _state(agent: Agent, fingerprint: str, state: str) -> bool:
    found = await agent.store.find_open(fingerprint)
    return found is not None and found.state == state
