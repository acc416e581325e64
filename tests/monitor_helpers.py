"""Helpers for driving a `Monitor` in virtual time while its I/O (database, sockets) is real."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta

import anyio

from incident_fsm.detection.payload import HealthSnapshot, ProbeResult
from incident_fsm.runtime.monitor import Monitor
from incident_fsm.testing import ManualClock


def snap(memory: float = 50.0, disk: float = 60.0, cpu: float = 10.0,
         source: str = "/health/resources") -> HealthSnapshot:
    return HealthSnapshot(source=source, memory_pct=memory, disk_pct=disk, cpu_pct=cpu)


class ScriptedProbe:
    """A `Probe` whose n-th answer (from 1) is `script(n)`; remembers when it was asked."""

    def __init__(self, clock: ManualClock, script: Callable[[int], ProbeResult]) -> None:
        self.clock = clock
        self.script = script
        self.calls: list[datetime] = []

    async def probe(self) -> ProbeResult:
        self.calls.append(self.clock.now())
        return self.script(len(self.calls))


class HangingProbe:
    """A `Probe` that never answers (a target whose socket is stuck)."""

    def __init__(self) -> None:
        self.calls = 0

    async def probe(self) -> ProbeResult:
        self.calls += 1
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def settle(monitor: Monitor, clock: ManualClock, stuck: Collection[str] = ()) -> None:
    """Wait (really) until every poll but the `stuck` ones has finished and its loop sleeps again.

    `anyio.wait_all_tasks_blocked` is no help here: a task waiting on a
    database thread or a socket counts as blocked, and on asyncio it naps
    0.1 s per round. A poll is over when the target has left
    `monitor.polling` and its loop is parked in the clock again.
    """
    loops = len(set(monitor.targets) - set(stuck))
    with anyio.fail_after(30):
        # Polling state other tasks and threads change; no event marks "parked again".
        while monitor.polling - set(stuck) or clock.sleepers < loops:  # noqa: ASYNC110
            await anyio.sleep(0.0005)


async def run_virtual(clock: ManualClock, monitor: Monitor, seconds: float,
                      stuck: Collection[str] = ()) -> None:
    """Move virtual time `seconds` ahead, wake-up by wake-up, letting each poll finish."""
    end = clock.now() + timedelta(seconds=seconds)
    await settle(monitor, clock, stuck)
    while (wake := clock.next_wakeup()) is not None and wake <= end:
        clock.advance(max(0.0, (wake - clock.now()).total_seconds()))
        await settle(monitor, clock, stuck)
    clock.advance(max(0.0, (end - clock.now()).total_seconds()))
    await settle(monitor, clock, stuck)
