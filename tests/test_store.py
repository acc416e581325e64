"""The store and the engine against real databases: history, strikes, conflicts, races."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa

from incident_fsm.errors import (
    ConcurrentUpdate,
    GuardRejected,
    IncidentNotFound,
    InvalidInput,
    InvalidTransition,
    StoreUnavailable,
)
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent, MachinePolicy, StepRequest
from incident_fsm.models import Incident, IncidentId, Opened, OutboxMessage, Timeline
from incident_fsm.persistence import database
from incident_fsm.persistence.core import DETECTING_THREADS
from incident_fsm.persistence.store import Store
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

pytestmark = pytest.mark.anyio

CLEANUP = ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "safe tier: run automatically")
RESTART = ActionIntent("render_restart", "major", Verdict.NOTIFY, "major tier: run and notify")
SCALE = ActionIntent("render_scale", "major", Verdict.NOTIFY, "major tier: run and notify")
FAILOVER_HELD = ActionIntent("failover", "approval", Verdict.HOLD, "approval tier: hold")


async def _open(engine: IncidentEngine, target: str = "api", kind: str = "disk_high") -> Incident:
    opened = await engine.open(target=target, kind=kind, severity="critical",
                               reason="disk 91% > 85% on two samples", details={"disk_pct": 91.0})
    assert opened.created
    return opened.incident


async def _fail_attempt(store: Store, engine: IncidentEngine, clock: ManualClock,
                        incident_id: IncidentId) -> None:
    """The last attempt ran, returned ok, and verification found the problem still there."""
    run = (await store.timeline(incident_id)).actions[-1]
    await store.finish_action(run.id or 0, outcome="ok", finished_at=clock.advance(5))
    await engine.fire(incident_id, "action_finished", actor="agent", reason="action returned")
    await store.judge_action(run.id or 0, verified=False)


async def _snapshot(store: Store, incident_id: IncidentId) -> Timeline:
    return await store.timeline(incident_id)


def _same(a: Timeline, b: Timeline) -> bool:
    return (
        a.incident.model_dump() == b.incident.model_dump()
        and [t.model_dump() for t in a.transitions] == [t.model_dump() for t in b.transitions]
        and [r.model_dump() for r in a.actions] == [r.model_dump() for r in b.actions]
        and [n.model_dump() for n in a.notifications] == [n.model_dump() for n in b.notifications]
    )


async def test_history_reads_back_in_order_with_actor_and_reason(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    incident = await _open(engine)
    iid = incident.incident_id
    await engine.fire(iid, "remediate", actor="agent", reason="cleanup is the best candidate",
                      intent=CLEANUP)
    await _fail_attempt(store, engine, clock, iid)
    clock.advance(30)
    await engine.fire(iid, "still_failing", actor="agent", reason="disk still 90%",
                      intent=RESTART)
    run = (await store.timeline(iid)).actions[-1]
    await store.finish_action(run.id or 0, outcome="ok", finished_at=clock.advance(20),
                              evidence={"http_status": 202})
    await engine.fire(iid, "action_finished", actor="agent", reason="restart accepted")
    await store.judge_action(run.id or 0, verified=True)
    clock.advance(90)
    final = await engine.fire(iid, "recovered", actor="agent", reason="disk 60% < 70% clear")

    timeline = await store.timeline(iid)
    path = [(t.seq, t.trigger, t.source, t.dest) for t in timeline.transitions]
    assert path == [
        (1, "open", None, "detected"),
        (2, "remediate", "detected", "remediating"),
        (3, "action_finished", "remediating", "verifying"),
        (4, "still_failing", "verifying", "remediating"),
        (5, "action_finished", "remediating", "verifying"),
        (6, "recovered", "verifying", "resolved"),
    ]
    assert all(t.actor and t.reason for t in timeline.transitions)
    assert [t.at for t in timeline.transitions] == sorted(t.at for t in timeline.transitions)
    assert all(t.at.tzinfo is not None for t in timeline.transitions)
    assert final.state == "resolved" and final.version == 6 and final.deadline_at is None
    assert final.resolved_at == clock.now()
    assert timeline.transitions[1].details["verdict"] == "auto"
    assert [(r.attempt, r.action, r.verified) for r in timeline.actions] == [
        (1, "disk_cleanup", False), (2, "render_restart", True)
    ]
    assert final.strikes == 1 == await store.count_strikes(iid)
    assert timeline.actions[1].evidence == {"http_status": 202}


async def test_deadline_is_set_on_entering_each_open_state(
    engine: IncidentEngine, clock: ManualClock, policy: MachinePolicy
) -> None:
    incident = await _open(engine)
    assert incident.deadline_at == clock.now() + timedelta(seconds=policy.detect_deadline)
    clock.advance(10)
    moved = await engine.fire(incident.incident_id, "remediate", actor="agent", reason="go",
                              intent=CLEANUP)
    assert moved.deadline_at == clock.now() + timedelta(seconds=policy.action_deadline)
    clock.advance(10)
    ack = await engine.fire(incident.incident_id, "acknowledge", actor="alice", reason="on it")
    assert ack.state == "remediating" and ack.deadline_at == moved.deadline_at
    moved = await engine.fire(incident.incident_id, "action_finished", actor="agent", reason="done")
    assert moved.deadline_at == clock.now() + timedelta(
        seconds=policy.verify_window + policy.verify_grace)


@pytest.mark.parametrize("failures", [2, 3])
async def test_three_strikes_escalate_two_do_not(
    store: Store, engine: IncidentEngine, clock: ManualClock, failures: int
) -> None:
    incident = await _open(engine, kind="memory_high")
    iid = incident.incident_id
    plan = [RESTART, SCALE, CLEANUP, RESTART]
    await engine.fire(iid, "remediate", actor="agent", reason="first try", intent=plan[0])
    state = "remediating"
    for n in range(1, failures + 1):
        await _fail_attempt(store, engine, clock, iid)
        moved = await engine.fire(iid, "still_failing", actor="agent", reason=f"strike {n}",
                                  intent=plan[n])
        state = moved.state
        assert moved.strikes == n
    timeline = await store.timeline(iid)
    if failures == 3:
        assert state == "escalated"
        assert len(timeline.actions) == 3  # no fourth action was started
    else:
        assert state == "remediating"
        assert len(timeline.actions) == 3  # the third attempt is under way


async def test_still_failing_without_a_permitted_action_escalates(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    incident = await _open(engine)
    await engine.fire(incident.incident_id, "remediate", actor="agent", reason="try",
                      intent=CLEANUP)
    await _fail_attempt(store, engine, clock, incident.incident_id)
    moved = await engine.fire(incident.incident_id, "still_failing", actor="agent",
                              reason="nothing left to try", intent=None)
    assert moved.state == "escalated" and moved.strikes == 1


async def test_forbidden_trigger_names_state_and_allowed_and_writes_nothing(
    store: Store, engine: IncidentEngine
) -> None:
    incident = await _open(engine)
    before = await _snapshot(store, incident.incident_id)
    with pytest.raises(InvalidTransition) as info:
        await engine.fire(incident.incident_id, "action_finished", actor="agent", reason="x")
    message = str(info.value)
    assert f"incident {incident.id}" in message and "'detected'" in message
    # What a person could do about it, not the agent's internal steps.
    assert message.endswith("(operator triggers allowed: acknowledge, escalate, resolve)")
    for internal in ("remediate", "hold", "timeout", "recovered"):
        assert internal not in message
    assert _same(before, await _snapshot(store, incident.incident_id))


async def test_guard_refusal_writes_nothing(store: Store, engine: IncidentEngine) -> None:
    incident = await _open(engine)
    before = await _snapshot(store, incident.incident_id)
    with pytest.raises(GuardRejected, match="action_permitted"):
        await engine.fire(incident.incident_id, "remediate", actor="agent", reason="x",
                          intent=FAILOVER_HELD)
    assert _same(before, await _snapshot(store, incident.incident_id))


@pytest.mark.parametrize(("actor", "reason"), [("agent", ""), ("agent", "   "), ("", "why")])
async def test_missing_reason_or_actor_is_rejected(
    store: Store, engine: IncidentEngine, actor: str, reason: str
) -> None:
    incident = await _open(engine)
    before = await _snapshot(store, incident.incident_id)
    with pytest.raises(InvalidInput):
        await engine.fire(incident.incident_id, "escalate", actor=actor, reason=reason)
    assert _same(before, await _snapshot(store, incident.incident_id))


async def test_unknown_incident(store: Store, engine: IncidentEngine) -> None:
    with pytest.raises(IncidentNotFound, match="no incident with id 999"):
        await engine.fire(IncidentId(999), "escalate", actor="alice", reason="x")
    with pytest.raises(IncidentNotFound):
        await store.timeline(IncidentId(999))


async def test_store_refuses_a_step_that_is_not_an_edge(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    incident = await _open(engine)
    step = StepRequest(
        incident_id=incident.incident_id, expected_version=1, trigger="remediate",
        source="detected", dest="resolved", actor="agent", reason="shortcut", at=clock.now(),
        deadline_at=None, flap_count=0, resolved_at=None,
    )
    before = await _snapshot(store, incident.incident_id)
    with pytest.raises(InvalidTransition, match="no edge leads from 'detected' to 'resolved'"):
        await store.apply_transition(step)
    assert _same(before, await _snapshot(store, incident.incident_id))


def _record_sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every statement psycopg sends from now on, from a worker thread or on the event
    loop, with whether it ran in autocommit (no BEGIN and no COMMIT or ROLLBACK around
    it)."""
    sent: list[tuple[str, bool]] = []
    real, real_async = psycopg.Cursor.execute, psycopg.AsyncCursor.execute

    def execute(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append((str(query), self.connection.autocommit))
        return real(self, query, *args, **kwargs)

    async def execute_async(self: psycopg.AsyncCursor[Any], query: Any, *args: Any,
                            **kwargs: Any) -> Any:
        sent.append((str(query), self.connection.autocommit))
        return await real_async(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute_async)
    return sent


async def test_remediate_records_the_attempt_and_outbox_in_the_same_step(
    store: Store, engine: IncidentEngine
) -> None:
    incident = await _open(engine)
    iid = incident.incident_id
    await engine.fire(iid, "remediate", actor="agent", reason="go", intent=RESTART,
                      notifications=[OutboxMessage("pam", {"text": "🔧 restarting"}),
                                     OutboxMessage("webhook", {"event": "action"})])
    timeline = await store.timeline(iid)
    (run,) = timeline.actions
    assert run.started_at == timeline.transitions[-1].at and run.finished_at is None
    assert run.idempotency_key == f"incident-{iid}-attempt-1-render_restart"
    assert [(n.channel, n.transition_seq, n.status) for n in timeline.notifications] == [
        ("pam", 2, "pending"), ("webhook", 2, "pending")]
    assert timeline.notifications[0].dedupe_key == f"incident-{iid}-seq-2-pam"


async def test_a_failed_write_leaves_no_partial_step(
    store: Store, engine: IncidentEngine
) -> None:
    incident = await _open(engine)
    before = await _snapshot(store, incident.incident_id)
    # A payload the database layer cannot store: the whole step must vanish.
    with pytest.raises(InvalidInput):
        await engine.fire(incident.incident_id, "remediate", actor="agent", reason="go",
                          intent=CLEANUP,
                          notifications=[OutboxMessage("pam", {"bad": float("nan")})])
    assert _same(before, await _snapshot(store, incident.incident_id))


async def test_reopen_inside_window_is_the_same_incident(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    incident = await _open(engine)
    await engine.fire(incident.incident_id, "recovered", actor="agent", reason="cleared by itself")
    assert await store.find_open(incident.fingerprint) is None
    last = await store.last_resolved(incident.fingerprint)
    assert last is not None and last.id == incident.id
    clock.advance(600)
    again = await engine.fire(incident.incident_id, "reopen", actor="agent", reason="back")
    assert (again.state, again.flap_count, again.resolved_at) == ("detected", 1, None)
    await engine.fire(incident.incident_id, "recovered", actor="agent", reason="cleared again")
    clock.advance(3601)
    with pytest.raises(GuardRejected, match="within_reopen_window"):
        await engine.fire(incident.incident_id, "reopen", actor="agent", reason="too late")


async def test_overdue_lists_open_incidents_past_their_deadline(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    early = await _open(engine, target="a")
    clock.advance(60)
    late = await _open(engine, target="b")
    parked = await _open(engine, target="c")
    await engine.fire(parked.incident_id, "hold", actor="agent", reason="needs approval")
    assert await store.overdue(clock.now()) == []
    clock.advance(61)
    assert [i.id for i in await store.overdue(clock.now())] == [early.id]
    clock.advance(60)
    assert [i.id for i in await store.overdue(clock.now())] == [early.id, late.id]
    moved = await engine.fire(early.incident_id, "timeout", actor="sweeper",
                              reason="no action within 120s")
    assert moved.state == "escalated"
    assert moved.deadline_at == clock.now() + timedelta(seconds=1800)  # repeats if unacked
    assert [i.id for i in await store.overdue(clock.now())] == [late.id]


class _LoadBarrierStore(Store):
    """Holds every `get_incident` until `parties` callers have loaded: a forced race."""

    def __init__(self, url: str, parties: int) -> None:
        super().__init__(url)
        self._parties = parties
        self._loaded = 0
        self._all_loaded = anyio.Event()

    async def get_incident(self, incident_id: IncidentId) -> Incident:
        incident = await super().get_incident(incident_id)
        self._loaded += 1
        if self._loaded >= self._parties:
            self._all_loaded.set()
        await self._all_loaded.wait()
        return incident


async def test_a_stale_timeout_cannot_escalate_a_state_whose_deadline_is_ahead(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    incident = await _open(engine)
    clock.advance(121)  # the detect deadline has passed: a sweeper reads it overdue...
    overdue = await store.overdue(clock.now())
    assert [i.id for i in overdue] == [incident.id]
    # ...but the driver fires remediate first, which sets a new deadline.
    await engine.fire(incident.incident_id, "remediate", actor="agent", reason="go",
                      intent=CLEANUP)
    before = await _snapshot(store, incident.incident_id)
    with pytest.raises(GuardRejected, match="deadline_passed"):
        await engine.fire(incident.incident_id, "timeout", actor="sweeper",
                          reason="deadline passed in detected")
    assert _same(before, await _snapshot(store, incident.incident_id))
    clock.advance(301)
    moved = await engine.fire(incident.incident_id, "timeout", actor="sweeper",
                              reason="the action did not finish in time")
    assert moved.state == "escalated"


async def test_an_unacknowledged_escalation_is_repeated_until_acknowledged(
    store: Store, engine: IncidentEngine, clock: ManualClock, policy: MachinePolicy
) -> None:
    incident = await _open(engine)
    escalated = await engine.fire(incident.incident_id, "hold", actor="agent",
                                  reason="needs approval")
    repeat = timedelta(seconds=policy.escalation_repeat)
    assert escalated.deadline_at == clock.now() + repeat
    assert await store.overdue(clock.now() + repeat) != []
    clock.advance(policy.escalation_repeat)
    again = await engine.fire(incident.incident_id, "timeout", actor="agent",
                              reason="nobody acknowledged")
    assert again.state == "escalated" and again.deadline_at == clock.now() + repeat
    acked = await engine.fire(incident.incident_id, "acknowledge", actor="alice",
                              reason="on it")
    assert acked.state == "escalated" and acked.deadline_at is None
    clock.advance(10 * policy.escalation_repeat)
    assert await store.overdue(clock.now()) == []  # nothing repeats once acknowledged
    assert [t.trigger for t in (await store.timeline(incident.incident_id)).transitions] == [
        "open", "hold", "timeout", "acknowledge"]


async def test_concurrent_fires_one_wins_one_conflicts(
    store: Store, engine: IncidentEngine, db_url: str, clock: ManualClock
) -> None:
    incident = await _open(engine)
    results: list[object] = []
    async with _LoadBarrierStore(db_url, parties=2) as racing_store:
        racing = IncidentEngine(racing_store, clock=clock)

        async def fire(trigger: str, intent: ActionIntent | None) -> None:
            try:
                results.append(await racing.fire(incident.incident_id, trigger, actor="agent",
                                                 reason=trigger, intent=intent))
            except ConcurrentUpdate as exc:
                results.append(exc)

        # Both load version 1 before either writes: the store's version check decides.
        async with anyio.create_task_group() as tg:
            tg.start_soon(fire, "hold", None)
            tg.start_soon(fire, "remediate", CLEANUP)
    wins = [r for r in results if isinstance(r, Incident)]
    conflicts = [r for r in results if isinstance(r, ConcurrentUpdate)]
    assert len(wins) == 1 and len(conflicts) == 1
    assert "expected version 1, found version 2" in str(conflicts[0])
    timeline = await store.timeline(incident.incident_id)
    assert [t.seq for t in timeline.transitions] == [1, 2]
    assert timeline.incident.version == 2 and timeline.incident.state == wins[0].state
    assert len(timeline.actions) == (1 if wins[0].state == "remediating" else 0)


async def test_two_appliers_with_the_same_version(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    incident = await _open(engine)

    def step(trigger: str, dest: str) -> StepRequest:
        return StepRequest(
            incident_id=incident.incident_id, expected_version=1, trigger=trigger,
            source="detected", dest=dest, actor="agent", reason=trigger, at=clock.now(),
            deadline_at=None, flap_count=0, resolved_at=None,
            notifications=[OutboxMessage("pam", {"trigger": trigger})],
        )

    outcomes: list[str] = []

    async def apply(trigger: str, dest: str) -> None:
        try:
            await store.apply_transition(step(trigger, dest))
            outcomes.append("ok")
        except ConcurrentUpdate:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        tg.start_soon(apply, "hold", "escalated")
        tg.start_soon(apply, "recovered", "resolved")
    assert sorted(outcomes) == ["conflict", "ok"]
    timeline = await store.timeline(incident.incident_id)
    assert len(timeline.transitions) == 2 and len(timeline.notifications) == 1
    assert timeline.notifications[0].payload["trigger"] == timeline.transitions[1].trigger


async def test_racing_openers_of_one_fingerprint_get_one_incident(
    store: Store, engine: IncidentEngine
) -> None:
    for round_ in range(10):
        results: list[Opened] = []

        async def opener(i: int, r: int = round_, results: list[Opened] = results) -> None:
            results.append(await engine.open(target=f"t{r}", kind="memory_high",
                                             severity="critical", reason=f"opener {i}"))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(opener, i)
        assert len({r.incident.id for r in results}) == 1
        assert sum(r.created for r in results) == 1
    assert len(await store.list_incidents(limit=1000)) == 10


async def test_opener_that_loses_the_insert_race_returns_the_winner(
    store: Store, engine: IncidentEngine, db_url: str, clock: ManualClock
) -> None:
    # Another process holds an uncommitted insert of the same fingerprint; our
    # opener must wait for it and then return that incident, not a second one.
    other = database.create_engine(db_url)
    conn = other.connect()
    tx = conn.begin()
    conn.execute(sa.insert(Incident.__table__).values(  # type: ignore[attr-defined]
        fingerprint="api:memory_high", target="api", kind="memory_high", severity="critical",
        state="detected", strikes=0, flap_count=0, version=1, summary="", details={},
        opened_at=clock.now(), updated_at=clock.now()))
    released = threading.Event()

    def commit_later() -> None:
        released.wait(0.5)
        tx.commit()
        conn.close()

    committer = threading.Thread(target=commit_later)
    committer.start()
    try:
        opened = await engine.open(target="api", kind="memory_high", severity="critical",
                                   reason="second opener")
    finally:
        released.set()
        committer.join()
        other.dispose()
    assert not opened.created
    assert len(await store.list_incidents()) == 1


async def test_strikes_come_from_persisted_attempts(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    incident = await _open(engine)
    iid = incident.incident_id
    dry = await store.record_action(iid, ActionIntent("disk_cleanup", "safe", Verdict.AUTO,
                                                      "monitor-only", dry_run=True), at=clock.now())
    await store.finish_action(dry.id or 0, outcome="failed", finished_at=clock.now())
    assert await store.count_strikes(iid) == 0  # a dry run is never a strike
    await engine.fire(iid, "remediate", actor="agent", reason="go", intent=CLEANUP)
    run = (await store.timeline(iid)).actions[-1]
    assert run.attempt == 2
    await store.finish_action(run.id or 0, outcome="timed_out", finished_at=clock.now())
    assert await store.count_strikes(iid) == 1
    assert (await store.get_incident(iid)).strikes == 1
    # The verdict is what counts: a timed-out action whose problem went away is no strike.
    await store.judge_action(run.id or 0, verified=True)
    assert await store.count_strikes(iid) == 0
    with pytest.raises(InvalidInput, match="already finished"):
        await store.finish_action(run.id or 0, outcome="ok", finished_at=clock.now())
    with pytest.raises(InvalidInput, match="already judged"):
        await store.judge_action(run.id or 0, verified=False)
    with pytest.raises(InvalidInput, match="unknown action outcome"):
        await store.finish_action(run.id or 0, outcome="great", finished_at=clock.now())
    with pytest.raises(InvalidInput, match="no action run with id 999"):
        await store.judge_action(999, verified=False)
    stored = (await store.attempts(iid))[-1]
    assert (stored.outcome, stored.verified, stored.finished_at) == ("timed_out", True,
                                                                     run.started_at)


async def test_an_outcome_is_stored_as_given(store: Store, engine: IncidentEngine,
                                             clock: ManualClock) -> None:
    incident = await _open(engine)
    await engine.fire(incident.incident_id, "remediate", actor="agent", reason="go",
                      intent=RESTART)
    (run,) = await store.attempts(incident.incident_id)
    assert await store.claim_attempt(run.id or 0, at=clock.now(), incident_version=2)
    assert not await store.claim_attempt(run.id or 0, at=clock.now())  # once, ever
    at = clock.advance(7)
    await store.finish_action(run.id or 0, outcome="ok", finished_at=at,
                              output_excerpt="restart requested",
                              evidence={"http_status": 200, "deploy": "dep-1"})
    (stored,) = await store.attempts(incident.incident_id)
    assert (stored.outcome, stored.finished_at, stored.output_excerpt, stored.evidence,
            stored.verified, stored.executing_at) == (
        "ok", at, "restart requested", {"http_status": 200, "deploy": "dep-1"}, None,
        run.started_at)


async def test_queries_filter_and_order(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    first = await _open(engine, target="api", kind="disk_high")
    clock.advance(3600)
    second = await _open(engine, target="worker", kind="memory_high")
    clock.advance(3600)
    third = await _open(engine, target="api", kind="memory_high")
    await engine.fire(first.incident_id, "recovered", actor="agent", reason="cleared")

    ids = lambda xs: [x.id for x in xs]  # noqa: E731
    assert ids(await store.list_incidents()) == [third.id, second.id, first.id]
    assert ids(await store.list_incidents(states=["resolved"])) == [first.id]
    assert ids(await store.list_incidents(target="api")) == [third.id, first.id]
    assert ids(await store.list_incidents(kind="memory_high", target="api")) == [third.id]
    assert ids(await store.list_incidents(since=second.opened_at)) == [third.id, second.id]
    assert ids(await store.list_incidents(until=second.opened_at)) == [first.id]
    assert ids(await store.list_incidents(limit=1)) == [third.id]
    with pytest.raises(InvalidInput, match="unknown state"):
        await store.list_incidents(states=["sleeping"])

    rows = await store.history(since=second.opened_at)
    assert [(t.incident_id, t.trigger) for t, _ in rows] == [
        (second.id, "open"), (third.id, "open"), (first.id, "recovered")]
    assert [t.trigger for t, _ in await store.history(kind="disk_high")] == ["open", "recovered"]
    assert {i.target for _, i in await store.history(target="worker")} == {"worker"}


async def test_overlong_reason_is_refused(store: Store, engine: IncidentEngine) -> None:
    incident = await _open(engine)
    with pytest.raises(InvalidInput, match="limit is 4000"):
        await engine.fire(incident.incident_id, "escalate", actor="alice", reason="x" * 5000)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_unreachable_database_is_store_unavailable_without_secrets(
    kind: str, tmp_path: Any
) -> None:
    if kind == "postgres":
        url = "postgresql+psycopg://ops:s3cr3t-pw@127.0.0.1:9/incidents"
    else:
        url = f"sqlite:///{tmp_path}/missing-dir/x.db"
    async with Store(url) as store:
        with pytest.raises(StoreUnavailable) as info:
            await store.get_incident(IncidentId(1))
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in repr(store)
    assert "nothing was written" in str(info.value)


async def _backend_pid(store: Store, path: str) -> int:
    """The server process of the connection the next call on `path` gets."""
    if path == "thread":
        with store.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    async def pid(conn: Any) -> int:
        return int(conn.info.backend_pid)
    return await store._run(pid)


async def _read_on(store: Store, path: str) -> list[Incident]:
    """A read that runs in a worker thread (its expanding IN is finished per call by
    SQLAlchemy) or on the event loop (`persistence.direct`)."""
    if path == "thread":
        return await store.list_incidents(states=["detected"], limit=1)
    return await store.list_incidents(limit=1)


@pytest.mark.parametrize("path", ["thread", "event loop"])
@pytest.mark.parametrize("seen_by", ["its socket", "a ping after long idle"])
async def test_a_pooled_connection_the_server_dropped_while_idle_is_replaced_unseen(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, seen_by: str, path: str,
) -> None:
    from incident_fsm.persistence import database as db

    async with Store(postgres_url) as store:
        # The database is shared by the run's Postgres tests: what it holds does not matter.
        await _read_on(store, path)
        mine = await _backend_pid(store, path)
        admin = db.create_engine(postgres_url)
        try:
            with admin.begin() as conn:  # what a server restart does to every session
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": mine})
        finally:
            admin.dispose()
        if seen_by != "its socket":
            # A silent death (a dropped NAT entry): only the ping after long idle finds it.
            monkeypatch.setattr(db, "_readable", lambda _: False)
            monkeypatch.setattr(db, "PING_IDLE_AFTER", 0.0)
        assert isinstance(await _read_on(store, path), list)  # no StoreUnavailable
        monkeypatch.setattr(db, "PING_IDLE_AFTER", 3600.0)
        assert await _backend_pid(store, path) != mine


@pytest.mark.parametrize("path", ["thread", "event loop"])
async def test_a_live_idle_connection_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    async with Store(postgres_url) as store:
        await _read_on(store, path)
        sent = _record_sent(monkeypatch)
        await _read_on(store, path)
        assert sent and not [q for q, _ in sent if q == "SELECT 1"]
        assert all(auto for _, auto in sent)  # a read sends no BEGIN and no ROLLBACK


async def test_many_openings_on_one_connection_keep_working(store: Store, clock: ManualClock
                                                            ) -> None:
    # psycopg prepares a statement run often on one connection, and Postgres then plans it
    # without its parameters' values: the open insert must still find its partial index.
    for n in range(30):
        opened = await store.open_incident(target=f"t{n}", kind="memory_high",
                                           severity="critical", at=clock.now(),
                                           deadline_at=None, reason="breach")
        assert opened.created
        again = await store.open_incident(target=f"t{n}", kind="memory_high",
                                          severity="critical", at=clock.now(),
                                          deadline_at=None, reason="breach")
        assert not again.created and again.incident.id == opened.incident.id


@asynccontextmanager
async def _every_shared_thread_busy(store: Store) -> AsyncIterator[None]:
    """The block runs while the store's one shared worker thread is held and two more
    calls wait behind it (`max_threads=1`); they are let go when it ends."""
    held = threading.Event()
    release = threading.Event()

    def busy() -> None:
        held.set()
        release.wait(10)

    async with anyio.create_task_group() as tg:
        for _ in range(3):  # one running, two queued behind it
            tg.start_soon(store._run, busy)
        assert await anyio.to_thread.run_sync(held.wait, 5), "the blocking call never ran"
        try:
            with anyio.fail_after(5):
                yield
        finally:
            release.set()


async def test_a_store_pool_on_postgres_has_a_connection_for_every_thread_of_every_lane(
    postgres_url: str,
) -> None:
    # Seven threads can hold a connection at once (four shared, two detecting, one for
    # the lease), and as many abandoned calls may still hold theirs: none waits for one.
    # Only the shared lane's are kept while idle: the calls made most run on the event
    # loop's own connections (persistence.direct).
    async with Store(postgres_url) as store:
        pool = store.engine.pool
        assert isinstance(pool, sa.pool.QueuePool)
        lanes = 4 + DETECTING_THREADS + 1
        assert pool.size() == 4 and pool.size() + pool._max_overflow == 2 * lanes


async def test_the_lease_is_renewed_while_every_worker_thread_is_busy(db_url: str) -> None:
    async with Store(db_url, max_threads=1) as store, _every_shared_thread_busy(store):
        lease = await store.acquire_lease("agent-leader", "me", now=datetime.now(UTC), ttl=15)
        assert await store.beat("me", now=datetime.now(UTC), ttl=30)
    assert lease.holder == "me"


async def test_a_breach_is_looked_up_and_opened_while_every_worker_thread_is_busy(
    db_url: str, clock: ManualClock
) -> None:
    # Behind a thousand open incidents' steps, openings waited their turn in the shared
    # threads: finding and opening incidents has a lane of its own.
    async with Store(db_url, max_threads=1) as store, _every_shared_thread_busy(store):
        assert await store.opening_candidates("api:memory_high") == (None, None)
        opened = await store.open_incident(target="api", kind="memory_high",
                                           severity="critical", at=clock.now(),
                                           deadline_at=None, reason="breach")
        found, _ = await store.opening_candidates("api:memory_high")
    assert opened.created and found is not None
    assert found.incident_id == opened.incident.incident_id


async def test_a_step_without_an_attempt_is_one_statement_on_postgres(
    postgres_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Store(postgres_url) as store:
        engine = IncidentEngine(store, clock=clock)
        incident = await _open(engine)
        sent = _record_sent(monkeypatch)
        at = clock.advance(3)
        moved = await engine.step(incident, "hold", actor="agent", reason="held for approval",
                                  notifications=[OutboxMessage("pam", {"text": "held"}),
                                                 OutboxMessage("webhook", {"event": "hold"})])
        # one round trip, committing on its own: no BEGIN, no COMMIT
        assert [auto for _, auto in sent] == [True]
        monkeypatch.undo()
        timeline = await store.timeline(incident.incident_id)
    assert moved.incident.version == 2 and moved.incident.state == "escalated"
    assert timeline.incident.model_dump() == moved.incident.model_dump()
    assert [(t.seq, t.trigger, t.source, t.dest, t.reason, t.at)
            for t in timeline.transitions[1:]] == [
        (2, "hold", "detected", "escalated", "held for approval", at)]
    iid = incident.incident_id
    assert [(n.channel, n.transition_seq, n.payload, n.dedupe_key, n.status, n.attempts,
             n.next_attempt_at, n.created_at, n.delivered_at, n.last_error)
            for n in timeline.notifications] == [
        ("pam", 2, {"text": "held"}, f"incident-{iid}-seq-2-pam", "pending", 0, at, at, None, ""),
        ("webhook", 2, {"event": "hold"}, f"incident-{iid}-seq-2-webhook", "pending", 0, at, at,
         None, "")]


async def test_a_step_whose_outbox_row_cannot_be_written_changes_nothing(
    store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    incident = await _open(engine)
    iid = incident.incident_id
    # A row already holds the dedupe key the step's outbox row would take.
    with store.engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO notification (incident_id, transition_seq, channel, payload, "
            "dedupe_key, status, attempts, next_attempt_at, created_at, last_error) "
            "VALUES (:iid, 1, 'pam', '{}', :key, 'pending', 0, :at, :at, '')"),
            {"iid": iid, "key": f"incident-{iid}-seq-2-pam", "at": clock.now()})
    before = await _snapshot(store, iid)
    with pytest.raises(sa.exc.IntegrityError):
        await engine.step(incident, "hold", actor="agent", reason="held",
                          notifications=[OutboxMessage("pam", {"text": "held"})])
    assert _same(before, await _snapshot(store, iid))
    assert before.incident.version == 1 and len(before.transitions) == 1


async def test_an_opening_is_one_statement_on_postgres(
    postgres_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Store(postgres_url) as store:
        await store.list_incidents(limit=1)  # the first connection is set up first
        sent = _record_sent(monkeypatch)
        at = clock.now()
        opened = await store.open_incident(
            # The run's Postgres database is shared: a target no other test opens.
            target="one-statement-opening", kind="memory_high", severity="critical", at=at,
            deadline_at=None,
            reason="memory 90% > 80%", details={"memory_pct": 90.0},
            notifications=[OutboxMessage("pam", {"text": "alert"}),
                           OutboxMessage("webhook", {"event": "opened"})])
        assert opened.created
        assert [auto for _, auto in sent] == [True]  # one round trip: no BEGIN, no COMMIT
        sent.clear()
        again = await store.open_incident(
            target="one-statement-opening", kind="memory_high", severity="critical",
            at=clock.advance(5),
            deadline_at=None, reason="still high",
            notifications=[OutboxMessage("pam", {"text": "again"})])
        assert not again.created and again.incident.id == opened.incident.id
        # the insert that yielded, then the read of the winner
        assert [auto for _, auto in sent] == [True, True]
        monkeypatch.undo()
        timeline = await store.timeline(opened.incident.incident_id)
    iid = opened.incident.incident_id
    assert timeline.incident.model_dump() == opened.incident.model_dump()
    assert [(t.seq, t.trigger, t.source, t.dest, t.actor, t.reason, t.details, t.at)
            for t in timeline.transitions] == [
        (1, "open", None, "detected", "agent", "memory 90% > 80%", {"memory_pct": 90.0}, at)]
    assert [(n.incident_id, n.transition_seq, n.channel, n.payload, n.dedupe_key, n.status,
             n.next_attempt_at) for n in timeline.notifications] == [
        (iid, 1, "pam", {"text": "alert"}, f"incident-{iid}-seq-1-pam", "pending", at),
        (iid, 1, "webhook", {"event": "opened"}, f"incident-{iid}-seq-1-webhook", "pending", at)]
