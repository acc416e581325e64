"""Postgres unreachable mid-incident: the agent acts from its journal; the history lands whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.journal import JournalingStore
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.agent import Agent

from .scenario import ENV, fast_agent, incident_state, sim_settings, until
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("outage", ["refuse", "blackhole"])
async def test_the_agent_keeps_remediating_through_an_outage(
    postgres_url: str, proxy: TcpProxy, tmp_path: Path, outage: str
) -> None:
    proxied = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    state = ServiceState(load_memory_pct=40.0)
    async with Simulator(state) as sim, Store(postgres_url) as direct:
        # One agent on this database: it may act without a lease, through outages too.
        settings = sim_settings(sim, proxied,
                                agent=fast_agent(proxied, leader_election=False))
        store = JournalingStore(proxied, journal_path=tmp_path / "agent.journal",
                                call_timeout=1.0)
        async with Agent(settings, environ=ENV, store=store) as agent:
            await until(lambda: _polled(state), within=10)
            proxy.cut(outage)
            state.leaked_memory_pct = 50.0  # trouble starts while the database is away
            await until(lambda: _resolved_locally(agent), within=30)
            assert agent.store.offline  # it all happened in the journal
            assert await incident_state(direct, "api:memory_high") is None
            proxy.restore()
            await until(lambda: _is(direct, "api:memory_high", "resolved"), within=30)
            await until(lambda: _not_offline(agent), within=30)
        (incident,) = await direct.list_incidents(kind="memory_high")
        timeline = await direct.timeline(incident.incident_id)
    assert [(t.seq, t.trigger) for t in timeline.transitions] == [
        (1, "open"), (2, "remediate"), (3, "action_finished"), (4, "recovered")]
    (run,) = timeline.actions
    assert (run.action, run.outcome, run.verified) == ("render_restart", "ok", True)
    assert run.executing_at is not None
    assert state.requests["POST /v1/services/srv-web/restart"] == 1
    assert {n.channel for n in timeline.notifications} == {"log"}
    assert not (tmp_path / "agent.journal").exists()


async def _polled(state: ServiceState) -> bool:
    return state.requests["GET /health/resources"] >= 2


async def _resolved_locally(agent: Agent) -> bool:
    rows = await agent.store.list_incidents(kind="memory_high")
    return bool(rows) and rows[0].state == "resolved"


async def _is(store: Store, fingerprint: str, wanted: str) -> bool:
    return await incident_state(store, fingerprint) == wanted


async def _not_offline(agent: Agent) -> bool:
    assert isinstance(agent.store, JournalingStore)
    return not agent.store.offline
