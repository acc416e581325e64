"""The status endpoints: agent health, incidents, history and metrics; nothing can change state."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.persistence.store import Store
from incident_fsm.reports.status_app import AgentStatus, TargetStatus, status_app
from incident_fsm.testing import ManualClock

pytestmark = pytest.mark.anyio


class _Source:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock

    def status(self) -> AgentStatus:
        return AgentStatus(
            running=True, role="leader", replica="host:1:abc", started_at=self.clock.now(),
            targets=(TargetStatus("api", self.clock.now(), True),),
            queues={"incident_workers": 2, "outbox_pending": 1},
        )


async def test_status_incidents_history_and_metrics(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    opened = (await engine.open(target="api", kind="disk_high", severity="critical",
                                reason="disk 91%")).incident
    app = status_app(_Source(clock), store, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        me = (await client.get("/")).json()
        assert (me["role"], me["queues"]["incident_workers"]) == ("leader", 2)
        assert me["targets"][0]["name"] == "api"
        incidents = (await client.get("/incidents")).json()
        assert [i["id"] for i in incidents] == [opened.id]
        history = (await client.get("/history", params={"hours": 1})).json()
        assert [h["transition"]["trigger"] for h in history] == ["open"]
        clock.advance(timedelta(hours=2).total_seconds())
        assert (await client.get("/history", params={"hours": 1})).json() == []
        assert (await client.get("/history", params={"hours": "x"})).status_code == 400
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'incident_fsm_open_incidents{state="detected"} 1.0' in metrics.text
        assert 'incident_fsm_leader{replica="host:1:abc"} 1.0' in metrics.text
        assert 'incident_fsm_queue_depth{queue="outbox_pending"} 1.0' in metrics.text
        assert (await client.get("/nope")).status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_nothing_can_change_state(
    store: Store, engine: IncidentEngine, clock: ManualClock, method: str
) -> None:
    opened = (await engine.open(target="api", kind="disk_high", severity="critical",
                                reason="disk 91%")).incident
    app = status_app(_Source(clock), store, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://agent") as client:
        for path in ("/", "/incidents", f"/incidents/{opened.id}", "/metrics"):
            response = await client.request(method, path, json={"state": "resolved"})
            assert response.status_code == 405
            assert response.headers["allow"] == "GET, HEAD"
    assert (await store.get_incident(opened.incident_id)).version == 1
