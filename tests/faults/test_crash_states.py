"""kill -9 of `incident-fsm run` in each state of an incident, then a restart.

Real processes against the loopback simulator, on SQLite and Postgres (the
Postgres URL carries a password, which must never show). Executions are
counted where they happen -- Render restarts at the simulator, PAM messages
at the PAM simulator -- not in our own tables. After the restart every
incident reaches its end state, each attempt ran at most once, no
transition is missing or doubled and every queued notification arrives.

Killed with an action in flight: `tests/test_agent_process.py::
test_stopped_mid_action_then_restarted_never_reruns_the_action[kill -9]`.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import make_url

from incident_fsm.demo.pam_simulator import PamSimulator
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence import database
from incident_fsm.persistence.store import Store

from ..agent_process import agent_process, write_config
from ..pam_server import ACCEPTS
from ..scenario import PAM_TOKEN, incident_state, until
from .exposure import DB_PASSWORD, Exposure

pytestmark = pytest.mark.anyio

RESTARTS = "POST /v1/services/srv-web/restart"
# A restarted process on Postgres waits out the killed one's lease: keep it short.
LEASE = "leader_ttl = 2\nleader_renew = 0.4"


def _with_password(db_url: str) -> str:
    if database.is_sqlite(db_url):
        return db_url
    return make_url(db_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)


def _config(path: Path, sim: Simulator, db_url: str, *, extra: str = "",
            blocks: str = "") -> Path:
    config = write_config(path, sim, _with_password(db_url), commands={},
                          policy=["render_restart"], extra_agent=f"{LEASE}\n{extra}")
    if blocks:
        config.write_text(config.read_text() + blocks)
    return config


async def _kill(proc: object) -> None:
    import subprocess

    assert isinstance(proc, subprocess.Popen)
    proc.kill()
    await anyio.to_thread.run_sync(proc.wait, 20)


async def test_killed_in_detected_the_restart_acts_once(
    db_url: str, tmp_path: Path, exposure: Exposure
) -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)
    async with Simulator(state) as sim, Store(db_url) as store:
        # The first process watches only: the incident waits in detected, nothing ran.
        watching = _config(tmp_path / "watch.toml", sim, db_url, extra="auto_remediation = false")
        acting = _config(tmp_path / "act.toml", sim, db_url)
        exposure.files += [tmp_path / "a.log", tmp_path / "b.log"]
        with agent_process(watching, tmp_path / "a.log") as proc:
            await until(lambda: _dry_run_recorded(store), within=45)
            assert await incident_state(store, "api:memory_high") == "detected"
            await _kill(proc)
        assert state.requests[RESTARTS] == 0
        with agent_process(acting, tmp_path / "b.log"):
            await until(lambda: _is(store, "resolved"), within=60)
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    exposure.databases.append(db_url)
    assert state.requests[RESTARTS] == 1
    assert [t.trigger for t in timeline.transitions] == [
        "open", "remediate", "action_finished", "recovered"]
    assert [(r.action, r.dry_run, r.outcome) for r in timeline.actions] == [
        ("render_restart", True, "skipped"), ("render_restart", False, "ok")]


async def test_killed_while_verifying_the_restart_judges_without_acting_again(
    db_url: str, tmp_path: Path, exposure: Exposure
) -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)
    async with Simulator(state) as sim, Store(db_url) as store:
        config = _config(tmp_path / "agent.toml", sim, db_url)
        config.write_text(config.read_text().replace("verify_window = 0.3", "verify_window = 3"))
        exposure.files += [tmp_path / "a.log", tmp_path / "b.log"]
        with agent_process(config, tmp_path / "a.log") as proc:
            await until(lambda: _is(store, "verifying"), within=45)
            await _kill(proc)
        assert await incident_state(store, "api:memory_high") == "verifying"
        with agent_process(config, tmp_path / "b.log"):
            await until(lambda: _is(store, "resolved"), within=60)
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    exposure.databases.append(db_url)
    assert state.requests[RESTARTS] == 1
    assert [(t.seq, t.trigger) for t in timeline.transitions] == [
        (1, "open"), (2, "remediate"), (3, "action_finished"), (4, "recovered")]
    (run,) = timeline.actions
    assert (run.outcome, run.verified) == ("ok", True)


async def test_killed_with_notifications_queued_they_all_arrive_after_the_restart(
    db_url: str, tmp_path: Path, exposure: Exposure
) -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)
    # not started yet: PAM refuses connections
    pam = PamSimulator(token=PAM_TOKEN, accepts=ACCEPTS)
    channels = ("\n[channels]\nretry_initial = 0.2\nretry_max = 1\n"
                f'[channels.pam]\nurl = "{pam.url}"\nuser_id = "ops"\n'
                "reconnect_initial = 0.1\nreconnect_max = 0.5\n")
    env = {"PAM_TOKEN": PAM_TOKEN}
    async with Simulator(state) as sim, Store(db_url) as store:
        config = _config(tmp_path / "agent.toml", sim, db_url, blocks=channels)
        exposure.files += [tmp_path / "a.log", tmp_path / "b.log"]
        with agent_process(config, tmp_path / "a.log", env) as proc:
            await until(lambda: _is(store, "resolved"), within=45)
            await until(lambda: _queued(store, 4), within=10)
            await until(lambda: _queued(store, 0, channel="log"), within=10)
            await _kill(proc)
        async with pam:
            with agent_process(config, tmp_path / "b.log", env):
                # A row the killed agent had just claimed (a send in flight) is leased to
                # it for the dispatcher's lease (120 s) before anyone sends it again: the
                # bound that keeps two senders from overlapping, so the wait covers it.
                await until(lambda: _queued(store, 0, channel=None), within=150)
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    exposure.databases.append(db_url)
    assert state.requests[RESTARTS] == 1
    sent = [m["metadata"]["dedupe_key"] for m in pam.system_messages]
    owed = [n.dedupe_key for n in timeline.notifications if n.channel == "pam"]
    assert len(owed) == 4 and sorted(set(sent)) == sorted(owed)  # none lost
    assert [m["message"].split(" ", 1)[0] for m in pam.system_messages] == [
        "⚠️", "🔧", "🔧", "✅"]
    assert all(n.status == "delivered" for n in timeline.notifications)


async def _is(store: Store, wanted: str) -> bool:
    return await incident_state(store, "api:memory_high") == wanted


async def _dry_run_recorded(store: Store) -> bool:
    rows = await store.list_incidents(kind="memory_high")
    runs = (await store.timeline(rows[0].incident_id)).actions if rows else []
    return bool(runs) and all(r.outcome is not None for r in runs)


async def _queued(store: Store, count: int, *, channel: str | None = "pam") -> bool:
    """`count` notifications wait on `channel` (None: on any channel)."""
    rows = await store.list_incidents(kind="memory_high")
    if not rows:
        return False
    notes = (await store.timeline(rows[0].incident_id)).notifications
    return sum(channel in (None, n.channel) and n.status == "pending" for n in notes) == count
