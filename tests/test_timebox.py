"""Time limits on the injected clock: cut off in virtual time, exceptions passed through."""

from __future__ import annotations

import math

import anyio
import pytest

from incident_fsm.testing import ManualClock
from incident_fsm.timebox import within

from .support import NOW

pytestmark = pytest.mark.anyio


async def test_a_quick_call_returns_its_value_and_leaves_no_sleeper() -> None:
    clock = ManualClock(NOW)

    async def quick() -> int:
        return 42

    assert await within(clock, 10, quick) == 42
    assert clock.sleepers == 0


async def test_a_slow_call_is_cut_off_when_the_clock_passes_the_limit() -> None:
    clock = ManualClock(NOW)
    cancelled = anyio.Event()

    async def slow() -> int:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return 0

    errors: list[Exception] = []

    async def call() -> None:
        try:
            await within(clock, 30, slow)
        except TimeoutError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await clock.run_for(29)
        assert not cancelled.is_set()
        await clock.run_for(1)
    assert cancelled.is_set()
    assert [str(e) for e in errors] == ["no result within 30 s"]


async def test_exceptions_pass_through_unwrapped_and_infinity_means_no_limit() -> None:
    clock = ManualClock(NOW)

    async def broken() -> int:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await within(clock, 10, broken)

    async def fine() -> str:
        return "ok"

    assert await within(clock, math.inf, fine) == "ok"
