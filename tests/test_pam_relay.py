"""The PAM relay (the ASGI app a PAM host mounts) and the agent's `pam_relay` channel that posts
to it: in-process through httpx's ASGI transport, and mounted in a FastAPI host served by
uvicorn on loopback with a real WebSocket client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import connect

from incident_fsm import pam_relay
from incident_fsm.clock import SystemClock
from incident_fsm.config import ConfigError, load_settings
from incident_fsm.demo.pam_simulator import ConnectionManager, free_port
from incident_fsm.models import IncidentId
from incident_fsm.notify.channels.base import DeliveryStatus, Outgoing
from incident_fsm.notify.channels.pam_relay import (
    MAX_ANSWER,
    RelayPamChannel,
    check_relay,
    encode,
    sign,
)
from incident_fsm.settings import PamRelaySettings

from .logcapture import captured_logs
from .pam_host import add_pam_socket

pytestmark = pytest.mark.anyio

USER = "6f1c2d3e-0000-4a5b-8c9d-0123456789ab"
SECRET = "relay-5ecret-value-never-shown"
VAR = "INCIDENT_FSM_PAM_RELAY_SECRET"
ENV = {VAR: SECRET}
RELAY_URL = "http://relay.test/"


class FakeSocket:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.received.append(json.loads(text))


def alert(n: int = 1, text: str = "⚠️ System Alert: memory_high on api is critical") -> dict[
        str, Any]:
    return {"type": "proactive_alert", "timestamp": "2026-11-29T03:00:00+00:00",
            "id": f"incident-1-seq-{n}-pam_relay",
            "content": {"type": "proactive_suggestion", "category": "system_health",
                        "message": text, "priority": "high", "actions": [],
                        "alert_type": "memory_high"}}


def signed(document: Any, *, secret: str = SECRET, at: float | None = None,
           raw: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    body = raw if raw is not None else encode(document)
    stamp = str(int(time.time() if at is None else at))
    return body, {"Content-Type": "application/json", "X-Incident-Fsm-Timestamp": stamp,
                  "X-Incident-Fsm-Signature": sign(secret.encode(), stamp, body)}


def item(n: int = 1) -> Outgoing:
    return Outgoing(notification_id=n, incident_id=IncidentId(1), channel="pam_relay",
                    dedupe_key=f"incident-1-seq-{n}-pam_relay", attempt=1,
                    payload={"text": f"⚠️ System Alert: memory_high on api ({n})",
                             "event": "opened", "level": "critical", "kind": "memory_high",
                             "state": "detected", "target": "api"})


@asynccontextmanager
async def relay_client(manager: ConnectionManager, **options: Any,
                       ) -> AsyncIterator[httpx.AsyncClient]:
    app = pam_relay(manager, environ=options.pop("environ", ENV), **options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=RELAY_URL) as client:
        yield client


def connected_manager() -> tuple[ConnectionManager, FakeSocket]:
    manager = ConnectionManager()
    ws = FakeSocket()
    manager.connect(ws, USER)
    return manager, ws


# --- the relay ------------------------------------------------------------------------------


async def test_a_signed_post_is_delivered_to_the_connected_users() -> None:
    manager, ws = connected_manager()
    async with relay_client(manager) as client:
        body, headers = signed({"user_ids": [USER, "offline-user"], "message": alert()})
        response = await client.post("/", content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"delivered_to": [USER]}
    assert ws.received == [alert()]


async def test_refused_requests_deliver_nothing_and_the_secret_is_never_shown() -> None:
    manager, ws = connected_manager()
    document = {"user_ids": [USER], "message": alert()}
    with captured_logs() as logs:
        async with relay_client(manager) as client:
            cases: list[tuple[str, bytes, dict[str, str], int]] = []
            body, headers = signed(document, secret="not-the-secret")
            cases.append(("bad signature", body, headers, 401))
            body, headers = signed(document)
            cases.append(("unsigned", body, {"Content-Type": "application/json"}, 401))
            tampered = encode({"user_ids": [USER], "message": alert(2)})
            cases.append(("body changed after signing", tampered, headers, 401))
            # Ten seconds past the 300 s window: the header holds whole seconds (a future
            # stamp cut down by up to one), and the cases are posted a while after signing.
            body, headers = signed(document, at=time.time() - 310)
            cases.append(("old timestamp", body, headers, 401))
            body, headers = signed(document, at=time.time() + 310)
            cases.append(("future timestamp", body, headers, 401))
            big = {"user_ids": [USER], "message": alert(), "pad": "x" * (64 * 1024)}
            body, headers = signed(big)
            cases.append(("oversized", body, headers, 413))
            body, headers = signed({"user_ids": [USER], "message": {"type": "chat"}})
            cases.append(("not an alert", body, headers, 400))
            body, headers = signed(None, raw=b"not json")
            cases.append(("not json", body, headers, 400))
            answers = []
            for what, body, headers, status in cases:
                response = await client.post("/", content=body, headers=headers)
                assert response.status_code == status, what
                answers.append(response.text)
            assert (await client.get("/")).status_code == 405
    assert ws.received == [] and manager.sent == []
    shown = "\n".join(logs + answers)
    assert "bad signature" in shown and "replay window" in shown
    assert SECRET not in shown


async def test_a_replayed_request_is_refused_within_the_window() -> None:
    manager, ws = connected_manager()
    async with relay_client(manager) as client:
        body, headers = signed({"user_ids": [USER], "message": alert()})
        first = await client.post("/", content=body, headers=headers)
        again = await client.post("/", content=body, headers=headers)
        # The same alert signed afresh (a retry by the agent) is a new request.
        body2, headers2 = signed({"user_ids": [USER], "message": alert()}, at=time.time() + 1)
        retry = await client.post("/", content=body2, headers=headers2)
    assert (first.status_code, again.status_code, retry.status_code) == (200, 401, 200)
    assert again.json() == {"error": "replayed request"}
    assert len(ws.received) == 2


async def test_the_replay_memory_is_bounded() -> None:
    manager, _ = connected_manager()
    async with relay_client(manager, max_remembered=2) as client:
        statuses = []
        for n in range(3):
            body, headers = signed({"user_ids": [USER], "message": alert(n)})
            statuses.append((await client.post("/", content=body, headers=headers)).status_code)
    assert statuses == [200, 200, 429]


async def test_an_oversized_body_is_refused_while_it_is_read() -> None:
    manager, ws = connected_manager()
    app = pam_relay(manager, environ=ENV, max_body=1000)
    reads = 0

    async def endless_body() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 400, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        (b"x-incident-fsm-timestamp", str(int(time.time())).encode()),
        (b"x-incident-fsm-signature", b"sha256=00")]}
    with anyio.fail_after(5):
        await app(scope, endless_body, send)
    assert sent[0]["status"] == 413 and reads == 3  # stopped at the first chunk past 1000

    reads = 0
    declared = {**scope, "headers": [*scope["headers"], (b"content-length", b"5000")]}
    sent.clear()
    await app(declared, endless_body, send)
    assert sent[0]["status"] == 413 and reads == 0  # refused on the declared length
    assert ws.received == []


async def test_without_its_secret_the_relay_accepts_nothing() -> None:
    manager, ws = connected_manager()
    with captured_logs() as logs:
        async with relay_client(manager, environ={}) as client:
            body, headers = signed({"user_ids": [USER], "message": alert()})
            for _ in range(2):
                assert (await client.post("/", content=body, headers=headers)).status_code == 503
    assert ws.received == []
    assert sum("is not set" in line for line in logs) == 1  # said once, not per request


# --- the channel -------------------------------------------------------------------------------


def relay_channel(client: httpx.AsyncClient, *, environ: dict[str, str] = ENV,
                  ) -> RelayPamChannel:
    settings = PamRelaySettings(url=RELAY_URL, user_ids=(USER,), timeout=2.0)
    return RelayPamChannel(settings, client=client, clock=SystemClock(), environ=environ)


async def test_the_channel_delivers_only_when_someone_received_it() -> None:
    manager = ConnectionManager()
    async with relay_client(manager) as client:
        channel = relay_channel(client)
        waits = []
        for _ in range(3):
            (outcome,) = await channel.send([item(1), item(2)])
            assert outcome.status is DeliveryStatus.UNAVAILABLE  # nobody connected: rows wait
            waits.append(outcome.retry_after)
        assert waits == [1.0, 2.0, 4.0]  # offered again later and later
        ws = FakeSocket()
        manager.connect(ws, USER)
        outcomes = await channel.send([item(1), item(2)])
    assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED, DeliveryStatus.DELIVERED]
    assert [m["id"] for m in ws.received] == ["incident-1-seq-1-pam_relay",
                                              "incident-1-seq-2-pam_relay"]
    assert ws.received[0]["content"]["message"] == "⚠️ System Alert: memory_high on api (1)"
    assert channel.idle == 0


async def test_the_channel_keeps_rows_queued_on_configuration_problems() -> None:
    manager, ws = connected_manager()
    with captured_logs() as logs:
        async with relay_client(manager) as client:
            (missing,) = await relay_channel(client, environ={}).send([item()])
            wrong = relay_channel(client, environ={VAR: "a-different-secret"})
            (refused,) = await wrong.send([item()])
            await wrong.send([item()])
    assert missing.status is DeliveryStatus.UNAVAILABLE and VAR in missing.error
    assert refused.status is DeliveryStatus.UNAVAILABLE and "HTTP 401" in refused.error
    assert sum("HTTP 401" in line and line.startswith("ERROR") for line in logs) == 1
    assert ws.received == []
    assert not any(SECRET in line or "a-different-secret" in line for line in logs)


async def test_the_channel_fails_an_attempt_when_the_relay_breaks() -> None:
    class Broken(ConnectionManager):
        async def send_message_to_user(self, message: str, user_id: str) -> None:
            raise ConnectionResetError

    manager = Broken()
    manager.connect(FakeSocket(), USER)
    async with relay_client(manager) as client:
        (outcome,) = await relay_channel(client).send([item(), item(2)])
    assert outcome.status is DeliveryStatus.FAILED and "HTTP 502" in outcome.error


def test_the_relay_channel_configuration(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[channels.pam_relay]\nurl = "https://pam.example.com/incident-fsm/pam/"\n'
                      f'user_ids = ["{USER}"]\n')
    relay = load_settings(config).channels.pam_relay
    assert relay == PamRelaySettings(url="https://pam.example.com/incident-fsm/pam/",
                                     user_ids=(USER,))
    for body, key in [
        (f'url = "ftp://x/"\nuser_ids = ["{USER}"]\n', r"channels\.pam_relay\.url"),
        ('url = "https://x/"\n', r"channels\.pam_relay\.user_ids"),
        (f'url = "https://x/"\nuser_ids = ["{USER}"]\nsecret = "s"\n',
         r"channels\.pam_relay\.secret"),
    ]:
        config.write_text("[channels.pam_relay]\n" + body)
        with pytest.raises(ConfigError, match=key):
            load_settings(config)


# --- mounted in a FastAPI host ---------------------------------------------------------------




async def test_a_standalone_agent_reaches_a_pam_user_through_the_mounted_relay() -> None:
    manager = ConnectionManager()
    app = FastAPI()

    add_pam_socket(app, manager)

    app.mount("/incident-fsm/pam", pam_relay(manager, environ=ENV))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", ws="websockets-sansio"))
    settings = PamRelaySettings(url=f"http://127.0.0.1:{port}/incident-fsm/pam/",
                                user_ids=(USER,), timeout=5.0)
    with captured_logs() as logs:
        async with anyio.create_task_group() as tg, httpx.AsyncClient() as http:
            tg.start_soon(server.serve)
            channel = RelayPamChannel(settings, client=http, clock=SystemClock(), environ=ENV)
            with anyio.fail_after(10):
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                    await anyio.sleep(0.02)
            (nobody,) = await channel.send([item(1)])
            async with connect(f"ws://127.0.0.1:{port}/api/v1/pam/ws/{USER}") as ws:
                with anyio.fail_after(5):
                    while not manager.user_connections:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                (outcome,) = await channel.send([item(1)])
                with anyio.fail_after(5):
                    received = json.loads(await ws.recv())
            server.should_exit = True
    assert nobody.status is DeliveryStatus.UNAVAILABLE
    assert outcome.status is DeliveryStatus.DELIVERED
    assert received["type"] == "proactive_alert"
    assert received["id"] == "incident-1-seq-1-pam_relay"
    assert SECRET not in "\n".join(logs)


def _answering(body: bytes) -> httpx.AsyncClient:
    """A client whose every request is answered 200 with `body` (a relay gone wrong)."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_an_oversized_relay_answer_is_a_failed_attempt_that_keeps_none_of_it() -> None:
    body = b'{"delivered_to": ["' + b"x" * (MAX_ANSWER + 10) + b'"]}'
    async with _answering(body) as client:
        (outcome,) = await relay_channel(client).send([item()])
        assert outcome.status is DeliveryStatus.FAILED
        assert f"larger than {MAX_ANSWER} bytes" in outcome.error
        assert "xxxx" not in outcome.error
        settings = PamRelaySettings(url=RELAY_URL, user_ids=(USER,), timeout=2.0)
        fine, why = await check_relay(settings, http=client, environ=ENV)
    assert not fine and f"larger than {MAX_ANSWER} bytes" in why
