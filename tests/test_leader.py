"""Leader election: one leader at a time, takeover after death; a cut-off leader stops first."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest

from incident_fsm.errors import StoreUnavailable
from incident_fsm.models import Lease
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.leader import LeaderElector
from incident_fsm.testing import ManualClock

from .logcapture import captured_logs

pytestmark = pytest.mark.anyio


class _CuttableStore(Store):
    """A store whose connection the test can cut, like a network partition."""

    cut = False

    async def acquire_lease(self, name: str, holder: str, *, now: datetime,
                            ttl: float) -> Lease:
        if self.cut:
            raise StoreUnavailable("database unavailable (partition); nothing was written")
        return await super().acquire_lease(name, holder, now=now, ttl=ttl)


@pytest.fixture
def start(clock: ManualClock) -> ManualClock:
    return clock  # the shared fixture already waits for the store to be idle


async def test_one_leader_and_takeover_after_the_leader_dies(
    store: Store, start: ManualClock
) -> None:
    a = LeaderElector(store, clock=start, holder="a")
    b = LeaderElector(store, clock=start, holder="b")
    assert await a.try_acquire() is True
    assert await b.try_acquire() is False
    for _ in range(5):  # a keeps renewing, b keeps standing by
        start.advance(5)
        assert await a.try_acquire() is True
        assert await b.try_acquire() is False
    # a dies (stops renewing). b may not take over before the lease expires...
    start.advance(14)
    assert await b.try_acquire() is False
    assert not a.is_leader  # a's own fence ended 2 s before the lease does
    # ...and does right after it.
    start.advance(1.5)
    assert await b.try_acquire() is True
    assert await a.try_acquire() is False


async def test_a_partitioned_leader_stops_before_anyone_can_take_over(
    db_url: str, store: Store, start: ManualClock
) -> None:
    async with _CuttableStore(db_url) as cut_store:
        a = LeaderElector(cut_store, clock=start, holder="a")
        b = LeaderElector(store, clock=start, holder="b")
        assert await a.try_acquire()
        cut_store.cut = True
        a_stopped = b_started = None
        for second in range(1, 40):
            start.advance(1)
            await a.try_acquire()
            await b.try_acquire()
            assert not (a.is_leader and b.is_leader), f"two leaders at +{second}s"
            if a_stopped is None and not a.is_leader:
                a_stopped = second
            if b_started is None and b.is_leader:
                b_started = second
        assert a_stopped is not None and b_started is not None
        assert a_stopped < b_started <= 16  # takeover well within the 30 s budget
        # When the partition heals, the old leader finds it has lost the lease.
        cut_store.cut = False
        assert await a.try_acquire() is False


async def test_run_renews_and_hands_the_lease_back_on_cancel(
    store: Store, start: ManualClock
) -> None:
    a = LeaderElector(store, clock=start, holder="a", ttl=6, renew_every=2, skew_margin=1)
    b = LeaderElector(store, clock=start, holder="b", ttl=6, renew_every=2, skew_margin=1)
    with captured_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await start.run_for(60)  # many ttls: only renewals keep it
            assert a.is_leader
            assert await b.try_acquire() is False
            tg.cancel_scope.cancel()
    assert not a.is_leader
    assert await b.try_acquire() is True  # released at once, no need to wait for expiry
    # The log says when the term ended: from then on another replica may lead.
    assert [line.split("|")[1] for line in logs if "released" in line] == [
        "replica a released the leader lease"]


async def test_a_standby_says_who_leads_once_per_change_of_leader(
    store: Store, start: ManualClock
) -> None:
    a = LeaderElector(store, clock=start, holder="a")
    b = LeaderElector(store, clock=start, holder="b")
    first_lease_ends = (start.now() + timedelta(seconds=15)).isoformat()
    with captured_logs() as logs:
        assert await a.try_acquire()
        for _ in range(10):  # a renews, b stands by: ten attempts each
            assert not await b.try_acquire()
            start.advance(5)
            assert await a.try_acquire()
        start.advance(20)  # a dies; b takes over and renews
        for _ in range(10):
            assert await b.try_acquire()
            assert not await a.try_acquire()  # a is back, a standby now
            start.advance(5)
        start.advance(20)  # b dies; a leads again; b comes back
        for _ in range(10):
            assert await a.try_acquire()
            assert not await b.try_acquire()
            start.advance(5)
    said = [line.split("|")[1] for line in logs
            if "standing by" in line or "the leader" in line]
    assert said[0] == "replica a is now the leader"
    assert said[1] == f"standing by: a leads until {first_lease_ends}"
    assert [s.split(" leads")[0] for s in said] == [
        "replica a is now the leader", "standing by: a",   # b's first attempt
        "replica b is now the leader", "standing by: b",   # a's first attempt after
        "replica a is now the leader", "standing by: a"]   # b's
    assert all(line.startswith("INFO|") for line in logs
               if "standing by" in line or "the leader" in line)


def test_renewal_must_fit_inside_the_lease(tmp_path: Path, start: ManualClock) -> None:
    unused = Store(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="renew_every"):
        LeaderElector(unused, clock=start, ttl=10, renew_every=9, skew_margin=2)
    unused.engine.dispose()
