"""The incident state graph: one literal table and the pure guards its edges name.

`EDGES` below is the single source of truth for what an incident may do
next. The `transitions` machine of the engine, the diagrams
(`incident-fsm graph`), the docs and the store's own edge check are all
derived from it. Guards are pure functions of a `GuardContext` (the
incident as persisted, the current time, the proposed action and the
policy numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from incident_fsm.fsm.steps import ActionIntent, MachinePolicy
from incident_fsm.models import Incident
from incident_fsm.vocabulary import State, Trigger, Verdict

#: States the agent drives on its own; each has a deadline and a `timeout` edge.
AUTOMATED_STATES: Final = (State.DETECTED, State.REMEDIATING, State.VERIFYING)
#: Every state but `resolved`: an incident here still needs the agent or a human.
OPEN_STATES: Final = (*AUTOMATED_STATES, State.ESCALATED)
#: Triggers an operator may fire by hand (`incident-fsm force`).
OPERATOR_TRIGGERS: Final = frozenset(
    {Trigger.ACKNOWLEDGE, Trigger.APPROVE, Trigger.RESOLVE, Trigger.ESCALATE}
)



@dataclass(frozen=True)
class GuardContext:
    """Everything a guard may look at. Guards read it and nothing else."""

    incident: Incident
    now: datetime
    policy: MachinePolicy
    intent: ActionIntent | None = None


# --- guards: pure functions of the context -----------------------------------


def strikes_left(ctx: GuardContext) -> bool:
    """Fewer failed attempts than `max_strikes` are on record for this incident."""
    return ctx.incident.strikes < ctx.policy.max_strikes


def action_permitted(ctx: GuardContext) -> bool:
    """An action was proposed and policy lets it run now."""
    return ctx.intent is not None and ctx.intent.verdict is not Verdict.HOLD


def within_reopen_window(ctx: GuardContext) -> bool:
    """The incident was resolved recently enough that its return is the same incident."""
    resolved_at = ctx.incident.resolved_at
    if resolved_at is None:
        return False
    return ctx.now - resolved_at <= timedelta(seconds=ctx.policy.reopen_window)


def deadline_passed(ctx: GuardContext) -> bool:
    """The incident's current deadline is behind us (checked on the persisted copy)."""
    deadline = ctx.incident.deadline_at
    return deadline is not None and ctx.now >= deadline


GUARDS: Final[Mapping[str, Callable[[GuardContext], bool]]] = {
    "strikes_left": strikes_left,
    "action_permitted": action_permitted,
    "within_reopen_window": within_reopen_window,
    "deadline_passed": deadline_passed,
}


# --- the table -----------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """One row of the state graph. `dest=None` keeps the state (an internal transition)."""

    trigger: Trigger
    sources: tuple[State, ...]
    dest: State | None
    guards: tuple[str, ...] = ()
    effect: str = ""
    operator: bool = False


_D, _RM, _V, _RS, _E = (
    State.DETECTED,
    State.REMEDIATING,
    State.VERIFYING,
    State.RESOLVED,
    State.ESCALATED,
)

