"""Pauses that grow after each failure, and the loop that restarts a failed part with them.

`Backoff` is the arithmetic alone: a first pause, multiplied by `factor`
after each failure up to `cap`, optionally jittered into [half, full] of
each pause so replicas and channels do not retry in lockstep. `next()`
steps through the pauses, `reset()` starts again from the first,
`delay(n)` is the pause after failure `n` without stepping (for callers that
count failures themselves). It never waits: callers wait through their clock.

`keep_running` is the supervisor loop of the agent's long-running parts:
run the part; if it fails, log that once at error level with its cause and
start it again after the next pause. A part that ran healthily for
`healthy_after` seconds before failing starts again after the first pause:
a failure a day must not inherit the pause of yesterday's crash loop. A part
that returns is done. Cancellation is never caught, so stopping the agent
stops the part at once.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Awaitable, Callable
from typing import Final

from loguru import logger

from incident_fsm.clock import Clock

#: a cause in a log line is cut to this many characters
MAX_CAUSE: Final = 300


class Backoff:
    """Growing pauses: `first`, `first * factor`, ... at most `cap`, optionally jittered.

    `cap` bounds every pause, the first too. With `jitter`, each pause is
    drawn from [half, full] of its value with `random` (a float in [0, 1]).
    """

    def __init__(self, first: float = 1.0, *, factor: float = 2.0, cap: float = 60.0,
                 jitter: bool = False, random: Callable[[], float] = _random.random) -> None:
        if not (first > 0 and math.isfinite(first)):
            raise ValueError("a backoff's first pause must be a number of seconds above 0")
        if not (factor >= 1 and math.isfinite(factor)):
            raise ValueError("a backoff's factor must be at least 1")
        if not (cap > 0 and math.isfinite(cap)):
            raise ValueError("a backoff's cap must be a number of seconds above 0")
        self.first = first
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
        self._random = random
        #: failures counted since the start or the last `reset`
        self.failures = 0

    def delay(self, failure: int) -> float:
        """The pause after failure number `failure` (1-based); changes nothing."""
        try:
            pause = min(self.cap, self.first * self.factor ** max(0, failure - 1))
        except OverflowError:  # thousands of failures: long since at the cap
            pause = self.cap
        if self.jitter:
            return pause / 2 + pause / 2 * self._random()
        return pause

    def next(self) -> float:
        """Count one more failure; the pause to wait before trying again."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """It worked: the next failure waits the first pause again."""
        self.failures = 0


def cause_of(exc: BaseException) -> str:
    """`Type: message` on one line; for a task group's failure, that of its first error."""
    more = 0
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        more += len(exc.exceptions) - 1
        exc = exc.exceptions[0]
    text = " ".join(str(exc).split())
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(cause) > MAX_CAUSE:
        cause = cause[:MAX_CAUSE - 1] + "…"
    return cause + (f" (and {more} more)" if more else "")


async def keep_running(name: str, part: Callable[[], Awaitable[None]], *, clock: Clock,
                       backoff: Backoff, healthy_after: float = 60.0,
                       describe: Callable[[Exception], str] = cause_of) -> None:
    """Run `part` until it returns or we are cancelled; restart it after each failure.

    Each failure is logged once at error level: `name`, `describe(exc)` and
    the pause. No traceback: its frames' variables can hold secrets, and
    `describe` lets a caller whose errors may carry them (a URL with a
    token) show less, e.g. the class name only.
    """
    if not healthy_after >= 0:
        raise ValueError("healthy_after must be a number of seconds, at least 0")
    while True:
        started = clock.now()
        try:
            await part()
            return
        except Exception as exc:  # never cancellation: that is a BaseException
            if (clock.now() - started).total_seconds() >= healthy_after:
                backoff.reset()
            pause = backoff.next()
            logger.error("{} stopped ({}); restarting it in {:g} s", name, describe(exc),
                         round(pause, 2))
        await clock.sleep(pause)
