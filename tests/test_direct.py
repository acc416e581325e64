"""Calls on the event loop (`persistence.direct`): prepared statements, the connection
pool's reuse and limits, deadlines, and errors named as a worker thread's are."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from incident_fsm.errors import SchemaNotReady, StoreUnavailable
from incident_fsm.models import HealthRow, Incident
from incident_fsm.persistence import database as db
from incident_fsm.persistence import direct
from incident_fsm.persistence.effects import _table
from incident_fsm.persistence.store import Store

from .conftest import create_database, drop_database

pytestmark = pytest.mark.anyio

INCIDENT = _table(Incident)


async def _pid(conn: Any) -> int:
    return int(conn.info.backend_pid)


async def _gone(postgres_url: str, pids: set[int]) -> bool:
    """Whether all of `pids` stop being server processes within 5 s (a backend exits a
    moment after its client said goodbye)."""
    admin = db.create_engine(postgres_url)
    try:
        with anyio.move_on_after(5):
            while True:
                with admin.connect() as conn:
                    alive = set(conn.execute(sa.text("SELECT pid FROM pg_stat_activity"))
                                .scalars())
                if not pids & alive:
                    return True
                await anyio.sleep(0.05)
        return False
    finally:
        admin.dispose()


def _psycopg_dialect() -> Any:
    from sqlalchemy.dialects.postgresql import psycopg as dialects

    return dialects.dialect()


def test_a_statement_is_prepared_once_with_its_own_literals_and_readers() -> None:
    dialect = _psycopg_dialect()
    statement = sa.select(INCIDENT).where(INCIDENT.c.fingerprint == sa.bindparam("fp"),
                                          INCIDENT.c.state != "resolved")
    prepared = direct.prepare(statement, dialect)
    assert prepared is not None and direct.prepare(statement, dialect) is prepared
    params = prepared.params({"fp": "api:disk_high"})
    # the literal SQLAlchemy made a parameter keeps its value; ours is bound as given
    assert sorted(params.values(), key=str) == ["api:disk_high", "resolved"]
    assert prepared.names[:3] == ("id", "fingerprint", "target")
    with pytest.raises(sa.exc.ArgumentError, match="'fp'"):  # never NULL in its place
        prepared.params({})


def test_a_statement_sqlalchemy_must_finish_per_call_is_not_prepared() -> None:
    dialect = _psycopg_dialect()
    expanding = sa.select(INCIDENT).where(
        INCIDENT.c.state.in_(sa.bindparam("states", expanding=True)))
    assert direct.prepare(expanding, dialect) is None


async def test_calls_reuse_one_connection_and_never_open_more_than_the_lane_allows(
    postgres_url: str
) -> None:
    async with Store(postgres_url, max_threads=2) as store:
        first = await store._run(_pid)
        assert await store._run(_pid) == first  # kept, not opened again
        seen: set[int] = set()
        running = 0
        most = 0

        async def call() -> None:
            async def hold(conn: Any) -> None:
                nonlocal running, most
                running += 1
                most = max(most, running)
                seen.add(int(conn.info.backend_pid))
                await conn.execute("SELECT pg_sleep(0.02)")
                running -= 1
            await store._run(hold)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(call)
        assert most == 2 and len(seen) == 2  # the shared lane's two
    assert await _gone(postgres_url, seen | {first})  # closing the store closed them


async def test_a_call_past_its_deadline_is_unavailable_and_its_connection_closed(
    postgres_url: str
) -> None:
    used: list[Any] = []

    async def slow(conn: Any) -> None:
        used.append(conn)
        await conn.execute("SELECT pg_sleep(3)")

    async with Store(postgres_url) as store:
        mine = await store._run(_pid)
        store.call_timeout = 0.3
        with anyio.fail_after(2.5):  # the call's own deadline ends it, not the statement
            with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.3s"):
                await store._run(slow)
        store.call_timeout = 30
        # Closed, not kept: the next call gets a connection of its own.
        assert used[0].closed and await store._run(_pid) != mine


async def test_a_connection_left_in_a_transaction_is_not_reused(postgres_url: str) -> None:
    async def begin(conn: Any) -> int:
        await conn.execute("BEGIN")
        return int(conn.info.backend_pid)

    async def status(conn: Any) -> Any:
        return conn.info.transaction_status

    from psycopg.pq import TransactionStatus

    async with Store(postgres_url) as store:
        left_open = await store._run(begin)
        assert await store._run(_pid) != left_open
        assert await store._run(status) == TransactionStatus.IDLE
    assert await _gone(postgres_url, {left_open})  # closed, not merely set aside


async def test_an_unreachable_database_is_unavailable_without_secrets() -> None:
    url = "postgresql+psycopg://ops:s3cr3t-pw@127.0.0.1:9/incidents"
    async with Store(url) as store:
        with pytest.raises(StoreUnavailable) as info:
            await store.find_open("api:disk_high")  # a call on the event loop
    assert "s3cr3t" not in str(info.value) and "nothing was written" in str(info.value)
    assert "connection refused" in str(info.value)


async def test_missing_tables_are_schema_not_ready() -> None:
    url = create_database()  # no migrations
    try:
        async with Store(url) as store:
            with pytest.raises(SchemaNotReady, match="incident-fsm db upgrade"):
                await store.find_open("api:disk_high")
    finally:
        drop_database(url)


async def test_a_flush_of_health_rows_is_all_or_nothing(postgres_url: str) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    good = HealthRow(target="flush-a", at=at, source="/health", ok=True, latency_ms=3.0)
    # NOT NULL: the second insert fails
    broken = HealthRow(target="flush-a", at=at, source="/health", ok=None,  # type: ignore[arg-type]
                       latency_ms=3.0)
    async with Store(postgres_url) as store:
        with pytest.raises(sa.exc.IntegrityError):
            await store.record_health_check(good, broken)
        assert await store.health_checks(target="flush-a") == []  # the first went too
        await store.record_health_check(good, good)  # and the connection is usable
        assert len(await store.health_checks(target="flush-a")) == 2