# Order matters where one trigger has several edges from one state: the first
# edge whose guards all pass is taken (so the unguarded `still_failing` edge to
# `escalated` is the fallback -- the three-strike rule).
EDGES: Final[tuple[Edge, ...]] = (
    Edge(Trigger.REMEDIATE, (_D,), _RM, ("action_permitted",),
         "an action was chosen and policy allows it now; the attempt is recorded before it runs"),
    Edge(Trigger.HOLD, (_D,), _E, (),
         "no permitted action: none left, needs approval, monitor-only past its deadline, "
         "or budget spent"),
    Edge(Trigger.ACTION_FINISHED, (_RM,), _V, (),
         "the action returned; its own success flag is evidence, not the verdict"),
    Edge(Trigger.RECOVERED, (_V,), _RS, (),
         "fresh health samples are back under the clear threshold"),
    Edge(Trigger.STILL_FAILING, (_V,), _RM, ("strikes_left", "action_permitted"),
         "strikes below the maximum: run the next best untried action"),
    Edge(Trigger.STILL_FAILING, (_V,), _E, (),
         "strikes exhausted or nothing left to try: the three-strike rule"),
    Edge(Trigger.RECOVERED, (_D, _E), _RS, (),
         "the problem cleared by itself, or after humans acted"),
    Edge(Trigger.TIMEOUT, (_D, _RM, _V), _E, ("deadline_passed",),
         "the state's deadline passed (checked again on the incident as it is now)"),
    Edge(Trigger.TIMEOUT, (_E,), _E, ("deadline_passed",),
         "escalated and nobody acknowledged it: escalate (notify) again, next deadline set"),
    Edge(Trigger.APPROVE, (_E,), _RM, ("action_permitted",),
         "an operator approves a held or new action", operator=True),
    Edge(Trigger.RESOLVE, (_D, _RM, _V, _E), _RS, (),
         "an operator declares the incident resolved", operator=True),
    Edge(Trigger.ESCALATE, (_D, _RM, _V), _E, (),
         "an operator takes the incident over (the agent hands over one it cannot drive: "
         "remediating with no attempt on record)", operator=True),
    Edge(Trigger.ACKNOWLEDGE, (_D, _RM, _V, _E), None, (),
         "an operator says they are on it; the state does not change (an escalated "
         "incident stops being escalated again: its deadline is cleared)", operator=True),
    Edge(Trigger.REOPEN, (_RS,), _D, ("within_reopen_window",),
         "the same problem came back inside the reopen window: same incident, flap count + 1"),
)


def _check_table(edges: Sequence[Edge]) -> None:
    """Refuse a broken table at import, before any incident can get stuck in it."""
    for edge in edges:
        unknown = set(edge.guards) - set(GUARDS)
        if unknown:
            raise RuntimeError(f"edge {edge.trigger} names unknown guards {sorted(unknown)}")
        if edge.operator != (edge.trigger in OPERATOR_TRIGGERS):
            raise RuntimeError(f"edge {edge.trigger} disagrees with OPERATOR_TRIGGERS")
    reachable = {State.DETECTED}
    frontier = [State.DETECTED]
    while frontier:
        state = frontier.pop()
        for edge in edges:
            if state in edge.sources and edge.dest is not None and edge.dest not in reachable:
                reachable.add(edge.dest)
                frontier.append(edge.dest)
    if reachable != set(State):
        raise RuntimeError(f"unreachable states: {sorted(set(State) - reachable)}")
    for state in AUTOMATED_STATES:
        if not any(e.trigger is Trigger.TIMEOUT and state in e.sources for e in edges):
            raise RuntimeError(f"state {state} has no timeout edge")


_check_table(EDGES)


def state_pairs() -> dict[tuple[str, str], list[Edge]]:
    """(source, dest) -> the edges that join them, in table order: what a drawing draws as
    one line (an internal transition's dest is its source)."""
    pairs: dict[tuple[str, str], list[Edge]] = {}
    for e in EDGES:
        for source in e.sources:
            pairs.setdefault((source.value, (e.dest or source).value), []).append(e)
    return pairs


def triggers_from(state: str) -> frozenset[str]:
    """The triggers that have an edge out of `state` (guards not evaluated)."""
    return frozenset(e.trigger.value for e in EDGES if state in e.sources)


def operator_triggers_from(state: str) -> frozenset[str]:
    """The operator triggers (`incident-fsm force`) that have an edge out of `state`.

    What an `InvalidTransition` lists: the way out a person can take, never
    the agent's internal steps (`action_finished`, `timeout`...).
    """
    return frozenset(t for t in triggers_from(state) if t in OPERATOR_TRIGGERS)


def edge_destinations(trigger: str, source: str) -> frozenset[str]:
    """Every state `trigger` may lead to from `source` (the source itself for internal edges)."""
    return frozenset(
        (e.dest or source) for e in EDGES if e.trigger == trigger and source in e.sources
    )


def transition_table() -> list[dict[str, Any]]:
    """The table in the form `transitions.Machine(transitions=...)` takes."""
    return [
        {
            "trigger": e.trigger.value,
            "source": [s.value for s in e.sources],
            "dest": None if e.dest is None else e.dest.value,
            "conditions": list(e.guards),
        }
        for e in EDGES
    ]

