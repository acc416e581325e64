"""Waiting for real sockets in tests: poll a condition with short real sleeps, bounded."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def eventually(condition: Callable[[], bool], *, timeout: float = 5.0,
                     what: str = "condition") -> None:
    with anyio.move_on_after(timeout):
        while not condition():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def stays(condition: Callable[[], bool], *, duration: float = 0.3,
                what: str = "condition") -> None:
    """`condition` holds for `duration` seconds of real time."""
    with anyio.move_on_after(duration):
        while True:
            assert condition(), f"{what} stopped holding"
            await anyio.sleep(0.01)
