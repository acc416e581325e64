"""Health-check rows: one insert per flush, bounded while the database is slow, pruned by batch."""

from __future__ import annotations

from datetime import datetime, timedelta

import anyio
import pytest

from incident_fsm.models import HealthRow
from incident_fsm.persistence.store import Store
from incident_fsm.runtime import health_rows
from incident_fsm.runtime.health_rows import HealthRowBuffer, prune_older
from incident_fsm.testing import ManualClock

pytestmark = pytest.mark.anyio


def row(at: datetime, target: str = "api", ok: bool = True) -> HealthRow:
    return HealthRow(target, at, "/health/resources", ok, 3.0, 50.0, 60.0, 1.0)


class Sink:
    """Counts the inserts and the rows in each; fails while `broken`."""

    def __init__(self) -> None:
        self.batches: list[list[HealthRow]] = []
        self.broken = False

    async def record_health_check(self, *checks: HealthRow) -> None:
        if self.broken:
            raise ConnectionError("database away")
        self.batches.append(list(checks))


async def test_rows_of_many_polls_go_in_one_insert_a_second_after_the_first(
    clock: ManualClock,
) -> None:
    sink = Sink()
    buffer = HealthRowBuffer(sink, clock=clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(buffer.run)
        await clock.settle()
        assert clock.sleepers == 0  # nothing waiting: no timer either
        buffer.add([row(clock.now(), f"t{i}") for i in range(3)])
        await clock.run_for(0.5)
        buffer.add([row(clock.now(), "t3")])
        await clock.run_for(0.4)
        assert sink.batches == []
        await clock.run_for(0.2)
        assert [len(b) for b in sink.batches] == [4]
        tg.cancel_scope.cancel()


async def test_a_full_batch_is_written_at_once_and_the_rest_at_shutdown(clock: ManualClock) -> None:
    sink = Sink()
    buffer = HealthRowBuffer(sink, clock=clock, flush_rows=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(buffer.run)
        await clock.settle()
        buffer.add([row(clock.now(), f"t{i}") for i in range(10)])
        await clock.settle()
        assert [len(b) for b in sink.batches] == [10]
        buffer.add([row(clock.now(), "last")])
        await clock.settle()
        tg.cancel_scope.cancel()
    assert [len(b) for b in sink.batches] == [10, 1]
    assert sink.batches[1][0].target == "last" and not buffer.running


async def test_a_slow_database_drops_the_oldest_rows_counted_and_memory_stays_bounded(
    clock: ManualClock,
) -> None:
    sink = Sink()
    sink.broken = True
    buffer = HealthRowBuffer(sink, clock=clock, max_rows=3)
    buffer.add([row(clock.now(), f"t{i}") for i in range(5)])
    assert len(buffer) == 3 and buffer.lost == 2
    assert await buffer.flush() == 0 and buffer.lost == 5 and len(buffer) == 0
    sink.broken = False
    buffer.add([row(clock.now(), "back")])
    assert await buffer.flush() == 1
    assert [r.target for r in sink.batches[0]] == ["back"]


async def test_prune_goes_in_bounded_batches_oldest_first_and_keeps_recent_rows(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = clock.now()
    await store.record_health_check(
        *(row(now - timedelta(days=20, minutes=i), f"old{i}") for i in range(5)),
        row(now - timedelta(days=1), "recent"),
    )
    cutoff = now - timedelta(days=14)
    assert await store.prune_health_checks(cutoff, limit=2) == 2
    left = {r.target for r in await store.health_checks()}
    assert left == {"old0", "old1", "old2", "recent"}  # the two oldest went first

    calls: list[int] = []
    real = store.prune_health_checks

    async def counted(older_than: datetime, *, limit: int) -> int:
        calls.append(limit)
        return await real(older_than, limit=limit)

    monkeypatch.setattr(health_rows, "PRUNE_BATCH", 2)
    monkeypatch.setattr(store, "prune_health_checks", counted)
    async with anyio.create_task_group() as tg:
        async def prune() -> None:
            assert await prune_older(store, cutoff, clock=clock) == 3
        tg.start_soon(prune)
        await clock.run_for(1.0)
    assert calls == [2, 2]  # a full batch, a pause, then the remainder ends the pass
    assert [r.target for r in await store.health_checks()] == ["recent"]


async def test_a_cancel_during_an_insert_waits_for_it_rather_than_lose_its_rows(
    clock: ManualClock,
) -> None:
    class SlowSink(Sink):
        async def record_health_check(self, *checks: HealthRow) -> None:
            await anyio.sleep(0.05)  # a real database round trip, in flight at the cancel
            await super().record_health_check(*checks)

    sink = SlowSink()
    buffer = HealthRowBuffer(sink, clock=clock, flush_rows=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(buffer.run)
        await clock.settle()
        buffer.add([row(clock.now(), "a"), row(clock.now(), "b")])
        await anyio.sleep(0.01)  # the insert has started
        tg.cancel_scope.cancel()
    assert [[r.target for r in b] for b in sink.batches] == [["a", "b"]]
