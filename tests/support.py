"""Helpers shared by the remediation tests: incidents, action contexts, virtual-time stepping."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa

from incident_fsm.clock import Clock
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import Incident, IncidentId
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions.base import ActionContext
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

T = TypeVar("T")
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def incident(**fields: Any) -> Incident:
    """An incident as an action sees it (not stored)."""
    base: dict[str, Any] = dict(
        id=7, fingerprint="api:disk_high", target="api", kind="disk_high", severity="critical",
        state="remediating", opened_at=NOW, updated_at=NOW,
    )
    base.update(fields)
    return Incident(**base)


def context(clock: Clock, *, seconds: float = 300.0, dry_run: bool = False,
            **fields: Any) -> ActionContext:
    return ActionContext(incident=incident(**fields), idempotency_key="incident-7-attempt-1",
                         deadline=clock.now() + timedelta(seconds=seconds), clock=clock,
                         dry_run=dry_run)


async def advance_when_waiting(clock: ManualClock, seconds: float, *,
                               real_limit: float = 20.0) -> None:
    """Once some task sleeps until exactly now + `seconds` on `clock`, move time there.

    Real threads (the store, file work) and subprocesses make progress in real
    time, so we wait -- briefly, in real time -- for the sleeper to appear
    instead of guessing when everything has settled.
    """
    due = clock.now() + timedelta(seconds=seconds)
    with anyio.fail_after(real_limit):
        while due not in clock.wakeups():  # noqa: ASYNC110 - polling real progress
            await anyio.sleep(0.002)
    clock.advance(seconds)


async def wait_until(predicate: Any, *, real_limit: float = 20.0) -> None:
    """Wait (real time, briefly) until `predicate()` holds."""
    with anyio.fail_after(real_limit):
        while not predicate():  # noqa: ASYNC110 - polling real progress
            await anyio.sleep(0.002)


def alive(pid: int | str) -> bool:
    """Running (a zombie waiting for its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


async def run_with_waits(clock: ManualClock, call: Callable[[], Awaitable[T]],
                         waits: Sequence[float]) -> T:
    """Await `call()`, moving virtual time over each expected wait once it is being waited."""
    result: list[T] = []

    async def go() -> None:
        result.append(await call())

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        for seconds in waits:
            await advance_when_waiting(clock, seconds)
    return result[0]


async def remediating_without_attempt(engine: IncidentEngine, store: Store, *,
                                      target: str = "api", kind: str = "disk_high") -> IncidentId:
    """An incident in `remediating` whose attempt row is gone (an old bug, a hand-edited
    database): the graph says an action runs, the store has none."""
    opened = await engine.open(target=target, kind=kind, severity="critical",
                               reason="disk 91% > 85% on two samples")
    iid = opened.incident.incident_id
    await engine.fire(iid, "remediate", actor="agent", reason="disk_cleanup: safe",
                      intent=ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "safe"))
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM action_run WHERE incident_id = :iid"), {"iid": iid})
    assert (await store.get_incident(iid)).state == "remediating"
    assert (await store.attempts(iid)) == []
    return iid
