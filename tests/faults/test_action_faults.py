"""Actions that hang forever, raise, or return garbage, inside the running agent.

Each is a plug-in on target `api` (memory_high): the hung one ignores its own
time limit and is cut off by the remediator; the raising one puts the Render
key in its message; the garbage one returns a dict. Each is a failed or
timed-out attempt and a strike, the next action is tried, and after three
strikes the incident escalates -- while a disk incident on another target
(`files`) is cleaned and resolved in the meantime.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions.base import ActionContext, Outcome, Tier
from incident_fsm.runtime.agent import Agent

from ..scenario import RENDER_KEY, incident_state, old_logs, sim_settings, until
from .exposure import ENV
from .plugins import plug_ins as with_plug_ins

pytestmark = pytest.mark.anyio

MEMORY = frozenset({"memory_high"})


class Hangs:
    name, tier, kinds, timeout = "hangs", Tier.SAFE, MEMORY, 0.5

    def __init__(self) -> None:
        self.started = 0

    async def run(self, ctx: ActionContext) -> Outcome:
        self.started += 1
        await anyio.sleep_forever()  # ignores its own time limit
        raise AssertionError("unreachable")


class Raises:
    name, tier, kinds, timeout = "raises", Tier.SAFE, MEMORY, 5.0

    def __init__(self) -> None:
        self.started = 0

    async def run(self, ctx: ActionContext) -> Outcome:
        self.started += 1
        raise RuntimeError(f"boom: sent Authorization: Bearer {RENDER_KEY}")


class Garbage:
    name, tier, kinds, timeout = "garbage", Tier.SAFE, MEMORY, 5.0

    def __init__(self) -> None:
        self.started = 0

    async def run(self, ctx: ActionContext) -> Any:
        self.started += 1
        return {"status": "ok", "trust": "me"}


async def test_hung_raising_and_garbage_actions_strike_out_while_another_target_is_served(
    sqlite_url: str, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()  # a cleanup root that does not exist stops the agent's start
    api = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)
    files = ServiceState(disk_dir=logs, disk_capacity_bytes=1_000_000)
    plug_ins = {"hangs": Hangs(), "raises": Raises(), "garbage": Garbage()}
    async with Simulator(api) as sim, Simulator(files) as sim_files, Store(sqlite_url) as store:
        base = sim_settings(sim, sqlite_url, cleanup_root=logs,
                            policy={"memory_high": ("hangs", "raises", "garbage")})
        (target,) = base.targets
        other = replace(target, name="files", base_url=sim_files.base_url,
                        render_service_id=None, worker_service_id=None, dependencies=())
        settings = replace(base, targets=(target, other))
        agent = Agent(settings, environ=ENV, journal_path=tmp_path / "j",
                      actions=with_plug_ins("api", plug_ins))
        async with agent:
            await until(lambda: _running(store, "hangs"), within=10)
            old_logs(logs, files=9, size=100_000)  # files fills up while api's action hangs
            await until(lambda: _is(store, "files:disk_high", "resolved"), within=10)
            (hung,) = [r for r in await _actions(store, "api:memory_high")]
            assert hung.finished_at is None  # the disk was handled while this one hung
            await until(lambda: _is(store, "api:memory_high", "escalated"), within=20)
            assert agent.running
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    assert [(r.action, r.outcome) for r in timeline.actions] == [
        ("hangs", "timed_out"), ("raises", "failed"), ("garbage", "failed")]
    assert [p.started for p in plug_ins.values()] == [1, 1, 1]  # each once, none retried
    assert incident.strikes == 3
    assert [t.trigger for t in timeline.transitions] == [
        "open", "remediate", "action_finished", "still_failing", "action_finished",
        "still_failing", "action_finished", "still_failing"]
    assert timeline.transitions[-1].dest == "escalated"
    raised = timeline.actions[1].evidence["summary"]
    assert "RuntimeError" in raised and RENDER_KEY not in raised
    assert "returned dict, not an outcome" in timeline.actions[2].evidence["summary"]
    assert list(logs.iterdir()) == []


async def _actions(store: Store, fingerprint: str) -> list[Any]:
    rows = [i for i in await store.list_incidents(limit=100) if i.fingerprint == fingerprint]
    return list((await store.timeline(rows[0].incident_id)).actions) if rows else []


async def _running(store: Store, action: str) -> bool:
    return any(r.action == action and r.executing_at is not None
               for r in await _actions(store, "api:memory_high"))


async def _is(store: Store, fingerprint: str, wanted: str) -> bool:
    return await incident_state(store, fingerprint) == wanted
