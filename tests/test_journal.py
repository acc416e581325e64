"""Store outages: the agent works on from a journal; Postgres ends up with the whole history."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from incident_fsm.clock import ManualClock
from incident_fsm.errors import ConcurrentUpdate, StoreUnavailable
from incident_fsm.journal import JournalingStore
from incident_fsm.machine import ActionIntent, IncidentEngine, Verdict
from incident_fsm.models import IncidentId
from incident_fsm.store import Store

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
    from incident_fsm.machine import StepRequest

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
