"""Time as an injected dependency, so deadlines, windows and intervals are testable without waiting.

Everything that reads the time or waits takes a `Clock`. `SystemClock` is the
real one; `incident_fsm.testing.ManualClock` is virtual time for tests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import anyio


class Clock(Protocol):
    """Tells the time (aware UTC) and waits."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


async def sleep_or_wake(clock: Clock, seconds: float, wake: anyio.Event) -> None:
    """Wait `seconds` through `clock`, or less if `wake` is set first."""
    if seconds <= 0 or wake.is_set():
        await anyio.lowlevel.checkpoint()
        return
    if type(clock) is SystemClock:
        # The wall clock needs no sleeper task: a deadline on the wait is the same wait
        # for a third of the event-loop turns (what an idle agent mostly spends).
        with anyio.move_on_after(seconds):
            await wake.wait()
        return
    async with anyio.create_task_group() as tg:
        async def sleep() -> None:
            await clock.sleep(seconds)
            tg.cancel_scope.cancel()
        tg.start_soon(sleep)
        await wake.wait()
        tg.cancel_scope.cancel()
