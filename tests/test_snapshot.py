"""Snapshot reads: one round trip on Postgres, and a connection left as it was found."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

from incident_fsm.errors import IncidentNotFound, StoreUnavailable
from incident_fsm.models import Incident, IncidentId, Transition
from incident_fsm.persistence import database as db
from incident_fsm.persistence.effects import _table
from incident_fsm.persistence.snapshot import Read, read_snapshot
from incident_fsm.persistence.store import Store

pytestmark = pytest.mark.anyio

INCIDENT = _table(Incident)
BY_ID = Read(Incident, sa.select(INCIDENT).where(INCIDENT.c.id == sa.bindparam("incident_id")))
ALL = Read(Incident, sa.select(INCIDENT).order_by(INCIDENT.c.id))


@pytest.fixture
def one_connection(postgres_url: str) -> Iterator[sa.Engine]:
    """An engine whose every read reuses the same single pooled connection."""
    engine = sa.create_engine(db.resolve_url(postgres_url), pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _state(engine: sa.Engine) -> tuple[Any, bool, int]:
    with engine.connect() as conn:
        raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
        return raw.info.transaction_status, raw.autocommit, raw.info.backend_pid


def test_reads_go_out_in_one_pipeline_inside_a_read_only_snapshot(
    one_connection: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    real = psycopg.Connection.execute

    def execute(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        text = str(query)
        sent.append((text if text.startswith("BEGIN") else text.split()[0])
                    + (" pipeline" if self._pipeline else ""))
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    with one_connection.begin() as conn:  # what the snapshot must not be able to do
        isolation = conn.execute(sa.text("SHOW default_transaction_isolation")).scalar_one()
    assert isolation == "read committed"
    sent.clear()
    read_snapshot(one_connection, (BY_ID, ALL), {"incident_id": 1})
    assert sent == ["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY pipeline",
                    "SELECT pipeline", "SELECT pipeline", "COMMIT pipeline"]
    assert _state(one_connection)[:2] == (TransactionStatus.IDLE, False)


def test_a_failed_statement_leaves_the_connection_clean_and_usable(
    one_connection: sa.Engine,
) -> None:
    before = _state(one_connection)
    with pytest.raises(sa.exc.DBAPIError) as info:
        read_snapshot(one_connection, (ALL, BY_ID), {"incident_id": "not a number"})
    assert not info.value.connection_invalidated
    assert isinstance(info.value.orig, psycopg.errors.InvalidTextRepresentation)
    assert _state(one_connection) == before  # same connection, idle, autocommit off
    assert read_snapshot(one_connection, (BY_ID,), {"incident_id": -1}) == [[]]


def test_a_connection_the_ping_left_in_a_transaction_is_rolled_back_first(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.create_engine(db.resolve_url(postgres_url))
    try:
        read_snapshot(engine, (BY_ID,), {"incident_id": -1})
        before = _state(engine)
        monkeypatch.setattr(db, "PING_IDLE_AFTER", 0.0)  # the checkout pings: SELECT 1
        assert read_snapshot(engine, (BY_ID,), {"incident_id": -1}) == [[]]
        monkeypatch.setattr(db, "PING_IDLE_AFTER", 3600.0)
        assert _state(engine) == before  # the same connection, idle, autocommit off
    finally:
        engine.dispose()


async def test_a_dead_connection_is_unavailable_then_replaced(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A silent death: nothing at checkout shows it (see database._ping_idle_connections).
    monkeypatch.setattr(db, "_readable", lambda _: False)

    async def backend_pid(conn: Any) -> int:
        return int(conn.info.backend_pid)

    async with Store(postgres_url) as store:
        mine = await store._run(backend_pid)  # the connection `timeline` gets next
        admin = db.create_engine(postgres_url)
        try:
            with admin.begin() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": mine})
        finally:
            admin.dispose()
        # Used a moment ago, so not pinged: the read itself meets the dead connection.
        with pytest.raises(StoreUnavailable, match="nothing was written"):
            await store.timeline(IncidentId(1))
        with pytest.raises(IncidentNotFound):  # the pool let the dead one go
            await store.timeline(IncidentId(-1))
        assert await store._run(backend_pid) != mine


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
