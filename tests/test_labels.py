"""Labels: an operator's judgement of an incident (real or noise), for detection's precision."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from incident_fsm.cli import main as cli
from incident_fsm.errors import IncidentNotFound, InvalidInput
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.models import IncidentId
from incident_fsm.persistence.store import Store
from incident_fsm.testing import ManualClock

from .test_cli import _dump

pytestmark = pytest.mark.anyio


async def test_labels_are_kept_and_counted_by_their_latest_and_move_no_state(
    db_url: str, store: Store, engine: IncidentEngine, clock: ManualClock
) -> None:
    a = (await engine.open(target="api", kind="disk_high", severity="critical",
                           reason="disk 91%")).incident
    b = (await engine.open(target="web", kind="disk_high", severity="critical",
                           reason="disk 95%")).incident
    c = (await engine.open(target="api", kind="memory_high", severity="critical",
                           reason="memory 90%")).incident
    await store.label_incident(a.incident_id, "noise", actor="alice", reason="backup job",
                               at=clock.now())
    await store.label_incident(a.incident_id, "real", actor="bob", reason="it was the disk",
                               at=clock.advance(60))
    await store.label_incident(b.incident_id, "real", actor="alice", reason="log storm",
                               at=clock.now())
    await store.label_incident(c.incident_id, "noise", actor="alice", reason="load test",
                               at=clock.now())
    assert await store.label_counts() == {"disk_high": {"real": 2, "noise": 0},
                                          "memory_high": {"real": 0, "noise": 1}}
    assert (await store.get_incident(a.incident_id)).version == 1  # no state moved
    with pytest.raises(InvalidInput, match="unknown label 'maybe'"):
        await store.label_incident(a.incident_id, "maybe", actor="a", reason="r",
                                   at=clock.now())
    with pytest.raises(InvalidInput, match="reason must not be empty"):
        await store.label_incident(a.incident_id, "real", actor="a", reason=" ", at=clock.now())
    with pytest.raises(IncidentNotFound):
        await store.label_incident(IncidentId(999), "real", actor="a", reason="r",
                                   at=clock.now())
    # They survive a restart: another store on the same database reads them back.
    async with Store(db_url) as again:
        assert [(lb.label, lb.actor) for lb in await again.labels_of(a.incident_id)] == [
            ("noise", "alice"), ("real", "bob")]
        assert await again.label_counts(since=clock.now() + timedelta(hours=1)) == {}


def _seed(url: str) -> int:
    async def work() -> int:
        async with Store(url) as store:
            engine = IncidentEngine(store, clock=ManualClock(datetime.now(UTC)))
            opened = await engine.open(target="api", kind="disk_high", severity="critical",
                                       reason="disk 91%")
            await engine.fire(opened.incident.incident_id, "recovered", actor="agent",
                              reason="disk 60%")
            return opened.incident.id or 0
    return anyio.run(work)


def _run(url: str, *args: str) -> Any:
    return CliRunner().invoke(cli.cli, [*args, "--database-url", url])


def test_force_label_records_a_judgement_in_any_state_and_stats_reads_precision(
    db_url: str
) -> None:
    iid = _seed(db_url)  # resolved already: a label is allowed in any state
    done = _run(db_url, "force", str(iid), "label", "noise", "--reason", "a backup job",
                "--actor", "alice")
    assert done.exit_code == 0, done.output
    assert f"incident {iid} labelled noise by alice: a backup job" in done.output
    shown = _run(db_url, "show", str(iid)).output
    assert "labels (UTC; the last is the incident's):" in shown and "a backup job" in shown
    assert json.loads(_run(db_url, "show", str(iid), "--json").output)["labels"][0][
        "label"] == "noise"
    stats = _run(db_url, "stats")
    assert stats.exit_code == 0 and "operators' labels" in stats.output
    section = stats.output.split("operators' labels", 1)[1].split("\n\n", 1)[0]
    [row] = [ln for ln in section.splitlines() if ln.startswith("disk_high")]
    assert row.split() == ["disk_high", "0", "1", "0%"]
    assert json.loads(_run(db_url, "stats", "--json").output)["labels"] == {
        "disk_high": {"real": 0, "noise": 1}}


@pytest.mark.parametrize(("args", "message"), [
    (["label", "maybe"], "label takes real or noise, not 'maybe'"),
    (["label"], "label takes real or noise, not None"),
    (["resolve", "real"], "only label takes a value, not resolve"),
    (["label", "real", "--action", "failover"], "--action goes only with approve"),
])
def test_bad_labels_exit_2_and_change_nothing(db_url: str, args: list[str],
                                             message: str) -> None:
    iid = _seed(db_url)
    before = _dump(db_url)
    result = _run(db_url, "force", str(iid), *args, "--reason", "x")
    assert result.exit_code == 2 and message in result.output, result.output
    assert _dump(db_url) == before


def test_labelling_an_unknown_incident_exits_2(db_url: str) -> None:
    _seed(db_url)
    result = _run(db_url, "force", "999", "label", "real", "--reason", "x")
    assert result.exit_code == 2 and "no incident with id 999" in result.output
