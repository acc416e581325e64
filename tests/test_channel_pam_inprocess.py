"""PAM in-process: the channel on its own, and the agent embedded in a FastAPI host with PAM's
connection manager, served by uvicorn on loopback with a real WebSocket client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import connect

import incident_fsm
from incident_fsm.clock import SystemClock
from incident_fsm.config import ConfigError, load_settings
from incident_fsm.demo.pam_simulator import ConnectionManager, free_port
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.models import IncidentId, Notification
from incident_fsm.notify.channels import channels_from_settings
from incident_fsm.notify.channels.base import DeliveryStatus, Outgoing
from incident_fsm.notify.channels.pam_inprocess import InProcessPamChannel, priority_of
from incident_fsm.persistence.store import Store
from incident_fsm.settings import ChannelsSettings, PamInProcessSettings
from incident_fsm.testing import ManualClock

from .pam_host import add_pam_socket
from .scenario import ENV, incident_state, sim_settings, until
from .waiting import eventually

pytestmark = pytest.mark.anyio

USER = "6f1c2d3e-0000-4a5b-8c9d-0123456789ab"
CHANNEL = "pam_inprocess"


class FakeSocket:
    """A socket of the host: records what the manager writes to it."""

    def __init__(self, *, broken: bool = False) -> None:
        self.received: list[dict[str, Any]] = []
        self.broken = broken

    async def send_text(self, text: str) -> None:
        if self.broken:
            raise RuntimeError("socket is closed")
        self.received.append(json.loads(text))


class RaisingManager(ConnectionManager):
    async def send_message_to_user(self, message: str, user_id: str) -> None:
        raise ConnectionResetError


def item(n: int, **payload: Any) -> Outgoing:
    base = {"text": f"⚠️ System Alert: memory_high on api is critical ({n})", "event": "opened",
            "level": "critical", "state": "detected", "kind": "memory_high",
            "severity": "critical", "target": "api"}
    return Outgoing(notification_id=n, incident_id=IncidentId(1), channel=CHANNEL,
                    dedupe_key=f"incident-1-seq-{n}-{CHANNEL}", attempt=1,
                    payload={**base, **payload})


def channel_for(manager: ConnectionManager, clock: Any, **changes: Any) -> InProcessPamChannel:
    settings = replace(PamInProcessSettings(user_ids=(USER,), timeout=1.0), **changes)
    return InProcessPamChannel(settings, manager=manager, clock=clock)


# --- the channel on its own --------------------------------------------------------------


async def test_an_open_socket_receives_a_proactive_alert_and_it_counts_as_delivered(
    clock: ManualClock,
) -> None:
    manager = ConnectionManager()
    ws = FakeSocket()
    manager.connect(ws, USER)
    channel = channel_for(manager, clock)
    long_text = "x" * 5000
    outcomes = await channel.send([item(1), item(2, text=long_text, event="escalated")])
    assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED, DeliveryStatus.DELIVERED]
    first, second = ws.received
    assert first == {
        "type": "proactive_alert", "timestamp": clock.now().isoformat(),
        "id": "incident-1-seq-1-pam_inprocess",
        "content": {"type": "proactive_suggestion", "category": "system_health",
                    "message": "⚠️ System Alert: memory_high on api is critical (1)",
                    "priority": "high", "actions": [], "alert_type": "memory_high"},
    }
    assert len(second["content"]["message"]) == 2000
    assert second["content"]["message"].endswith("…")
    assert second["content"]["priority"] == "urgent"
    assert channel.delivery_rate == 1.0


def test_priority_follows_the_notice() -> None:
    assert priority_of({"event": "resolved", "level": "info"}) == "low"
    assert priority_of({"event": "action", "level": "warning"}) == "normal"
    assert priority_of({"event": "opened", "level": "critical"}) == "high"
    assert priority_of({"event": "escalated", "level": "critical"}) == "urgent"


async def test_nobody_connected_is_unavailable_and_nothing_is_sent(clock: ManualClock) -> None:
    manager = ConnectionManager()
    other = FakeSocket()
    manager.connect(other, "someone-else")  # not a configured user
    channel = channel_for(manager, clock)
    assert channel.blocked_for() > 0
    (outcome,) = await channel.send([item(1), item(2)])
    assert outcome.status is DeliveryStatus.UNAVAILABLE
    assert other.received == [] and manager.sent == []
    manager.connect(FakeSocket(), USER)
    assert channel.blocked_for() == 0


async def test_a_socket_the_manager_drops_during_the_send_is_not_a_delivery(
    clock: ManualClock,
) -> None:
    # The reference manager swallows write errors and drops the socket: the send
    # "succeeds" but reached nobody, so the row must wait.
    manager = ConnectionManager()
    manager.connect(FakeSocket(broken=True), USER)
    (outcome,) = await channel_for(manager, clock).send([item(1), item(2)])
    assert outcome.status is DeliveryStatus.UNAVAILABLE
    assert manager.user_connections == {}


async def test_a_send_that_raises_is_a_failed_attempt_and_stops_the_batch(
    clock: ManualClock,
) -> None:
    manager = RaisingManager()
    manager.connect(FakeSocket(), USER)
    outcomes = await channel_for(manager, clock).send([item(1), item(2)])
    assert [o.status for o in outcomes] == [DeliveryStatus.FAILED]
    assert outcomes[0].error == "PAM in-process: send failed (ConnectionResetError)"


async def test_one_of_several_users_connected_is_enough(clock: ManualClock) -> None:
    manager = ConnectionManager()
    ws = FakeSocket()
    manager.connect(ws, "second-user")
    channel = channel_for(manager, clock, user_ids=(USER, "second-user"))
    (outcome,) = await channel.send([item(1)])
    assert outcome.status is DeliveryStatus.DELIVERED
    assert [m["id"] for m in ws.received] == ["incident-1-seq-1-pam_inprocess"]


async def test_run_says_ready_when_a_configured_user_connects() -> None:
    manager = ConnectionManager()
    channel = channel_for(manager, SystemClock(), watch_interval=0.01)
    readies: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.run, lambda: readies.append(1))
        await anyio.sleep(0.1)
        assert readies == []
        manager.connect(FakeSocket(), USER)
        await eventually(lambda: readies == [1], what="ready() after the user connected")
        tg.cancel_scope.cancel()


def test_the_configuration_names_the_manager_and_users(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[channels.pam_inprocess]\nmanager = "app.core.websocket_manager:manager"\n'
                      f'user_ids = ["{USER}"]\n')
    pam = load_settings(config).channels.pam_inprocess
    assert pam == PamInProcessSettings(user_ids=(USER,),
                                       manager="app.core.websocket_manager:manager")
    for body, key in [
        ('user_ids = ["a"]\nmanagr = "x:y"\n', "channels.pam_inprocess.managr"),
        ("user_ids = []\n", "channels.pam_inprocess.user_ids"),
        ('manager = "x:y"\n', "channels.pam_inprocess.user_ids"),
        ('user_ids = ["a"]\nmanager = "app.core.websocket_manager"\n',
         "channels.pam_inprocess.manager"),
        ('user_ids = ["a b"]\n', r"channels.pam_inprocess.user_ids\[0\]"),
        ('user_ids = ["a"]\ntimeout = 0\n', "channels.pam_inprocess.timeout"),
    ]:
        config.write_text("[channels.pam_inprocess]\n" + body)
        with pytest.raises(ConfigError, match=key):
            load_settings(config)


async def test_the_manager_is_imported_from_its_path_or_refused_by_name() -> None:
    async with httpx.AsyncClient() as http:
        named = ChannelsSettings(pam_inprocess=PamInProcessSettings(
            user_ids=(USER,), manager="tests.test_channel_pam_inprocess:SHARED_MANAGER"))
        channels = channels_from_settings(named, clock=SystemClock(), http=http)
        assert [c.name for c in channels] == ["log", CHANNEL]
        assert named.pam_inprocess is not None
        for manager in ("tests.no_such_module:manager", None):
            settings = replace(named.pam_inprocess, manager=manager)
            with pytest.raises(ConfigError, match=r"channels\.pam_inprocess\.manager"):
                channels_from_settings(ChannelsSettings(pam_inprocess=settings),
                                       clock=SystemClock(), http=http)
        with pytest.raises(ConfigError, match=r"add \[channels.pam_inprocess\]"):
            channels_from_settings(ChannelsSettings(), clock=SystemClock(), http=http,
                                   pam_manager=ConnectionManager())


SHARED_MANAGER = ConnectionManager()


# --- embedded in a FastAPI host -------------------------------------------------------------




def host_app(manager: ConnectionManager, **lifespan_options: Any) -> FastAPI:
    """The reference service's shape: PAM's socket route registers sockets in the manager,
    and its own lifespan enters the agent's in place of its bare `yield` (as the README says)."""
    @asynccontextmanager
    async def service_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with incident_fsm.lifespan(pam_manager=manager, **lifespan_options)(app):
            yield

    app = FastAPI(lifespan=service_lifespan)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    add_pam_socket(app, manager)

    return app


