"""The agents' heartbeat: rows in `lease` that say which replicas are alive, and until when."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from incident_fsm.errors import InvalidInput, StoreUnavailable
from incident_fsm.persistence.journal import JournalingStore
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.heartbeat import Heartbeat
from incident_fsm.runtime.leader import LeaderElector
from incident_fsm.testing import ManualClock

from .logcapture import captured_logs
from .scenario import until
from .support import advance_when_waiting, wait_until
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


async def test_a_beat_is_seen_until_its_ttl_runs_out_and_a_new_beat_renews_it(
    store: Store, clock: ManualClock
) -> None:
    t0 = clock.now()
    assert await store.agents_seen(t0) == []
    assert await store.beat("host-a:1", now=t0, ttl=30) is True
    assert await store.beat("host-b:2", now=t0 + _s(10), ttl=30) is True
    assert await store.agents_seen(t0 + _s(29)) == [
        ("host-a:1", t0 + _s(30)), ("host-b:2", t0 + _s(40))]
    assert await store.agents_seen(t0 + _s(30)) == [("host-b:2", t0 + _s(40))]
    assert await store.beat("host-a:1", now=t0 + _s(35), ttl=30)
    assert await store.agents_seen(t0 + _s(50)) == [("host-a:1", t0 + _s(65))]
    await store.end_beat("host-a:1")
    assert await store.agents_seen(t0 + _s(50)) == []


async def test_heartbeats_and_the_leader_lease_leave_each_other_alone(
    store: Store, clock: ManualClock
) -> None:
    now = clock.now()
    await store.acquire_lease("agent-leader", "host-z:9", now=now, ttl=15)
    assert await store.agents_seen(now) == []  # a leader lease is no heartbeat
    await store.beat("host-a:1", now=now, ttl=30)
    lease = await store.acquire_lease("agent-leader", "host-a:1", now=now, ttl=15)
    assert lease.holder == "host-z:9"  # beating does not take or free the leader lease
    assert [replica for replica, _ in await store.agents_seen(now)] == ["host-a:1"]


async def test_agents_lists_the_living_and_the_crashed_with_leader_version_and_start(
    store: Store, clock: ManualClock
) -> None:
    t0 = clock.now()
    await store.beat("host-a:1", now=t0, ttl=30, version="1.2.3")
    await store.beat("host-b:2", now=t0, ttl=30, version="1.2.4")
    await store.acquire_lease("agent-leader", "host-b:2", now=t0, ttl=15)
    await store.beat("host-b:2", now=t0 + _s(10), ttl=30, version="1.2.4")
    # host-a crashed: its row expires but is still shown (not alive) for a day.
    seen = {a.replica: a for a in await store.agents(t0 + _s(35))}
    assert (seen["host-a:1"].alive, seen["host-a:1"].leader, seen["host-a:1"].version) == (
        False, False, "1.2.3")
    b = seen["host-b:2"]
    assert (b.alive, b.version, b.started_at, b.last_beat) == (True, "1.2.4", t0, t0 + _s(10))
    assert not b.leader  # its lease ran out at t0 + 15
    await store.acquire_lease("agent-leader", "host-b:2", now=t0 + _s(35), ttl=15)
    assert [a.replica for a in await store.agents(t0 + _s(36)) if a.leader] == ["host-b:2"]
    assert [a.replica for a in await store.agents(t0 + _s(86500))] == []


async def test_a_lease_renewal_writes_its_holders_heartbeat_in_the_same_statement(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the store sends through SQLAlchemy (worker threads) and on the event loop
    # (psycopg's async cursors, see persistence.direct).
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda *args: statements.append(args[2]))
    real = psycopg.AsyncCursor.execute

    async def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))
        return await real(cursor, query, *args, **kwargs)
    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute)
    t0 = clock.now()
    lease = await store.acquire_lease("agent-leader", "host-a:1", now=t0, ttl=15, beat_ttl=30,
                                      version="1.2.3")
    assert lease.holder == "host-a:1"
    # Postgres: one statement; SQLite: two in one transaction (it has no writing CTEs).
    writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "WITH"))]
    assert len(writes) == (1 if store.engine.dialect.name == "postgresql" else 2)
    [seen] = await store.agents(t0 + _s(10))
    assert (seen.replica, seen.alive, seen.leader, seen.version, seen.started_at) == (
        "host-a:1", True, True, "1.2.3", t0)
    # A standby's attempt beats too, and still cannot take a lease that has not expired.
    lease = await store.acquire_lease("agent-leader", "host-b:2", now=t0 + _s(5), ttl=15,
                                      beat_ttl=30)
    assert lease.holder == "host-a:1"
    assert [r for r, _ in await store.agents_seen(t0 + _s(31))] == ["host-b:2"]
    # The first beat's time is kept as the holder renews.
    await store.acquire_lease("agent-leader", "host-a:1", now=t0 + _s(10), ttl=15, beat_ttl=30)
    seen_a = {a.replica: a for a in await store.agents(t0 + _s(11))}["host-a:1"]
    assert (seen_a.started_at, seen_a.last_beat, seen_a.leader) == (t0, t0 + _s(10), True)
    with pytest.raises(InvalidInput):
        await store.acquire_lease("agent-leader", "host-a:1", now=t0, ttl=15, beat_ttl=0)


async def test_while_the_lease_renewals_carry_the_beat_the_heartbeat_writes_none_itself(
    store: Store, clock: ManualClock
) -> None:
    counting = Flaky(store)
    counting.failures = []
    # 12 s, not 10: a wake-up of its own apart from the renewals' lets the test step time
    # only once each renewal is done.
    heartbeat = Heartbeat(counting, clock, "host-a:1", every=12)
    elector = _Elector(store, clock=clock, holder="host-a:1", ttl=15, renew_every=5,
                       heartbeat=heartbeat)
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat.run)
        await wait_until(lambda: counting.beats == 1)  # its first beat, before any renewal
        await tg.start(elector.run)
        for _ in range(6):  # 30 s: six renewals, each carrying the beat
            await advance_when_waiting(clock, 5)
        await wait_until(lambda: clock.now() + _s(5) in clock.wakeups())
        assert counting.beats == 1
        assert await store.agents_seen(clock.now()) == [("host-a:1", clock.now() + _s(36))]
        elector.cut = True  # renewals fail: within one interval the heartbeat beats itself
        for _ in range(4):
            await advance_when_waiting(clock, 5)
        await wait_until(lambda: counting.beats == 2)
        tg.cancel_scope.cancel()


class _Elector(LeaderElector):
    cut = False

    async def try_acquire(self) -> bool:
        if self.cut:
            return False
        return await super().try_acquire()


async def test_the_heartbeat_says_which_version_beats(store: Store, clock: ManualClock) -> None:
    from incident_fsm.about import VERSION

    assert await Heartbeat(store, clock, "host-c:3").beat_once()
    [seen] = await store.agents(clock.now())
    assert seen.version == VERSION and VERSION not in ("", "unknown")


class Flaky:
    """A store whose first beats fail: the database away, then something unexpected."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failures: list[BaseException] = [StoreUnavailable("database unavailable"),
                                              RuntimeError("driver bug")]
        self.beats = 0

    async def beat(self, replica: str, *, now: datetime, ttl: float,
                   version: str | None = None) -> bool:
        self.beats += 1
        if self.failures:
            raise self.failures.pop(0)
        return await self.store.beat(replica, now=now, ttl=ttl, version=version)

    async def end_beat(self, replica: str) -> None:
        await self.store.end_beat(replica)


