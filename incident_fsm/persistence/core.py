"""What every repository of the store shares: the engine, worker threads, limits, error words.

Each public coroutine of a repository runs one short synchronous SQLAlchemy
unit of work in a worker thread through `StoreCore._run`, which also turns
driver errors into our own (`StoreUnavailable`, `SchemaNotReady`). On
Postgres the calls made most run on the event loop instead (`persistence.direct`),
through the same `_run`: same lanes, same deadline, same error words.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from functools import partial
from typing import Any, NoReturn, Self, TypeVar, overload

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, SQLModel

from incident_fsm.errors import (
    InvalidInput,
    SchemaNotReady,
    StoreUnavailable,
)
from incident_fsm.models import from_row
from incident_fsm.persistence import database, direct

T = TypeVar("T")
M = TypeVar("M", bound=SQLModel)

MAX_REASON = 4000
MAX_ACTOR = 200
MAX_EXCERPT = 4000
#: How often `open_incident` retries after losing a race on the fingerprint.
OPEN_RETRIES = 3
#: Worker threads kept for finding and opening incidents, beside the `max_threads` shared.
DETECTING_THREADS = 2
#: Names of the `lease` rows that are heartbeats (`Store.beat`), not leases.
HEARTBEAT_PREFIX = "heartbeat:"


def _check_text(name: str, value: str, limit: int) -> None:
    if not value or not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value)} characters long; the limit is {limit}")


def _json_safe(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name} must be JSON-serialisable: {exc}") from None
    result: dict[str, Any] = json.loads(text)
    return result


async def _direct_models(conn: direct.Connection, model: type[M], prepared: direct.Prepared,
                         params: Mapping[str, Any]) -> list[M]:
    return [from_row(model, row) for row in await direct.fetch(conn, prepared, params)]


def _is_missing_table(exc: DBAPIError) -> bool:
    name = type(exc.orig).__name__
    text = str(exc.orig).lower()
    return name == "UndefinedTable" or (name == "OperationalError" and "no such table" in text)


def _is_unavailable(exc: DBAPIError) -> bool:
    name = type(exc.orig).__name__
    return name in {"OperationalError", "InterfaceError", "QueryCanceled", "ConnectionTimeout"}


class StoreCore:
    """The connection, the worker threads and the error translation every repository shares."""

    def __init__(self, url: str, *, max_threads: int = 4,
                 call_timeout: float = database.STATEMENT_TIMEOUT + 5) -> None:
        resolved = database.resolve_url(url)
        # The password lives only inside the engine (which needs it and never prints
        # it); what the store shows of where it writes is this redacted text.
        # A connection for every thread of every lane (shared, detecting, urgent); on
        # Postgres only the shared lane's are kept while idle: the calls made most run
        # on `_direct`'s connections instead.
        self.engine: Engine = database.create_engine(
            resolved, connections=max_threads + DETECTING_THREADS + 1, kept=max_threads)
        # Reads and single statements on Postgres go without BEGIN and COMMIT: two round
        # trips of three. A read loses nothing by it (under READ COMMITTED each statement
        # sees its own snapshot inside a transaction too), and one statement is atomic on
        # its own. SQLite keeps its transactions: they are what serialises its writers.
        self._autocommit: Engine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.engine.dialect.name == "postgresql" else self.engine)
        self.url = database.redact(resolved)
        # The calls made most, on the event loop (see `direct`): as many connections
        # kept as the lanes below let run at once.
        self._direct: direct.DirectPool | None = (
            direct.DirectPool(database.driver_connect_args(self.engine),
                              keep=max_threads + DETECTING_THREADS + 1)
            if self.engine.dialect.name == "postgresql" else None)
        self._limiter = anyio.CapacityLimiter(max_threads)
        # A lane of its own for the lease and the heartbeat: queued behind a thousand
        # incidents' steps, a renewal came too late and the leader stopped acting.
        self._urgent = anyio.CapacityLimiter(1)
        # And one for finding and opening incidents: queued behind the steps of the
        # incidents already open, a thousand breaches at once waited up to 7.2 s between
        # their confirming poll and their opening (3.0-3.4 s with this lane and the
        # breach's one read, `opening_candidates`). Knowing what is wrong comes before
        # fixing what is already known. (A reopening is a step: the shared threads.)
        self._detecting = anyio.CapacityLimiter(DETECTING_THREADS)
        self.call_timeout = call_timeout
        self._in_flight = 0
        self._threads = 0  # includes calls abandoned after `call_timeout`
        self._threads_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    async def close(self, *, grace: float = 5.0) -> None:
        """Release the connections, after giving abandoned calls `grace` seconds to end."""
        with anyio.move_on_after(grace):
            while self._threads:  # noqa: ASYNC110 - worker threads cannot set an anyio.Event
                await anyio.sleep(0.05)
        if self._direct is not None:
            await self._direct.close()
        await anyio.to_thread.run_sync(self.engine.dispose)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def idle(self) -> bool:
        """No database call is in flight (lets virtual-time tests settle, see ManualClock)."""
        return self._in_flight == 0

    async def _run_urgent(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`_run` on the lane kept for liveness (the lease, the heartbeat)."""
        return await self._run(fn, *args, _lane=self._urgent, **kwargs)

    async def _run_detecting(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`_run` on the lane kept for finding and opening incidents."""
        return await self._run(fn, *args, _lane=self._detecting, **kwargs)

    @overload
    async def _run(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                   _lane: anyio.CapacityLimiter | None = None, **kwargs: Any) -> T: ...

    @overload
    async def _run(self, fn: Callable[..., T], /, *args: Any,
                   _lane: anyio.CapacityLimiter | None = None, **kwargs: Any) -> T: ...

    async def _run(self, fn: Callable[..., Any], /, *args: Any,
                   _lane: anyio.CapacityLimiter | None = None, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in a worker thread; or, if `fn` is a coroutine function
        (Postgres only), `await fn(connection, *args, **kwargs)` on the event loop with
        a connection of `direct`'s pool. Either way under the lane's limit and the
        call's deadline, with driver errors named in our words."""
        # The server's statement_timeout cannot help when the network goes
        # silent under an open connection: this client-side deadline does. The
        # abandoned thread finishes (or fails) on its own once the socket does;
        # a write it still commits is recognised by the journal's replay. A call
        # on the event loop is cancelled at the deadline and its connection closed.
        lane = self._limiter if _lane is None else _lane
        self._in_flight += 1
        try:
            with anyio.fail_after(self.call_timeout):
                if inspect.iscoroutinefunction(fn):
                    async with lane:
                        return await self._direct_call(fn, *args, **kwargs)
                return await anyio.to_thread.run_sync(
                    partial(self._guarded, fn, *args, **kwargs),
                    limiter=lane, abandon_on_cancel=True,
                )
        except TimeoutError:
            raise StoreUnavailable(
                f"database did not answer within {self.call_timeout:g}s; "
                "nothing is known to be written"
            ) from None
        finally:
            self._in_flight -= 1

    async def _direct_call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        assert self._direct is not None, "calls on the event loop are for Postgres only"
        try:
            return await self._direct.call(lambda conn: fn(conn, *args, **kwargs))
        except IntegrityError:
            raise
        except DBAPIError as exc:
            self._raise_translated(exc)

    def _guarded(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        with self._threads_lock:
            self._threads += 1
        try:
            return fn(*args, **kwargs)
        except IntegrityError:
            raise
        except sa.exc.TimeoutError:
            # The connection pool had nothing to give within its timeout.
            raise StoreUnavailable("database connections exhausted; nothing was written") from None
        except DBAPIError as exc:
            self._raise_translated(exc)
        finally:
            with self._threads_lock:
                self._threads -= 1

    def _raise_translated(self, exc: DBAPIError) -> NoReturn:
        """`exc` in our words: the driver's text can carry SQL and parameters, so only
        our words for its cause."""
        cause = database.describe_failure(exc)
        if _is_missing_table(exc):
            raise SchemaNotReady(f"database {self.url}: {cause}; "
                                 "nothing was written") from None
        if exc.connection_invalidated or _is_unavailable(exc):
            raise StoreUnavailable(
                f"database unavailable: {cause}; nothing was written") from None
        raise exc

    async def announce(self) -> None:
        """Wake the agents running on this database: an operator changed something they
        should act on (see `persistence.wakeups`; nothing to do on SQLite)."""
        from incident_fsm.persistence.wakeups import ANNOUNCE, can_listen

        if not can_listen(self.engine):
            return

        def work() -> None:
            with self._autocommit.connect() as conn:
                conn.execute(ANNOUNCE)
        await self._run(work)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _reading(self) -> Session:
        """A session that only reads (see `_autocommit`)."""
        return Session(self._autocommit, expire_on_commit=False)

    def _models(self, model: type[M], query: sa.Select[Any] | sa.CompoundSelect[Any],
                params: Mapping[str, Any] | None = None) -> list[M]:
        """The rows of `query` (a select of `model`'s table) as models, read without a
        Session: the reads an idle agent makes every few seconds cost half as much. Those
        are built once, with bind parameters (`params`): building a statement costs more
        than running it."""
        with self._autocommit.connect() as conn:
            return [from_row(model, row._mapping)
                    for row in conn.execute(query, dict(params or {}))]

    async def _select(self, model: type[M], query: sa.Select[Any] | sa.CompoundSelect[Any],
                      params: Mapping[str, Any] | None = None, *,
                      lane: anyio.CapacityLimiter | None = None) -> list[M]:
        """`_models` as a call of its own: on Postgres on the event loop (`direct`), unless
        SQLAlchemy must finish `query` per call."""
        prepared = None if self._direct is None else direct.prepare(query, self.engine.dialect)
        if prepared is None:
            return await self._run(self._models, model, query, params, _lane=lane)
        return await self._run(_direct_models, model, prepared, params or {}, _lane=lane)

    def _prepared(self, statement: sa.Executable) -> direct.Prepared:
        """`statement` prepared for a call on the event loop (`direct`)."""
        assert isinstance(statement, sa.ClauseElement)
        prepared = direct.prepare(statement, self.engine.dialect)
        assert prepared is not None, "a statement run on the event loop is complete as built"
        return prepared

    def _one_statement(self) -> AbstractContextManager[sa.Connection]:
        """A connection for one writing statement, committed when the block ends (see
        `_autocommit`)."""
        if self._autocommit is self.engine:
            return self.engine.begin()
        return self._autocommit.connect()

    def _count(self, query: sa.Select[Any]) -> int:
        with self._reading() as session:
            return int(session.execute(query).scalar_one())

    def _pairs(self, query: sa.Select[Any]) -> list[tuple[int, datetime]]:
        with self._reading() as session:
            return [(int(a), b) for a, b in session.execute(query)]
