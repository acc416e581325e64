"""Postgres calls made on the event loop itself, over psycopg's async connections.

A call through a worker thread (`StoreCore._run`) pays for the hop there and
back, SQLAlchemy's connection and the pool's checkout: for a step that is one
statement, more than the statement. Measured on this machine (2 cores,
Postgres on loopback), a step cost 0.96-1.02 ms of the agent's CPU through a
thread and 0.43-0.53 ms here; `show`'s snapshot 0.48 ms and 0.26 ms. So on
Postgres the calls the agent and the operator make most go here: a step
without an attempt, an opening, a lease renewal, a flush of health rows,
`show`'s snapshot and the reads of one table.
Everything else, and everything on SQLite, stays on the worker threads.

Statements are still SQLAlchemy's, built once by the repositories; `prepare`
compiles one once for psycopg and keeps how its values are bound and its
columns read, so running it costs the driver's work and nothing more. A
statement SQLAlchemy must finish per call (an expanding `IN`) is not prepared
here, and goes through the worker threads.

`DirectPool` keeps the connections (autocommit: a statement commits on its
own, a snapshot names its own `BEGIN`). It hands out one that was idle only
after checking it as the thread pool does (`database._ping_idle_connections`):
a socket with bytes waiting is most likely the server's goodbye, and one idle
longer than `PING_IDLE_AFTER` is pinged. A connection that ended a call in any
state but idle (a call cancelled at its deadline, a failed pipeline) is
closed, never reused.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from incident_fsm.persistence import database

T = TypeVar("T")

#: A psycopg async connection (imported where used: only a Postgres store gets here).
Connection = Any


#: Stands for the value of a parameter the caller must give.
_REQUIRED: Any = object()


@dataclass(frozen=True)
class Prepared:
    """One statement compiled for psycopg: its SQL, how values bind, how columns read."""

    sql: str
    #: each parameter's name, how its value binds, and the value the statement holds
    #: for it (a literal SQLAlchemy made a parameter; `_REQUIRED` if the caller gives it)
    binds: tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The driver's parameters: `values`, and the statement's own for the rest."""
        params = {}
        for name, bind, own in self.binds:
            value = values.get(name, own)
            if value is _REQUIRED:
                # As SQLAlchemy refuses it, rather than binding NULL in its place.
                raise sa.exc.ArgumentError(f"a value is required for parameter {name!r}")
            params[name] = value if bind is None or value is None else bind(value)
        return params

    def rows(self, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """`rows` as column name -> value, read as SQLAlchemy reads them."""
        names, processors = self.names, self.processors
        if not any(processors):
            return [dict(zip(names, row, strict=True)) for row in rows]
        return [{n: (v if p is None else p(v)) for n, p, v in zip(names, processors, row,
                                                                  strict=True)}
                for row in rows]


# The repositories build their statements once (module constants, or cached per shape),
# so these live as long as the process: keyed by identity, each kept alive by its entry
# so that the id is never reused. Past the cap a statement is compiled on every call.
_PREPARED: dict[tuple[int, str], tuple[ClauseElement, Prepared | None]] = {}
_PREPARED_CAP = 1024


def prepare(statement: ClauseElement, dialect: Dialect) -> Prepared | None:
    """`statement` compiled once for `dialect` (psycopg), or None if SQLAlchemy must
    finish it per call (expanding, literal or computed parameters): run that one
    through it."""
    key = (id(statement), f"{dialect.name}+{dialect.driver}")
    found = _PREPARED.get(key)
    if found is not None:
        return found[1]
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)  # a statement, not DDL
    prepared: Prepared | None = None
    if not (compiled.literal_execute_params or compiled.post_compile_params
            or any(p.callable is not None for p in compiled.binds.values())):
        # Each parameter once, by the name it has in the SQL (`binds` also holds
        # anonymous ones under their internal keys).
        binds = tuple((name, param.type.dialect_impl(dialect).bind_processor(dialect),
                       _REQUIRED if param.required else param.value)
                      for param, name in compiled.bind_names.items())
        # A select's columns, or what an insert or update returns (nothing: no rows).
        columns = list(getattr(statement, "exported_columns", ()))
        prepared = Prepared(
            str(compiled), binds, tuple(str(c.key) for c in columns),
            tuple(c.type.dialect_impl(dialect).result_processor(dialect, None)
                  for c in columns))
    if len(_PREPARED) < _PREPARED_CAP:
        _PREPARED[key] = (statement, prepared)
    return prepared


async def fetch(conn: Connection, prepared: Prepared,
                values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows `prepared` returns with `values`, as column name -> value."""
    cursor = await conn.execute(prepared.sql, prepared.params(values))
    return prepared.rows(await cursor.fetchall() if cursor.description else [])


class DirectPool:
    """psycopg async connections to one database, kept for reuse (see the module)."""

    def __init__(self, connect_args: Mapping[str, Any], *, keep: int) -> None:
        self._args = dict(connect_args)  # the password is in here: never print it
        self._keep = keep
        self._idle: list[tuple[Connection, float]] = []
        self._closed = False

    async def call(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """`work` on a connection of the pool. psycopg's errors come out wrapped as
        SQLAlchemy wraps what it runs (`DBAPIError`, the same subclasses), so the caller
        names them as it names a worker thread's (`StoreCore._run`)."""
        import psycopg
        from psycopg.pq import TransactionStatus

        try:
            conn = await self._checkout()
        except psycopg.Error as exc:  # no connection to be had
            raise sa.exc.DBAPIError.instance(None, None, exc, psycopg.Error,
                                             hide_parameters=True,
                                             connection_invalidated=True) from exc
        ended = False
        try:
            result = await work(conn)
            ended = True
            return result
        except psycopg.Error as exc:
            # A failed statement in autocommit leaves the connection idle and usable.
            ended = not conn.closed and not conn.broken
            raise sa.exc.DBAPIError.instance(
                None, None, exc, psycopg.Error, hide_parameters=True,
                connection_invalidated=not ended) from exc
        finally:
            # Anything else (a cancelled call, a transaction or pipeline left open) leaves
            # it in a state no next call should inherit.
            if (ended and not self._closed and len(self._idle) < self._keep
                    and conn.info.transaction_status == TransactionStatus.IDLE):
                self._idle.append((conn, time.monotonic()))
            else:
                if conn.closed or conn.broken:
                    # What killed it (a server restart, a failover, a network change)
                    # most likely killed the idle ones too, unseen if no goodbye reached
                    # them: let them all go, as SQLAlchemy's pool does, rather than fail
                    # one call after another on them.
                    await self._discard_idle()
                await conn.close()

    async def _discard_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()  # it awaits nothing: safe in a cancelled call's cleanup

    async def _checkout(self) -> Connection:
        import psycopg

        while self._idle:
            conn, used_at = self._idle.pop()
            if conn.closed or conn.broken or database._readable(conn):
                await conn.close()
                continue
            if time.monotonic() - used_at >= database.PING_IDLE_AFTER:
                try:
                    await conn.execute("SELECT 1")
                except psycopg.Error:
                    await conn.close()
                    continue
            return conn
        # After `close` a call still gets a connection (closed when it ends), as a
        # worker thread's call gets one from a disposed SQLAlchemy pool.
        return await psycopg.AsyncConnection.connect(**self._args, autocommit=True)

    async def close(self) -> None:
        """Close the idle connections; one still in a call is closed when it ends."""
        self._closed = True
        await self._discard_idle()

