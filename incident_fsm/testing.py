"""Helpers for tests of code that uses incident_fsm: virtual time.

`ManualClock` is a `Clock` whose `sleep` parks the caller until the test
moves the clock past the wake-up time (`advance`), or `run_for` jumps from
one wake-up to the next, letting the woken tasks run until they block
again. It reads asyncio's own task internals to know when every other task
is blocked, which is why it lives here and not on the library's import
path.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio


def _all_other_tasks_blocked() -> bool:
    # What anyio.wait_all_tasks_blocked checks, without its 0.1 s polling
    # step, which would make every virtual-time step cost a tenth of a second.
    this = asyncio.current_task()
    for task in asyncio.all_tasks():
        waiter = getattr(task, "_fut_waiter", None)
        if task is not this and (waiter is None or waiter.done()):
            return False
    return True


class ManualClock:
    """Virtual time: moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start if start is not None else datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._sleepers: list[tuple[datetime, int, anyio.Event]] = []
        self._order = itertools.count()
        self._idle_checks: list[Callable[[], bool]] = []

    def wait_for_idle(self, check: Callable[[], bool]) -> None:
        """Also wait for `check()` before moving time in `run_for`.

        A task waiting on a worker thread (a store call) counts as blocked to
        anyio; without this, virtual time could pass while it is still working.
        """
        self._idle_checks.append(check)

    def now(self) -> datetime:
        return self._now

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in `sleep`."""
        return len(self._sleepers)

    def next_wakeup(self) -> datetime | None:
        return self._sleepers[0][0] if self._sleepers else None

    def wakeups(self) -> list[datetime]:
        """The wake-up times of every parked sleeper, earliest first."""
        return sorted(when for when, _, _ in self._sleepers)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        entry = (self._now + timedelta(seconds=seconds), next(self._order), event)
        heapq.heappush(self._sleepers, entry)
        try:
            await event.wait()
        finally:
            if not event.is_set():
                # Cancelled before its time: forget it, or `sleepers` and `run_for`
                # would keep counting (and jumping to) a wake-up nobody waits for.
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    def advance(self, seconds: float) -> datetime:
        """Move time forward and wake every sleeper that is due (they run at their next turn)."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += timedelta(seconds=seconds)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()
        return self._now

    async def settle(self, *, limit: float = 30.0) -> None:
        """Wait (in real time, at most `limit` s) until every task is blocked and all is idle."""
        deadline = time.monotonic() + limit
        while True:
            await anyio.lowlevel.checkpoint()
            if _all_other_tasks_blocked() and all(check() for check in self._idle_checks):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("ManualClock.settle: still busy after the real-time limit")
            await anyio.sleep(0.001)

    async def run_for(self, seconds: float) -> None:
        """Advance `seconds` of virtual time, stopping at each wake-up so woken tasks can run."""
        end = self._now + timedelta(seconds=seconds)
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            self.advance(max(0.0, (self._sleepers[0][0] - self._now).total_seconds()))
            await self.settle()
        self.advance((end - self._now).total_seconds())
        await self.settle()


