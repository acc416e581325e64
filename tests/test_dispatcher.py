"""The dispatcher on both databases: retries, dead rows, order, outages, crashes, held channels."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, cast

import anyio
import httpx
import pytest
import respx

from incident_fsm.clock import Clock, SystemClock
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent, MachinePolicy
from incident_fsm.models import IncidentId, Notification, OutboxMessage
from incident_fsm.notify.channels.base import Channel, Delivery, Outgoing
from incident_fsm.notify.channels.log import LogChannel
from incident_fsm.notify.channels.pam import PamChannel
from incident_fsm.notify.channels.webhook import DEDUPE_HEADER, SIGNATURE_HEADER, WebhookChannel
from incident_fsm.notify.dispatcher import POLL_INTERVAL, Dispatcher, dispatcher_from_settings
from incident_fsm.notify.policy import NotificationPolicy
from incident_fsm.persistence.store import Store
from incident_fsm.settings import (
    AgentSettings,
    ChannelsSettings,
    PamSettings,
    Settings,
    WebhookSettings,
)
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

from .logcapture import captured_logs
from .pam_server import ACCEPTS, FakePam, free_port
from .waiting import eventually, eventually_true

pytestmark = pytest.mark.anyio

URL = "https://hooks.test/incidents"
SECRET = "whsec-dispatch-secret"
TOKEN = "pam-jwt-dispatch-t0ken"
ENV = {"WEBHOOK_SECRET": SECRET, "PAM_TOKEN": TOKEN}
RESTART = ActionIntent("render_restart", "major", Verdict.NOTIFY, "major tier: run and notify")


def engine_for(store: Store, clock: Clock, policy: MachinePolicy, *channels: str,
               dispatcher: Dispatcher | None = None) -> IncidentEngine:
    return IncidentEngine(store, clock=clock, policy=policy,
                          outbox=NotificationPolicy(channels=channels),
                          on_outbox=None if dispatcher is None else dispatcher.nudge)


def webhook(client: httpx.AsyncClient, clock: Clock) -> WebhookChannel:
    return WebhookChannel(WebhookSettings(url=URL, secret_env="WEBHOOK_SECRET"), client=client,
                          clock=clock, environ=ENV)


def pam_channel(url: str, clock: Clock) -> PamChannel:
    return PamChannel(PamSettings(url=url, user_id="ops", timeout=2.0), clock=clock,
                      environ=ENV, random=lambda: 1.0)


async def open_critical(engine: IncidentEngine, target: str = "api") -> IncidentId:
    opened = await engine.open(target=target, kind="memory_high", severity="critical",
                               reason="memory 91% > 80% on two samples")
    return opened.incident.incident_id


async def rows(store: Store, iid: IncidentId, channel: str) -> list[Notification]:
    return [n for n in (await store.timeline(iid)).notifications if n.channel == channel]


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        yield
        tg.cancel_scope.cancel()


async def pass_time(clock: ManualClock, seconds: float, *, step: float = 5.0) -> None:
    """Move virtual time in steps, giving woken tasks (and their sockets) real time to run."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        await anyio.sleep(0.02)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def signed(request: httpx.Request) -> bool:
    good = "sha256=" + hmac.new(SECRET.encode(), request.content, hashlib.sha256).hexdigest()
    return request.headers.get(SIGNATURE_HEADER) == good


# --- webhook through the dispatcher ---------------------------------------------------


