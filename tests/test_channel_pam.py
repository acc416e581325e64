"""The PAM channel against a real WebSocket server on loopback that behaves like PAM."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from incident_fsm.channels.base import Outgoing, Status
from incident_fsm.channels.pam import _WS_LOG, PamChannel, pack
from incident_fsm.clock import ManualClock
from incident_fsm.models import IncidentId
from incident_fsm.settings import PamSettings

from .logcapture import captured_logs
from .pam_server import FakePam
from .waiting import eventually, stays

pytestmark = pytest.mark.anyio

TOKEN = "pam-jwt-5ecret-t0ken"
ENV = {"PAM_TOKEN": TOKEN}


def item(n: int, *, incident: int = 1) -> Outgoing:
    return Outgoing(
        notification_id=n, incident_id=IncidentId(incident), channel="pam",
        dedupe_key=f"incident-{incident}-seq-{n}-pam", attempt=1,
        payload={"text": f"🔧 System Alert: note {n}", "event": "action", "level": "warning",
                 "state": "remediating", "target": "api", "kind": "memory_high",
                 "severity": "critical", "action": "render_restart", "outcome": "started"},
    )


def settings_for(pam: FakePam, **overrides: object) -> PamSettings:
    base = PamSettings(url=pam.url, user_id="ops", timeout=2.0, reconnect_initial=1.0,
                       reconnect_max=4.0)
    return replace(base, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def running(channel: PamChannel) -> AsyncIterator[list[int]]:
    """The channel's upkeep in a task group; yields the list `ready()` appends to."""
    readies: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.run, lambda: readies.append(1))
        yield readies
        tg.cancel_scope.cancel()


