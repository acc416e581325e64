"""The outage journal's local copy answers the agent's working-set queries as the database does.

One suite of queries runs against the online store and, after the database
goes away, against the journal's local copy; the answers must be equal.
Also the journal's own defects: an older read never replaces a newer
local copy, an entry nobody foresaw is rejected instead of wedging the
replay, and a journal left by a previous run is read off the event loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from incident_fsm.errors import StoreUnavailable
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.graph import OPEN_STATES
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import Incident, IncidentId, OutboxMessage
from incident_fsm.persistence import journal_file
from incident_fsm.persistence.journal import JournalingStore
from incident_fsm.persistence.store import Store
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import Verdict

from .logcapture import captured_logs

pytestmark = pytest.mark.anyio
T = TypeVar("T")

RESTART = ActionIntent("render_restart", "major", Verdict.NOTIFY, "restart")
SCALE = ActionIntent("render_scale", "major", Verdict.NOTIFY, "scale")
CLEANUP = ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "cleanup")
DRY = ActionIntent("render_restart", "major", Verdict.NOTIFY, "dry", dry_run=True)
NOTE = OutboxMessage("log", {"message": "told"})


class SwitchableStore(Store):
    """A real store whose database can be made unreachable (every call: StoreUnavailable)."""

    down = False
    #: while set, `get_incident` waits for it before answering (a slow read in flight)
    gate: anyio.Event | None = None

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if self.down:
            raise StoreUnavailable("database unavailable: test switch; nothing was written")
        return await super()._run(fn, *args, **kwargs)

    async def get_incident(self, incident_id: IncidentId) -> Incident:
        found = await super().get_incident(incident_id)
        if self.gate is not None:
            await self.gate.wait()
        return found


@pytest.fixture
async def online(db_url: str) -> AsyncIterator[SwitchableStore]:
    async with SwitchableStore(db_url) as store:
        yield store


async def _history(engine: IncidentEngine, store: JournalingStore, clock: ManualClock) -> dict[
        str, Any]:
    """Incidents in every working-set situation, built online through the journal."""
    engine_open = engine.open

    async def opened(target: str, kind: str) -> IncidentId:
        return (await engine_open(target=target, kind=kind, severity="critical",
                                  reason=f"{kind} on {target}")).incident.incident_id

    async def finish(iid: IncidentId, outcome: str, verified: bool | None) -> None:
        run = (await store.attempts(iid))[-1]
        await store.finish_action(run.id or 0, outcome=outcome, finished_at=clock.now(),
                                  output_excerpt="done", evidence={"summary": outcome})
        if verified is not None:
            await store.judge_action(run.id or 0, verified=verified)

    # api: one incident that struck once and is remediating again
    a = await opened("api", "memory_high")
    await engine.fire(a, "remediate", actor="agent", reason="restart", intent=RESTART,
                      notifications=[NOTE])
    await store.claim_attempt((await store.attempts(a))[-1].id or 0, at=clock.now())
    await finish(a, "failed", False)
    await engine.fire(a, "action_finished", actor="agent", reason="returned")
    clock.advance(30)
    await engine.fire(a, "still_failing", actor="agent", reason="still", intent=SCALE)
    # api: a second kind, only detected, with a dry run on record
    b = await opened("api", "disk_high")
    await store.record_action(b, DRY, at=clock.now())
    clock.advance(10)
    # worker: resolved, then reopened (a flap), then a cleanup found not applicable
    c = await opened("worker", "disk_high")
    await engine.fire(c, "remediate", actor="agent", reason="clean", intent=CLEANUP)
    await finish(c, "ok", True)
    await engine.fire(c, "action_finished", actor="agent", reason="returned")
    await engine.fire(c, "recovered", actor="agent", reason="cleared")
    clock.advance(60)
    resolved = await store.last_resolved("worker:disk_high")
    assert resolved is not None and resolved.incident_id == c
    await engine.fire(c, "reopen", actor="agent", reason="back again")
    await engine.fire(c, "remediate", actor="agent", reason="clean again", intent=CLEANUP)
    await finish(c, "skipped", None)
    # db: escalated and past its deadline
    d = await opened("db", "service_down:db")
    await engine.fire(d, "escalate", actor="sre", reason="mine")
    # web: resolved and gone from the working set
    e = await opened("web", "memory_high")
    await engine.fire(e, "resolve", actor="sre", reason="fixed by hand")
    # cache: resolved, and a new incident of the same fingerprint open since
    f = await opened("cache", "memory_high")
    await engine.fire(f, "resolve", actor="sre", reason="fixed by hand")
    g = await opened("cache", "memory_high")
    clock.advance(3 * 3600)
    return {"open": [a, b, c, d, g],
            "fingerprints": ["api:memory_high", "api:disk_high", "worker:disk_high",
                             "db:service_down:db", "web:memory_high", "cache:memory_high"],
            "targets": ["api", "worker", "db", "web"], "since": clock.now() - timedelta(hours=4)}


def _row(incident: Incident | None) -> Any:
    if incident is None:
        return None
    return {k: v for k, v in incident.model_dump().items() if k != "details"}


async def _suite(store: JournalingStore, built: dict[str, Any], clock: ManualClock) -> dict[
        str, Any]:
    """The working-set queries the agent's parts make, with the answers they get."""
    since = built["since"]
    out: dict[str, Any] = {}
    for iid in built["open"]:
        out[f"get {iid}"] = _row(await store.get_incident(iid))
        out[f"attempts {iid}"] = [
            (r.attempt, r.action, r.outcome, r.verified, r.dry_run, r.executing_at is not None)
            for r in await store.attempts(iid)]
        out[f"strikes {iid}"] = await store.count_strikes(iid)
        out[f"notified {iid}"] = await store.has_notifications(iid)
    for fp in built["fingerprints"]:
        out[f"find_open {fp}"] = _row(await store.find_open(fp))
        out[f"last_resolved {fp}"] = _row(await store.last_resolved(fp))
        out[f"opening {fp}"] = [_row(i) for i in await store.opening_candidates(fp)]
        out[f"reopenings {fp}"] = await store.count_reopenings(fingerprint=fp, since=since)
    out["last_resolved worker"] = _row(await store.last_resolved("worker:disk_high"))
    for target in built["targets"]:
        out[f"actions {target}"] = await store.count_actions(target=target, since=since)
        out[f"open on {target}"] = [i.incident_id for i in await store.list_incidents(
            states=OPEN_STATES, target=target)]
    out["open"] = [i.incident_id for i in await store.list_incidents(states=OPEN_STATES)]
    out["automated disk_high"] = [i.incident_id for i in await store.list_incidents(
        states=("detected", "remediating", "verifying"), kind="disk_high")]
    out["opened lately"] = [i.incident_id for i in await store.list_incidents(
        states=OPEN_STATES, since=since + timedelta(seconds=30))]
    out["overdue"] = [i.incident_id for i in await store.overdue(clock.now())]
    return out


