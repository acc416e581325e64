"""Store outages: the agent works on from a journal; Postgres ends up with the whole history."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.engine import make_url

from incident_fsm.errors import ConcurrentUpdate, StoreUnavailable
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import IncidentId
from incident_fsm.persistence.journal import JournalingStore
from incident_fsm.persistence.store import Store
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio

RESTART = ActionIntent("render_restart", "major", Verdict.NOTIFY, "major")
SCALE = ActionIntent("render_scale", "major", Verdict.NOTIFY, "major")


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    url = make_url(postgres_url)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as p:
        yield p


@pytest.fixture
def proxied_url(postgres_url: str, proxy: TcpProxy) -> str:
    from .conftest import _empty_postgres

    _empty_postgres(postgres_url)
    return make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)


@pytest.mark.parametrize("outage", ["refuse", "blackhole"])
async def test_outage_mid_incident_is_journaled_and_replayed_in_order(
    proxied_url: str, postgres_url: str, proxy: TcpProxy, clock: ManualClock, tmp_path: Path,
    outage: str,
) -> None:
    journal = tmp_path / "agent.journal"
    store = JournalingStore(proxied_url, journal_path=journal, call_timeout=2)
    engine = IncidentEngine(store, clock=clock)
    first = (await engine.open(target="api", kind="memory_high", severity="critical",
                               reason="memory 91%")).incident
    iid = first.incident_id
    await engine.fire(iid, "remediate", actor="agent", reason="restart first", intent=RESTART)
    run = (await store.timeline(iid)).actions[0]

    proxy.cut(outage)
    async with Store(proxied_url, call_timeout=2) as bystander:
        with pytest.raises(StoreUnavailable):  # the database really is gone for everyone
            await bystander.statistics()
    await store.finish_action(run.id or 0, outcome="ok", finished_at=clock.advance(20))
    await engine.fire(iid, "action_finished", actor="agent", reason="restart accepted")
    await store.judge_action(run.id or 0, verified=False)
    assert (await store.get_incident(iid)).strikes == 1
    clock.advance(90)
    moved = await engine.fire(iid, "still_failing", actor="agent", reason="still 90%",
                              intent=SCALE)
    assert moved.state == "remediating" and moved.version == 4
    second = (await engine.open(target="worker", kind="disk_high", severity="critical",
                                reason="disk 95%")).incident
    assert second.incident_id < 0  # provisional until the database is back
    await engine.fire(second.incident_id, "hold", actor="agent", reason="no cleanup roots")
    with pytest.raises(ConcurrentUpdate):  # the local copy keeps the version check
        await store.apply_transition(_stale_step(moved, clock))
    crashed = store  # dropped as a killed process would be (closed only at the end)

    # The agent restarts while the database is still away: the journal is its memory.
    store = JournalingStore(proxied_url, journal_path=journal, call_timeout=2)
    engine = IncidentEngine(store, clock=clock)
    assert (await store.get_incident(iid)).state == "remediating"
    scale_run = (await store.timeline(iid)).actions[-1]
    # The key the action runs with offline (the Idempotency-Key an API sees) is the key
    # the database keeps after the replay, else what ran cannot be tied to its attempt.
    offline_key = scale_run.idempotency_key
    assert await store.claim_attempt(scale_run.id or 0, at=clock.now())
    assert not await store.claim_attempt(scale_run.id or 0, at=clock.now())
    await store.finish_action(scale_run.id or 0, outcome="ok", finished_at=clock.advance(10))
    await engine.fire(iid, "action_finished", actor="agent", reason="scaled to 2")

    proxy.restore()
    saved = journal.read_text()
    assert await store.replay() > 0
    assert not journal.exists() and not store.offline
    await store.close()
    await crashed.close()

    async with Store(postgres_url) as direct:
        timeline = await direct.timeline(iid)
        assert [(t.seq, t.trigger) for t in timeline.transitions] == [
            (1, "open"), (2, "remediate"), (3, "action_finished"), (4, "still_failing"),
            (5, "action_finished")]
        assert [(r.attempt, r.action, r.outcome, r.verified) for r in timeline.actions] == [
            (1, "render_restart", "ok", False), (2, "render_scale", "ok", None)]
        assert timeline.actions[1].executing_at is not None
        assert timeline.actions[1].idempotency_key == offline_key
        assert timeline.incident.strikes == 1 and timeline.incident.version == 5
        (other,) = await direct.list_incidents(target="worker")
        assert other.id is not None and other.id > 0 and other.state == "escalated"
        before = [t.model_dump() for t in timeline.transitions]

    # A crash after the replay but before the journal was removed: replaying again changes nothing.
    journal.write_text(saved)
    again = JournalingStore(proxied_url, journal_path=journal)
    await again.replay()
    await again.close()
    async with Store(postgres_url) as direct:
        assert [t.model_dump() for t in (await direct.timeline(iid)).transitions] == before
        assert len(await direct.list_incidents()) == 2


def _stale_step(incident: object, clock: ManualClock) -> object:
    from incident_fsm.fsm.steps import StepRequest

    assert hasattr(incident, "incident_id")
    return StepRequest(
        incident_id=IncidentId(incident.incident_id), expected_version=1, trigger="escalate",
        source="detected", dest="escalated", actor="alice", reason="stale", at=clock.now(),
        deadline_at=None, flap_count=0, resolved_at=None)


async def test_journal_survives_a_torn_last_line(
    proxied_url: str, proxy: TcpProxy, clock: ManualClock, tmp_path: Path
) -> None:
    journal = tmp_path / "agent.journal"
    store = JournalingStore(proxied_url, journal_path=journal)
    engine = IncidentEngine(store, clock=clock)
    proxy.cut()
    opened = (await engine.open(target="api", kind="disk_high", severity="critical",
                                reason="disk 91%")).incident
    await store.close()
    with journal.open("a") as out:
        out.write('{"op": "step", "step": {"incid')  # the crash hit mid-write
    shutil.copy(journal, tmp_path / "copy")
    store = JournalingStore(proxied_url, journal_path=journal)
    assert (await store.get_incident(opened.incident_id)).state == "detected"
    proxy.restore()
    assert await store.replay() == 1
    assert [i.fingerprint for i in await store.list_incidents()] == ["api:disk_high"]
    await store.close()


async def test_a_conflicting_step_is_rejected_and_the_replay_goes_on(
    proxied_url: str, postgres_url: str, proxy: TcpProxy, clock: ManualClock, tmp_path: Path
) -> None:
    journal = tmp_path / "agent.journal"
    store = JournalingStore(proxied_url, journal_path=journal, call_timeout=2)
    engine = IncidentEngine(store, clock=clock)
    iid = (await engine.open(target="api", kind="memory_high", severity="critical",
                             reason="memory 91%")).incident.incident_id
    proxy.cut()
    await engine.fire(iid, "remediate", actor="agent", reason="restart", intent=RESTART)
    run = (await store.timeline(iid)).actions[-1]
    assert await store.claim_attempt(run.id or 0, at=clock.now())
    await store.finish_action(run.id or 0, outcome="ok", finished_at=clock.advance(5))
    later = (await engine.open(target="worker", kind="disk_high", severity="critical",
                               reason="disk 95%")).incident
    async with Store(postgres_url) as direct:  # an operator, who can reach it, takes over
        await IncidentEngine(direct, clock=clock).fire(iid, "escalate", actor="alice",
                                                       reason="mine")
    proxy.restore()
    await store.replay()  # does not raise, does not loop
    assert not store.offline and not journal.exists()
    rejected = [json.loads(line)["entry"]["op"]
                for line in (await anyio.Path(f"{journal}.rejected").read_text()).splitlines()]
    assert rejected == ["step", "claim", "finish"]  # the step, and what depended on it
    async with Store(postgres_url) as direct:
        timeline = await direct.timeline(iid)
        assert [t.trigger for t in timeline.transitions] == ["open", "escalate"]
        assert timeline.actions == []
        (other,) = await direct.list_incidents(target="worker")  # the rest was replayed
        assert other.id == store.real_id(later.incident_id) and other.id is not None
    await store.close()


async def test_replaying_twice_never_duplicates_an_incident_resolved_offline(
    proxied_url: str, postgres_url: str, proxy: TcpProxy, clock: ManualClock, tmp_path: Path
) -> None:
    journal = tmp_path / "agent.journal"
    store = JournalingStore(proxied_url, journal_path=journal, call_timeout=2)
    engine = IncidentEngine(store, clock=clock)
    proxy.cut()
    opened = (await engine.open(target="w", kind="disk_high", severity="critical",
                                reason="disk 95%")).incident
    await engine.fire(opened.incident_id, "hold", actor="agent", reason="nothing to run")
    clock.advance(30)
    await engine.fire(opened.incident_id, "recovered", actor="agent", reason="cleared")
    proxy.restore()
    saved = journal.read_text()
    await store.replay()
    await store.close()
    journal.write_text(saved)  # a crash after the last entry, before the journal was removed
    again = JournalingStore(proxied_url, journal_path=journal)
    await again.replay()
    await again.close()
    async with Store(postgres_url) as direct:
        (incident,) = await direct.list_incidents(target="w")
        assert [t.trigger for t in (await direct.timeline(incident.incident_id)).transitions] == [
            "open", "hold", "recovered"]


async def test_a_provisional_id_keeps_working_after_the_replay(
    proxied_url: str, postgres_url: str, proxy: TcpProxy, clock: ManualClock, tmp_path: Path
) -> None:
    store = JournalingStore(proxied_url, journal_path=tmp_path / "agent.journal",
                            call_timeout=2)
    engine = IncidentEngine(store, clock=clock)
    proxy.cut()
    provisional = (await engine.open(target="api", kind="memory_high", severity="critical",
                                     reason="memory 91%")).incident.incident_id
    await engine.fire(provisional, "remediate", actor="agent", reason="go", intent=RESTART)
    (run,) = (await store.timeline(provisional)).actions
    assert run.id is not None and run.id < 0
    assert await store.claim_attempt(run.id, at=clock.now())
    proxy.restore()
    await store.replay()
    # The action that started offline finishes now: its provisional ids still work.
    await store.finish_action(run.id, outcome="ok", finished_at=clock.advance(5))
    moved = await engine.fire(provisional, "action_finished", actor="agent", reason="done")
    assert moved.incident_id == store.real_id(provisional) > 0
    async with Store(postgres_url) as direct:
        (real_run,) = (await direct.timeline(moved.incident_id)).actions
        assert (real_run.outcome, real_run.executing_at is not None) == ("ok", True)
    await store.close()


def _cleanup_rig(on_run: Callable[[], object], *, cleared: bool) -> tuple[Any, Any]:
    """A catalog of one disk cleanup that calls `on_run` when it runs, and a verifier that
    says `cleared` (the disk at 40 %, or still at 91 %)."""
    from incident_fsm.remediation.actions.base import Outcome
    from incident_fsm.remediation.remediator import Verification

    class Cleanup:
        name, kinds, tier, timeout = "disk_cleanup", ("disk_high",), "safe", 5.0

        async def run(self, ctx: object) -> Outcome:
            on_run()
            return Outcome.ok("freed 1 GB")

    class Catalog:
        def for_target(self, target: str) -> dict[str, object]:
            return {"disk_cleanup": Cleanup()}

    class Verifier:
        async def verify(self, incident: object) -> Verification:
            return Verification(cleared, "disk 40%" if cleared else "disk 91%")

    return Catalog(), Verifier()


class _BlinkingStore(JournalingStore):
    """Claiming the chosen attempt fails twice (a connection reset), then works."""

    calls = 0

    async def claim_attempt(self, run_id: int, **kwargs: Any) -> bool:
        self.calls += 1
        if self.calls in (1, 2):
            raise StoreUnavailable("database unavailable (OperationalError); nothing was written")
        return await super().claim_attempt(run_id, **kwargs)


async def test_a_blip_never_turns_a_chosen_action_into_a_silent_strike(
    db_url: str, tmp_path: Path
) -> None:
    from incident_fsm.clock import SystemClock
    from incident_fsm.fsm.steps import MachinePolicy
    from incident_fsm.remediation.remediator import Remediator

    ran: list[str] = []
    catalog, verifier = _cleanup_rig(lambda: ran.append("cleanup"), cleared=True)

    store = _BlinkingStore(db_url, journal_path=tmp_path / "agent.journal")
    clock = SystemClock()
    engine = IncidentEngine(store, clock=clock, policy=MachinePolicy(verify_window=0.1))
    rem = Remediator(engine=engine, store=store, clock=clock, actions=catalog,  # type: ignore[arg-type]
                     verifier=verifier)
    iid = (await engine.open(target="api", kind="disk_high", severity="critical",
                             reason="disk 90%")).incident.incident_id
    with anyio.fail_after(20):
        for _ in range(5):  # the agent re-drives at its next scan
            with contextlib.suppress(StoreUnavailable):
                if (await rem.drive(iid)).state == "resolved":
                    break
    timeline = await store.timeline(iid)
    assert store.calls == 3
    assert ran == ["cleanup"]  # it ran, once
    assert [(r.outcome, r.verified) for r in timeline.actions] == [("ok", True)]
    assert timeline.incident.state == "resolved" and timeline.incident.strikes == 0
    await store.close()


async def test_an_outage_that_begins_while_the_action_runs_is_ridden_out_by_the_driver(
    proxied_url: str, postgres_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    # The driver reads the incident and its attempts once, at the start; the attempt its
    # step recorded comes back from the step. The local copy keeps it as well, so the rest
    # of the drive (outcome, verdict, the steps) goes to the journal with nothing re-read.
    from incident_fsm.clock import SystemClock
    from incident_fsm.fsm.steps import MachinePolicy
    from incident_fsm.remediation.remediator import Remediator

    catalog, verifier = _cleanup_rig(proxy.cut, cleared=False)

    journal = tmp_path / "agent.journal"
    store = JournalingStore(proxied_url, journal_path=journal, call_timeout=2)
    clock = SystemClock()
    engine = IncidentEngine(store, clock=clock,
                            policy=MachinePolicy(verify_window=0.1, max_strikes=1))
    rem = Remediator(engine=engine, store=store, clock=clock, actions=catalog,  # type: ignore[arg-type]
                     verifier=verifier)
    iid = (await engine.open(target="api", kind="disk_high", severity="critical",
                             reason="disk 90%")).incident.incident_id
    with anyio.fail_after(30):
        final = await rem.drive(iid)
    assert store.offline
    assert (final.state, final.strikes, final.version) == ("escalated", 1, 4)
    proxy.restore()
    assert await store.replay() > 0
    await store.close()
    async with Store(postgres_url) as direct:
        timeline = await direct.timeline(iid)
        assert [t.trigger for t in timeline.transitions] == [
            "open", "remediate", "action_finished", "still_failing"]
        assert [(r.action, r.outcome, r.verified, r.executing_at is not None)
                for r in timeline.actions] == [("disk_cleanup", "ok", False, True)]
        assert timeline.incident.strikes == 1 and timeline.incident.state == "escalated"


async def test_offline_a_claim_is_refused_once_the_incident_moved_as_online(
    proxied_url: str, proxy: TcpProxy, clock: ManualClock, tmp_path: Path
) -> None:
    store = JournalingStore(proxied_url, journal_path=tmp_path / "agent.journal",
                            call_timeout=2)
    engine = IncidentEngine(store, clock=clock)
    iid = (await engine.open(target="api", kind="memory_high", severity="critical",
                             reason="memory 91%")).incident.incident_id
    moved = await engine.fire(iid, "remediate", actor="agent", reason="go", intent=RESTART)
    (run,) = (await store.timeline(iid)).actions
    proxy.cut()
    assert run.id is not None
    assert not await store.claim_attempt(run.id, at=clock.now(),
                                         incident_version=moved.version - 1)
    assert await store.claim_attempt(run.id, at=clock.now(), incident_version=moved.version)
    await store.close()
