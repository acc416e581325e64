"""Wake-ups: an operator's command reaches a running agent at once (Postgres LISTEN/NOTIFY).

The listener against a real Postgres: a notification from another connection
wakes it, a lost connection is said once and listened again. The agent on
it: while it listens, its looks for other processes' work are a minute
apart, and an announced step is driven at once. The supervisor's and the
dispatcher's periods follow whether wake-ups are heard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import anyio
import psycopg
import pytest

from incident_fsm.clock import SystemClock
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.errors import StoreUnavailable
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.models import Incident, IncidentId
from incident_fsm.notify.channels.log import LogChannel
from incident_fsm.notify.dispatcher import POLL_INTERVAL, Dispatcher
from incident_fsm.notify.policy import policy_from_settings
from incident_fsm.persistence.store import Store
from incident_fsm.persistence.wakeups import SAFETY_LOOK, Listener, can_listen
from incident_fsm.runtime.agent import Agent
from incident_fsm.runtime.supervisor import Supervisor
from incident_fsm.testing import ManualClock

from .conftest import _libpq
from .logcapture import captured_logs
from .scenario import ENV, sim_settings, until

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def listening(store: Store, wakes: list[int], *,
                    check_every: float = 60.0) -> AsyncIterator[Listener]:
    listener = Listener(store.engine, lambda: wakes.append(1), clock=SystemClock(),
                        check_every=check_every)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        await until(lambda: _true(listener.listening), within=10)
        yield listener
        tg.cancel_scope.cancel()


async def _true(value: bool) -> bool:
    return value


async def test_an_announcement_from_another_connection_wakes_the_listener(
        postgres_url: str) -> None:
    wakes: list[int] = []
    async with Store(postgres_url) as agents, Store(postgres_url) as operators, \
            listening(agents, wakes) as listener:
        assert wakes == [1]  # on listening: look once for what came before
        await operators.announce()
        await until(lambda: _true(listener.received == 1), within=5)
        await operators.announce()
        await operators.announce()
        await until(lambda: _true(listener.received == 3), within=5)
        assert len(wakes) == 4


async def test_none_is_lost_while_the_listener_checks_its_connection(postgres_url: str) -> None:
    wakes: list[int] = []
    async with Store(postgres_url) as agents, Store(postgres_url) as operators, \
            listening(agents, wakes, check_every=0.01) as listener:
        for _ in range(30):  # interleaved with a check every 10 ms
            await operators.announce()
            await anyio.sleep(0.005)
        await until(lambda: _true(listener.received == 30), within=5)
        assert listener.listening


async def test_a_lost_listening_connection_is_said_once_and_listened_again(
        postgres_url: str) -> None:
    wakes: list[int] = []
    async with Store(postgres_url) as agents, Store(postgres_url) as operators:
        with captured_logs() as logs:
            async with listening(agents, wakes) as listener:
                with psycopg.connect(_libpq(postgres_url), autocommit=True) as admin:
                    ended = admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query LIKE 'LISTEN %' "
                        "AND pid <> pg_backend_pid()").fetchall()
                assert ended == [(True,)]
                await until(lambda: _true(not listener.listening), within=10)
                await until(lambda: _true(listener.listening), within=10)  # after 1 s
                await operators.announce()
                await until(lambda: _true(listener.received == 1), within=5)
    # listening, lost, listening again: each change wakes the agent to look
    assert len(wakes) == 4
    lost = [line for line in logs if "no longer wake the agent at once" in line]
    assert len(lost) == 1 and lost[0].startswith("WARNING|")
    assert "closed by the server" in lost[0]


async def test_sqlite_has_no_wake_ups_and_announcing_there_does_nothing(db_url: str) -> None:
    async with Store(db_url) as store:
        await store.announce()  # on Postgres a NOTIFY, on SQLite nothing (and no error)
        assert can_listen(store.engine) is (store.engine.dialect.name == "postgresql")
        if not can_listen(store.engine):
            with pytest.raises(ValueError, match="Postgres"):
                Listener(store.engine, lambda: None, clock=SystemClock())


async def test_a_running_agent_drives_an_announced_step_at_once_and_looks_once_a_minute(
        postgres_url: str, tmp_path: Path) -> None:
    async with Simulator(ServiceState()) as sim:
        settings = sim_settings(sim, postgres_url)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent, \
                Store(postgres_url) as operator:
            assert agent.wakeups is not None
            await until(lambda: _true(agent.wakeups is not None and agent.wakeups.listening),
                        within=10)
            # Another process opens an incident (a target this agent does not poll, so only
            # the supervisor can find it): unannounced, the next look is a minute away.
            engine = IncidentEngine(operator, clock=SystemClock(),
                                    outbox=policy_from_settings(settings))
            opened = await engine.open(target="elsewhere", kind="memory_high",
                                       severity="critical", reason="seen by another process")
            iid = opened.incident.incident_id
            await anyio.sleep(2.0)  # twenty short periods of this agent
            assert [t.trigger for t in (await operator.timeline(iid)).transitions] == ["open"]
            await operator.announce()
            took = await until(lambda: _driven(operator, iid), within=5)
            assert took < 2.0
            # The opening's notifications, queued by the other process, go out too.
            await until(lambda: _delivered(operator, iid), within=5)


async def _driven(store: Store, iid: IncidentId) -> bool:
    return len((await store.timeline(iid)).transitions) > 1


async def _delivered(store: Store, iid: IncidentId) -> bool:
    notes = (await store.timeline(iid)).notifications
    return bool(notes) and all(n.status == "delivered" for n in notes)


class Listed:
    """A store with one active incident, counting the supervisor's looks."""

    def __init__(self, state: str) -> None:
        self.looks = 0
        self.incident = Incident(id=7, fingerprint="api:memory_high", target="api",
                                 kind="memory_high", severity="critical", state=state,
                                 version=1)

    async def list_incidents(self, *, states: Sequence[str] = (), kind: str | None = None,
                             target: str | None = None, since: datetime | None = None,
                             until: datetime | None = None, limit: int = 100
                             ) -> list[Incident]:
        self.looks += 1
        return [self.incident]


@pytest.mark.parametrize(("heard", "ends", "looks"), [
    (True, "detected", 1),      # parked, wake-ups heard: the next look is a minute away
    (False, "detected", 11),    # not heard: every second
    (True, "fails", 11),        # a driver stopped by an error: looked at again every second
    (True, "remediating", 11),  # a driver left its incident active: likewise
])
async def test_the_supervisor_looks_a_minute_apart_only_when_heard_and_nothing_stopped_short(
        heard: bool, ends: str, looks: int) -> None:
    clock = ManualClock()
    store = Listed("detected")

    async def drive(iid: IncidentId) -> Incident:
        if ends == "fails":
            raise StoreUnavailable("database away")
        store.incident.state = ends
        return store.incident

    supervisor = Supervisor(store, drive, clock=clock, short=0.1, heard=lambda: heard)
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await clock.run_for(10.5)
        assert store.looks == looks
        if heard and ends == "detected":
            await clock.run_for(SAFETY_LOOK - 10)
            assert store.looks == 2
        tg.cancel_scope.cancel()


async def test_an_idle_queue_is_looked_at_a_minute_apart_only_while_wake_ups_are_heard(
        db_url: str, store: Store, clock: ManualClock) -> None:
    heard = [True]
    channel = LogChannel()
    dispatcher = Dispatcher(store, [channel], clock=clock, heard=lambda: heard[0])
    assert await dispatcher.deliver_due(channel) == SAFETY_LOOK
    heard[0] = False
    assert await dispatcher.deliver_due(channel) == POLL_INTERVAL
