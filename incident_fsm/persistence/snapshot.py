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
columns, with named bind parameters. The statements are compiled once per
dialect; the rows become models as the ORM builds them (`models.from_row`):
building them through `__init__` cost more than the round trips saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine
from sqlmodel import SQLModel

from incident_fsm.models import from_row

M = TypeVar("M", bound=SQLModel)

#: A snapshot that cannot write: the reads agree with each other and lock nothing.
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


@dataclass(frozen=True, eq=False)
class Read(Generic[M]):
    """One statement of a snapshot and the model its rows become."""

    model: type[M]
    statement: sa.Select[Any]
    _compiled: dict[str, _Compiled] = field(default_factory=dict, repr=False)

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            # Compiled once: SQLAlchemy caches compilation only for what it executes itself.
            compiled = self.statement.compile(dialect=dialect)
            columns = list(self.statement.selected_columns)
            found = _Compiled(str(compiled), tuple(compiled.params),
                              tuple(str(c.key) for c in columns),
                              tuple(c.type.result_processor(dialect, None) for c in columns))
            self._compiled[dialect.name] = found
        return found

    def models(self, names: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[M]:
        return [from_row(self.model, dict(zip(names, row, strict=True))) for row in rows]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    parameters: tuple[str, ...]
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def process(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        if not any(self.processors):
            return [tuple(r) for r in rows]
        return [tuple(v if p is None else p(v) for p, v in zip(self.processors, r, strict=True))
                for r in rows]


def read_snapshot(engine: Engine, reads: Sequence[Read[Any]],
                  params: Mapping[str, Any]) -> list[list[Any]]:
    """The models each of `reads` selects with `params`, in order, from one snapshot."""
    with engine.connect() as conn:
        if engine.dialect.name != "postgresql":
            with conn.begin():
                return [read.models(read.statement.selected_columns.keys(),
                                    conn.execute(read.statement, dict(params)).all())
                        for read in reads]
        compiled = [read.compiled(engine.dialect) for read in reads]
        rows = _pipelined(conn, [(c.sql, {k: params[k] for k in c.parameters})
                                 for c in compiled])
        return [read.models(c.names, c.process(r))
                for read, c, r in zip(reads, compiled, rows, strict=True)]


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