@respx.mock
async def test_webhook_500_then_200_is_retried_after_a_jittered_backoff(
    store: Store, clock: ManualClock, policy: MachinePolicy, client: httpx.AsyncClient,
) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(500), httpx.Response(200)])
    channel = webhook(client, clock)
    dispatcher = Dispatcher(store, [channel], clock=clock, random=lambda: 0.5)
    iid = await open_critical(engine_for(store, clock, policy, "webhook"))
    start = clock.now()

    await dispatcher.deliver_due(channel)
    (row,) = await rows(store, iid, "webhook")
    # attempt 1 failed: 5 s doubled 0 times, jittered into [2.5, 5] -> 3.75 with random 0.5
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.next_attempt_at == start + timedelta(seconds=3.75)
    assert row.last_error == "webhook https://hooks.test/incidents answered HTTP 500"
    assert await dispatcher.deliver_due(channel) == pytest.approx(3.75)
    assert route.call_count == 1  # not due yet

    clock.advance(3.75)
    await dispatcher.deliver_due(channel)
    (row,) = await rows(store, iid, "webhook")
    assert (row.status, row.attempts, row.last_error) == ("delivered", 2, "")
    assert row.delivered_at == clock.now()
    first, second = (call.request for call in route.calls)
    assert signed(first) and signed(second)
    assert first.content == second.content
    assert first.headers[DEDUPE_HEADER] == second.headers[DEDUPE_HEADER] == row.dedupe_key


@respx.mock
async def test_429_retry_after_is_honoured(
    store: Store, clock: ManualClock, policy: MachinePolicy, client: httpx.AsyncClient,
) -> None:
    route = respx.post(URL).mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "120"}), httpx.Response(200)])
    channel = webhook(client, clock)
    dispatcher = Dispatcher(store, [channel], clock=clock, random=lambda: 0.5)
    iid = await open_critical(engine_for(store, clock, policy, "webhook"))
    await dispatcher.deliver_due(channel)
    (row,) = await rows(store, iid, "webhook")
    assert row.next_attempt_at == clock.now() + timedelta(seconds=120)
    clock.advance(119)
    await dispatcher.deliver_due(channel)
    assert route.call_count == 1
    clock.advance(1)
    await dispatcher.deliver_due(channel)
    assert route.call_count == 2
    assert (await rows(store, iid, "webhook"))[0].status == "delivered"