async def test_the_offline_copy_answers_the_working_set_queries_as_the_database_does(
    online: SwitchableStore, clock: ManualClock, tmp_path: Path,
) -> None:
    store = JournalingStore(online, journal_path=tmp_path / "agent.journal")
    engine = IncidentEngine(store, clock=clock)
    built = await _history(engine, store, clock)
    answers = await _suite(store, built, clock)
    assert answers["reopenings worker:disk_high"] == 1
    assert answers["actions api"] == 2 and answers["actions worker"] == 1  # not the skipped one
    assert answers["overdue"]  # the suite asks something that has an answer
    # A breach's one read answers what the two reads it stands for answer, and the history
    # has a fingerprint open and resolved before, one only resolved and one only open.
    fps = built["fingerprints"]
    assert all(answers[f"opening {fp}"] == [answers[f"find_open {fp}"],
                                            answers[f"last_resolved {fp}"]] for fp in fps)
    assert {tuple(part is not None for part in answers[f"opening {fp}"]) for fp in fps} >= {
        (True, True), (False, True), (True, False)}

    online.down = True
    assert await _suite(store, built, clock) == answers

    # And after a step taken offline, both sides agree again once it is replayed.
    api = built["open"][0]
    await store.finish_action((await store.attempts(api))[-1].id or 0, outcome="ok",
                              finished_at=clock.now())
    offline = await _suite(store, built, clock)
    online.down = False
    assert await store.replay() == 2  # the finish and its incident's base
    assert await _suite(store, built, clock) == offline


