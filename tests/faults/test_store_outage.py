"""Postgres unreachable for longer than an action's deadline, then back.

The database is reached through a loopback `TcpProxy` the test cuts -- a
refused connection or a silent black hole -- with a password in the URL.
While it is away a problem appears; the agent (the only one on this
database, `leader_election = false`) opens the incident in its journal,
starts an action that never finishes, and escalates the incident when the
action deadline passes, from its local copy. When the database is back the
journal is replayed: the history lands complete and in order, the attempt
was executed once, and the escalation is stamped at the deadline.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import make_url

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.journal import JournalingStore
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions.base import ActionContext, Outcome, Tier
from incident_fsm.runtime.agent import Agent

from ..scenario import fast_agent, incident_state, sim_settings, until
from ..tcp_proxy import TcpProxy
from .exposure import DB_PASSWORD, ENV, Exposure
from .plugins import plug_ins

pytestmark = pytest.mark.anyio

DEADLINE = 2.0


class NeverDone:
    name, tier, kinds, timeout = "never_done", Tier.SAFE, frozenset({"memory_high"}), 30.0

    def __init__(self) -> None:
        self.started = 0

    async def run(self, ctx: ActionContext) -> Outcome:
        self.started += 1
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("outage", ["refuse", "blackhole"])
async def test_an_outage_longer_than_the_action_deadline_escalates_on_time_and_replays_whole(
    postgres_url: str, proxy: TcpProxy, tmp_path: Path, outage: str, exposure: Exposure
) -> None:
    proxied = make_url(postgres_url).set(port=proxy.port, password=DB_PASSWORD)
    url = proxied.render_as_string(hide_password=False)
    exposure.databases.append(postgres_url)
    state = ServiceState(load_memory_pct=40.0)
    action = NeverDone()
    async with Simulator(state) as sim, Store(postgres_url) as direct:
        settings = sim_settings(
            sim, url, policy={"memory_high": ("never_done",)},
            agent=fast_agent(url, leader_election=False, action_deadline=DEADLINE))
        store = JournalingStore(url, journal_path=tmp_path / "agent.journal", call_timeout=1.0)
        agent = Agent(settings, environ=ENV, store=store,
                      actions=plug_ins("api", {"never_done": action}))
        async with agent:
            await until(lambda: _polled(state), within=10)
            proxy.cut(outage)
            cut_at = anyio.current_time()
            state.leaked_memory_pct = 50.0
            await until(lambda: _escalated_locally(store), within=30)
            assert store.offline
            assert await incident_state(direct, "api:memory_high") is None
            # Away for longer than the deadline, with the action still hanging.
            await anyio.sleep(max(0.0, 2 * DEADLINE - (anyio.current_time() - cut_at)))
            proxy.restore()
            await until(lambda: _is(direct, "escalated"), within=30)
            await until(lambda: _not_offline(store), within=30)
        (incident,) = await direct.list_incidents(kind="memory_high")
        timeline = await direct.timeline(incident.incident_id)
    assert [(t.seq, t.trigger, t.dest) for t in timeline.transitions] == [
        (1, "open", "detected"), (2, "remediate", "remediating"), (3, "timeout", "escalated")]
    assert [t.at for t in timeline.transitions] == sorted(t.at for t in timeline.transitions)
    took = (timeline.transitions[2].at - timeline.transitions[1].at).total_seconds()
    assert DEADLINE - 0.1 <= took <= DEADLINE + 1.0, took  # the deadline, not the outage
    (run,) = timeline.actions
    assert run.action == "never_done" and run.executing_at is not None
    assert run.outcome == "timed_out", run
    assert action.started == 1  # executed once, never restarted by the replay
    # Escalated: it will be escalated again unless someone acknowledges it.
    assert incident.deadline_at == timeline.transitions[-1].at + timedelta(seconds=1800)
    assert {n.channel for n in timeline.notifications} == {"log"}
    assert not (tmp_path / "agent.journal").exists()


async def _polled(state: ServiceState) -> bool:
    return state.requests["GET /health/resources"] >= 2


async def _escalated_locally(store: JournalingStore) -> bool:
    rows = await store.list_incidents(kind="memory_high")
    return bool(rows) and rows[0].state == "escalated"


async def _is(store: Store, wanted: str) -> bool:
    return await incident_state(store, "api:memory_high") == wanted


async def _not_offline(store: JournalingStore) -> bool:
    return not store.offline
