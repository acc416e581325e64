"""A Render scale that cannot help is passed over: no strike, no verification, the next action.

Through the real remediation flow (store, engine, remediator, catalog) on both
databases, against a respx-mocked Render API and health endpoint.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
import respx

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.models import Incident
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions.catalog import Catalog
from incident_fsm.remediation.remediator import Remediator, Verification
from incident_fsm.settings import ActionsSettings, RenderSettings, Settings, TargetSettings
from incident_fsm.testing import ManualClock

from .support import run_with_waits

pytestmark = pytest.mark.anyio

API = "https://api.render.test/v1"
HEALTH = "https://api.example.test/health/resources"
KEY = "rnd_notApplicableFlowKey0123"
SETTINGS = Settings(
    targets=(TargetSettings(name="api", base_url="https://api.example.test",
                            render_service_id="srv-web"),),
    actions=ActionsSettings(render=RenderSettings(api_url=API, max_instances=3)),
)


class MemoryVerifier:
    """Reads `/health/resources` and clears below 75 %."""

    def __init__(self, http: httpx.AsyncClient, stat: str) -> None:
        self.http, self.stat = http, stat

    async def verify(self, incident: Incident) -> Verification:
        value = float((await self.http.get(HEALTH, timeout=5.0)).json()["stats"][self.stat])
        return Verification(value < 75.0, f"{self.stat} {value:g}%", {self.stat: value})


@pytest.fixture
async def render() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router


def service(**details: Any) -> httpx.Response:
    return httpx.Response(200, json={"id": "srv-web", "type": "web_service",
                                     "serviceDetails": {"numInstances": 1, **details}})


async def drive(store: Store, engine: IncidentEngine, clock: ManualClock, *, kind: str,
                stat: str, policy: Mapping[str, Sequence[str]] | None,
                waits: Sequence[float]) -> Incident:
    async with httpx.AsyncClient() as http:
        catalog = Catalog.from_settings(SETTINGS, http=http, environ={"RENDER_API_KEY": KEY})
        opened = await engine.open(target="api", kind=kind, severity="critical",
                                   reason=f"{stat} 91% > 80%")
        remediator = Remediator(engine=engine, store=store, clock=clock, actions=catalog,
                                verifier=MemoryVerifier(http, stat), policy=policy)
        return await run_with_waits(
            clock, lambda: remediator.drive(opened.incident.incident_id), waits)


async def test_autoscaling_passes_the_scale_over_without_a_strike_to_the_next_action(
    store: Store, engine: IncidentEngine, clock: ManualClock, render: respx.MockRouter
) -> None:
    read = render.get(f"{API}/services/srv-web").mock(
        return_value=service(plan="standard", autoscaling={"enabled": True, "min": 1, "max": 3}))
    scale = render.post(f"{API}/services/srv-web/scale").mock(return_value=httpx.Response(202))
    restart = render.post(f"{API}/services/srv-web/restart").mock(
        return_value=httpx.Response(200))
    health = render.get(HEALTH).mock(return_value=httpx.Response(
        200, json={"status": "HEALTHY", "stats": {"memory_pct": 41.0}}))
    # The scale first, so that passing it over is what leads to the restart.
    incident = await drive(store, engine, clock, kind="memory_high", stat="memory_pct",
                           policy={"memory_high": ("render_scale", "render_restart")},
                           waits=[engine.policy.verify_window])

    assert incident.state == "resolved"
    assert incident.strikes == 0
    assert (read.call_count, scale.call_count, restart.call_count) == (1, 0, 1)
    assert health.call_count == 1  # only the restart was verified
    timeline = await store.timeline(incident.incident_id)
    steps = [(t.trigger, t.dest, t.details.get("action")) for t in timeline.transitions]
    assert steps == [
        ("open", "detected", None),
        ("remediate", "remediating", "render_scale"),
        ("action_finished", "verifying", None),
        ("still_failing", "remediating", "render_restart"),
        ("action_finished", "verifying", None),
        ("recovered", "resolved", None),
    ]
    assert timeline.transitions[2].details["outcome"] == "skipped"
    passed_over = timeline.transitions[3].reason
    assert passed_over.startswith("render_scale did not apply: autoscaling is enabled on "
                                  "srv-web: Render ignores a manual scale; next: render_restart")
    assert [(r.action, r.outcome, r.verified) for r in timeline.actions] == [
        ("render_scale", "skipped", None), ("render_restart", "ok", True)]
    assert timeline.actions[0].evidence["autoscaling"] is True
    # Passing over costs no verify window: the restart ran at once.
    assert timeline.transitions[3].at == timeline.transitions[1].at
    assert await store.count_strikes(incident.incident_id) == 0
    # Nor does it spend the target's action budget: only the restart acted.
    since = timeline.transitions[0].at
    assert await store.count_actions(target=incident.target, since=since) == 1
    assert KEY not in json.dumps([r.evidence for r in timeline.actions])
    assert KEY not in json.dumps([t.details for t in timeline.transitions])


async def test_a_free_plan_scale_is_not_applicable_and_with_nothing_left_it_escalates(
    store: Store, engine: IncidentEngine, clock: ManualClock, render: respx.MockRouter
) -> None:
    render.get(f"{API}/services/srv-web").mock(return_value=service(plan="free"))
    scale = render.post(f"{API}/services/srv-web/scale").mock(return_value=httpx.Response(202))
    health = render.get(HEALTH).mock(return_value=httpx.Response(
        200, json={"stats": {"cpu_pct": 97.0}}))
    incident = await drive(store, engine, clock, kind="cpu_high", stat="cpu_pct", policy=None,
                           waits=[])

    assert incident.state == "escalated"
    assert incident.strikes == 0
    assert (scale.call_count, health.call_count) == (0, 0)
    timeline = await store.timeline(incident.incident_id)
    assert [(r.action, r.outcome, r.verified) for r in timeline.actions] == [
        ("render_scale", "skipped", None)]
    last = timeline.transitions[-1]
    assert (last.trigger, last.dest) == ("still_failing", "escalated")
    assert last.reason == ("render_scale did not apply: srv-web is on the free plan: it cannot "
                           "run more than 1 instance; every action for cpu_high on api was tried")


async def test_a_skip_after_a_strike_adds_none_and_the_next_action_still_runs(
    store: Store, engine: IncidentEngine, clock: ManualClock, render: respx.MockRouter
) -> None:
    restart = render.post(f"{API}/services/srv-web/restart").mock(
        return_value=httpx.Response(200))
    render.get(f"{API}/services/srv-web").mock(return_value=service(numInstances=3))
    health = render.get(HEALTH).mock(return_value=httpx.Response(
        200, json={"stats": {"memory_pct": 91.0}}))
    incident = await drive(store, engine, clock, kind="memory_high", stat="memory_pct",
                           policy={"memory_high": ("render_restart", "render_scale")},
                           waits=[engine.policy.verify_window])

    assert incident.state == "escalated"
    assert incident.strikes == 1  # the restart that did not help; the skip is none
    assert (restart.call_count, health.call_count) == (1, 1)
    timeline = await store.timeline(incident.incident_id)
    assert [(r.action, r.outcome, r.verified) for r in timeline.actions] == [
        ("render_restart", "ok", False), ("render_scale", "skipped", None)]
    assert "already runs 3 instances (max_instances 3)" in timeline.transitions[-1].reason
