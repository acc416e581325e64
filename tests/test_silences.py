"""Silences: maintenance windows that keep the agent's hands off, and only its own hands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from incident_fsm.cli import main as cli
from incident_fsm.errors import InvalidInput, StoreUnavailable
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent, StepView
from incident_fsm.models import Silence
from incident_fsm.notify.policy import notice_for
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.remediator import Remediator
from incident_fsm.runtime.silences import Silences
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

from .test_remediator import VERIFY, Actions, ScriptedVerifier, drive, open_incident, runs, touch

pytestmark = pytest.mark.anyio


async def add(store: Store, clock: ManualClock, *, target: str = "api", kind: str | None = None,
              hours: float = 2, reason: str = "database upgrade") -> Silence:
    now = clock.now()
    return await store.add_silence(target=target, kind=kind, starts_at=now,
                                   ends_at=now + timedelta(hours=hours), actor="alice",
                                   reason=reason, at=now)


async def test_silences_are_added_listed_and_expired_and_refuse_nonsense(
    store: Store, clock: ManualClock
) -> None:
    first = await add(store, clock)
    second = await add(store, clock, kind="disk_high", hours=1)
    assert [s.id for s in await store.silences(now=clock.now())] == [second.id, first.id]
    now = clock.now()
    later = now + timedelta(hours=1)
    with pytest.raises(InvalidInput, match="must end after it starts"):
        await store.add_silence(target="api", kind=None, starts_at=later, ends_at=later,
                                actor="a", reason="r", at=now)
    with pytest.raises(InvalidInput, match="must end in the future, not at 2026-11-29 02:00"):
        await store.add_silence(target="api", kind=None, starts_at=now - timedelta(hours=2),
                                ends_at=now - timedelta(hours=1), actor="a", reason="r", at=now)
    with pytest.raises(InvalidInput, match="reason must not be empty"):
        await store.add_silence(target="api", kind=None, starts_at=now,
                                ends_at=now + timedelta(hours=1), actor="a", reason=" ", at=now)
    ended = await store.expire_silence(first.id or 0, actor="bob", at=clock.advance(60))
    assert (ended.expired_by, ended.expired_at) == ("bob", clock.now())
    with pytest.raises(InvalidInput, match=f"silence {first.id} already ended"):
        await store.expire_silence(first.id or 0, actor="bob", at=clock.now())
    with pytest.raises(InvalidInput, match="no silence with id 999"):
        await store.expire_silence(999, actor="bob", at=clock.now())
    assert [s.id for s in await store.silences(now=clock.now())] == [second.id]
    clock.advance(3600)  # the second one ends by itself
    assert await store.silences(now=clock.now()) == []
    assert len(await store.silences(now=clock.now(), include_ended=True)) == 2


def rig(store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path,
        silences: Silences) -> Remediator:
    return Remediator(engine=engine, store=store, clock=clock,
                      actions=Actions({"cleanup": touch(tmp_path, "cleanup")}),
                      verifier=ScriptedVerifier(True), silences=silences)


async def test_a_silenced_incident_is_recorded_not_acted_on_until_the_silence_ends(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    silence = await add(store, clock, kind="disk_high", hours=1)
    await add(store, clock, target="web")  # another target's silence changes nothing here
    silences = Silences()
    await silences.refresh(store, clock.now())
    rem = rig(store, engine, clock, tmp_path, silences)
    iid = await open_incident(engine)

    assert (await rem.drive(iid)).state == "detected"
    assert runs(tmp_path, "cleanup") == 0
    [would] = (await store.timeline(iid)).actions
    assert (would.dry_run, would.outcome) == (True, "skipped")
    assert f"silenced (silence {silence.id} (disk_high on api) by alice" in \
        would.evidence["verdict_reason"]

    clock.advance(3600)  # it ends by itself: the next drive acts
    final = await drive(rem, clock, iid, [VERIFY])
    assert final.state == "resolved" and runs(tmp_path, "cleanup") == 1


async def test_an_operator_approval_runs_during_a_silence(
    store: Store, engine: IncidentEngine, clock: ManualClock, tmp_path: Path
) -> None:
    await add(store, clock)
    silences = Silences()
    await silences.refresh(store, clock.now())
    rem = rig(store, engine, clock, tmp_path, silences)
    iid = await open_incident(engine)
    await engine.fire(iid, "hold", actor="agent", reason="needs approval",
                      intent=ActionIntent("cleanup", "approval", Verdict.HOLD, "approval tier"))
    await engine.fire(iid, "approve", actor="alice", reason="go ahead, silence or not",
                      intent=ActionIntent("cleanup", "approval", Verdict.APPROVED, "approved"))
    final = await drive(rem, clock, iid, [VERIFY])
    assert final.state == "resolved" and runs(tmp_path, "cleanup") == 1


class _Away:
    async def silences(self, **_: Any) -> list[Silence]:
        raise StoreUnavailable("database unavailable (OperationalError)")


async def test_the_last_known_silences_stay_in_force_while_the_database_is_away(
    store: Store, clock: ManualClock
) -> None:
    silence = await add(store, clock, hours=1)
    silences = Silences()
    await silences.refresh(store, clock.now())
    await silences.refresh(_Away(), clock.now())
    assert silences.known_for("api", "memory_high", clock.now()) == silence
    clock.advance(3601)  # and it still ends on time
    assert silences.known_for("api", "memory_high", clock.now()) is None


class _Counting:
    """A store that counts its reads and can be made slow or absent."""

    def __init__(self, store: Store) -> None:
        self.store, self.reads, self.delay, self.away = store, 0, 0.0, False

    async def silences(self, **kw: Any) -> list[Silence]:
        self.reads += 1
        if self.delay:
            await anyio.sleep(self.delay)
        if self.away:
            raise StoreUnavailable("database unavailable (OperationalError)")
        return await self.store.silences(**kw)


async def test_silences_are_read_when_a_decision_needs_them_and_at_most_every_max_age(
    store: Store, clock: ManualClock
) -> None:
    counting = _Counting(store)
    silences = Silences(counting, max_age=5.0)
    assert counting.reads == 0  # nothing read until a decision asks: an idle agent reads none
    assert await silences.silence_for("api", "memory_high", clock.now()) is None
    silence = await add(store, clock)
    clock.advance(4.9)
    # A thousand decisions at once within max_age of the last read: answered from memory.
    answers = []
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(lambda: _append(answers, silences, clock.now()))
    assert answers == [None] * 50 and counting.reads == 1
    clock.advance(0.1)  # now the list is old: read once, however many ask at the same time
    answers.clear()
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(lambda: _append(answers, silences, clock.now()))
    assert answers == [silence] * 50 and counting.reads == 2


async def _append(answers: list[Silence | None], silences: Silences, now: datetime) -> None:
    answers.append(await silences.silence_for("api", "memory_high", now))


async def test_a_slow_or_absent_database_holds_a_decision_up_at_most_wait_seconds(
    store: Store, clock: ManualClock
) -> None:
    silence = await add(store, clock, hours=1)
    counting = _Counting(store)
    silences = Silences(counting, max_age=5.0, wait=0.2)
    assert await silences.silence_for("api", "memory_high", clock.now()) == silence
    clock.advance(5)
    counting.delay = 30.0
    with anyio.fail_after(5):
        started = anyio.current_time()
        assert await silences.silence_for("api", "memory_high", clock.now()) == silence
        assert anyio.current_time() - started < 2  # the last list, after at most `wait`
        # ... and the next decision within max_age does not wait again.
        assert await silences.silence_for("api", "memory_high", clock.now()) == silence
    assert counting.reads == 2
    clock.advance(5)
    counting.delay, counting.away = 0.0, True
    assert await silences.silence_for("api", "memory_high", clock.now()) == silence
    clock.advance(3600)  # it still ends on time, from memory
    assert await silences.silence_for("api", "memory_high", clock.now()) is None
    assert counting.reads == 4


def test_the_opening_notice_says_once_that_the_incident_is_silenced(clock: ManualClock) -> None:
    def opened(details: dict[str, Any]) -> str:
        notice = notice_for(StepView(
            trigger="open", source=None, dest="detected", incident_id=None, target="api",
            kind="disk_high", severity="critical", actor="agent", reason="disk 91%",
            at=clock.now(), details=details), alert_severities=frozenset({"critical"}))
        assert notice is not None
        return notice.text

    text = opened({"silenced": "silence 4 (api) by alice until 2026-11-29T05:00: upgrade"})
    assert "It is silenced (silence 4 (api) by alice" in text
    assert "runs no action until the silence ends" in text
    assert "will try to fix it" not in text
    assert "silenced" not in opened({})


def test_the_cli_adds_lists_and_expires_silences(db_url: str) -> None:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli.cli, [*args, "--database-url", db_url])

    added = run("silence", "add", "--target", "api", "--for", "2h", "--reason", "upgrade",
                "--actor", "alice", "--json")
    assert added.exit_code == 0, added.output
    sid = json.loads(added.stdout)["id"]
    # No target of that name was polled: said on stderr, the silence added all the same.
    assert "no target named 'api' was polled in the last 24 h" in added.stderr
    listed = run("silence", "list")
    assert listed.exit_code == 0 and "upgrade" in listed.output and "active" in listed.output
    both = run("silence", "add", "--target", "api", "--for", "2h", "--until", "2030-01-01",
               "--reason", "x")
    assert both.exit_code == 2 and "exactly one of --for and --until" in both.output
    bad = run("silence", "add", "--target", "api", "--for", "soon", "--reason", "x")
    assert bad.exit_code == 2 and "not a duration" in bad.output
    past = run("silence", "add", "--target", "api", "--until", "2020-01-01", "--reason", "x")
    assert past.exit_code == 2 and "must end in the future, not at 2020-01-01" in past.output
    zero = run("silence", "add", "--target", "api", "--for", "0m", "--reason", "x")
    assert zero.exit_code == 2 and "must last longer" in zero.output
    assert len(zero.output.strip().splitlines()) == 1  # one line, like every error
    expired = run("silence", "expire", str(sid), "--actor", "bob")
    assert expired.exit_code == 0 and f"silence {sid} expired by bob" in expired.output
    again = run("silence", "expire", str(sid))
    assert again.exit_code == 2 and "already ended" in again.output
    assert "no silences" in run("silence", "list").output
    assert "expired by bob" in run("silence", "list", "--all").output


async def test_a_running_agent_obeys_a_silence_and_says_so_once(
    db_url: str, tmp_path: Path
) -> None:
    from incident_fsm.demo.simulator import ServiceState, Simulator
    from incident_fsm.runtime.agent import Agent

    from .scenario import ENV, sim_settings, until

    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)  # 90 %
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url)
        async with Store(db_url) as operator:  # added before the agent starts
            now = datetime.now(UTC)
            await operator.add_silence(target="api", kind=None, starts_at=now,
                                       ends_at=now + timedelta(hours=1), actor="alice",
                                       reason="planned failover test", at=now)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent:

            async def recorded() -> bool:
                # Finished, not only recorded: the verdict is written with the outcome.
                found = await agent.store.list_incidents(kind="memory_high")
                return bool(found) and any(run.finished_at is not None for run in (
                    await agent.store.timeline(found[0].incident_id)).actions)

            await until(recorded, within=20)
            (incident,) = await agent.store.list_incidents(kind="memory_high")
            timeline = await agent.store.timeline(incident.incident_id)
    assert state.requests["POST /v1/services/srv-web/restart"] == 0  # nothing was run
    assert all(run.dry_run for run in timeline.actions)
    assert "planned failover test" in timeline.actions[0].evidence["verdict_reason"]
    texts = [str(n.payload.get("text", "")) for n in timeline.notifications]
    assert sum("It is silenced" in t for t in texts) == 1
