"""The driver holds the incident it drives: the store is read again only after a conflict.

One incident is followed from `Remediator.drive` to its end through a store
that counts every call the engine and the remediator make. The reads left
are the start of a drive (the incident and its attempts) and the guardrail
counts policy needs for each choice (they change with other incidents).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import pytest

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import MachinePolicy
from incident_fsm.models import Incident
from incident_fsm.notify.policy import NotificationPolicy
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.policy import Limits
from incident_fsm.remediation.remediator import Remediator
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import State

from .support import wait_until
from .test_remediator import (
    VERIFY,
    Actions,
    ScriptedVerifier,
    drive,
    open_incident,
    touch,
)

pytestmark = pytest.mark.anyio

#: What a choice reads: the learned record and the two guardrail counts.
CHOICE_READS = Counter({"action_record": 1, "count_actions": 1, "count_reopenings": 1})
#: What the start of a drive reads: the incident and its attempts.
START_READS = Counter({"get_incident": 1, "attempts": 1})
READS = {"get_incident", "attempts", "action_record", "count_actions", "count_reopenings",
         "has_notifications", "find_open", "count_strikes", "timeline"}


class CountingStore:
    """The store, with every coroutine the driver or the engine awaits counted by name."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: list[str] = []
        #: what happens (elsewhere) just before the named call
        self.before: dict[str, Callable[[], Awaitable[None]]] = {}

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if not callable(found):
            return found

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            hook = self.before.pop(name, None)
            if hook is not None:
                await hook()
            return await found(*args, **kwargs)

        return counted

    def reads(self) -> Counter[str]:
        return Counter(c for c in self.calls if c in READS)


def rig(store: Store, clock: ManualClock, tmp_path: Path, answers: tuple[bool, ...], *,
        outbox: bool = False) -> tuple[CountingStore, IncidentEngine, Remediator]:
    counting = CountingStore(store)
    engine = IncidentEngine(counting, clock=clock, policy=MachinePolicy(),  # type: ignore[arg-type]
                            outbox=NotificationPolicy(channels=("log",)) if outbox else None)
    actions: Mapping[str, Any] = {n: touch(tmp_path, n) for n in ("first", "second", "third")}
    rem = Remediator(engine=engine, store=counting, clock=clock,  # type: ignore[arg-type]
                     actions=Actions(actions), verifier=ScriptedVerifier(*answers),
                     policy=MappingProxyType({"disk_high": ("first", "second", "third")}),
                     limits=Limits(action_budget=10))
    return counting, engine, rem


async def test_one_incident_to_resolution_reads_the_store_only_to_start_and_to_choose(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    counting, engine, rem = rig(store, clock, tmp_path, (True,))
    iid = await open_incident(engine)
    counting.calls.clear()
    final = await drive(rem, clock, iid, [VERIFY])

    assert final.state == State.RESOLVED
    assert counting.reads() == START_READS + CHOICE_READS
    assert sum(counting.reads().values()) == 5
    writes = [c for c in counting.calls if c not in READS]
    assert writes == ["apply_transition", "claim_attempt", "finish_action", "apply_transition",
                      "judge_action", "apply_transition"]
    assert _same_row(final, await store.get_incident(iid))


async def test_three_strikes_read_only_for_each_choice_and_keep_the_strikes_right(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    counting, engine, rem = rig(store, clock, tmp_path, ())
    iid = await open_incident(engine)
    counting.calls.clear()
    final = await drive(rem, clock, iid, [VERIFY] * 3)

    assert final.state == State.ESCALATED
    assert final.strikes == 3
    # Three choices (the first, then two next ones); the third strike escalates unchosen.
    assert counting.reads() == START_READS + CHOICE_READS + CHOICE_READS + CHOICE_READS
    assert _same_row(final, await store.get_incident(iid))


async def test_with_notifications_the_driver_hands_the_engine_its_attempt(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    # The notification of a step leaving `remediating` or `verifying` names the
    # attempt: the driver holds it, so the engine does not read it again.
    counting, engine, rem = rig(store, clock, tmp_path, (True,), outbox=True)
    iid = await open_incident(engine)
    counting.calls.clear()
    final = await drive(rem, clock, iid, [VERIFY])

    assert final.state == State.RESOLVED
    reads = counting.reads()
    assert reads["attempts"] == 1 and reads["get_incident"] == 1
    # Whether the incident was notified before is the outbox's to say, not the driver's.
    assert reads["has_notifications"] == 2
    timeline = await store.timeline(iid)
    resolved = [n for n in timeline.notifications if n.transition_seq == final.version]
    assert resolved and "first" in str(resolved[0].payload)


async def test_an_incident_moved_before_the_claim_is_never_acted_on_and_is_read_again(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    counting, engine, rem = rig(store, clock, tmp_path, (True,))
    iid = await open_incident(engine)
    operator = IncidentEngine(store, clock=clock)

    async def alice_escalates() -> None:
        await operator.fire(iid, "escalate", actor="alice", reason="mine now")

    counting.before["claim_attempt"] = alice_escalates
    counting.calls.clear()
    final = await rem.drive(iid)

    assert final.state == State.ESCALATED
    assert not (tmp_path / "first").exists()  # the action never ran
    [run] = await store.attempts(iid)
    assert run.executing_at is None and run.finished_at is None
    # Read at the start, and once more after the refused claim: nothing else.
    assert counting.reads() == START_READS + START_READS + CHOICE_READS
    assert [t.trigger for t in (await store.timeline(iid)).transitions] == [
        "open", "remediate", "escalate"]


async def test_an_incident_moved_during_the_verify_wait_is_not_stepped_by_the_driver(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    _, engine, rem = rig(store, clock, tmp_path, (False,))
    iid = await open_incident(engine)
    operator = IncidentEngine(store, clock=clock)
    result: list[Incident] = []
    verify_at = clock.now() + timedelta(seconds=VERIFY)

    async def go() -> None:
        result.append(await rem.drive(iid))

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await wait_until(lambda: verify_at in clock.wakeups())  # the driver waits to verify
        await operator.fire(iid, "resolve", actor="alice", reason="fixed it by hand")
        clock.advance(VERIFY)

    [final] = result
    assert final.state == State.RESOLVED
    assert _same_row(final, await store.get_incident(iid))
    # The driver's step after the wait was refused on the version: alice's word stands.
    assert [t.trigger for t in (await store.timeline(iid)).transitions] == [
        "open", "remediate", "action_finished", "resolve"]


def _same_row(held: Incident, stored: Incident) -> bool:
    keep = ("state", "version", "strikes", "flap_count", "deadline_at", "resolved_at",
            "updated_at")
    return all(getattr(held, k) == getattr(stored, k) for k in keep)