async def test_a_read_in_flight_never_puts_back_an_older_copy_after_a_journaled_step(
    online: SwitchableStore, clock: ManualClock, tmp_path: Path,
) -> None:
    store = JournalingStore(online, journal_path=tmp_path / "agent.journal")
    engine = IncidentEngine(store, clock=clock)
    iid = (await engine.open(target="api", kind="memory_high", severity="critical",
                             reason="memory 91%")).incident.incident_id
    online.gate = anyio.Event()
    seen: list[Incident] = []

    async def slow_read() -> None:
        seen.append(await store.get_incident(iid))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_read)
        await anyio.wait_all_tasks_blocked()  # the read has its (version 1) row, and waits
        online.down = True
        moved = await engine.fire(iid, "escalate", actor="sre", reason="mine")
        assert moved.version == 2
        online.gate.set()
    online.gate = None
    assert seen[0].version == 2  # the newer local copy, not the database's older answer
    assert (await store.get_incident(iid)).state == "escalated"


async def test_an_entry_nobody_foresaw_is_rejected_and_the_replay_finishes(
    online: SwitchableStore, tmp_path: Path,
) -> None:
    path = tmp_path / "agent.journal"
    # A claim whose attempt id is not a number: no code path expects it.
    path.write_text(json.dumps({"op": "claim", "run_id": "seven", "at": "2026-01-01T00:00:00"})
                    + "\n")
    store = JournalingStore(online, journal_path=path)
    assert store.offline
    with captured_logs() as logs:
        assert await store.replay() == 1
    assert not store.offline and not path.exists()
    text = await anyio.Path(f"{path}.rejected").read_text()
    rejected = [json.loads(line) for line in text.splitlines()]
    assert rejected[0]["entry"]["run_id"] == "seven"
    assert "unexpected TypeError" in rejected[0]["why"]
    assert any(line.startswith("ERROR|") and "not replayed" in line for line in logs)


async def test_a_breach_read_online_is_what_the_copy_answers_once_the_database_is_away(
    online: SwitchableStore, clock: ManualClock, tmp_path: Path,
) -> None:
    # Resolved behind the journal's back (another process, say): the copy learns of it
    # only from the breach's one read, and answers with it after the database goes.
    engine = IncidentEngine(online, clock=clock)
    gone = (await engine.open(target="api", kind="memory_high", severity="critical",
                              reason="memory 91%")).incident.incident_id
    await engine.fire(gone, "resolve", actor="sre", reason="fixed by hand")
    store = JournalingStore(online, journal_path=tmp_path / "agent.journal")
    open_, resolved = await store.opening_candidates("api:memory_high")
    assert open_ is None and resolved is not None and resolved.incident_id == gone

    online.down = True
    assert await store.opening_candidates("api:memory_high") == (None, resolved)
    last = await store.last_resolved("api:memory_high")
    assert last is not None and last.incident_id == gone


async def test_a_journal_left_by_a_previous_run_is_read_in_a_worker_thread(
    online: SwitchableStore, clock: ManualClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "agent.journal"
    first = JournalingStore(online, journal_path=path)
    online.down = True
    await IncidentEngine(first, clock=clock).open(
        target="api", kind="memory_high", severity="critical", reason="memory 91%")
    threads: list[bool] = []
    read = journal_file.JournalFile.read

    def recording(self: journal_file.JournalFile) -> list[dict[str, Any]]:
        threads.append(threading.current_thread() is threading.main_thread())
        return read(self)

    monkeypatch.setattr(journal_file.JournalFile, "read", recording)
    second = JournalingStore(online, journal_path=path)  # as a host's startup builds it
    assert threads == [] and second.offline  # nothing read yet, but it knows one waits
    found = await second.find_open("api:memory_high")
    assert found is not None and found.incident_id < 0
    assert threads == [False]  # read once, off the event loop's thread


async def test_the_store_keeps_no_password_but_its_engine_still_connects(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url as _make_url

    url = _make_url("postgresql+psycopg://agent:s3cr3t-pw@127.0.0.1:1/incidents")
    store = Store(url.render_as_string(hide_password=False))
    shown = " ".join([store.url, repr(store), str(store.engine), repr(store.engine.url)])
    assert "s3cr3t-pw" not in shown
    assert "***" in store.url
    # what the engine connects with still has it (it must), and never prints it
    assert store.engine.url.password == "s3cr3t-pw"
    journaled = JournalingStore(store, journal_path=tmp_path / "j")
    assert "s3cr3t-pw" not in journaled.url + repr(journaled)
    await journaled.close()