@respx.mock
async def test_the_attempt_bound_leaves_a_dead_row_in_the_timeline(
    store: Store, clock: ManualClock, policy: MachinePolicy, client: httpx.AsyncClient,
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    channel = webhook(client, clock)
    dispatcher = Dispatcher(store, [channel], clock=clock, max_attempts=3, random=lambda: 1.0)
    iid = await open_critical(engine_for(store, clock, policy, "webhook"))
    with captured_logs() as logs:
        for _ in range(6):
            wait = await dispatcher.deliver_due(channel)
            clock.advance(wait)
    assert route.call_count == 3
    (row,) = await rows(store, iid, "webhook")
    assert (row.status, row.attempts, row.delivered_at) == ("dead", 3, None)
    assert row.last_error == ("gave up after 3 attempt(s): webhook "
                              "https://hooks.test/incidents answered HTTP 503")
    assert len([line for line in logs if "❌ Failed to notify via webhook" in line]) == 1


@respx.mock
async def test_a_late_row_of_an_incident_waits_for_its_earlier_one(
    store: Store, clock: ManualClock, policy: MachinePolicy, client: httpx.AsyncClient,
) -> None:
    sent: list[str] = []
    failed_once: set[str] = set()

    def answer(request: httpx.Request) -> httpx.Response:
        key = request.headers[DEDUPE_HEADER]
        sent.append(key)
        if key.endswith("-seq-1-webhook") and key.startswith("incident-1-") and not failed_once:
            failed_once.add(key)
            return httpx.Response(500)
        return httpx.Response(200)

    respx.post(URL).mock(side_effect=answer)
    channel = webhook(client, clock)
    dispatcher = Dispatcher(store, [channel], clock=clock, random=lambda: 0.5)
    engine = engine_for(store, clock, policy, "webhook")
    a = await open_critical(engine, "api")
    b = await open_critical(engine, "worker")
    await engine.fire(a, "remediate", actor="agent", reason="restart", intent=RESTART)
    assert (a, b) == (1, 2)

    await dispatcher.deliver_due(channel)  # a1 fails; the batch stops there
    await dispatcher.deliver_due(channel)  # b1 goes; a2 waits behind a1
    assert sent == ["incident-1-seq-1-webhook", "incident-2-seq-1-webhook"]
    clock.advance(3.75)
    await dispatcher.deliver_due(channel)
    assert sent[2:] == ["incident-1-seq-1-webhook", "incident-1-seq-2-webhook"]
    assert [r.attempts for r in await rows(store, a, "webhook")] == [2, 1]


# --- PAM through the dispatcher --------------------------------------------------------


async def test_pam_down_at_the_start_then_every_queued_notification_arrives_once_in_order(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        pam.mode = "refuse"
        dispatcher = Dispatcher(store, [LogChannel(), pam_channel(pam.url, clock)], clock=clock)
        engine = engine_for(store, clock, policy, "log", "pam", dispatcher=dispatcher)
        async with running(dispatcher):
            a = await open_critical(engine, "api")
            b = await open_critical(engine, "worker")
            await engine.fire(a, "remediate", actor="agent", reason="restart", intent=RESTART)
            await engine.fire(b, "escalate", actor="alice", reason="taking over")
            await engine.fire(a, "action_finished", actor="agent", reason="202")
            await engine.fire(a, "recovered", actor="agent", reason="memory 60%")
            await eventually(lambda: pam.refused >= 1, what="a refused connect")
            await pass_time(clock, 60)
            assert pam.system_messages == []
            log_rows = await rows(store, a, "log")
            assert {r.status for r in log_rows} == {"delivered"}  # other channels unaffected
            pam.mode = "up"
            await pass_time(clock, 30)
            await eventually(lambda: len(pam.system_messages) == 6, what="the backlog")
            await anyio.sleep(0.1)
        keys = [m["metadata"]["dedupe_key"] for m in pam.system_messages]
        assert len(keys) == len(set(keys)) == 6
        for iid, seqs in ((a, [1, 2, 3, 4]), (b, [1, 2])):
            mine = [k for k in keys if k.startswith(f"incident-{iid}-")]
            assert mine == [f"incident-{iid}-seq-{s}-pam" for s in seqs]
            assert [(r.status, r.attempts) for r in await rows(store, iid, "pam")] == [
                ("delivered", 1)] * len(seqs)


async def test_a_notification_reaches_live_pam_within_a_second(
    store: Store, policy: MachinePolicy,
) -> None:
    clock = SystemClock()
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        channel = pam_channel(pam.url, clock)
        dispatcher = Dispatcher(store, [LogChannel(), channel], clock=clock)
        engine = engine_for(store, clock, policy, "log", "pam", dispatcher=dispatcher)
        async with running(dispatcher):
            await eventually(lambda: channel.connected, what="connect")
            await anyio.sleep(0.2)  # let the workers settle into their idle wait
            iid = await open_critical(engine)
            started = time.monotonic()
            await engine.fire(iid, "remediate", actor="agent", reason="restart", intent=RESTART)
            await eventually(lambda: len(pam.system_messages) == 2, within=1.0,
                             what="the action notification")
            elapsed = time.monotonic() - started
        assert elapsed < 1.0
        assert pam.system_messages[1]["message"].startswith("🔧 System Alert: ")


async def test_a_crash_between_send_and_commit_resends_with_the_same_dedupe_key(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        scopes: list[anyio.CancelScope] = []

        async def crash(batch: Sequence[Outgoing], outcomes: Sequence[Delivery]) -> None:
            if batch[0].channel == "pam":
                scopes[0].cancel()  # the process dies: nothing after this point runs
                await anyio.lowlevel.checkpoint()

        first = Dispatcher(store, [pam_channel(pam.url, clock)], clock=clock, after_send=crash)
        engine = engine_for(store, clock, policy, "pam", dispatcher=first)

        async def doomed() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await first.run()

        async with anyio.create_task_group() as tg:
            tg.start_soon(doomed)
            await eventually(lambda: bool(scopes), what="start")
            iid = await open_critical(engine)
            await eventually(lambda: scopes[0].cancel_called, what="the crash")
        assert [m["metadata"]["dedupe_key"] for m in pam.system_messages] == [
            f"incident-{iid}-seq-1-pam"]
        (row,) = await rows(store, iid, "pam")
        assert (row.status, row.attempts) == ("pending", 1)  # sent, but not on record

        second = Dispatcher(store, [pam_channel(pam.url, clock)], clock=clock)
        engine = engine_for(store, clock, policy, "pam", dispatcher=second)
        async with running(second):
            await engine.fire(iid, "remediate", actor="agent", reason="restart", intent=RESTART)
            await pass_time(clock, 125)  # the dead process's lease runs out
            await eventually(lambda: len(pam.system_messages) == 3, what="the resend")

            async def both_settled() -> bool:
                return all(r.status == "delivered" for r in await rows(store, iid, "pam"))
            # A row counts as delivered after PAM's answer and its reply window: a fixed
            # 0.1 s was too short once in a loaded full run. Once both are delivered,
            # nothing can be sent again.
            await eventually_true(both_settled, what="both rows delivered")
        keys = [m["metadata"]["dedupe_key"] for m in pam.system_messages]
        # At least once: the crashed message came again, with the same key, and the
        # later one waited behind it; dropping repeats by key gives each once, in order.
        assert keys == [f"incident-{iid}-seq-1-pam", f"incident-{iid}-seq-1-pam",
                        f"incident-{iid}-seq-2-pam"]
        assert list(dict.fromkeys(keys)) == [f"incident-{iid}-seq-{s}-pam" for s in (1, 2)]
        assert [(r.status, r.attempts) for r in await rows(store, iid, "pam")] == [
            ("delivered", 2), ("delivered", 1)]


async def test_with_pam_integration_off_rows_stay_queued_until_it_is_on(
    store: Store, clock: ManualClock, policy: MachinePolicy, client: httpx.AsyncClient,
) -> None:
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        settings = Settings(
            agent=AgentSettings(pam_integration=False),
            channels=ChannelsSettings(pam=PamSettings(url=pam.url, user_id="ops")),
        )
        off = dispatcher_from_settings(store, settings, clock=clock, http=client)
        assert off.channels == {"log"}
        engine = engine_for(store, clock, policy, "log", "pam", dispatcher=off)
        async with running(off):
            iid = await open_critical(engine)
            await engine.fire(iid, "remediate", actor="agent", reason="restart", intent=RESTART)
            await pass_time(clock, 60)
        assert pam.connections == 0
        assert [r.status for r in await rows(store, iid, "pam")] == ["pending", "pending"]
        assert [r.status for r in await rows(store, iid, "log")] == ["delivered", "delivered"]

        on = Dispatcher(store, [LogChannel(), pam_channel(pam.url, clock)], clock=clock)
        async with running(on):
            await eventually(lambda: len(pam.system_messages) == 2, what="the queued rows")
            await anyio.sleep(0.1)
        assert [r.status for r in await rows(store, iid, "pam")] == ["delivered", "delivered"]


async def test_rows_of_a_channel_that_is_not_configured_are_skipped(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    engine = IncidentEngine(store, clock=clock, policy=policy)
    opened = await engine.open(target="api", kind="disk_high", severity="critical", reason="91%",
                               notifications=[OutboxMessage("sms", {"text": "x"}),
                                              OutboxMessage("log", {"text": "y"})])
    dispatcher = Dispatcher(store, [LogChannel()], clock=clock, held=("pam",))
    async with running(dispatcher):
        await anyio.sleep(0.2)
    notes = (await store.timeline(opened.incident.incident_id)).notifications
    assert [(n.channel, n.status) for n in notes] == [("sms", "skipped"), ("log", "delivered")]
    assert "not configured" in notes[0].last_error


async def test_a_failing_channel_does_not_hold_up_the_others(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    class Stuck:
        name = "stuck"

        async def run(self, ready: Callable[[], None]) -> None:
            return

        def blocked_for(self) -> float:
            return 0.0

        async def send(self, batch: Sequence[Outgoing]) -> Sequence[Delivery]:
            await anyio.sleep_forever()
            raise AssertionError

    stuck: Channel = Stuck()
    dispatcher = Dispatcher(store, [stuck, LogChannel()], clock=clock, send_timeout=0.2,
                            lease=10.0)
    engine = engine_for(store, clock, policy, "stuck", "log", dispatcher=dispatcher)
    async with running(dispatcher):
        iid = await open_critical(engine)

        async def log_delivered() -> bool:
            return [r.status for r in await rows(store, iid, "log")] == ["delivered"]

        async def stuck_failed() -> bool:
            return (await rows(store, iid, "stuck"))[0].last_error != ""

        await eventually_true(log_delivered, within=2.0, what="the log row")
        await eventually_true(stuck_failed, within=2.0, what="the stuck send to time out")
    (row,) = await rows(store, iid, "stuck")
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "stuck send timed out")


# --- done when ---------------------------------------------------------------------------


async def test_pam_down_ten_minutes_during_an_incident_then_the_operator_gets_it_all_once(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    port = free_port()  # nothing listens here yet: connects are refused
    channel = pam_channel(f"ws://127.0.0.1:{port}", clock)
    dispatcher = Dispatcher(store, [LogChannel(), channel], clock=clock)
    engine = engine_for(store, clock, policy, "log", "pam", dispatcher=dispatcher)
    async with running(dispatcher):
        with anyio.fail_after(5):  # the agent is never held up by the dead channel
            iid = await open_critical(engine)
            await pass_time(clock, 10)
            await engine.fire(iid, "remediate", actor="agent", reason="restart ranks first",
                              intent=RESTART)
            await pass_time(clock, 30)
            await engine.fire(iid, "action_finished", actor="agent", reason="202 from Render")
            await pass_time(clock, 90)
            resolved = await engine.fire(iid, "recovered", actor="agent",
                                         reason="memory 60% < 75% on fresh samples")
        assert resolved.state == "resolved"
        await pass_time(clock, 600 - 130)
        assert channel.failures >= 10  # it kept trying, and PAM kept refusing
        assert [r.status for r in await rows(store, iid, "pam")] == ["pending"] * 4
        assert [r.status for r in await rows(store, iid, "log")] == ["delivered"] * 4

        async with FakePam(token=TOKEN, port=port, accepts=ACCEPTS) as pam:
            await pass_time(clock, 30)
            await eventually(lambda: len(pam.system_messages) == 4, what="the backlog")
            await anyio.sleep(0.2)
    texts = [m["message"] for m in pam.system_messages]
    assert [t.split(":")[0] for t in texts] == [
        "⚠️ System Alert", "🔧 System Alert", "🔧 System Alert", "✅ System Recovery"]
    assert "starting render_restart" in texts[1]
    assert "Action taken: render_restart" in texts[2]
    assert all(t.endswith(f"incident-fsm show {iid}") for t in texts)
    metas = [m["metadata"] for m in pam.system_messages]
    assert [m["dedupe_key"] for m in metas] == [
        f"incident-{iid}-seq-{s}-pam" for s in (1, 2, 3, 4)]
    assert {m["incident_id"] for m in metas} == {iid}
    assert [m["state"] for m in metas] == ["detected", "remediating", "verifying", "resolved"]
    assert [(r.status, r.attempts) for r in await rows(store, iid, "pam")] == [
        ("delivered", 1)] * 4


# --- secrets -------------------------------------------------------------------------------


@respx.mock
async def test_the_token_and_the_webhook_secret_stay_out_of_logs_and_database(
    store: Store, clock: ManualClock, policy: MachinePolicy, client: httpx.AsyncClient,
) -> None:
    respx.post(URL).mock(return_value=httpx.Response(500, text=SECRET))
    async with FakePam(token=TOKEN, accepts=ACCEPTS) as pam:
        pam.mode = "refuse"
        channels: list[Channel] = [LogChannel(), pam_channel(pam.url, clock),
                                   webhook(client, clock)]
        dispatcher = Dispatcher(store, channels, clock=clock, random=lambda: 0.5)
        engine = engine_for(store, clock, policy, "log", "pam", "webhook", dispatcher=dispatcher)
        with captured_logs() as logs:
            async with running(dispatcher):
                iid = await open_critical(engine)
                await eventually(lambda: pam.refused >= 1, what="refusal")
                pam.mode = "up"
                await pass_time(clock, 30)
                await eventually(lambda: len(pam.system_messages) == 1, what="delivery")
                pam.mode = "auth"
                channels[1].reconfigure(  # type: ignore[attr-defined]
                    PamSettings(url=pam.url, user_id="ops", timeout=3.0))
                await eventually(lambda: channels[1].failed is not None,  # type: ignore[attr-defined]
                                 what="4001")
                await pass_time(clock, 10)
    timeline = await store.timeline(iid)
    stored = repr([n.model_dump() for n in timeline.notifications]) + repr(
        [t.model_dump() for t in timeline.transitions])
    assert "answered HTTP 500" in stored  # the failure was recorded...
    assert any("token=***" in line for line in logs)
    for text in (stored, *logs):  # ...without the secrets
        assert TOKEN not in text
        assert SECRET not in text



# --- backoff and upkeep ------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "low", "high"),
                         [(1, 2.5, 5.0), (2, 5.0, 10.0), (4, 20.0, 40.0), (30, 300.0, 600.0)])
def test_backoff_doubles_is_capped_and_jittered(attempt: int, low: float, high: float) -> None:
    def make(r: float) -> Dispatcher:
        # backoff is arithmetic: no store needed
        return Dispatcher(cast(Store, None), [], clock=ManualClock(), random=lambda: r)
    assert make(0.0).backoff(attempt) == low
    assert make(1.0).backoff(attempt) == high
    assert low < make(0.3).backoff(attempt) < high


async def test_a_crashed_channel_upkeep_is_restarted(
    store: Store, clock: ManualClock,
) -> None:
    runs: list[int] = []

    class Flaky(LogChannel):
        name = "flaky"

        async def run(self, ready: Callable[[], None]) -> None:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("https://x/?token=leak")
            await anyio.sleep_forever()

    dispatcher = Dispatcher(store, [Flaky()], clock=clock)
    with captured_logs() as logs:
        async with running(dispatcher):
            await eventually(lambda: runs == [1], what="the first run")
            await pass_time(clock, 2.0, step=1.0)
            await eventually(lambda: runs == [1, 1], what="the restart")
    (error,) = [line for line in logs if line.startswith("ERROR|")]
    assert "flaky channel stopped (RuntimeError)" in error
    assert "leak" not in error


async def test_an_idle_pass_is_one_read_and_the_wait_is_until_the_next_row_or_the_poll(
    store: Store, clock: ManualClock, policy: MachinePolicy,
) -> None:
    calls: list[str] = []

    class Counted:
        def __getattr__(self, name: str) -> object:
            calls.append(name)
            return getattr(store, name)

    log = LogChannel()
    dispatcher = Dispatcher(cast(Any, Counted()), [log], clock=clock)
    assert await dispatcher.deliver_due(log) == POLL_INTERVAL
    assert calls == ["next_notification_due"]
    engine = engine_for(store, clock, policy, "log")
    iid = (await engine.open(target="api", kind="memory_high", severity="critical",
                             reason="memory 95%")).incident.incident_id
    (row,) = (await store.timeline(iid)).notifications
    assert row.id is not None
    await store.reschedule_notification(row.id, next_attempt_at=clock.now()
                                        + timedelta(seconds=4), error="later")
    calls.clear()
    assert await dispatcher.deliver_due(log) == 4
    assert calls == ["next_notification_due"]
