"""Waiting for real sockets in tests: poll a condition with short real sleeps, bounded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

# Polling is deliberate here: the conditions are other components' state, which
# offer no event to wait on, and the bound keeps a broken test from hanging.


async def eventually(condition: Callable[[], bool], *, within: float = 5.0,
                     what: str = "condition") -> None:
    with anyio.move_on_after(within):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {within} s waiting for {what}")


async def eventually_true(check: Callable[[], Awaitable[bool]], *, within: float = 5.0,
                          what: str = "condition") -> None:
    """Like `eventually`, for a condition that has to ask something (e.g. the store)."""
    with anyio.move_on_after(within):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {within} s waiting for {what}")


async def stays(condition: Callable[[], bool], *, duration: float = 0.3,
                what: str = "condition") -> None:
    """`condition` holds for `duration` seconds of real time."""
    with anyio.move_on_after(duration):
        while True:
            assert condition(), f"{what} stopped holding"
            await anyio.sleep(0.01)
