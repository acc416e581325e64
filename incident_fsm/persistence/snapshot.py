"""Several reads in one round trip, all from one snapshot: what the operator's reads share.

`show ID` reads an incident and its transitions, attempts and notifications:
four statements. One after another they cost four round trips (plus BEGIN and
ROLLBACK), about fifteen times the server's own execution time. On Postgres
they go out together in psycopg's pipeline mode, inside one read-only
REPEATABLE READ transaction, so they cost one round trip and every part
agrees with the others: no step lands between reading the incident and its
history. On SQLite they run one after another in one transaction (a snapshot
there too).

Each read is a `Read`: a model and a statement selecting its table's
columns, with named bind parameters. The statements are compiled once
(`direct.prepare`); the rows become models as the ORM builds them
(`models.from_row`): building them through `__init__` cost more than the
round trips saved. The store reads a snapshot on the event loop
(`read_snapshot_direct`) on Postgres; `read_snapshot` is the same read in a
worker thread, and SQLite's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine
from sqlmodel import SQLModel

from incident_fsm.models import from_row
from incident_fsm.persistence import direct

M = TypeVar("M", bound=SQLModel)

#: A snapshot that cannot write: the reads agree with each other and lock nothing.
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


@dataclass(frozen=True)
class Read(Generic[M]):
    """One statement of a snapshot and the model its rows become."""

    model: type[M]
    statement: sa.Select[Any]

    def prepared(self, dialect: Dialect) -> direct.Prepared:
        prepared = direct.prepare(self.statement, dialect)
        assert prepared is not None, "a snapshot's statements are complete as built"
        return prepared

    def models(self, rows: Iterable[Mapping[Any, Any]]) -> list[M]:
        return [from_row(self.model, row) for row in rows]


def read_snapshot(engine: Engine, reads: Sequence[Read[Any]],
                  params: Mapping[str, Any]) -> list[list[Any]]:
    """The models each of `reads` selects with `params`, in order, from one snapshot."""
    with engine.connect() as conn:
        if engine.dialect.name != "postgresql":
            with conn.begin():
                return [read.models(row._mapping for row in
                                    conn.execute(read.statement, dict(params)))
                        for read in reads]
        prepared = [read.prepared(engine.dialect) for read in reads]
        rows = _pipelined(conn, [(p.sql, p.params(params)) for p in prepared])
        return [read.models(p.rows(r)) for read, p, r in zip(reads, prepared, rows, strict=True)]


async def read_snapshot_direct(conn: direct.Connection, reads: Sequence[Read[Any]],
                               dialect: Dialect, params: Mapping[str, Any]) -> list[list[Any]]:
    """`read_snapshot` on a connection of `direct`'s (Postgres, on the event loop). A
    statement that fails leaves the connection in its snapshot: the pool closes it."""
    prepared = [read.prepared(dialect) for read in reads]
    async with conn.pipeline():
        await conn.execute(BEGIN_SNAPSHOT)
        cursors = [await conn.execute(p.sql, p.params(params)) for p in prepared]
        await conn.execute("COMMIT")
    return [read.models(p.rows(await cursor.fetchall()))
            for read, p, cursor in zip(reads, prepared, cursors, strict=True)]


def _pipelined(conn: sa.Connection, statements: Sequence[tuple[str, dict[str, Any]]]
               ) -> list[list[tuple[Any, ...]]]:
    import psycopg  # the Postgres driver: only a Postgres store gets here
    from psycopg.pq import TransactionStatus

    raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
    sent = ";\n".join(sql for sql, _ in statements)  # which one failed, psycopg does not say
    try:
        if raw.info.transaction_status != TransactionStatus.IDLE:
            raw.rollback()  # left open by whoever used it last: start clean
        # Autocommit only so that psycopg adds no BEGIN of its own: ours names the snapshot.
        raw.autocommit = True
        try:
            with raw.pipeline():
                raw.execute(BEGIN_SNAPSHOT)
                cursors = [raw.execute(sql, parameters) for sql, parameters in statements]
                raw.execute("COMMIT")
            return [cursor.fetchall() for cursor in cursors]
        finally:
            if not raw.broken and not raw.closed:
                if raw.info.transaction_status != TransactionStatus.IDLE:
                    raw.execute("ROLLBACK")  # a statement failed: COMMIT never ran
                raw.autocommit = False
    except psycopg.Error as exc:
        # Wrapped as SQLAlchemy wraps what it runs, so the store names the cause the
        # same way (and a dead connection leaves the pool, as it would there).
        dead = raw.broken or raw.closed
        if dead:
            conn.invalidate()
        raise sa.exc.DBAPIError(sent, None, exc, hide_parameters=True,
                                connection_invalidated=dead) from exc
