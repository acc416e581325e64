"""Growing pauses (`Backoff`) and the restart loop (`keep_running`), on virtual time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from incident_fsm.backoff import Backoff, cause_of, keep_running
from incident_fsm.testing import ManualClock

pytestmark = pytest.mark.anyio
START = datetime(2026, 11, 29, tzinfo=UTC)


# --- the policy ----------------------------------------------------------------------


def test_pauses_grow_by_the_factor_up_to_the_cap() -> None:
    doubling = Backoff(1.0, cap=60.0)
    assert [doubling.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert doubling.failures == 8
    tripling = Backoff(0.5, factor=3.0, cap=10.0)
    assert [tripling.next() for _ in range(5)] == [0.5, 1.5, 4.5, 10, 10]
    assert [Backoff(5.0, factor=1.0, cap=60.0).next() for _ in range(3)] == [5, 5, 5]


def test_the_cap_bounds_the_first_pause_too() -> None:
    assert Backoff(5.0, cap=2.0).next() == 2.0


def test_reset_starts_again_from_the_first_pause() -> None:
    backoff = Backoff(2.0, cap=300.0)
    assert [backoff.next() for _ in range(4)] == [2, 4, 8, 16]
    backoff.reset()
    assert backoff.failures == 0
    assert [backoff.next() for _ in range(2)] == [2, 4]


def test_delay_is_the_nth_pause_and_changes_nothing() -> None:
    backoff = Backoff(1.0, cap=30.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.failures == 0
    assert backoff.delay(0) == 1.0  # no failure yet: the first pause
    # So many failures that the factor overflows a float: long since at the cap.
    assert backoff.delay(100_000) == 30.0


def test_jitter_draws_each_pause_from_half_to_full() -> None:
    low = Backoff(5.0, cap=600.0, jitter=True, random=lambda: 0.0)
    high = Backoff(5.0, cap=600.0, jitter=True, random=lambda: 1.0)
    assert [low.next() for _ in range(3)] == [2.5, 5.0, 10.0]
    assert [high.next() for _ in range(3)] == [5.0, 10.0, 20.0]
    assert Backoff(5.0, cap=600.0, jitter=True, random=lambda: 0.0).delay(30) == 300.0


@given(first=st.floats(0.001, 1000), factor=st.floats(1.0, 10.0), cap=st.floats(0.001, 1e6),
       failure=st.integers(1, 5000), r=st.floats(0.0, 1.0))
def test_jittered_pauses_stay_within_half_and_full_of_the_plain_one(
        first: float, factor: float, cap: float, failure: int, r: float) -> None:
    plain = Backoff(first, factor=factor, cap=cap).delay(failure)
    jittered = Backoff(first, factor=factor, cap=cap, jitter=True,
                       random=lambda: r).delay(failure)
    assert 0 < plain <= cap
    assert plain / 2 <= jittered <= plain


@pytest.mark.parametrize("bad", [{"first": 0.0}, {"first": -1.0}, {"first": math.inf},
                                 {"factor": 0.5}, {"factor": math.nan}, {"cap": 0.0},
                                 {"cap": math.inf}])
def test_a_policy_that_could_spin_or_never_return_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**bad)


# --- the restart loop ----------------------------------------------------------------


@contextmanager
def error_lines() -> Iterator[list[str]]:
    """Every log record at error level or above, with its traceback if it had one."""
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", colorize=False, catch=False,
                      format="{level}|{message}\n{exception}")
    try:
        yield lines
    finally:
        logger.remove(sink)


class Part:
    """A part that fails after running the given (virtual) seconds, one entry per start."""

    def __init__(self, clock: ManualClock, runs: list[float], error: Exception) -> None:
        self.clock = clock
        self.runs = runs
        self.error = error
        self.starts: list[float] = []

    def elapsed(self) -> float:
        return (self.clock.now() - START).total_seconds()

    async def __call__(self) -> None:
        self.starts.append(self.elapsed())
        await self.clock.sleep(self.runs[len(self.starts) - 1]
                               if len(self.starts) <= len(self.runs) else 0.0)
        raise self.error


async def test_a_failing_part_is_restarted_after_growing_pauses_each_logged_once() -> None:
    clock = ManualClock(START)
    part = Part(clock, [], RuntimeError("boom\nat line 2"))
    with error_lines() as lines:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: keep_running("agent worker", part, clock=clock,
                                               backoff=Backoff(1.0, cap=4.0)))
            await clock.run_for(20)
            tg.cancel_scope.cancel()
    assert part.starts == [0, 1, 3, 7, 11, 15, 19]
    assert len(lines) == len(part.starts)  # one line per failure, nothing more
    assert lines[0].startswith(
        "ERROR|agent worker stopped (RuntimeError: boom at line 2); restarting it in 1 s")
    assert "restarting it in 2 s" in lines[1] and "restarting it in 4 s" in lines[2]
    assert not any("Traceback" in line for line in lines)


async def test_a_part_that_ran_healthy_starts_again_from_the_first_pause() -> None:
    clock = ManualClock(START)
    # Fails at once, at once, after 30 s (too soon to count), after 100 s (healthy), ...
    part = Part(clock, [0, 0, 30, 100, 0], ValueError("bad"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: keep_running("worker", part, clock=clock,
                                           backoff=Backoff(1.0, cap=60.0), healthy_after=60.0))
        await clock.run_for(141)
        tg.cancel_scope.cancel()
    # pauses: 1, 2, 4 (30 s was not healthy), then 1 again, 2
    assert part.starts == [0, 1, 3, 37, 138, 140]


async def test_cancelling_stops_the_part_and_the_pause_without_a_restart() -> None:
    clock = ManualClock(START)
    for runs in ([3600.0], [0.0]):  # cancelled while the part runs / while it pauses
        part = Part(clock, runs, RuntimeError("boom"))
        returned = False

        async def supervised(part: Part = part) -> None:
            nonlocal returned
            await keep_running("worker", part, clock=clock, backoff=Backoff(10.0))
            returned = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(supervised)
            await clock.settle()
            assert clock.sleepers == 1  # in the part, or in the pause after it
            tg.cancel_scope.cancel()
        assert len(part.starts) == 1 and not returned
        assert clock.sleepers == 0
        await clock.run_for(3600)
        assert len(part.starts) == 1


async def test_a_cancellation_raised_by_the_part_is_raised_again_not_restarted() -> None:
    clock = ManualClock(START)
    cancelled = anyio.get_cancelled_exc_class()
    part = Part(clock, [], cancelled())
    with error_lines() as lines, pytest.raises(cancelled):
        await keep_running("worker", part, clock=clock, backoff=Backoff())
    assert len(part.starts) == 1 and lines == []


async def test_a_part_that_returns_is_done() -> None:
    clock = ManualClock(START)
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    await keep_running("worker", once, clock=clock, backoff=Backoff())
    assert runs == [1] and clock.sleepers == 0


async def test_describe_decides_how_much_of_the_cause_is_shown() -> None:
    clock = ManualClock(START)
    part = Part(clock, [], RuntimeError("https://x/?token=leak"))
    with error_lines() as lines:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: keep_running("pam channel", part, clock=clock,
                                               backoff=Backoff(2.0),
                                               describe=lambda exc: type(exc).__name__))
            await clock.settle()
            tg.cancel_scope.cancel()
    [line] = lines
    assert "pam channel stopped (RuntimeError); restarting it in 2 s" in line
    assert "leak" not in line


def test_the_cause_of_a_task_group_failure_is_its_first_error() -> None:
    group = ExceptionGroup("unhandled errors in a TaskGroup",
                           [ValueError("bad value"), ExceptionGroup("inner", [KeyError("k")])])
    assert cause_of(group) == "ValueError: bad value (and 1 more)"
    assert cause_of(TimeoutError()) == "TimeoutError"
    assert len(cause_of(RuntimeError("x" * 5000))) <= 300