async def test_the_heartbeat_beats_on_its_clock_rides_out_errors_and_ends_its_row_on_stop(
    store: Store, clock: ManualClock
) -> None:
    flaky = Flaky(store)
    heartbeat = Heartbeat(flaky, clock, "host-a:1", every=10)
    assert heartbeat.ttl == 30  # three missed beats and the replica counts as gone
    t0 = clock.now()
    with captured_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.run)
            await advance_when_waiting(clock, 10)  # the first beat failed: it waits, alive
            await advance_when_waiting(clock, 10)  # so did the second
            await wait_until(lambda: clock.now() + _s(10) in clock.wakeups())
            assert flaky.beats == 3
            assert await store.agents_seen(clock.now()) == [("host-a:1", t0 + _s(20 + 30))]
            tg.cancel_scope.cancel()
    assert await store.agents_seen(clock.now()) == []  # a stopped agent is not alive
    warnings = [line for line in logs if line.startswith("WARNING|")]
    assert len(warnings) == 1 and "StoreUnavailable" in warnings[0]  # once per outage
    assert any("RuntimeError" in line for line in logs)
    assert any(line.startswith("INFO|") and "beating again" in line for line in logs)


async def test_a_heartbeat_needs_a_positive_interval(store: Store, clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="every"):
        Heartbeat(store, clock, "host-a:1", every=0)
    with pytest.raises(ValueError, match="ttl"):
        Heartbeat(store, clock, "host-a:1", every=10, ttl=5)


async def test_a_journaling_store_skips_a_beat_while_the_database_is_away(
    postgres_url: str, proxy: TcpProxy, clock: ManualClock, tmp_path: Path
) -> None:
    url = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    store = JournalingStore(url, journal_path=tmp_path / "agent.journal", call_timeout=2)
    try:
        proxy.cut("refuse")
        assert await store.beat("host-a:1", now=clock.now(), ttl=30) is False
        assert not (tmp_path / "agent.journal").exists()  # a beat is never journaled
        proxy.restore()
        assert await store.beat("host-a:1", now=clock.now(), ttl=30) is True
        assert [r for r, _ in await store.agents_seen(clock.now())] == ["host-a:1"]
    finally:
        await store.close()


async def test_a_running_agent_is_seen_alive_and_gone_once_it_stops(db_url: str) -> None:
    from datetime import UTC

    from incident_fsm import Agent
    from incident_fsm.settings import AgentSettings, Settings

    settings = Settings(agent=AgentSettings(database_url=db_url, leader_election=False))
    async with Store(db_url) as store:
        async with Agent(settings, environ={}) as agent:

            async def seen() -> bool:
                alive = await store.agents_seen(datetime.now(UTC))
                return [replica for replica, _ in alive] == [agent.replica]

            await until(seen, within=10)
        assert await store.agents_seen(datetime.now(UTC)) == []  # a clean stop says so at once
