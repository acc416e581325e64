"""Time limits measured by the injected clock, so a hung call is cut off in virtual time too.

`anyio.fail_after` measures the event loop's own time, which a `ManualClock`
cannot move; `within` instead races the call against `clock.sleep`, so a
test can make an action overrun its limit by advancing the clock.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from incident_fsm.clock import Clock

T = TypeVar("T")


async def within(clock: Clock, seconds: float, call: Callable[[], Awaitable[T]]) -> T:
    """Await `call()`, cancelling it when `seconds` have passed on `clock`.

    Raises `TimeoutError` when the limit cut the call off; exceptions of the
    call itself propagate unchanged (not wrapped in an exception group). An
    infinite limit means no limit.
    """
    if math.isinf(seconds) and seconds > 0:
        return await call()
    results: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watchdog() -> None:
            await clock.sleep(max(0.0, seconds))
            tg.cancel_scope.cancel()

        tg.start_soon(watchdog)
        try:
            results.append(await call())
        except Exception as exc:  # re-raised below, outside the task group
            errors.append(exc)
        tg.cancel_scope.cancel()
    if errors:
        raise errors[0]
    if results:
        return results[0]
    raise TimeoutError(f"no result within {seconds:g} s")
