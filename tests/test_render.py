"""Render restart and scale (and the failover webhook) against a respx-mocked API.

Every test also checks that the API key never shows up in what we log
(loguru and the standard logging httpx uses) or report. Rate limits run on
the test's virtual clock: a wait is seen as a sleeper on it, then passed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import httpx
import pytest
import respx
from loguru import logger

from incident_fsm.errors import InvalidInput
from incident_fsm.remediation.actions.base import Outcome, OutcomeStatus, Tier
from incident_fsm.remediation.actions.failover import SIGNATURE_HEADER, Failover
from incident_fsm.remediation.actions.http_retry import (
    MAX_ATTEMPTS,
    RateGate,
    backoff,
    ratelimit_remaining,
    ratelimit_reset,
    retry_after,
)
from incident_fsm.remediation.actions.render import (
    RateGates,
    RenderApi,
    RenderRestart,
    RenderScale,
    service_facts,
)
from incident_fsm.settings import FailoverSettings, RenderSettings
from incident_fsm.testing import ManualClock

from .endless_server import EndlessServer
from .support import NOW, context, run_with_waits, wait_until

pytestmark = pytest.mark.anyio

API = "https://api.render.test/v1"
KEY = "rnd_Sup3rS3cretRenderKey"
SETTINGS = RenderSettings(api_url=API, api_key_env="RENDER_API_KEY", min_instances=1,
                          max_instances=3, timeout=10.0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Everything logged during the test; asserts afterwards that the key is not in it."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG",
                      format="{level} {message} {extra} {exception}")
    caplog.set_level(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.remove(sink)
    assert KEY not in "\n".join(lines)
    assert KEY not in caplog.text


@pytest.fixture
async def router() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(base_url=API, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def api() -> AsyncIterator[RenderApi]:
    async with httpx.AsyncClient() as http:
        yield RenderApi(SETTINGS, http=http, environ={"RENDER_API_KEY": KEY})


def restart(api: RenderApi, service_id: str = "srv-web") -> RenderRestart:
    return RenderRestart(api, service_id=service_id, kinds={"memory_high"})


def clean(outcome: Outcome) -> Outcome:
    """The outcome, after checking the key is nowhere in it."""
    assert KEY not in repr(outcome)
    assert KEY not in json.dumps(outcome.record())
    return outcome


async def run_in_virtual_time(clock: ManualClock, action: Any, ctx: Any,
                              waits: list[float]) -> Outcome:
    return await run_with_waits(clock, lambda: action.run(ctx), waits)


@pytest.mark.parametrize("status", [200, 202, 204])  # Render answers 200; any 2xx is success
async def test_restart_success_sends_the_key_only_in_the_header(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str],
    status: int
) -> None:
    route = router.post("/services/srv-web/restart").mock(return_value=httpx.Response(status))
    outcome = clean(await restart(api).run(context(clock)))
    assert outcome.status is OutcomeStatus.OK
    assert outcome.http_status == status
    assert outcome.summary == f"restart of srv-web: requested (HTTP {status})"
    assert outcome.evidence == {"service_id": "srv-web", "attempts": 1}
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"
    # The attempt's key rides along, so what reached the API can be tied to its attempt.
    assert route.calls.last.request.headers["Idempotency-Key"] == context(clock).idempotency_key
    assert route.call_count == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_fails_at_once(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str],
    status: int
) -> None:
    route = router.post("/services/srv-web/restart").mock(
        return_value=httpx.Response(status, json={"message": f"invalid key {KEY}"}))
    outcome = clean(await restart(api).run(context(clock)))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.http_status == status
    assert f"the API key was refused ({status})" in outcome.summary
    assert "invalid key ***" in outcome.output_excerpt  # the echoed key is masked
    assert route.call_count == 1


async def test_an_unknown_service_fails_at_once(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-gone/restart").mock(return_value=httpx.Response(404))
    outcome = clean(await restart(api, "srv-gone").run(context(clock)))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.summary == "restart of srv-gone failed: not found (404)"
    assert route.call_count == 1


async def test_429_waits_as_long_as_retry_after_says(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-web/restart").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(429, headers={
            "Retry-After": format_datetime(NOW + timedelta(seconds=7 + 20), usegmt=True)}),
        httpx.Response(202),
    ])
    outcome = clean(await run_in_virtual_time(clock, restart(api), context(clock), [7, 20]))
    assert outcome.status is OutcomeStatus.OK
    assert outcome.evidence["attempts"] == 3
    assert route.call_count == 3
    assert clock.now() == NOW + timedelta(seconds=27)
    assert any("rate limited (429)" in line for line in captured)


async def test_a_retry_after_past_the_deadline_is_honoured_until_the_deadline(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-web/restart").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "600"}))
    outcome = clean(await run_in_virtual_time(clock, restart(api), context(clock, seconds=300),
                                              [300]))
    assert outcome.status is OutcomeStatus.TIMED_OUT
    assert outcome.summary == ("restart of srv-web failed: rate limited (429); still failing at "
                               "the deadline")
    assert route.call_count == 1
    assert clock.now() == NOW + timedelta(seconds=300)


async def test_503_is_retried_with_backoff_then_succeeds(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-web/restart").mock(side_effect=[
        httpx.Response(503), httpx.Response(502), httpx.Response(202)])
    outcome = clean(await run_in_virtual_time(clock, restart(api), context(clock), [1, 2]))
    assert outcome.status is OutcomeStatus.OK
    assert route.call_count == 3


async def test_timeouts_are_retried_until_the_deadline_then_it_times_out(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-web/restart").mock(
        side_effect=httpx.ReadTimeout("timed out"))
    # Waits 1, 2, 4, 8, 16 s; then 30 s more would pass the 60 s deadline: wait it out.
    outcome = clean(await run_in_virtual_time(clock, restart(api), context(clock, seconds=60),
                                              [1, 2, 4, 8, 16, 29]))
    assert outcome.status is OutcomeStatus.TIMED_OUT
    assert outcome.http_status is None
    assert outcome.summary == ("restart of srv-web failed: request timed out; still failing at "
                               "the deadline")
    assert route.call_count == 6
    assert clock.now() == NOW + timedelta(seconds=60)


async def test_connection_errors_count_like_timeouts(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    router.post("/services/srv-web/restart").mock(side_effect=[
        httpx.ConnectError("refused"), httpx.Response(202)])
    outcome = clean(await run_in_virtual_time(clock, restart(api), context(clock), [1]))
    assert outcome.status is OutcomeStatus.OK


async def test_a_missing_key_fails_without_a_request(
    router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    async with httpx.AsyncClient() as http:
        api = RenderApi(SETTINGS, http=http, environ={})
        outcome = await restart(api).run(context(clock))
    assert outcome.status is OutcomeStatus.FAILED
    assert "env RENDER_API_KEY is not set" in outcome.summary
    assert router.calls.call_count == 0


@pytest.mark.parametrize(
    ("current", "wanted"), [(1, 2), (2, 3), (0, 1)],
)
async def test_scale_adds_one_instance_within_bounds(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str],
    current: int, wanted: int
) -> None:
    router.get("/services/srv-web").mock(return_value=httpx.Response(
        200, json={"id": "srv-web", "serviceDetails": {"numInstances": current}}))
    scale = router.post("/services/srv-web/scale").mock(return_value=httpx.Response(202))
    outcome = clean(await RenderScale(api, service_id="srv-web", kinds=()).run(context(clock)))
    assert outcome.status is OutcomeStatus.OK
    assert json.loads(scale.calls.last.request.content) == {"numInstances": wanted}
    assert outcome.evidence["from_instances"] == current
    assert outcome.evidence["to_instances"] == wanted


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"numInstances": 1, "plan": "standard", "autoscaling": {"enabled": True}},
         "autoscaling is enabled on srv-web: Render ignores a manual scale"),
        ({"numInstances": 1, "plan": "free", "autoscaling": {"enabled": False}},
         "srv-web is on the free plan: it cannot run more than 1 instance"),
        ({"numInstances": 1, "plan": "Free"}, "on the free plan"),
        ({"numInstances": 3}, "srv-web already runs 3 instances (max_instances 3): scaling "
                              "would not add one"),
        ({"numInstances": 5}, "already runs 5 instances"),
    ],
)
async def test_a_scale_that_cannot_help_is_not_applicable_and_sends_no_scale(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str],
    details: dict[str, Any], message: str
) -> None:
    router.get("/services/srv-web").mock(return_value=httpx.Response(
        200, json={"id": "srv-web", "serviceDetails": details}))
    scale = router.post("/services/srv-web/scale").mock(return_value=httpx.Response(202))
    outcome = clean(await RenderScale(api, service_id="srv-web", kinds=()).run(context(clock)))
    assert outcome.status is OutcomeStatus.SKIPPED
    assert message in outcome.summary
    assert outcome.record()["summary"] == outcome.summary  # what the remediator quotes
    assert outcome.evidence["from_instances"] == details["numInstances"]
    assert "to_instances" not in outcome.evidence
    assert scale.call_count == 0


async def test_the_free_plan_may_still_go_from_none_to_one(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    router.get("/services/srv-web").mock(return_value=httpx.Response(
        200, json={"serviceDetails": {"numInstances": 0, "plan": "free"}}))
    scale = router.post("/services/srv-web/scale").mock(return_value=httpx.Response(202))
    outcome = clean(await RenderScale(api, service_id="srv-web", kinds=()).run(context(clock)))
    assert outcome.status is OutcomeStatus.OK
    assert json.loads(scale.calls.last.request.content) == {"numInstances": 1}


async def test_an_answer_without_an_instance_count_is_a_failure(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    router.get("/services/srv-web").mock(return_value=httpx.Response(
        200, json={"serviceDetails": {}}))
    scale = router.post("/services/srv-web/scale").mock(return_value=httpx.Response(202))
    outcome = clean(await RenderScale(api, service_id="srv-web", kinds=()).run(context(clock)))
    assert outcome.status is OutcomeStatus.FAILED
    assert "has no instance count" in outcome.summary
    assert scale.call_count == 0


@pytest.mark.parametrize(("reply", "status", "problem"), [
    (httpx.Response(404), OutcomeStatus.FAILED, "not found (404)"),
    (httpx.Response(403), OutcomeStatus.FAILED, "the API key was refused (403)"),
    (httpx.Response(503), OutcomeStatus.TIMED_OUT, "server error (503); still failing"),
])
async def test_a_failed_read_is_a_failure_never_taken_as_applicable(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str],
    reply: httpx.Response, status: OutcomeStatus, problem: str
) -> None:
    router.get("/services/srv-web").mock(return_value=reply)
    scale = router.post("/services/srv-web/scale").mock(return_value=httpx.Response(202))
    action = RenderScale(api, service_id="srv-web", kinds=())
    waits = [1, 1] if status is OutcomeStatus.TIMED_OUT else []  # back-off 1 s, then the end
    outcome = clean(await run_in_virtual_time(clock, action, context(clock, seconds=2), waits))
    assert outcome.status is status
    assert outcome.summary.startswith("reading the instance count of srv-web failed: ")
    assert problem in outcome.summary
    assert scale.call_count == 0


def test_service_facts_are_read_defensively() -> None:
    facts = service_facts({"serviceDetails": {
        "numInstances": 2, "plan": " Starter ", "autoscaling": {"enabled": True}}})
    assert (facts.instances, facts.autoscaling, facts.plan) == (2, True, "starter")
    for odd in (None, [], "x", {"serviceDetails": "x"},
                {"serviceDetails": {"numInstances": True, "autoscaling": {"enabled": "yes"},
                                    "plan": 3}},
                {"serviceDetails": {"numInstances": -1}}):
        facts = service_facts(odd)
        assert (facts.instances, facts.autoscaling, facts.plan) == (None, False, None)
    assert service_facts({"numInstances": 4}).instances == 4  # older, flat answer


async def test_dry_runs_send_nothing(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    for action in (restart(api), RenderScale(api, service_id="srv-web", kinds=())):
        outcome = await action.run(context(clock, dry_run=True))
        assert outcome.status is OutcomeStatus.OK
        assert outcome.evidence["dry_run"] is True
    assert router.calls.call_count == 0


def test_service_ids_and_bounds_are_checked() -> None:
    http = httpx.AsyncClient()
    api = RenderApi(SETTINGS, http=http, environ={})
    with pytest.raises(InvalidInput, match="not a Render service id"):
        RenderRestart(api, service_id="srv/../../owner", kinds=())
    bad = RenderApi(RenderSettings(min_instances=3, max_instances=2), http=http, environ={})
    with pytest.raises(InvalidInput, match="min_instances"):
        RenderScale(bad, service_id="srv-web", kinds=())


# --- rate limits ------------------------------------------------------------------


def limited(status: int = 200, *, remaining: int, reset: str, limit: int = 30) -> httpx.Response:
    return httpx.Response(status, headers={"Ratelimit-Limit": str(limit),
                                           "Ratelimit-Remaining": str(remaining),
                                           "Ratelimit-Reset": reset})


async def test_a_spent_window_holds_the_next_post_until_it_resets(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-web/restart").mock(side_effect=[
        limited(remaining=0, reset="12"), limited(remaining=29, reset="60")])
    first = clean(await restart(api).run(context(clock)))
    assert first.status is OutcomeStatus.OK and clock.now() == NOW
    # The next POST is not sent until the window resets: 12 s on the test clock.
    results: list[Outcome] = []

    async def second_restart() -> None:
        results.append(await restart(api).run(context(clock)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(second_restart)
        await wait_until(lambda: clock.wakeups() == [NOW + timedelta(seconds=12)])
        assert route.call_count == 1  # held, not sent
        clock.advance(12)
    (second,) = results
    assert clean(second).status is OutcomeStatus.OK
    assert route.call_count == 2
    assert clock.now() == NOW + timedelta(seconds=12)
    assert any("rate limit spent; waiting 12 s" in line for line in captured)


async def test_the_hold_is_shared_by_every_action_using_the_key_on_the_client(
    router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    restarts = router.post("/services/srv-web/restart").mock(
        return_value=limited(remaining=0, reset="20"))
    workers = router.post("/services/srv-worker/restart").mock(return_value=httpx.Response(200))
    reads = router.get("/services/srv-web").mock(return_value=httpx.Response(
        200, json={"serviceDetails": {"numInstances": 1}}))
    async with httpx.AsyncClient() as http:
        web = RenderApi(SETTINGS, http=http, environ={"RENDER_API_KEY": KEY})
        other_target = RenderApi(SETTINGS, http=http, environ={"RENDER_API_KEY": KEY})
        other_key = RenderApi(SETTINGS, http=http, environ={"RENDER_API_KEY": KEY + "2"})
        assert (await restart(web).run(context(clock))).status is OutcomeStatus.OK
        # Another key has its own quota, and GETs have theirs: neither waits.
        assert (await restart(other_key, "srv-worker").run(context(clock))).status is (
            OutcomeStatus.OK)
        read = await other_target.call("GET", "/services/srv-web", ctx=context(clock))
        assert read.ok and clock.now() == NOW
        # The same key from another target's actions waits for the window.
        outcome = clean(await run_with_waits(
            clock, lambda: restart(other_target, "srv-worker").run(context(clock)), [20]))
    assert outcome.status is OutcomeStatus.OK
    assert (restarts.call_count, workers.call_count, reads.call_count) == (1, 2, 1)
    assert clock.now() == NOW + timedelta(seconds=20)


async def test_a_window_resetting_after_the_deadline_sends_nothing_and_times_out(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-web/restart").mock(
        return_value=limited(remaining=0, reset="50"))
    await restart(api).run(context(clock))
    outcome = clean(await run_in_virtual_time(clock, restart(api), context(clock, seconds=30),
                                              [30]))
    assert outcome.status is OutcomeStatus.TIMED_OUT
    assert outcome.summary == ("restart of srv-web failed: rate limit spent: the window resets "
                               "in 50 s; still failing at the deadline")
    assert route.call_count == 1
    assert clock.now() == NOW + timedelta(seconds=30)


async def test_a_429_without_retry_after_waits_for_ratelimit_reset(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-web/restart").mock(side_effect=[
        limited(429, remaining=0, reset="9"), httpx.Response(200)])
    outcome = clean(await run_in_virtual_time(clock, restart(api), context(clock), [9]))
    assert outcome.status is OutcomeStatus.OK
    assert outcome.evidence["attempts"] == 2 and route.call_count == 2
    assert clock.now() == NOW + timedelta(seconds=9)


async def test_a_429_holds_the_other_actions_on_the_key_too(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    router.post("/services/srv-web/restart").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "15"}), httpx.Response(200)])
    worker = router.post("/services/srv-worker/restart").mock(return_value=httpx.Response(200))
    ctx = context(clock)

    async def both() -> tuple[Outcome, Outcome]:
        web = await restart(api).run(ctx)
        return web, await restart(api, "srv-worker").run(ctx)

    # The first waits out its Retry-After; the second then finds the window open.
    web, other = await run_with_waits(clock, both, [15])
    assert web.status is other.status is OutcomeStatus.OK
    assert worker.call_count == 1 and clock.now() == NOW + timedelta(seconds=15)


async def test_429s_are_retried_a_bounded_number_of_times(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    route = router.post("/services/srv-web/restart").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "0"}))
    outcome = clean(await restart(api).run(context(clock)))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.summary.endswith(f"rate limited (429); gave up after {MAX_ATTEMPTS} attempts")
    assert route.call_count == MAX_ATTEMPTS


#: The most a Render answer may hold; more is a failure, never read on.
RENDER_BOUND = 1024 * 1024


def oversized_answer(shape: str, pulled: list[int]) -> httpx.Response:
    """An answer over the bound: declared, streamed without a length, endless, or inflating."""
    filler = b'{"message": "' + KEY.encode() + b'", "pad": "' + b"x" * (2 * RENDER_BOUND)

    async def chunks(total: float) -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            pulled.append(1)
            sent += 65536
            yield b"y" * 65536

    if shape == "declared":
        return httpx.Response(200, content=filler)
    if shape == "streamed":
        return httpx.Response(200, content=chunks(2 * RENDER_BOUND))
    if shape == "endless":
        return httpx.Response(200, content=chunks(math.inf))
    # 16 MiB inflating from about 16 KiB: small on the wire, not in memory.
    return httpx.Response(200, content=zlib.compress(b" " * (16 * RENDER_BOUND)),
                          headers={"Content-Encoding": "deflate"})


@pytest.mark.parametrize("shape", ["declared", "streamed", "endless", "deflate_bomb"])
async def test_an_oversized_answer_is_a_failure_that_never_includes_the_body(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str],
    shape: str
) -> None:
    pulled: list[int] = []
    route = router.post("/services/srv-web/restart").mock(
        return_value=oversized_answer(shape, pulled))
    with anyio.fail_after(10):
        outcome = clean(await restart(api).run(context(clock)))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.summary == (f"restart of srv-web failed: response larger than {RENDER_BOUND} "
                               "bytes (HTTP 200)")
    assert outcome.http_status == 200
    assert not outcome.output_excerpt
    assert "xxxx" not in repr(outcome.record()) and "yyyy" not in repr(outcome.record())
    assert route.call_count == 1  # not retried: the same peer would send the same again
    assert len(pulled) <= RENDER_BOUND // 65536 + 2  # stopped at the bound


async def test_an_oversized_read_is_a_failure_never_taken_as_applicable(
    api: RenderApi, router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    router.get("/services/srv-web").mock(return_value=oversized_answer("endless", []))
    scale = router.post("/services/srv-web/scale").mock(return_value=httpx.Response(200))
    outcome = clean(await RenderScale(api, service_id="srv-web", kinds={"x"}).run(context(clock)))
    assert outcome.status is OutcomeStatus.FAILED
    assert f"response larger than {RENDER_BOUND} bytes" in outcome.summary
    assert scale.call_count == 0


async def test_an_endless_answer_from_a_real_server_is_cut_off_at_the_bound(
    clock: ManualClock, captured: list[str]
) -> None:
    with EndlessServer() as server:
        settings = RenderSettings(api_url=server.base_url + "/v1", api_key_env="RENDER_API_KEY",
                                  timeout=10.0)
        async with httpx.AsyncClient() as http:
            api = RenderApi(settings, http=http, environ={"RENDER_API_KEY": KEY})
            tracemalloc.start()
            try:
                with anyio.fail_after(5):
                    outcome = clean(await restart(api).run(context(clock)))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    assert outcome.status is OutcomeStatus.FAILED
    assert f"response larger than {RENDER_BOUND} bytes" in outcome.summary
    assert server.requests == 1
    assert peak < 8 * RENDER_BOUND, peak  # the bound, plus chunks in flight


async def test_a_trickling_answer_is_bounded_in_time_too(
    router: respx.MockRouter, clock: ManualClock, captured: list[str]
) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        while True:  # every read is quick, the whole never ends
            await anyio.sleep(0.02)
            yield b" "

    router.post("/services/srv-web/restart").mock(return_value=httpx.Response(200,
                                                                             content=trickle()))
    settings = replace(SETTINGS, timeout=0.3)
    async with httpx.AsyncClient() as http:
        api = RenderApi(settings, http=http, environ={"RENDER_API_KEY": KEY})
        with anyio.fail_after(10):
            outcome = clean(await run_in_virtual_time(clock, restart(api),
                                                      context(clock, seconds=1), [1]))
    assert outcome.status is OutcomeStatus.TIMED_OUT
    assert outcome.summary == ("restart of srv-web failed: request timed out; still failing at "
                               "the deadline")


def test_ratelimit_headers_are_read_defensively() -> None:
    def answer(**headers: str) -> httpx.Response:
        return httpx.Response(200, headers=headers)

    assert ratelimit_reset(answer(**{"Ratelimit-Reset": "12"}), NOW) == 12.0
    assert ratelimit_reset(answer(**{"Ratelimit-Reset": str(int(NOW.timestamp()) + 40)}),
                           NOW) == 40.0  # a Unix time, as some APIs send
    for odd in ("-3", "soon", "nan", "inf", ""):
        value = ratelimit_reset(answer(**{"Ratelimit-Reset": odd}), NOW)
        assert value in (None, 0.0), odd
    assert ratelimit_reset(answer(), NOW) is None
    assert ratelimit_remaining(answer(**{"Ratelimit-Remaining": "0"})) == 0
    assert ratelimit_remaining(answer(**{"Ratelimit-Remaining": "many"})) is None

    gate = RateGate()
    gate.observe(limited(remaining=3, reset="30"), NOW)
    assert gate.hold(NOW) == 0.0  # quota left: go
    gate.observe(limited(remaining=0, reset="30"), NOW)
    gate.observe(limited(remaining=5, reset="60"), NOW)  # sent earlier: the hold stands
    assert gate.hold(NOW + timedelta(seconds=10)) == 20.0
    assert gate.hold(NOW + timedelta(seconds=31)) == 0.0


def test_gates_are_per_key_and_kind_and_never_hold_the_key() -> None:
    gates = RateGates()
    post = gates.gate(api_url=API, key=KEY, method="POST")
    assert gates.gate(api_url=API, key=KEY, method="post") is post
    assert gates.gate(api_url=API, key=KEY, method="GET") is not post
    assert gates.gate(api_url=API, key="other", method="POST") is not post
    assert KEY not in repr(vars(gates))


def test_retry_after_and_backoff() -> None:
    def answer(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    assert retry_after(answer("12"), NOW) == 12.0
    assert retry_after(answer(format_datetime(NOW + timedelta(seconds=90), usegmt=True)),
                       NOW) == 90.0
    assert retry_after(answer("-5"), NOW) == 0.0
    assert retry_after(answer("soon"), NOW) is None
    assert retry_after(httpx.Response(429), NOW) is None
    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


async def test_failover_webhook_is_signed_and_carries_the_idempotency_key(
    clock: ManualClock, captured: list[str]
) -> None:
    secret = "whsec-failover-0123456789"
    settings = FailoverSettings(url="https://hooks.example.test/failover",
                                secret_env="FAILOVER_SECRET")
    async with respx.mock() as mock, httpx.AsyncClient() as http:
        route = mock.post("https://hooks.example.test/failover").mock(
            return_value=httpx.Response(200))
        action = Failover(settings, http=http, environ={"FAILOVER_SECRET": secret})
        assert action.tier is Tier.APPROVAL
        outcome = await action.run(context(clock, kind="health_endpoint_down"))
    assert outcome.status is OutcomeStatus.OK
    request = route.calls.last.request
    body = request.content
    assert json.loads(body)["idempotency_key"] == "incident-7-attempt-1"
    assert request.headers["Idempotency-Key"] == "incident-7-attempt-1"
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert request.headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert secret not in repr(outcome) and secret not in "\n".join(captured)


def test_failover_needs_exactly_one_of_url_and_argv() -> None:
    http = httpx.AsyncClient()
    with pytest.raises(InvalidInput, match="exactly one"):
        Failover(FailoverSettings(), http=http, environ={})
    with pytest.raises(InvalidInput, match="exactly one"):
        Failover(FailoverSettings(url="https://x.test", argv=("/bin/true",)), http=http,
                 environ={})


async def test_failover_command_runs_the_configured_argv(clock: ManualClock) -> None:
    async with httpx.AsyncClient() as http:
        action = Failover(FailoverSettings(argv=("/bin/echo", "promoted standby")), http=http,
                          environ={})
        outcome = await action.run(context(clock))
    assert outcome.status is OutcomeStatus.OK
    assert outcome.output_excerpt == "promoted standby"
