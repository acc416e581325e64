"""Wake-ups between processes: an operator's command reaches a running agent at once.

A running agent learns of the work its own steps create in memory. What
another process writes (an operator's `force ... approve`, `acknowledge`,
`resolve`, and the notifications those steps queue) it can only find by
looking. Without a signal it looks every few seconds, and so an idle agent
wakes the database all the time for nothing.

On Postgres the writer announces its change (`announce`: `NOTIFY`, after
its transaction committed) and the agent holds one connection of its own
that `LISTEN`s (`Listener`). While it listens, the agent's scans for
other processes' work run once a minute, as a safety net, and an approval
is acted on at once instead of at the next scan. Whenever the listener is
not listening (SQLite has no `NOTIFY`; a lost connection, until it is
back) the agent looks at its short periods, as before. A wake-up carries
nothing: it means "look now", so a lost or repeated one costs nothing but
a look, and the listener wakes the agent once more every time it
(re)connects, for what was announced while it was away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeGuard

import anyio
import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

from incident_fsm.backoff import Backoff
from incident_fsm.clock import Clock
from incident_fsm.persistence import database

#: The one channel agents listen on and operator commands notify.
CHANNEL: Final = "incident_fsm"
#: The statement that announces a change (committed on its own).
ANNOUNCE: Final = sa.text(f"SELECT pg_notify('{CHANNEL}', '')")
#: Seconds between two looks for other processes' work while a listener hears them: the
#: safety net for a wake-up lost on the way.
SAFETY_LOOK: Final = 60.0
#: Seconds a listener waits for a notification before it checks that its connection lives
#: (TCP keepalives notice a dead peer sooner; this catches a server that stopped answering).
CHECK_EVERY: Final = 60.0


def can_listen(engine: object) -> TypeGuard[Engine]:
    """Whether wake-ups can reach an agent on this engine's database (Postgres only)."""
    return isinstance(engine, Engine) and engine.dialect.name == "postgresql"


class Listener:
    """One connection of its own that `LISTEN`s, and calls `on_wake` for each notification.

    `listening` says whether a notification sent now would reach it. `on_wake`
    is also called each time that changes, so the agent's loops pick their
    period again at once (and look for what was announced while it was away).
    """

    def __init__(self, engine: Engine, on_wake: Callable[[], None], *, clock: Clock,
                 check_every: float = CHECK_EVERY) -> None:
        if not can_listen(engine):
            raise ValueError("wake-ups need Postgres (LISTEN/NOTIFY)")
        self._engine = engine
        self._on_wake = on_wake
        self._clock = clock
        self._check_every = check_every
        self.listening = False
        #: notifications received so far
        self.received = 0

    async def run(self) -> None:
        """Listen until cancelled; reconnect after a growing pause (1 s, doubling to 60 s)."""
        backoff = Backoff(1.0, cap=60.0)
        said: str | None = None
        while True:
            try:
                await self._listen(backoff)
            except Exception as exc:  # the driver's errors, OSError, TimeoutError alike
                cause = database.describe_failure(exc)
                if self.listening:
                    said = None  # a new stretch: say it again
                self._set_listening(False)
                pause = backoff.next()
                if cause != said:  # said once per stretch, not at every retry
                    logger.warning("operator commands no longer wake the agent at once ({}); "
                                   "it looks for them at its short periods until it listens "
                                   "again (next try in {:g} s)", cause, pause)
                    said = cause
                await self._clock.sleep(pause)

    async def _listen(self, backoff: Backoff) -> None:
        import psycopg  # only an agent on Postgres gets here
        from psycopg.pq import ConnStatus

        params: dict[str, Any] = database.driver_connect_args(self._engine)
        with anyio.fail_after(database.CONNECT_TIMEOUT + 5):
            conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        # What psycopg reads while it runs a statement of ours (the liveness check) it
        # hands to this handler; what arrives between statements is read below.
        conn.add_notify_handler(lambda _: self._notified())
        try:
            with anyio.fail_after(database.STATEMENT_TIMEOUT):
                await conn.execute(f"LISTEN {CHANNEL}")
            backoff.reset()
            self._set_listening(True)
            logger.info("listening for operator commands (Postgres LISTEN {})", CHANNEL)
            pgconn = conn.pgconn
            while True:
                # Not psycopg's `notifies()`: it polls ten times a second, which is most
                # of what an idle agent would do. The socket wakes us when there is data.
                with anyio.move_on_after(self._check_every) as quiet:
                    await anyio.wait_readable(pgconn.socket)
                if quiet.cancelled_caught:
                    with anyio.fail_after(database.STATEMENT_TIMEOUT):
                        await conn.execute("SELECT 1")
                    continue
                pgconn.consume_input()  # raises once the server or the network closed it
                if pgconn.status != ConnStatus.OK:
                    raise psycopg.OperationalError("server closed the connection")
                while pgconn.notifies() is not None:
                    self._notified()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await conn.close()

    def _notified(self) -> None:
        self.received += 1
        self._on_wake()

    def _set_listening(self, listening: bool) -> None:
        changed = listening != self.listening
        self.listening = listening
        if changed:
            self._on_wake()
