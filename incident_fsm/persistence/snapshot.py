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
round trips saved. On Postgres the store reads a snapshot on the event loop
(`read_snapshot_direct`); `read_snapshot` is SQLite's, in a worker thread.
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
    """The models each of `reads` selects with `params`, in order, from one snapshot:
    one transaction on SQLite (a worker-thread call; Postgres reads a snapshot on the
    event loop, `read_snapshot_direct`)."""
    with engine.connect() as conn, conn.begin():
        return [read.models(row._mapping for row in conn.execute(read.statement, dict(params)))
                for read in reads]


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

