"""Remediation that "works" while the problem keeps coming back: the loop is stopped.

Each fix really clears the leak at the simulator, and a second later the
leak is back. The incident resolves, reopens, resolves... until flap
detection holds the next action and escalates to a human. Counted outside
our tables (by the fixes themselves): the total number of actions on the
target stays within the action budget, and none follows the escalation.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import pytest

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions.base import ActionContext, Outcome, Tier
from incident_fsm.runtime.agent import Agent

from ..scenario import fast_agent, incident_state, sim_settings, until
from .exposure import ENV
from .plugins import plug_ins

pytestmark = pytest.mark.anyio

BUDGET = 5
FIXES = tuple(f"fix_{n}" for n in range(1, 7))  # more fixes than the budget allows


class Fix:
    """Frees the leaked memory, as a restart would; counts its own executions."""

    tier, kinds, timeout = Tier.SAFE, frozenset({"memory_high"}), 5.0

    def __init__(self, name: str, state: ServiceState, runs: Counter[str]) -> None:
        self.name, self.state, self.runs = name, state, runs

    async def run(self, ctx: ActionContext) -> Outcome:
        self.runs[self.name] += 1
        self.state.leaked_memory_pct = 0.0
        return Outcome.ok("memory freed")


async def _leak_again_after_each_fix(state: ServiceState, runs: Counter[str],
                                     after: float) -> None:
    seen = 0
    while True:
        if runs.total() > seen:
            seen = runs.total()
            await anyio.sleep(after)
            state.leaked_memory_pct = 50.0
        await anyio.sleep(0.02)


async def test_a_problem_that_keeps_returning_is_escalated_within_the_action_budget(
    sqlite_url: str, tmp_path: Path
) -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)
    runs: Counter[str] = Counter()
    async with Simulator(state) as sim, Store(sqlite_url) as store:
        agent_settings = fast_agent(sqlite_url, flap_threshold=3, flap_window=3600,
                                    action_budget=BUDGET, action_budget_window=1800)
        settings = sim_settings(sim, sqlite_url, agent=agent_settings,
                                policy={"memory_high": FIXES})
        agent = Agent(settings, environ=ENV, journal_path=tmp_path / "j",
                      actions=plug_ins("api", {name: Fix(name, state, runs) for name in FIXES}))
        async with agent, anyio.create_task_group() as tg:
            tg.start_soon(_leak_again_after_each_fix, state, runs, 1.0)
            await until(lambda: _escalated(store), within=40)
            executed = runs.total()
            await anyio.sleep(2.0)  # the problem is still there: nothing more is tried
            assert runs.total() == executed
            tg.cancel_scope.cancel()
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    assert executed == 3 <= BUDGET  # opened, reopened, reopened; the third reopening holds
    assert max(runs.values()) == 1
    assert len(timeline.actions) == executed
    assert incident.flap_count == 3
    held = timeline.transitions[-1]
    assert (held.trigger, held.dest) == ("hold", "escalated")
    assert "PauseWhenFlapping" in held.reason
    assert [t.trigger for t in timeline.transitions].count("reopen") == 3


async def _escalated(store: Store) -> bool:
    return await incident_state(store, "api:memory_high") == "escalated"
