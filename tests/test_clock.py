"""Virtual time: sleepers wake in order, only when the clock passes their time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from incident_fsm.clock import SystemClock
from incident_fsm.testing import ManualClock

pytestmark = pytest.mark.anyio
START = datetime(2026, 11, 29, tzinfo=UTC)


async def test_sleepers_wake_in_time_order_only_when_due() -> None:
    clock = ManualClock(START)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, (clock.now() - START).total_seconds()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 30)
        tg.start_soon(sleeper, "early", 10)
        await anyio.wait_all_tasks_blocked()
        assert clock.sleepers == 2
        clock.advance(9)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        await clock.run_for(25)
        assert woke == [("early", 10.0), ("late", 30.0)]
        assert clock.now() == START + timedelta(seconds=34)


async def test_a_periodic_task_ticks_once_per_interval() -> None:
    clock = ManualClock(START)
    ticks: list[datetime] = []

    async def poller() -> None:
        while True:
            ticks.append(clock.now())
            await clock.sleep(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(poller)
        await clock.run_for(35)
        tg.cancel_scope.cancel()
    assert [(t - START).total_seconds() for t in ticks] == [0, 10, 20, 30]


async def test_time_never_goes_backwards_and_needs_a_zone() -> None:
    clock = ManualClock(START)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="aware"):
        ManualClock(datetime(2026, 1, 1))


async def test_system_clock_is_aware_utc() -> None:
    assert SystemClock().now().tzinfo is UTC
    await SystemClock().sleep(0)


async def test_run_for_waits_for_work_in_worker_threads() -> None:
    clock = ManualClock(START)
    busy = {"n": 0}
    clock.wait_for_idle(lambda: busy["n"] == 0)
    seen: list[float] = []

    def slow_io() -> None:
        import time

        time.sleep(0.05)  # real work in a thread: virtual time must not move meanwhile

    async def worker() -> None:
        while True:
            busy["n"] += 1
            try:
                await anyio.to_thread.run_sync(slow_io)
            finally:
                busy["n"] -= 1
            seen.append((clock.now() - START).total_seconds())
            await clock.sleep(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await clock.run_for(25)
        tg.cancel_scope.cancel()
    assert seen == [0.0, 10.0, 20.0]


async def test_a_cancelled_sleep_is_forgotten() -> None:
    clock = ManualClock(START)
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 60)
        tg.start_soon(clock.sleep, 30)
        await anyio.wait_all_tasks_blocked()
        assert clock.wakeups() == [START + timedelta(seconds=30), START + timedelta(seconds=60)]
        tg.cancel_scope.cancel()
    assert clock.sleepers == 0
    assert clock.wakeups() == []
    assert clock.next_wakeup() is None


async def test_sleep_or_wake_on_the_wall_clock_wakes_early_or_after_its_time() -> None:
    from incident_fsm.clock import sleep_or_wake

    clock, wake = SystemClock(), anyio.Event()
    started = anyio.current_time()
    await sleep_or_wake(clock, 0.05, wake)
    assert 0.05 <= anyio.current_time() - started < 1.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep_or_wake, clock, 30.0, wake)
        await anyio.wait_all_tasks_blocked()
        wake.set()  # the 30 s wait ends now, not in 30 s
    assert anyio.current_time() - started < 1.0
