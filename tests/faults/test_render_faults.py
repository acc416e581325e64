"""Render down, rate-limiting or refusing the key, while the agent remediates through it.

Counted at the simulator: retries are spaced (back-off from 1 s, or the
server's `Retry-After`), stop at the action deadline, and the incident then
escalates; a refused key is not retried at all. Nothing hammers Render.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.agent import Agent

from ..scenario import fast_agent, incident_state, sim_settings, until
from .exposure import ENV

pytestmark = pytest.mark.anyio

RESTART = "/v1/services/srv-web/restart"
DEADLINE = 4.0


@pytest.mark.parametrize(("fault", "low", "high"), [
    ("500", 2, 4),  # back-off 1 s, 2 s: within 4 s at most 3 tries (plus one in flight)
    ("close", 2, 4),
    ("429", 3, 5),  # Retry-After: 1 -> about one a second
])
async def test_render_failing_is_retried_spaced_until_the_deadline_then_escalated(
    sqlite_url: str, tmp_path: Path, fault: str, low: int, high: int
) -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0, faults={RESTART: fault})
    async with Simulator(state) as sim, Store(sqlite_url) as store:
        settings = sim_settings(sim, sqlite_url, policy={"memory_high": ("render_restart",)},
                                agent=fast_agent(sqlite_url, action_deadline=DEADLINE))
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j"):
            await until(lambda: _state(store, "escalated"), within=DEADLINE + 10)
            tries = state.requests[f"POST {RESTART}"]
            await anyio.sleep(1.5)  # and nothing more is sent once it has escalated
            assert state.requests[f"POST {RESTART}"] == tries
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    assert low <= tries <= high, tries
    (run,) = timeline.actions
    assert run.action == "render_restart" and run.outcome in ("failed", "timed_out")
    remediate = next(t for t in timeline.transitions if t.trigger == "remediate")
    escalated = timeline.transitions[-1]
    assert escalated.dest == "escalated"
    # Honoured: retried up to the action deadline, escalated right after it.
    took = (escalated.at - remediate.at).total_seconds()
    assert DEADLINE - 1.5 <= took <= DEADLINE + 2.0, took


async def test_a_refused_key_is_not_retried_and_escalates_at_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0,
                         render_api_key="rnd_rotated_elsewhere")  # ours is no longer valid
    async with Simulator(state) as sim, Store(sqlite_url) as store:
        settings = sim_settings(sim, sqlite_url, agent=fast_agent(sqlite_url, action_deadline=30))
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j"):
            started = time.monotonic()
            await until(lambda: _state(store, "escalated"), within=15)
            took = time.monotonic() - started
            await anyio.sleep(1.0)
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    # render_restart then render_scale (its GET): one request each, no retry of a 401.
    assert state.requests[f"POST {RESTART}"] == 1
    assert state.requests["GET /v1/services/srv-web"] == 1
    assert state.requests["POST /v1/services/srv-web/scale"] == 0
    assert [(r.action, r.outcome) for r in timeline.actions] == [
        ("render_restart", "failed"), ("render_scale", "failed")]
    assert all("401" in (r.output_excerpt or "") + str(r.evidence) for r in timeline.actions)
    assert took < 10  # far from the 30 s action deadline: nothing waited on a dead key


async def _state(store: Store, wanted: str) -> bool:
    return await incident_state(store, "api:memory_high") == wanted
