"""Snapshot reads: one round trip on Postgres, and a connection left as it was found."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

from incident_fsm.errors import IncidentNotFound, StoreUnavailable
from incident_fsm.models import Incident, IncidentId, Transition
from incident_fsm.persistence import database as db
from incident_fsm.persistence.effects import _table
from incident_fsm.persistence.snapshot import Read, read_snapshot_direct
from incident_fsm.persistence.store import Store

pytestmark = pytest.mark.anyio

INCIDENT = _table(Incident)
BY_ID = Read(Incident, sa.select(INCIDENT).where(INCIDENT.c.id == sa.bindparam("incident_id")))
ALL = Read(Incident, sa.select(INCIDENT).order_by(INCIDENT.c.id))


async def test_reads_go_out_in_one_pipeline_inside_a_read_only_snapshot(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    real = psycopg.AsyncConnection.execute

    async def execute(self: psycopg.AsyncConnection[Any], query: Any, *args: Any,
                      **kwargs: Any) -> Any:
        text = str(query)
        sent.append((text if text.startswith("BEGIN") else text.split()[0])
                    + (" pipeline" if self._pipeline else ""))
        return await real(self, query, *args, **kwargs)

    async with Store(postgres_url) as store:
        # what the snapshot must not be able to do: read committed by default
        assert await store._run(_setting, "default_transaction_isolation") == "read committed"
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", execute)
        with pytest.raises(IncidentNotFound):
            await store.timeline(IncidentId(-1))
        monkeypatch.undo()
        assert sent == ["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY pipeline",
                        *["SELECT pipeline"] * 4, "COMMIT pipeline"]
        assert await store._run(_status) == TransactionStatus.IDLE  # and kept


async def test_a_failed_statement_closes_its_connection_and_the_next_read_works(
    postgres_url: str,
) -> None:
    async with Store(postgres_url) as store:
        mine = await store._run(_pid)
        with pytest.raises(sa.exc.DBAPIError) as info:
            await store._run(read_snapshot_direct, (ALL, BY_ID), store.engine.dialect,
                             {"incident_id": "not a number"})
        assert isinstance(info.value.orig, psycopg.errors.InvalidTextRepresentation)
        # Left inside its snapshot, so not kept: the next call has another connection.
        assert await store._run(_pid) != mine
        assert await store._run(read_snapshot_direct, (BY_ID,), store.engine.dialect,
                                {"incident_id": -1}) == [[]]


async def _pid(conn: Any) -> int:
    return int(conn.info.backend_pid)


async def _status(conn: Any) -> Any:
    return conn.info.transaction_status


async def _setting(conn: Any, name: str) -> str:
    cursor = await conn.execute(f"SHOW {name}")
    row = await cursor.fetchone()
    return str(row[0])


async def test_dead_connections_cost_one_failed_call_then_are_all_replaced(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A silent death of every idle connection (a failover behind the same address, a
    # network change): nothing at checkout shows it (see database._ping_idle_connections).
    monkeypatch.setattr(db, "_readable", lambda _: False)
    held = anyio.Event()
    pids: set[int] = set()

    async def hold(conn: Any) -> None:
        pids.add(int(conn.info.backend_pid))
        if len(pids) == 3:
            held.set()
        await held.wait()

    async with Store(postgres_url) as store:
        async with anyio.create_task_group() as tg:  # three connections, left idle
            for _ in range(3):
                tg.start_soon(store._run, hold)
        admin = db.create_engine(postgres_url)
        try:
            with admin.begin() as conn:
                for pid in pids:
                    conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"),
                                 {"pid": pid})
        finally:
            admin.dispose()
        # Used a moment ago, so not pinged: the first read meets a dead connection...
        with pytest.raises(StoreUnavailable, match="nothing was written"):
            await store.timeline(IncidentId(1))
        # ...and the pool let every idle one go with it: the next reads all work.
        for _ in range(3):
            with pytest.raises(IncidentNotFound):
                await store.timeline(IncidentId(-1))
        assert await store._run(_pid) not in pids


async def test_the_timeline_agrees_with_what_was_written(store: Store) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    opened = await store.open_incident(target="api", kind="disk_high", severity="critical",
                                       at=at, deadline_at=None, reason="91%")
    timeline = await store.timeline(opened.incident.incident_id)
    assert timeline.incident == opened.incident
    assert timeline.incident.opened_at == at and timeline.incident.opened_at.tzinfo is not None
    (first,) = timeline.transitions
    assert isinstance(first, Transition) and (first.seq, first.dest, first.reason) == (
        1, "detected", "91%")
    assert first.at == at and first.details == {}
    assert (timeline.actions, timeline.notifications) == ([], [])
