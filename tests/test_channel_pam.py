"""The PAM channel against a real WebSocket server on loopback that behaves like PAM.

`FakePam` answers `system_message` with an error, as PAM's real socket does;
tests that need a PAM which takes notifications say so with `accepts=ACCEPTS`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from incident_fsm.models import IncidentId
from incident_fsm.notify.channels.base import DeliveryStatus, Outgoing
from incident_fsm.notify.channels.pam import _WS_LOG, PamChannel
from incident_fsm.notify.channels.pam_frames import MAX_TEXT, PONG_RESERVE, pack
from incident_fsm.settings import PamSettings
from incident_fsm.testing import ManualClock

from .logcapture import captured_logs
from .pam_server import ACCEPTS, FakePam
from .waiting import eventually, stays

pytestmark = pytest.mark.anyio

TOKEN = "pam-jwt-5ecret-t0ken"
ENV = {"PAM_TOKEN": TOKEN}


def item(n: int, *, incident: int = 1, text: str | None = None) -> Outgoing:
    return Outgoing(
        notification_id=n, incident_id=IncidentId(incident), channel="pam",
        dedupe_key=f"incident-{incident}-seq-{n}-pam", attempt=1,
        payload={"text": text or f"🔧 System Alert: note {n}", "event": "action",
                 "level": "warning",
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
    async with FakePam(token=TOKEN, ping_interval=0.05, heartbeat_interval=0.04,
                       pong_timeout=0.3) as pam:
        async with connect(f"{pam.url}/api/v1/pam/ws/ops?token={TOKEN}") as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "connection" and first["status"] == "connected"
            pings = [json.loads(await ws.recv()) for _ in range(4)]
            with anyio.fail_after(3):
                await drain(ws)
            assert ws.close_code == 1001
        assert pam.closed_for_no_pong == 1
    # Both of PAM's ping streams: ISO time and a number; float time and a connection id.
    assert {p["type"] for p in pings} == {"ping"}
    numbered = [p for p in pings if "ping_number" in p]
    beats = [p for p in pings if "connection_id" in p]
    assert numbered and isinstance(numbered[0]["timestamp"], str)
    assert beats and isinstance(beats[0]["timestamp"], float)


async def test_the_fake_server_answers_unknown_types_and_enforces_its_rate_limit() -> None:
    async with FakePam(token=TOKEN, rate_limit=10) as pam:
        async with connect(f"{pam.url}/api/v1/pam/ws/ops?token={TOKEN}") as ws:
            await ws.recv()  # connected
            await ws.send(json.dumps({"type": "system_message", "message": "hello"}))
            assert json.loads(await ws.recv()) == {
                "type": "error", "message": "Unknown message type: system_message"}
            for _ in range(14):
                await ws.send(json.dumps({"type": "context_update", "context": {}}))
            with anyio.fail_after(3):
                replies = []
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        replies.append(json.loads(await ws.recv()))
            assert ws.close_code == 4008
        assert [r["message"] for r in replies] == ["Rate limit exceeded"] * 5
        assert pam.accepted == [] and pam.closed_for_rate == 1


async def test_a_pam_that_takes_system_messages_gets_each_with_its_metadata(
    clock: ManualClock,
) -> None:
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
        with captured_logs() as logs:
            async with running(channel) as readies:
                await eventually(lambda: channel.connected, what="connect")
                assert readies == [1]
                outcomes = await channel.send([item(1), item(2, incident=2)])
        assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED, DeliveryStatus.DELIVERED]
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
        assert pam.accepted == [first, second]
        assert not [m for m in pam.received if m.get("type") == "chat"]
        sent = [line for line in logs if "📱 Sent notification to PAM: " in line]
        assert len(sent) == 2 and "note 1" in sent[0] and sent[0].startswith("INFO|")
        assert channel.delivery_rate == 1.0


async def test_pam_answering_error_means_nothing_was_delivered(clock: ManualClock) -> None:
    # PAM's real socket: system_message is an unknown type, answered with an error.
    async with FakePam(token=TOKEN) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
        with captured_logs() as logs:
            async with running(channel):
                await eventually(lambda: channel.connected, what="connect")
                outcomes = await channel.send([item(1), item(2)])
        (outcome,) = outcomes  # stopped at the first failure: the second was not attempted
        assert outcome.status is DeliveryStatus.FAILED
        assert outcome.error == "PAM answered with an error: Unknown message type: system_message"
        assert channel.last_error == "Unknown message type: system_message"
        assert channel.delivered == 0 and channel.delivery_rate == 0.0
        assert pam.accepted == [] and len(pam.rejected) == 1
        assert not [line for line in logs if "📱 Sent notification to PAM" in line]
        assert any(line.startswith("WARNING|PAM did not take 1 notification") for line in logs)


async def test_a_pam_that_never_answers_the_probe_is_judged_by_the_protocol_pong(
    clock: ManualClock,
) -> None:
    # A server that answers neither error nor pong: the protocol pong plus the reply window.
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        pam.answers_ping = False
        channel = PamChannel(settings_for(pam, reply_window=0.2), clock=clock, environ=ENV)
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            started = anyio.current_time()
            (outcome,) = await channel.send([item(1)])
            took = anyio.current_time() - started
            assert outcome.status is DeliveryStatus.DELIVERED
            assert 0.2 <= took < 1.5  # the reply window, well inside the 2 s timeout
            pam.accepts = frozenset()  # now it rejects: the error comes inside the window
            (outcome,) = await channel.send([item(2)])
            assert outcome.status is DeliveryStatus.FAILED
            assert "Unknown message type" in outcome.error


async def test_the_connection_survives_several_ping_rounds(clock: ManualClock) -> None:
    async with FakePam(token=TOKEN, ping_interval=0.05, heartbeat_interval=0.04,
                       pong_timeout=0.15, accepts=ACCEPTS) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            await eventually(lambda: pam.pongs >= 5 and pam.heartbeats >= 2,
                             what="five ping rounds of both streams")
            await stays(lambda: channel.connected, duration=0.3, what="connection")
            assert (await channel.send([item(1)]))[0].status is DeliveryStatus.DELIVERED
        assert pam.connections == 1
        assert pam.closed_for_no_pong == 0
        assert pam.pongs >= 5
        assert [m["type"] for m in pam.received] == ["system_message", "ping"]  # frame, probe


async def test_a_refused_handshake_is_retried_with_backoff_until_pam_is_back(
    clock: ManualClock,
) -> None:
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        pam.mode = "refuse"
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV, random=lambda: 1.0)
        with captured_logs() as logs:
            async with running(channel) as readies:
                await eventually(lambda: pam.refused == 1, what="first refusal")
                (outcome,) = await channel.send([item(1)])
                assert outcome.status is DeliveryStatus.UNAVAILABLE
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
                assert (await channel.send([item(1)]))[0].status is DeliveryStatus.DELIVERED
        warnings = [line for line in logs if line.startswith("WARNING|PAM ")]
        assert len(warnings) == 1 and "HTTP 503" in warnings[0]
        assert channel.failures == 0


async def test_reconnects_are_not_held_to_five_a_minute(clock: ManualClock) -> None:
    # PAM does not limit connects; only the backoff spaces them.
    async with FakePam(token=TOKEN) as pam:
        pam.mode = "refuse"
        settings = settings_for(pam, reconnect_initial=0.001, reconnect_max=0.001)
        channel = PamChannel(settings, clock=clock, environ=ENV)
        async with running(channel):
            for _ in range(9):
                await eventually(lambda: clock.sleepers >= 1, what="a wait")
                clock.advance(0.001)
            await eventually(lambda: pam.refused >= 9, what="nine connects within a second")


async def test_close_4001_at_the_first_connect_stops_the_channel_and_is_reported_once(
    clock: ManualClock,
) -> None:
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
                assert outcome.status is DeliveryStatus.UNAVAILABLE
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
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        # 12 frames a minute, 6 kept for pongs: room for 3 notification frames and their probes
        channel = PamChannel(settings_for(pam, messages_per_minute=12), clock=clock, environ=ENV)
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            outcomes = await channel.send([item(n) for n in range(1, 8)])
            assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED] * 7
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
            assert outcome.status is DeliveryStatus.UNAVAILABLE
            clock.advance(60.0)
            assert channel.blocked_for() == 0.0
            assert (await channel.send([item(8)]))[0].status is DeliveryStatus.DELIVERED
        assert len(pam.system_messages) == 4


def test_pack_uses_one_message_each_while_the_budget_allows() -> None:
    batch = [item(n) for n in range(1, 6)]
    assert [len(g) for g in pack(batch, budget=10)] == [1, 1, 1, 1, 1]
    assert [len(g) for g in pack(batch, budget=2)] == [3, 2]
    assert [len(g) for g in pack(batch, budget=1, per_message=2)] == [2]  # rest waits
    assert pack(batch, budget=0) == []
    # A shared message stays within PAM's 2,000 characters.
    long = [item(n, text="x" * 900) for n in range(1, 6)]
    assert [len(g) for g in pack(long, budget=2)] == [2, 2]  # the fifth waits


async def test_messages_over_2000_characters_are_cut(clock: ManualClock) -> None:
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            (outcome,) = await channel.send([item(1, text="⚠️ " + "y" * 5000)])
        assert outcome.status is DeliveryStatus.DELIVERED
        (message,) = pam.accepted
        assert len(message["message"]) == MAX_TEXT == 2000
        assert message["message"].startswith("⚠️ yyy") and message["message"].endswith("…")


async def test_the_rate_limit_of_60_a_minute_is_respected(clock: ManualClock) -> None:
    # PAM's real limit; every frame counts on the server, pongs and probes too.
    async with FakePam(token=TOKEN, accepts=ACCEPTS, ping_interval=0.05,
                       heartbeat_interval=0.05) as pam:
        channel = PamChannel(settings_for(pam), clock=clock, environ=ENV)
        assert channel._settings.messages_per_minute == 60
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            statuses = [(await channel.send([item(n)]))[0].status for n in range(1, 41)]
            await eventually(lambda: pam.pongs >= PONG_RESERVE, what="pongs to the pings")
        delivered = statuses.count(DeliveryStatus.DELIVERED)
        assert delivered == (60 - PONG_RESERVE) // 2 == 27
        assert set(statuses[delivered:]) == {DeliveryStatus.UNAVAILABLE}
        assert len(pam.accepted) == delivered
        assert pam.closed_for_rate == 0 and not [r for r in pam.rejected if "Rate" in r[1]]


async def test_a_message_the_server_never_read_is_reported_failed_and_resent(
    clock: ManualClock,
) -> None:
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        settings = settings_for(pam, timeout=0.5, reply_window=0.5)
        channel = PamChannel(settings, clock=clock, environ=ENV, random=lambda: 1.0)
        async with running(channel):
            await eventually(lambda: channel.connected, what="connect")
            pam.freeze()  # the peer vanished: our frames leave, nothing comes back
            (outcome,) = await channel.send([item(1)])
            assert outcome.status is DeliveryStatus.FAILED
            assert "no confirmation" in outcome.error
            pam.kill_connections()  # ...and what it never read is gone
            await eventually(lambda: not channel.connected, what="disconnect")
            await eventually(lambda: clock.sleepers >= 1, what="backoff")
            clock.advance(1.0)
            await eventually(lambda: channel.connected, what="reconnect")
            assert (await channel.send([item(1)]))[0].status is DeliveryStatus.DELIVERED
        assert [m["metadata"]["dedupe_key"] for m in pam.accepted] == ["incident-1-seq-1-pam"]


async def test_the_token_never_reaches_the_logs(clock: ManualClock) -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    _WS_LOG.addHandler(handler)
    _WS_LOG.setLevel(logging.DEBUG)
    try:
        async with FakePam(token=TOKEN, ping_interval=0.05, accepts=ACCEPTS) as pam:
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


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "pam.token"
    path.write_text(token + "\n", encoding="utf-8")
    return path


async def test_4001_after_expiry_rereads_the_token_file_and_delivery_resumes(
    clock: ManualClock, tmp_path: Path,
) -> None:
    fresh = "pam-jwt-fresh-t0ken"
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        path = token_file(tmp_path, TOKEN)
        channel = PamChannel(settings_for(pam, token_file=str(path)), clock=clock, environ={},
                             random=lambda: 1.0)
        with captured_logs() as logs:
            async with running(channel) as readies:
                await eventually(lambda: channel.connected, what="connect")
                assert (await channel.send([item(1)]))[0].status is DeliveryStatus.DELIVERED
                path.write_text(fresh, encoding="utf-8")  # the refresher wrote a new one
                pam.tokens.add(fresh)
                await pam.expire(TOKEN)  # `exp` passed: PAM closes with 4001
                await eventually(lambda: channel.status.startswith("token expired"),
                                 what="expiry noticed")
                assert channel.failed is None
                (waiting,) = await channel.send([item(2)])
                assert waiting.status is DeliveryStatus.UNAVAILABLE  # queued, not lost
                await eventually(lambda: clock.sleepers >= 1, what="backoff")
                clock.advance(1.0)
                await eventually(lambda: channel.connected, what="reconnect with the new token")
                assert (await channel.send([item(2)]))[0].status is DeliveryStatus.DELIVERED
                assert len(readies) == 2 and channel.token_retries == 0
        assert pam.closed_for_expiry == 1 and pam.connections == 2
        assert [m["metadata"]["dedupe_key"] for m in pam.accepted] == [
            "incident-1-seq-1-pam", "incident-1-seq-2-pam"]
        errors = [line for line in logs if line.startswith("ERROR|")]
        assert len(errors) == 1 and "4001" in errors[0] and "expired" in errors[0]
        for line in logs:
            assert TOKEN not in line and fresh not in line


async def test_the_same_token_refused_again_unchanged_is_final(
    clock: ManualClock, tmp_path: Path,
) -> None:
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        path = token_file(tmp_path, TOKEN)
        channel = PamChannel(settings_for(pam, token_file=str(path)), clock=clock, environ={},
                             random=lambda: 1.0)
        with captured_logs() as logs:
            async with running(channel):
                await eventually(lambda: channel.connected, what="connect")
                await pam.expire(TOKEN)  # ...and nobody put a fresh token in the file
                await eventually(lambda: clock.sleepers >= 1, what="backoff")
                clock.advance(1.0)
                await eventually(lambda: channel.failed is not None, what="final failure")
                for _ in range(5):
                    clock.advance(60.0)
                    await anyio.sleep(0.01)
                (outcome,) = await channel.send([item(1)])
        assert outcome.status is DeliveryStatus.UNAVAILABLE
        assert "unchanged" in (channel.failed or "") and channel.status.startswith("failed: ")
        assert pam.connections == 2  # one retry with the re-read token, then no more
        errors = [line for line in logs if line.startswith("ERROR|")]
        assert len(errors) == 2 and "expired" in errors[0] and "unchanged" in errors[1]
        for line in logs:
            assert TOKEN not in line
