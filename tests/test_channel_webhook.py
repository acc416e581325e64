"""The webhook channel: signed JSON POSTs, 2xx delivered, 429 Retry-After, failures reported."""

from __future__ import annotations

import hashlib
import hmac
import json
import tracemalloc
from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import format_datetime

import anyio
import httpx
import pytest
import respx

from incident_fsm.models import IncidentId
from incident_fsm.notify.channels.base import DeliveryStatus, Outgoing
from incident_fsm.notify.channels.webhook import (
    DEDUPE_HEADER,
    SIGNATURE_HEADER,
    WebhookChannel,
    safe_url,
)
from incident_fsm.settings import WebhookSettings
from incident_fsm.testing import ManualClock

from .endless_server import EndlessServer
from .logcapture import captured_logs

pytestmark = pytest.mark.anyio

URL = "https://hooks.test/incidents"
SECRET = "whsec-very-secret-value"
SETTINGS = WebhookSettings(url=URL, secret_env="WEBHOOK_SECRET", timeout=2.0)
ENV = {"WEBHOOK_SECRET": SECRET}


def item(n: int) -> Outgoing:
    return Outgoing(notification_id=n, incident_id=IncidentId(3), channel="webhook",
                    dedupe_key=f"incident-3-seq-{n}-webhook", attempt=1,
                    payload={"text": f"✅ System Recovery: note {n}", "state": "resolved"})


def verify(request: httpx.Request) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), request.content, hashlib.sha256).hexdigest()
    return hmac.compare_digest(request.headers[SIGNATURE_HEADER], expected)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def channel(client: httpx.AsyncClient, clock: ManualClock) -> WebhookChannel:
    return WebhookChannel(SETTINGS, client=client, clock=clock, environ=ENV)


@respx.mock
async def test_the_body_is_signed_and_a_2xx_is_delivered(channel: WebhookChannel) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(204))
    outcomes = await channel.send([item(1)])
    assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED]
    request = route.calls.last.request
    assert verify(request)
    assert request.headers[DEDUPE_HEADER] == "incident-3-seq-1-webhook"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "incident_id": 3, "dedupe_key": "incident-3-seq-1-webhook",
        "text": "✅ System Recovery: note 1", "state": "resolved"}


@respx.mock
async def test_a_tampered_body_does_not_verify(channel: WebhookChannel) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(200))
    await channel.send([item(1)])
    request = route.calls.last.request
    forged = httpx.Request("POST", URL, headers=request.headers,
                           content=request.content.replace(b"note 1", b"note 2"))
    assert not verify(forged)


@respx.mock
async def test_429_reports_its_retry_after_in_seconds_or_as_a_date(
    channel: WebhookChannel, clock: ManualClock,
) -> None:
    when = format_datetime(clock.now() + timedelta(seconds=90), usegmt=True)
    respx.post(URL).mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "120"}),
        httpx.Response(429, headers={"Retry-After": when}),
        httpx.Response(429),
    ])
    for expected in (120.0, 90.0, None):
        (outcome,) = await channel.send([item(1)])
        assert outcome.status is DeliveryStatus.FAILED
        assert outcome.retry_after == expected
        assert outcome.error == "webhook https://hooks.test/incidents answered HTTP 429"


@respx.mock
async def test_the_first_failure_stops_the_batch(channel: WebhookChannel) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(200), httpx.Response(500)])
    outcomes = await channel.send([item(1), item(2), item(3)])
    assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED, DeliveryStatus.FAILED]
    assert outcomes[1].error.endswith("answered HTTP 500")
    assert route.call_count == 2  # item 3 was not attempted


@respx.mock
async def test_timeouts_and_transport_errors_are_failures(channel: WebhookChannel) -> None:
    respx.post(URL).mock(side_effect=[httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])
    (first,) = await channel.send([item(1)])
    (second,) = await channel.send([item(1)])
    assert first.status is second.status is DeliveryStatus.FAILED
    assert "timed out after 2 s" in first.error
    assert "unreachable (ConnectError)" in second.error


@respx.mock
async def test_a_missing_secret_keeps_rows_queued_and_is_reported_once(
    client: httpx.AsyncClient, clock: ManualClock,
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(200))
    channel = WebhookChannel(SETTINGS, client=client, clock=clock, environ={})
    with captured_logs() as logs:
        for _ in range(3):
            (outcome,) = await channel.send([item(1)])
            assert outcome.status is DeliveryStatus.UNAVAILABLE
    assert route.call_count == 0  # never unsigned
    assert len([line for line in logs if line.startswith("ERROR|")]) == 1


@respx.mock
async def test_without_a_secret_setting_requests_go_unsigned(
    client: httpx.AsyncClient, clock: ManualClock,
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(200))
    channel = WebhookChannel(WebhookSettings(url=URL), client=client, clock=clock, environ={})
    assert (await channel.send([item(1)]))[0].status is DeliveryStatus.DELIVERED
    assert SIGNATURE_HEADER not in route.calls.last.request.headers


def test_urls_are_logged_without_credentials_or_query() -> None:
    assert safe_url("https://user:pw@hooks.test:8443/in?key=abc#x") == "https://hooks.test:8443/in"


#: The most of a webhook answer that is read; its body is never needed.
WEBHOOK_BOUND = 64 * 1024


@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("declared", [True, False])
@respx.mock
async def test_an_oversized_answer_is_a_failure_without_its_body(
    channel: WebhookChannel, status: int, declared: bool
) -> None:
    pulled: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            pulled.append(1)
            yield b"z" * 4096

    content = b"z" * (2 * WEBHOOK_BOUND) if declared else endless()
    route = respx.post(URL).mock(return_value=httpx.Response(status, content=content))
    with anyio.fail_after(10):
        (outcome,) = await channel.send([item(1)])
    assert outcome.status is DeliveryStatus.FAILED
    assert outcome.error == (f"webhook https://hooks.test/incidents answered HTTP {status} with "
                             f"a response larger than {WEBHOOK_BOUND} bytes")
    assert "zzzz" not in repr(outcome)
    assert route.call_count == 1
    assert len(pulled) <= WEBHOOK_BOUND // 4096 + 2  # stopped at the bound


async def test_an_endless_answer_from_a_real_server_is_cut_off_at_the_bound(
    client: httpx.AsyncClient, clock: ManualClock,
) -> None:
    with EndlessServer() as server:
        settings = WebhookSettings(url=server.base_url + "/hook", timeout=5.0)
        channel = WebhookChannel(settings, client=client, clock=clock, environ={})
        tracemalloc.start()
        try:
            with anyio.fail_after(5):
                (outcome,) = await channel.send([item(1)])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert outcome.status is DeliveryStatus.FAILED
    assert f"a response larger than {WEBHOOK_BOUND} bytes" in outcome.error
    assert server.requests == 1
    assert peak < 4 * 1024 * 1024, peak


@respx.mock
async def test_a_trickling_answer_times_out(
    client: httpx.AsyncClient, clock: ManualClock,
) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        while True:  # every read is quick, the whole never ends
            await anyio.sleep(0.02)
            yield b" "

    respx.post(URL).mock(return_value=httpx.Response(200, content=trickle()))
    channel = WebhookChannel(WebhookSettings(url=URL, timeout=0.3), client=client, clock=clock,
                             environ={})
    with anyio.fail_after(10):
        (outcome,) = await channel.send([item(1)])
    assert outcome.status is DeliveryStatus.FAILED
    assert outcome.error == "webhook https://hooks.test/incidents timed out after 0.3 s"