async def drain(ws: ClientConnection) -> None:
    """Read without ever answering, until the server closes the connection."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()


async def test_the_fake_server_closes_a_client_that_does_not_pong() -> None:
    # The keepalive test below only means something if silence is punished.
    async with FakePam(token=TOKEN, ping_interval=0.05, pong_timeout=0.1) as pam:
        async with connect(f"{pam.url}/api/v1/pam/ws/ops?token={TOKEN}") as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "connection" and first["status"] == "connected"
            with anyio.fail_after(3):
                await drain(ws)
            assert ws.close_code == 1001
        assert pam.closed_for_no_pong == 1


async def test_a_notification_arrives_as_a_system_message_with_its_metadata(
    clock: ManualClock,
) -> None:
    async with FakePam(token=TOKEN) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
        with captured_logs() as logs:
            async with running(channel) as readies:
                await eventually(lambda: channel.connected, what="connect")
                assert readies == [1]
                outcomes = await channel.send([item(1), item(2, incident=2)])
        assert [o.status for o in outcomes] == [Status.DELIVERED, Status.DELIVERED]
        assert pam.paths == ["/api/v1/pam/ws/ops"]
        first, second = pam.system_messages
        assert first["type"] == "system_message"
        assert first["message"] == "🔧 System Alert: note 1"
        assert first["timestamp"] == clock.now().isoformat()
        assert first["metadata"] == {
            "incident_id": 1, "state": "remediating", "target": "api", "kind": "memory_high",
            "severity": "critical", "action": "render_restart", "outcome": "started",
            "event": "action", "level": "warning", "dedupe_key": "incident-1-seq-1-pam",
        }
        assert second["metadata"]["incident_id"] == 2
        assert not [m for m in pam.received if m.get("type") == "chat"]
        sent = [line for line in logs if "📱 Sent notification to PAM: " in line]
        assert len(sent) == 2 and "note 1" in sent[0] and sent[0].startswith("INFO|")


async def test_the_connection_survives_several_ping_rounds(clock: ManualClock) -> None:
    async with FakePam(token=TOKEN, ping_interval=0.05, pong_timeout=0.15) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            await eventually(lambda: pam.pongs >= 5, what="five ping rounds")
            await stays(lambda: channel.connected, duration=0.3, what="connection")
            assert (await channel.send([item(1)]))[0].status is Status.DELIVERED
        assert pam.connections == 1
        assert pam.closed_for_no_pong == 0
        assert pam.pongs >= 5
        assert [m["type"] for m in pam.received] == ["system_message"]


async def test_a_refused_handshake_is_retried_with_backoff_until_pam_is_back(
    clock: ManualClock,
) -> None:
    async with FakePam(token=TOKEN) as pam:
        pam.mode = "refuse"
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV, random=lambda: 1.0)
        with captured_logs() as logs:
            async with running(channel) as readies:
                await eventually(lambda: pam.refused == 1, what="first refusal")
                (outcome,) = await channel.send([item(1)])
                assert outcome.status is Status.UNAVAILABLE
                # backoff 1 s, then 2 s (random=1.0 takes the full delay)
                await eventually(lambda: clock.sleepers == 1, what="backoff wait")
                clock.advance(0.9)
                await stays(lambda: pam.refused == 1, duration=0.1, what="no early retry")
                clock.advance(0.1)
                await eventually(lambda: pam.refused == 2, what="second attempt")
                await eventually(lambda: clock.sleepers == 1, what="backoff wait")
                pam.mode = "up"
                clock.advance(2.0)
                await eventually(lambda: channel.connected, what="reconnect")
                assert readies == [1]
                assert (await channel.send([item(1)]))[0].status is Status.DELIVERED
        warnings = [line for line in logs if line.startswith("WARNING|PAM ")]
        assert len(warnings) == 1 and "HTTP 503" in warnings[0]
        assert channel.failures == 0


async def test_connects_stay_within_five_a_minute(clock: ManualClock) -> None:
    async with FakePam(token=TOKEN) as pam:
        pam.mode = "refuse"
        settings = settings_for(pam, reconnect_initial=0.001, reconnect_max=0.001)
        channel = PamChannel(settings, clock=clock, environ=ENV)
        async with running(channel):
            for _ in range(59):
                await eventually(lambda: clock.sleepers >= 1, what="a wait")
                clock.advance(1.0)
            await eventually(lambda: pam.refused == 5, what="five connects")
            await stays(lambda: pam.refused == 5, duration=0.1, what="the limit")
            clock.advance(2.0)
            await eventually(lambda: pam.refused > 5, what="a connect in the next minute")


async def test_close_4001_stops_the_channel_and_is_reported_once(clock: ManualClock) -> None:
    async with FakePam(token=TOKEN) as pam:
        pam.mode = "auth"
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
        with captured_logs() as logs:
            async with running(channel) as readies:
                await eventually(lambda: channel.failed is not None, what="failure")
                for _ in range(20):
                    clock.advance(60.0)
                    await anyio.sleep(0.01)
                assert pam.connections == 1
                (outcome,) = await channel.send([item(1)])
                assert outcome.status is Status.UNAVAILABLE
                assert "4001" in outcome.error
                # A configuration change is what brings it back.
                pam.mode = "up"
                channel.reconfigure(settings_for(pam, timeout=3.0))
                await eventually(lambda: channel.connected, what="reconnect after reconfigure")
                assert len(readies) == 2  # the refused connection had opened, too
        errors = [line for line in logs if line.startswith("ERROR|")]
        assert len(errors) == 1 and "code 4001" in errors[0]


async def test_a_wrong_token_is_a_final_failure_too(clock: ManualClock) -> None:
    async with FakePam(token=TOKEN) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ={"PAM_TOKEN": "stale"})
        async with running(channel):
            await eventually(lambda: channel.failed is not None, what="failure")
        assert pam.connections == 1 and "4001" in (channel.failed or "")


async def test_a_missing_token_variable_fails_without_connecting(clock: ManualClock) -> None:
    async with FakePam(token=TOKEN) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ={})
        with captured_logs() as logs:
            async with running(channel):
                await eventually(lambda: channel.failed is not None, what="failure")
        assert pam.connections == 0
        assert any("PAM_TOKEN is not set" in line for line in logs if line.startswith("ERROR|"))


async def test_over_the_rate_limit_notifications_share_messages(clock: ManualClock) -> None:
    async with FakePam(token=TOKEN) as pam:
        channel = PamChannel(settings_for(pam, messages_per_minute=3), clock=clock, environ=ENV)
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            outcomes = await channel.send([item(n) for n in range(1, 8)])
            assert [o.status for o in outcomes] == [Status.DELIVERED] * 7
            messages = pam.system_messages
            assert len(messages) == 3
            assert messages[0]["message"].splitlines() == [f"🔧 System Alert: note {n}"
                                                           for n in (1, 2, 3)]
            assert messages[0]["metadata"]["batched"] == 3
            keys = [n["dedupe_key"] for m in messages
                    for n in m["metadata"].get("notifications", [m["metadata"]])]
            assert keys == [f"incident-1-seq-{n}-pam" for n in range(1, 8)]
            assert channel.blocked_for() == pytest.approx(60.0)
            (outcome,) = await channel.send([item(8)])
            assert outcome.status is Status.UNAVAILABLE
            clock.advance(60.0)
            assert channel.blocked_for() == 0.0
            assert (await channel.send([item(8)]))[0].status is Status.DELIVERED
        assert len(pam.system_messages) == 4


def test_pack_uses_one_message_each_while_the_budget_allows() -> None:
    batch = [item(n) for n in range(1, 6)]
    assert [len(g) for g in pack(batch, budget=10)] == [1, 1, 1, 1, 1]
    assert [len(g) for g in pack(batch, budget=2)] == [3, 2]
    assert [len(g) for g in pack(batch, budget=1, per_message=2)] == [2]  # rest waits
    assert pack(batch, budget=0) == []


async def test_a_message_the_server_never_read_is_reported_failed_and_resent(
    clock: ManualClock,
) -> None:
    async with FakePam(token=TOKEN, ping_interval=30.0) as pam:
        settings = settings_for(pam, timeout=0.5)
        channel = PamChannel(settings, clock=clock, environ=ENV, random=lambda: 1.0)
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            pam.freeze()  # the peer vanished: our frames leave, nothing comes back
            (outcome,) = await channel.send([item(1)])
            assert outcome.status is Status.FAILED
            assert "no confirmation" in outcome.error
            pam.kill_connections()  # ...and what it never read is gone
            await eventually(lambda: not channel.connected, what="disconnect")
            await eventually(lambda: clock.sleepers >= 1, what="backoff")
            clock.advance(1.0)
            await eventually(lambda: channel.connected, what="reconnect")
            assert (await channel.send([item(1)]))[0].status is Status.DELIVERED
        assert [m["metadata"]["dedupe_key"] for m in pam.system_messages] == [
            "incident-1-seq-1-pam"]


async def test_the_token_never_reaches_the_logs(clock: ManualClock) -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    _WS_LOG.addHandler(handler)
    _WS_LOG.setLevel(logging.DEBUG)
    try:
        async with FakePam(token=TOKEN, ping_interval=0.05) as pam:
            pam.mode = "refuse"
            channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
            with captured_logs() as logs:
                async with running(channel):
                    await eventually(lambda: pam.refused == 1, what="refusal")
                    pam.mode = "up"
                    await eventually(lambda: clock.sleepers >= 1, what="backoff")
                    clock.advance(5.0)
                    await eventually(lambda: channel.connected, what="connect")
                    await channel.send([item(1)])
                    await eventually(lambda: pam.pongs >= 1, what="a ping round")
                    pam.mode = "auth"
                    channel.reconfigure(settings_for(pam, timeout=3.0))
                    await eventually(lambda: channel.failed is not None, what="4001")
    finally:
        _WS_LOG.removeHandler(handler)
        _WS_LOG.setLevel(logging.NOTSET)
    assert any("token=***" in r for r in records)  # websockets' request line, redacted
    assert any("token=***" in line for line in logs)
    assert any("📱 Sent notification to PAM" in line for line in logs)
    for line in [*logs, *records]:
        assert TOKEN not in line
