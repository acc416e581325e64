"""The state graph as a table: reachability, exits, guards, and its drawing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from incident_fsm import models
from incident_fsm.errors import InvalidInput
from incident_fsm.fsm import diagrams, graph
from incident_fsm.fsm.graph import AUTOMATED_STATES, EDGES, OPEN_STATES, Edge, GuardContext
from incident_fsm.fsm.steps import ActionIntent, MachinePolicy
from incident_fsm.models import Incident
from incident_fsm.vocabulary import State, Trigger, Verdict

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def _incident(**fields: Any) -> Incident:
    base: dict[str, Any] = dict(
        id=1, fingerprint="api:disk_high", target="api", kind="disk_high", severity="critical",
        state="detected", opened_at=NOW, updated_at=NOW,
    )
    base.update(fields)
    return Incident(**base)


def _exits(state: State) -> set[Trigger]:
    return {e.trigger for e in EDGES if state in e.sources and e.dest not in (None, state)}


def test_every_state_is_reachable_from_detected() -> None:
    seen, frontier = {State.DETECTED}, [State.DETECTED]
    while frontier:
        state = frontier.pop()
        for edge in EDGES:
            if state in edge.sources and edge.dest and edge.dest not in seen:
                seen.add(edge.dest)
                frontier.append(edge.dest)
    assert seen == set(State)


@pytest.mark.parametrize("state", AUTOMATED_STATES)
def test_every_automated_state_has_a_timeout_exit(state: State) -> None:
    assert Trigger.TIMEOUT in _exits(state)
    assert MachinePolicy().deadline_for(state, NOW) is not None


@pytest.mark.parametrize("state", OPEN_STATES)
def test_every_open_state_has_a_way_out(state: State) -> None:
    assert _exits(state), f"{state} is a dead end"
    assert Trigger.RESOLVE in _exits(state)


def test_escalated_has_its_own_timeout_edge_and_keeps_its_state() -> None:
    (repeat,) = [e for e in EDGES if e.trigger is Trigger.TIMEOUT and State.ESCALATED in e.sources]
    assert repeat.dest is State.ESCALATED and repeat.guards == ("deadline_passed",)


def test_terminal_states_are_left_only_by_the_listed_edges() -> None:
    assert _exits(State.RESOLVED) == {Trigger.REOPEN}
    assert _exits(State.ESCALATED) == {Trigger.APPROVE, Trigger.RECOVERED, Trigger.RESOLVE}
    # Nothing automatic leaves escalated except the problem clearing by itself.
    automatic_out_of_escalated = {
        e.trigger for e in EDGES
        if State.ESCALATED in e.sources and not e.operator and e.dest is not State.ESCALATED
    }
    assert automatic_out_of_escalated == {Trigger.RECOVERED}


def test_operator_triggers_are_exactly_the_operator_edges() -> None:
    assert {e.trigger for e in EDGES if e.operator} == graph.OPERATOR_TRIGGERS


def test_schema_states_match_machine_states() -> None:
    assert set(models.STATES) == {s.value for s in State}
    assert set(models.OPEN_STATES) == {s.value for s in OPEN_STATES}


def test_three_strike_rule_is_the_still_failing_edge_order() -> None:
    failing = [e for e in EDGES if e.trigger is Trigger.STILL_FAILING]
    assert [e.dest for e in failing] == [State.REMEDIATING, State.ESCALATED]
    assert "strikes_left" in failing[0].guards
    assert failing[1].guards == ()  # the fallback: strikes exhausted or nothing left


@pytest.mark.parametrize(("strikes", "left"), [(0, True), (2, True), (3, False), (7, False)])
def test_strikes_left_guard(strikes: int, left: bool) -> None:
    ctx = GuardContext(incident=_incident(strikes=strikes), now=NOW, policy=MachinePolicy())
    assert graph.strikes_left(ctx) is left


@pytest.mark.parametrize(
    ("verdict", "permitted"),
    [(Verdict.AUTO, True), (Verdict.NOTIFY, True), (Verdict.APPROVED, True), (Verdict.HOLD, False)],
)
def test_action_permitted_guard(verdict: Verdict, permitted: bool) -> None:
    intent = ActionIntent(action="disk_cleanup", tier="safe", verdict=verdict, why="test")
    ctx = GuardContext(incident=_incident(), now=NOW, policy=MachinePolicy(), intent=intent)
    assert graph.action_permitted(ctx) is permitted
    no_intent = GuardContext(incident=_incident(), now=NOW, policy=MachinePolicy())
    assert graph.action_permitted(no_intent) is False


def test_reopen_window_guard() -> None:
    policy = MachinePolicy(reopen_window=600)
    resolved = _incident(state="resolved", resolved_at=NOW)
    inside = GuardContext(incident=resolved, now=NOW + timedelta(seconds=600), policy=policy)
    outside = GuardContext(incident=resolved, now=NOW + timedelta(seconds=601), policy=policy)
    never = GuardContext(incident=_incident(state="resolved"), now=NOW, policy=policy)
    assert graph.within_reopen_window(inside)
    assert not graph.within_reopen_window(outside)
    assert not graph.within_reopen_window(never)


def test_deadlines_per_state() -> None:
    policy = MachinePolicy(detect_deadline=120, action_deadline=300, verify_window=90,
                           verify_grace=30)
    assert policy.deadline_for(State.DETECTED, NOW) == NOW + timedelta(seconds=120)
    assert policy.deadline_for(State.REMEDIATING, NOW) == NOW + timedelta(seconds=300)
    assert policy.deadline_for(State.VERIFYING, NOW) == NOW + timedelta(seconds=120)
    assert policy.deadline_for(State.ESCALATED, NOW) == NOW + timedelta(seconds=1800)
    assert policy.deadline_for(State.RESOLVED, NOW) is None


@pytest.mark.parametrize(
    "bad",
    [dict(max_strikes=0), dict(detect_deadline=0), dict(verify_window=-1), dict(verify_grace=-1)],
)
def test_policy_rejects_bad_numbers(bad: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        MachinePolicy(**bad)  # type: ignore[arg-type]


def test_broken_tables_are_refused() -> None:
    no_escalated = tuple(e for e in EDGES if e.dest is not State.ESCALATED)
    with pytest.raises(RuntimeError, match="unreachable states"):
        graph._check_table(no_escalated)
    no_timeout = tuple(e for e in EDGES if e.trigger is not Trigger.TIMEOUT)
    with pytest.raises(RuntimeError, match="no timeout edge"):
        graph._check_table(no_timeout)
    bad_guard = (*EDGES, Edge(Trigger.HOLD, (State.DETECTED,), State.ESCALATED, ("nope",)))
    with pytest.raises(RuntimeError, match="unknown guards"):
        graph._check_table(bad_guard)


def test_mermaid_draws_every_edge_of_the_table() -> None:
    text = diagrams.mermaid()
    assert text.count("stateDiagram-v2") == 1
    for edge in EDGES:
        for source in edge.sources:
            dest = edge.dest or source
            arrow = f"{source} --> {dest}:"
            lines = [ln for ln in text.splitlines() if ln.strip().startswith(arrow)]
            assert lines, f"missing {source} --> {dest}"
            assert edge.trigger.value in lines[0]
    assert "[strikes_left & action_permitted]" in text


def test_mermaid_marks_a_visited_path() -> None:
    text = diagrams.mermaid(visited=["detected", "remediating", "verifying", "bogus"])
    assert "class detected,remediating,verifying visited" in text
    assert "bogus" not in text


def test_triggers_from_lists_edges_without_guards() -> None:
    assert graph.triggers_from("resolved") == {"reopen"}
    assert graph.edge_destinations("still_failing", "verifying") == {"remediating", "escalated"}
    assert graph.edge_destinations("acknowledge", "escalated") == {"escalated"}
    assert graph.edge_destinations("remediate", "resolved") == frozenset()


def test_an_incident_path_is_drawn_with_its_states_edges_and_current_state() -> None:
    steps: list[tuple[str | None, str]] = [
        (None, "detected"), ("detected", "remediating"), ("remediating", "verifying"),
        ("verifying", "remediating"), ("remediating", "verifying"), ("verifying", "escalated"),
        ("escalated", "escalated")]
    text = diagrams.mermaid_path(steps)
    lines = text.splitlines()
    links = [ln.strip() for ln in lines if "-->" in ln]
    assert links[0] == "start --> detected"
    # Every edge of the table, each pair of states drawn once, its triggers one per line.
    for edge in EDGES:
        for source in edge.sources:
            dest = (edge.dest or source).value
            [drawn] = [ln for ln in links if ln.startswith(f"{source.value} -->|")
                       and ln.endswith(f"| {dest}")]
            assert edge.trigger.value in drawn
    assert len({(ln.split(" -->")[0], ln.rsplit("| ", 1)[-1]) for ln in links[1:]}) == \
        len(links) - 1
    assert max(len(part) for ln in links for part in ln.split("<br/>")) < 80
    [style] = [ln for ln in lines if ln.strip().startswith("linkStyle")]
    taken = {links[int(i)] for i in style.split()[1].split(",")}
    assert taken == {
        "start --> detected",
        'detected -->|"remediate [action_permitted]"| remediating',
        'remediating -->|"action_finished"| verifying',
        'verifying -->|"still_failing [strikes_left and action_permitted]"| remediating',
        'verifying -->|"still_failing<br/>timeout [deadline_passed]<br/>escalate"| escalated',
        'escalated -->|"timeout [deadline_passed]<br/>acknowledge"| escalated',
    }
    assert "  class detected,remediating,verifying visited" in lines
    assert "  class escalated current" in lines
    assert "linkStyle" not in diagrams.mermaid_path([(None, "bogus")])
