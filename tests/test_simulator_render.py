"""The simulator's Render API: realistic service reads, 200 restarts, per-key rate limits.

The last test runs the real actions against it on the wall clock, with a
window short enough to wait out: the agent holds its next POST instead of
running into a 429.
"""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest

from incident_fsm.clock import SystemClock
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.remediation.actions.base import ActionContext, OutcomeStatus
from incident_fsm.remediation.actions.render import RenderApi, RenderRestart, RenderScale
from incident_fsm.settings import RenderSettings

from .support import incident

pytestmark = pytest.mark.anyio
KEY = {"Authorization": "Bearer rnd_simulated"}
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


async def test_a_service_read_looks_like_renders() -> None:
    state = ServiceState(instances=2, render_plans={"srv-worker": "starter"},
                         render_autoscaling={"srv-worker"})
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.render_api_url) as client:
        web = (await client.get("/services/srv-web", headers=KEY)).json()
        worker = (await client.get("/services/srv-worker", headers=KEY)).json()
    assert (web["id"], web["type"]) == ("srv-web", "web_service")
    details = web["serviceDetails"]
    assert (details["numInstances"], details["plan"], details["autoscaling"]["enabled"]) == (
        2, "standard", False)
    details = worker["serviceDetails"]
    assert (worker["type"], details["plan"], details["autoscaling"]["enabled"]) == (
        "background_worker", "starter", True)


async def test_every_render_answer_carries_the_rate_limit_headers() -> None:
    async with Simulator() as sim, httpx.AsyncClient(base_url=sim.render_api_url) as client:
        answers = [
            await client.post("/services/srv-web/restart", headers=KEY),
            await client.post("/services/srv-web/restart", headers=KEY),
            await client.get("/services/srv-web", headers=KEY),
            await client.get("/services/srv-nope", headers=KEY),
            await client.post("/services/srv-web/restart"),  # no key: 401
        ]
        health = await client.get(f"{sim.base_url}/health")
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 401]
    for answer in answers:
        assert all(h in answer.headers for h in RATE_HEADERS), answer.headers
    assert [(a.headers["ratelimit-limit"], a.headers["ratelimit-remaining"])
            for a in answers[:4]] == [("30", "29"), ("30", "28"), ("400", "399"), ("400", "398")]
    assert 1 <= int(answers[0].headers["ratelimit-reset"]) <= 60
    assert "ratelimit-limit" not in health.headers  # only Render's answers


async def test_a_key_over_its_post_quota_gets_429_and_changes_nothing() -> None:
    state = ServiceState(leaked_memory_pct=30.0, render_post_limit=2)
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.render_api_url) as client:
        statuses = [(await client.post("/services/srv-worker/restart", headers=KEY)).status_code
                    for _ in range(2)]
        over = await client.post("/services/srv-web/restart", headers=KEY)
        read = await client.get("/services/srv-web", headers=KEY)  # GETs have their own quota
    assert statuses == [200, 200]
    assert over.status_code == 429
    assert over.headers["ratelimit-remaining"] == "0"
    assert over.headers["retry-after"] == over.headers["ratelimit-reset"]
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert state.leaked_memory_pct == 30.0  # the refused restart did nothing
    assert state.render_throttled == 1
    assert read.status_code == 200
    assert state.requests["POST /v1/services/srv-web/restart"] == 1  # still counted


async def test_scaling_is_ignored_while_autoscaling_and_refused_above_one_on_free() -> None:
    state = ServiceState(render_autoscaling={"srv-web"})
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.render_api_url) as client:
        ignored = await client.post("/services/srv-web/scale", headers=KEY,
                                    json={"numInstances": 3})
        assert (ignored.status_code, state.instances) == (202, 1)
        state.render_autoscaling.clear()
        state.render_plans["srv-web"] = "free"
        refused = await client.post("/services/srv-web/scale", headers=KEY,
                                    json={"numInstances": 2})
        assert (refused.status_code, state.instances) == (400, 1)


def api_for(sim: Simulator, http: httpx.AsyncClient) -> RenderApi:
    settings = RenderSettings(api_url=sim.render_api_url, timeout=5.0, max_instances=3)
    return RenderApi(settings, http=http, environ={"RENDER_API_KEY": "rnd_simulated"})


def ctx(seconds: float = 30.0) -> ActionContext:
    clock = SystemClock()
    return ActionContext(incident=incident(kind="memory_high"), idempotency_key="k",
                         deadline=clock.now() + timedelta(seconds=seconds), clock=clock)


async def test_the_actions_wait_out_a_spent_window_instead_of_hitting_429() -> None:
    state = ServiceState(render_post_limit=1, render_window=1.0)
    async with Simulator(state) as sim, httpx.AsyncClient() as http:
        api = api_for(sim, http)
        first = await RenderRestart(api, service_id="srv-web", kinds=()).run(ctx())
        started = time.monotonic()
        second = await RenderRestart(api, service_id="srv-worker", kinds=(),
                                     name="restart_celery_workers").run(ctx())
        waited = time.monotonic() - started
    assert (first.status, second.status) == (OutcomeStatus.OK, OutcomeStatus.OK)
    assert second.http_status == 200
    assert 0.5 <= waited <= 3.0, waited  # `Ratelimit-Reset: 1`, honoured
    assert state.render_throttled == 0  # never ran into the limit


async def test_the_scale_reads_the_simulated_service_and_passes_over_autoscaling() -> None:
    state = ServiceState(render_autoscaling={"srv-web"})
    async with Simulator(state) as sim, httpx.AsyncClient() as http:
        outcome = await RenderScale(api_for(sim, http), service_id="srv-web", kinds=()).run(ctx())
        state.render_autoscaling.clear()
        scaled = await RenderScale(api_for(sim, http), service_id="srv-web", kinds=()).run(ctx())
    assert outcome.status is OutcomeStatus.SKIPPED
    assert outcome.summary == "autoscaling is enabled on srv-web: Render ignores a manual scale"
    assert scaled.status is OutcomeStatus.OK and state.instances == 2
    assert state.requests["POST /v1/services/srv-web/scale"] == 1
