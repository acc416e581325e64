"""PAM misbehaving while the agent remediates: refused, 4001, silent, dropping everything.

Against `PamSimulator` on loopback. Remediation never waits for PAM: the
incident resolves on time whatever PAM does. What PAM owed is delivered once
it is healthy again (each notification at least once, recognisable by its
`dedupe_key`), and an auth failure is reported once, not per retry.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from incident_fsm.demo.pam_simulator import PamSimulator
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.agent import Agent

from ..pam_server import ACCEPTS
from ..scenario import PAM_TOKEN, incident_state, sim_settings, until
from .exposure import ENV, Exposure

pytestmark = pytest.mark.anyio

EVENTS = ["⚠️", "🔧", "✅"]  # opened (critical), major action started and taken, recovered


@pytest.mark.parametrize("fault", ["refuse", "freeze"])
async def test_pam_down_or_silent_remediation_goes_on_and_everything_arrives_after(
    sqlite_url: str, tmp_path: Path, fault: str
) -> None:
    state = ServiceState(load_memory_pct=40.0)
    pam = PamSimulator(token=PAM_TOKEN, ping_interval=0.2, heartbeat_interval=0.3,
                       pong_timeout=0.5, accepts=ACCEPTS)
    async with pam, Simulator(state) as sim, Store(sqlite_url) as store:
        settings = sim_settings(sim, sqlite_url, pam_url=pam.url)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j"):
            await until(lambda: _connected(pam), within=10)
            if fault == "refuse":
                pam.mode = "refuse"
                pam.kill_connections()
            else:
                pam.freeze()  # reads nothing: messages pile up unread, pongs go unseen
            state.leaked_memory_pct = 50.0
            await until(lambda: _resolved(store), within=15)
            assert _events(pam) == []  # nothing got through...
            # ...and remediation did not wait for it.
            assert state.requests["POST /v1/services/srv-web/restart"] == 1
            pam.mode = "up"
            if fault == "freeze":
                pam.kill_connections()
            await until(lambda: _all_delivered(store, pam), within=20)
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    assert sorted(set(_events(pam)), key=EVENTS.index) == EVENTS
    keys = {m["metadata"]["dedupe_key"] for m in pam.system_messages}
    assert keys == {n.dedupe_key for n in timeline.notifications if n.channel == "pam"}
    assert all(n.status == "delivered" for n in timeline.notifications if n.channel == "pam")
    if fault == "refuse":
        assert pam.refused >= 1


async def test_pam_closing_4001_is_reported_once_and_remediation_goes_on(
    sqlite_url: str, tmp_path: Path, exposure: Exposure
) -> None:
    state = ServiceState(load_memory_pct=40.0)
    pam = PamSimulator(token=PAM_TOKEN)
    pam.mode = "auth"
    async with pam, Simulator(state) as sim, Store(sqlite_url) as store:
        settings = sim_settings(sim, sqlite_url, pam_url=pam.url)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j"):
            state.leaked_memory_pct = 50.0
            await until(lambda: _resolved(store), within=15)
            await anyio.sleep(2.0)  # reconnect back-off is 0.1..0.5 s: time for a retry storm
    assert state.requests["POST /v1/services/srv-web/restart"] == 1
    assert pam.connections == 1  # a final close is not retried
    reports = [line for line in exposure.logs if "code 4001" in line]
    assert len(reports) == 1 and reports[0].startswith("ERROR"), reports
    assert pam.received == []


async def _connected(pam: PamSimulator) -> bool:
    return pam.connections >= 1


async def _resolved(store: Store) -> bool:
    return await incident_state(store, "api:memory_high") == "resolved"


def _events(pam: PamSimulator) -> list[str]:
    return [m["message"].split(" ", 1)[0] for m in pam.system_messages]


async def _all_delivered(store: Store, pam: PamSimulator) -> bool:
    rows = await store.list_incidents(kind="memory_high")
    if not rows:
        return False
    pending = [n for n in (await store.timeline(rows[0].incident_id)).notifications
               if n.channel == "pam" and n.status != "delivered"]
    return not pending and len(set(_events(pam))) == 3
