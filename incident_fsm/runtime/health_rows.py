"""Health-check rows of many polls, written to the store in one insert per flush.

A row per poll through its own transaction cost more CPU than the poll's
HTTP request; the rows are statistics, so a second's delay costs nothing.
`HealthRowBuffer.run` flushes `FLUSH_EVERY` seconds after the first row
comes in (so an idle agent does not wake for it), at once when
`FLUSH_ROWS` wait, and once more when cancelled. The buffer holds at most
`MAX_ROWS`: while the database is slow or away the oldest rows are dropped,
counted and said once, so memory stays bounded; like a failed write, a
dropped row loses statistics, never an incident.

`prune_older` deletes old rows the same way, in bounded batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Final, Protocol

import anyio
from loguru import logger

from incident_fsm.clock import Clock, sleep_or_wake
from incident_fsm.models import HealthRow
from incident_fsm.persistence.health_checks import PRUNE_BATCH

#: Seconds from the first row waiting to its flush.
FLUSH_EVERY: Final = 1.0
#: Rows that make a flush start at once.
FLUSH_ROWS: Final = 500
#: Rows held at most while the database is slow; older ones are dropped beyond it.
MAX_ROWS: Final = 20_000
#: Seconds the last flush may take when the agent stops.
FINAL_FLUSH: Final = 5.0
#: The pause between two pruning batches (s), and batches per pass at most.
PRUNE_PAUSE: Final = 0.05
PRUNE_MAX_BATCHES: Final = 1000


class RowSink(Protocol):
    async def record_health_check(self, *checks: HealthRow) -> None: ...


class RowPruner(Protocol):
    async def prune_health_checks(self, older_than: datetime, *, limit: int) -> int: ...


async def prune_older(store: RowPruner, cutoff: datetime, *, clock: Clock) -> int:
    """Delete health-check rows older than `cutoff`, batch by batch; how many went.

    Each batch is one short statement (`PRUNE_BATCH` rows), with a pause
    between batches so polls and steps are never held behind a long delete;
    at most `PRUNE_MAX_BATCHES` per pass, the rest on the next. A failure is
    logged and ends the pass; history is never pruned.
    """
    removed = 0
    try:
        for _ in range(PRUNE_MAX_BATCHES):
            gone = await store.prune_health_checks(cutoff, limit=PRUNE_BATCH)
            removed += gone
            if gone < PRUNE_BATCH:
                break
            await clock.sleep(PRUNE_PAUSE)
    except Exception as exc:
        logger.warning("❌ Failed to prune health checks: {}", type(exc).__name__)
    if removed:
        logger.debug("pruned {} health_check rows older than {}", removed, cutoff)
    return removed


class HealthRowBuffer:
    """Collects rows (`add`) and writes them in batches while `run` runs."""

    def __init__(self, sink: RowSink, *, clock: Clock, flush_every: float = FLUSH_EVERY,
                 flush_rows: int = FLUSH_ROWS, max_rows: int = MAX_ROWS) -> None:
        self._sink = sink
        self._clock = clock
        self.flush_every = flush_every
        self.flush_rows = flush_rows
        self._rows: deque[HealthRow] = deque(maxlen=max_rows)
        self._waiting = anyio.Event()
        self._full = anyio.Event()
        self._lock = anyio.Lock()
        #: rows lost since the start: dropped from a full buffer, or in a failed write
        self.lost = 0
        self._said_full = False
        self.running = False

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, rows: Sequence[HealthRow]) -> None:
        """Queue rows for the next flush (never blocks, never fails)."""
        overflow = len(self._rows) + len(rows) - (self._rows.maxlen or 0)
        if overflow > 0:
            self.lost += overflow
            if not self._said_full:
                self._said_full = True
                logger.warning("❌ {} health-check rows wait for the database: the oldest are "
                               "dropped until it keeps up (said once per stretch)",
                               len(self._rows))
        self._rows.extend(rows)
        self._waiting.set()
        if len(self._rows) >= self.flush_rows:
            self._full.set()

    async def run(self) -> None:
        """Flush until cancelled, then flush what is left.

        Every flush runs to its end even when cancelled, for `FINAL_FLUSH`
        seconds at most.
        """
        self.running = True
        try:
            while True:
                await self._waiting.wait()
                await sleep_or_wake(self._clock, self.flush_every, self._full)
                await self._flush_shielded()
        finally:
            self.running = False
            await self._flush_shielded()

    async def _flush_shielded(self) -> None:
        # A cancel arriving mid-insert waits for it (bounded) rather than abandon
        # rows already taken from the buffer to a thread nobody waits for.
        with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_FLUSH):
            await self.flush()

    async def flush(self) -> int:
        """Write every waiting row in one insert; returns how many were written."""
        async with self._lock:
            rows = list(self._rows)
            self._rows.clear()
            self._waiting = anyio.Event()
            self._full = anyio.Event()
            if not rows:
                return 0
            try:
                await self._sink.record_health_check(*rows)
            except Exception as exc:
                # Monitoring goes on without the database; the rows are statistics only.
                self.lost += len(rows)
                logger.warning("❌ Failed to record {} health-check rows: {}", len(rows),
                               type(exc).__name__)
                return 0
            if self._said_full and not self._rows:
                self._said_full = False
                logger.info("health-check rows are written again ({} lost meanwhile)",
                            self.lost)
            return len(rows)
