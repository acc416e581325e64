"""The standalone agent as a real process: SIGTERM and kill -9 mid-action, and two replicas."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.store import Store

from .agent_process import (
    agent_process,
    executions,
    kill_leftovers,
    lease_holder_pid,
    marker_command,
    write_config,
)
from .scenario import incident_state, until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
async def test_stopped_mid_action_then_restarted_never_reruns_the_action(
    db_url: str, tmp_path: Path, how: str
) -> None:
    marker = tmp_path / "executions"
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)
    try:
        async with Simulator(state) as sim, Store(db_url) as store:
            config = write_config(
                tmp_path / "agent.toml", sim, db_url,
                commands={"slow_fix": marker_command(marker, sleep=20)},
                policy=["slow_fix", "render_restart"],
                # Postgres: a restarted process waits out the dead one's lease; keep it short.
                extra_agent="leader_ttl = 3\nleader_renew = 0.5")
            with agent_process(config, tmp_path / "agent.log") as proc:
                await until(lambda: _started(marker), within=60)
                if how == "sigterm":
                    proc.send_signal(signal.SIGTERM)
                    began = time.monotonic()
                    code = await anyio.to_thread.run_sync(proc.wait, 20)
                    stop_seconds = time.monotonic() - began
                    assert code == 0, (tmp_path / "agent.log").read_text()[-2000:]
                    assert stop_seconds < 10
                else:
                    proc.kill()
                    await anyio.to_thread.run_sync(proc.wait, 20)
            (incident,) = await store.list_incidents(kind="memory_high")
            (run,) = (await store.timeline(incident.incident_id)).actions
            assert run.executing_at is not None
            assert run.outcome == ("interrupted" if how == "sigterm" else None)

            with agent_process(config, tmp_path / "agent2.log"):
                await until(lambda: _is(store, "api:memory_high", "resolved"), within=60)
            timeline = await store.timeline(incident.incident_id)
    finally:
        kill_leftovers(marker)
    assert len(executions(marker)) == 1  # counted outside our tables: ran once, never rerun
    assert [(r.action, r.outcome) for r in timeline.actions] == [
        ("slow_fix", "interrupted"), ("render_restart", "ok")]
    assert state.requests["POST /v1/services/srv-web/restart"] == 1
    log = (tmp_path / "agent.log").read_text()
    assert "🤖 Technical Monitoring Agent initialized at" in log


async def test_two_replicas_one_acts_and_the_other_takes_over(
    postgres_url: str, tmp_path: Path
) -> None:
    from .conftest import _empty_postgres

    _empty_postgres(postgres_url)
    state = ServiceState(load_memory_pct=40.0)
    async with Simulator(state) as sim, Store(postgres_url) as store:
        config = write_config(tmp_path / "agent.toml", sim, postgres_url, commands={},
                              policy=["render_restart"],
                              extra_agent="leader_ttl = 2\nleader_renew = 0.4")
        with agent_process(config, tmp_path / "a.log") as first, \
                agent_process(config, tmp_path / "b.log") as second:
            by_pid = {first.pid: first, second.pid: second}
            await until(lambda: _holder(postgres_url, by_pid), within=60)
            leader_pid = await _holder(postgres_url, by_pid)
            assert leader_pid is not None
            await anyio.sleep(1.0)
            # Both run, one polls: the standby sends nothing to the target. Told by each
            # replica's own log of its polls, not by a count in a wall-clock window (a
            # loaded machine polls less often, never more).
            polls_before = state.requests["GET /health/resources"]
            await anyio.sleep(1.0)
            polled = state.requests["GET /health/resources"] - polls_before
            assert 1 <= polled <= 15  # at 0.1 s, one poller makes at most ~11 in 1 s
            logs = {first.pid: (tmp_path / "a.log").read_text(),
                    second.pid: (tmp_path / "b.log").read_text()}
            standby_pid = next(pid for pid in by_pid if pid != leader_pid)
            assert "📊 Health check" in logs[leader_pid]
            assert "📊 Health check" not in logs[standby_pid]
            by_pid[leader_pid].kill()
            killed_at = time.monotonic()
            await until(lambda: _other_holder(postgres_url, by_pid, leader_pid), within=60)
            takeover = time.monotonic() - killed_at
            state.leaked_memory_pct = 50.0
            await until(lambda: _is(store, "api:memory_high", "resolved"), within=60)
    assert takeover < 2 + 0.4 + 2  # ttl + renew, plus slack for process scheduling
    assert state.requests["POST /v1/services/srv-web/restart"] == 1  # handled once


async def _started(marker: Path) -> bool:
    return bool(executions(marker))


async def _is(store: Store, fingerprint: str, wanted: str) -> bool:
    return await incident_state(store, fingerprint) == wanted


async def _holder(url: str, by_pid: dict[int, object]) -> int | None:
    pid = lease_holder_pid(url)
    return pid if pid in by_pid else None


async def _other_holder(url: str, by_pid: dict[int, object], old: int) -> bool:
    holder = await _holder(url, by_pid)
    return holder is not None and holder != old