async def _rows(store: Store) -> list[Notification]:
    rows: list[Notification] = []
    for incident in await store.list_incidents(limit=100):
        rows += [n for n in (await store.timeline(incident.incident_id)).notifications
                 if n.channel == CHANNEL]
    return rows


def _statuses(rows: Sequence[Notification]) -> list[str]:
    return [n.status for n in rows]


async def test_embedded_alerts_wait_for_the_user_and_are_delivered_once_on_connect(
    db_url: str, tmp_path: Path
) -> None:
    state = ServiceState()
    manager = ConnectionManager()
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url)
        settings = replace(settings, channels=replace(
            settings.channels, pam_inprocess=PamInProcessSettings(user_ids=(USER,),
                                                                  watch_interval=0.05)))
        app = host_app(manager, settings=settings, environ=ENV, journal_path=tmp_path / "j")
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on",
                                               ws="websockets-sansio"))
        socket_url = f"ws://127.0.0.1:{port}/api/v1/pam/ws"
        async with anyio.create_task_group() as tg, Store(db_url) as store:
            tg.start_soon(server.serve)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await until(lambda: _answers(client), within=10)

            # A client of another user is connected; the configured one is not.
            async with connect(f"{socket_url}/someone-else") as stranger:
                state.leaked_memory_pct = 50.0  # memory 90%: critical
                await until(lambda: _has_rows(store), within=20)
                # Remediation goes on without PAM: opened, action, recovery are all owed.
                await until(lambda: _resolved(store), within=30)
                await anyio.sleep(1.0)  # several dispatcher passes and channel watches
                rows = await _rows(store)
                assert set(_statuses(rows)) == {"pending"}
                assert manager.sent == []
                with anyio.move_on_after(0.2):
                    raise AssertionError(f"the stranger got {await stranger.recv()!r}")
            stats = {c.channel: c for c in (await store.statistics()).channels}
            assert stats[CHANNEL].delivered == 0 and stats[CHANNEL].pending == len(rows) > 0

            # The configured user connects: the backlog arrives, oldest first, once.
            async with connect(f"{socket_url}/{USER}") as ws:
                await until(lambda: _all_delivered(store), within=20)
                rows = await _rows(store)
                received = [json.loads(await _recv(ws)) for _ in rows]
                assert [m["id"] for m in received] == [n.dedupe_key for n in rows]
                assert all(m["type"] == "proactive_alert" for m in received)
                opening = received[0]["content"]["message"]
                assert opening.startswith("⚠️ System Alert: high memory use on api")
                # Written before the incident had an id; sent with it.
                assert opening.endswith(f"incident-fsm show {rows[0].incident_id}")
                assert received[0]["content"]["priority"] == "high"

                # While connected, a new alert is pushed as it happens.
                before = len(rows)
                state.leaked_memory_pct = 50.0  # back again
                await until(lambda: _count_rows(store, more_than=before), within=20)
                await until(lambda: _resolved(store), within=30)
                await until(lambda: _all_delivered(store), within=20)
                rows = await _rows(store)
                received += [json.loads(await _recv(ws)) for _ in rows[before:]]
                assert [m["id"] for m in received] == [n.dedupe_key for n in rows]
                with anyio.move_on_after(0.5):
                    raise AssertionError(f"a repeat arrived: {await ws.recv()!r}")

            stats = {c.channel: c for c in (await store.statistics()).channels}
            assert stats[CHANNEL].delivered == len(rows) == len(received)
            assert stats[CHANNEL].pending == stats[CHANNEL].dead == 0
            assert len({m["id"] for m in received}) == len(received)
            server.should_exit = True


async def _answers(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/hello")).status_code == 200
    except httpx.TransportError:
        return False


async def _has_rows(store: Store) -> bool:
    return bool(await _rows(store))


async def _count_rows(store: Store, *, more_than: int) -> bool:
    return len(await _rows(store)) > more_than


async def _resolved(store: Store) -> bool:
    return await incident_state(store, "api:memory_high") == "resolved"


async def _all_delivered(store: Store) -> bool:
    rows = await _rows(store)
    return bool(rows) and set(_statuses(rows)) == {"delivered"}


async def _recv(ws: Any) -> str:
    with anyio.fail_after(5):
        message = await ws.recv()
    assert isinstance(message, str)
    return message


def test_a_standalone_run_refuses_the_in_process_channel(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from incident_fsm.cli import main as cli

    config = tmp_path / "agent.toml"
    config.write_text('[channels.pam_inprocess]\nmanager = "json:loads"\nuser_ids = ["u-1"]\n')
    result = CliRunner().invoke(cli.cli, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "channels.pam_inprocess" in result.output and "pam_relay" in result.output
