"""The incident state graph: one literal table, its pure guards, and the engine that fires it.

`EDGES` below is the single source of truth for what an incident may do
next. The `transitions` machine, the Mermaid diagram (`incident-fsm graph`),
the docs and the store's own edge check are all derived from it.

Guards are pure functions of a `GuardContext` (the incident as persisted,
the current time, the proposed action and the policy numbers). All I/O
happens in `IncidentEngine.fire`: it loads the incident, lets the machine
decide, and writes the step through the store in one transaction from the
machine's `before_state_change` callback. If that write fails, the machine
never changes state: the database is the truth, the machine is the judge.

One `AsyncMachine` serves every incident: each `fire` adds a short-lived
model, triggers, and removes it again, so no per-incident state lives in
memory between steps.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import anyio
from loguru import logger
from transitions.core import EventData
from transitions.extensions.asyncio import AsyncMachine

from .errors import GuardRejected, InvalidInput, InvalidTransition, StoreUnavailable
from .text import one_line

if TYPE_CHECKING:
    from .clock import Clock
    from .models import Incident, IncidentId, OutboxMessage
    from .settings import AgentSettings
    from .store import Opened, Store


class State(enum.StrEnum):
    DETECTED = "detected"
    REMEDIATING = "remediating"
    VERIFYING = "verifying"
    RESOLVED = "resolved"
    ESCALATED = "escalated"


class Trigger(enum.StrEnum):
    REMEDIATE = "remediate"
    HOLD = "hold"
    ACTION_FINISHED = "action_finished"
    RECOVERED = "recovered"
    STILL_FAILING = "still_failing"
    TIMEOUT = "timeout"
    APPROVE = "approve"
    RESOLVE = "resolve"
    ESCALATE = "escalate"
    ACKNOWLEDGE = "acknowledge"
    REOPEN = "reopen"


#: The pseudo-trigger of an incident's first history row (no source state).
OPEN_TRIGGER: Final = "open"

#: States the agent drives on its own; each has a deadline and a `timeout` edge.
AUTOMATED_STATES: Final = (State.DETECTED, State.REMEDIATING, State.VERIFYING)
#: Every state but `resolved`: an incident here still needs the agent or a human.
OPEN_STATES: Final = (*AUTOMATED_STATES, State.ESCALATED)
#: Triggers an operator may fire by hand (`incident-fsm force`).
OPERATOR_TRIGGERS: Final = frozenset(
    {Trigger.ACKNOWLEDGE, Trigger.APPROVE, Trigger.RESOLVE, Trigger.ESCALATE}
)


class Verdict(enum.StrEnum):
    """What policy says about running a proposed action now."""

    AUTO = "auto"  # safe tier: run without asking
    NOTIFY = "notify"  # major tier: run, and tell the operators
    APPROVED = "approved"  # an operator said yes
    HOLD = "hold"  # needs approval, or guardrails forbid it now


@dataclass(frozen=True)
class ActionIntent:
    """An action the controller proposes, with the policy verdict that allows or holds it."""

    action: str
    tier: str
    verdict: Verdict
    why: str
    dry_run: bool = False


@dataclass(frozen=True)
class MachinePolicy:
    """The numbers the guards and deadlines use (seconds)."""

    max_strikes: int = 3
    detect_deadline: float = 120.0
    action_deadline: float = 300.0
    verify_window: float = 90.0
    #: Extra time after the verify window for the judge to read fresh samples.
    verify_grace: float = 60.0
    reopen_window: float = 3600.0
    #: an escalated incident nobody acknowledged is escalated (notified) again after this
    escalation_repeat: float = 1800.0

    def __post_init__(self) -> None:
        if self.max_strikes < 1:
            raise InvalidInput("max_strikes must be at least 1")
        for name in ("detect_deadline", "action_deadline", "verify_window", "reopen_window",
                     "escalation_repeat"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name} must be greater than 0")
        if self.verify_grace < 0:
            raise InvalidInput("verify_grace must not be negative")

    @classmethod
    def from_settings(cls, agent: AgentSettings) -> MachinePolicy:
        """The numbers of `[agent]`: the one place they are mapped (agent and CLI alike)."""
        return cls(max_strikes=agent.max_strikes, detect_deadline=agent.detect_deadline,
                   action_deadline=agent.action_deadline, verify_window=agent.verify_window,
                   reopen_window=agent.reopen_window,
                   escalation_repeat=agent.escalation_repeat)

    def deadline_for(self, state: State, now: datetime) -> datetime | None:
        """The deadline an incident gets on entering `state`; None once resolved."""
        seconds = {
            State.DETECTED: self.detect_deadline,
            State.REMEDIATING: self.action_deadline,
            State.VERIFYING: self.verify_window + self.verify_grace,
            State.ESCALATED: self.escalation_repeat,
        }.get(state)
        return None if seconds is None else now + timedelta(seconds=seconds)


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
         "an operator takes the incident over", operator=True),
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


def markdown_table() -> str:
    """The table as Markdown, for the README (a test keeps the README in step with `EDGES`)."""
    rows = ["| trigger | from | to | guards | effect |", "|---|---|---|---|---|"]
    for e in EDGES:
        dest = "(stays)" if e.dest is None else e.dest.value
        guards = " and ".join(f"`{g}`" for g in e.guards) or ("otherwise" if any(
            o.trigger == e.trigger and o.sources == e.sources and o.guards
            for o in EDGES) else "")
        who = " (operator)" if e.operator else ""
        rows.append(
            f"| `{e.trigger.value}`{who} | {', '.join(s.value for s in e.sources)} | {dest} "
            f"| {guards} | {e.effect} |"
        )
    return "\n".join(rows)


def mermaid(*, visited: Sequence[str] = ()) -> str:
    """The state diagram as Mermaid text, drawn from `EDGES` by transitions' Mermaid backend.

    `visited` (e.g. the states of one incident's history) are marked with a
    `visited` class so a renderer shows that incident's path; the last of them
    is the one drawn as current.
    """
    # Imported here: the diagram code is for the CLI, not for the running agent.
    from transitions.extensions.diagrams import GraphMachine

    class _Drawing:
        pass

    drawing = _Drawing()
    for name in GUARDS:
        setattr(drawing, name, lambda: True)
    machine = GraphMachine(
        model=drawing,
        states=[s.value for s in State],
        transitions=transition_table(),
        initial=_current(visited),
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
        title="incident",
    )
    text = str(machine.get_graph().draw(None))
    states = [s for s in dict.fromkeys(visited) if s in set(State)]
    if states:
        text = text.rstrip("\n") + (
            "\n  classDef visited fill:#ffe08a,stroke:#b8860b\n"
            f"  class {','.join(states)} visited\n"
        )
    return text


def _current(visited: Sequence[str]) -> str:
    """The state a drawing marks as current: where the path ends (else the entry state)."""
    known = [s for s in visited if s in set(State)]
    return known[-1] if known else State.DETECTED.value


def render_image(path: str, *, visited: Sequence[str] = ()) -> None:
    """Draw the graph to an SVG or PNG file with Graphviz (`dot` and its Python package)."""
    import shutil
    from pathlib import Path

    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("svg", "png"):
        raise InvalidInput(f"--output must end in .svg or .png, not {path!r}")
    from importlib.util import find_spec

    if find_spec("graphviz") is None or shutil.which("dot") is None:
        raise InvalidInput("SVG/PNG needs Graphviz (the `dot` program and the `graphviz` "
                           "Python package); the Mermaid text (the default) needs neither")
    from transitions.extensions.diagrams import GraphMachine

    drawing = type("_Drawing", (), {name: (lambda self: True) for name in GUARDS})()
    machine = GraphMachine(model=drawing, states=[s.value for s in State],
                           transitions=transition_table(), initial=_current(visited),
                           auto_transitions=False, graph_engine="graphviz",
                           show_conditions=True, title="incident")
    styles = machine.model_graphs[id(drawing)]
    for state in dict.fromkeys(visited):
        if state in set(State):
            styles.set_node_style(state, "previous")
    machine.get_graph().draw(path, format=suffix, prog="dot")


# --- the engine ----------------------------------------------------------------


# eq=False: the machine finds its models by identity. Two concurrent fires on the same
# incident build equal-looking models, and equality made add_model skip the second one
# and remove_model drop the wrong one.
@dataclass(eq=False)
class _Model:
    """The transient model one `fire` hands to the shared machine."""

    ctx: GuardContext
    state: str
    actor: str
    reason: str
    details: Mapping[str, Any]
    notifications: Sequence[Any]
    notified_before: bool = False
    attempt: AttemptView | None = None
    written_notifications: bool = False
    result: Incident | None = None

    async def trigger(self, name: str, *args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("model was not added to the machine")  # replaced by add_model

    # Guards as the machine calls them (with the event); each defers to the pure function.
    def strikes_left(self, _event: EventData) -> bool:
        return strikes_left(self.ctx)

    def action_permitted(self, _event: EventData) -> bool:
        return action_permitted(self.ctx)

    def within_reopen_window(self, _event: EventData) -> bool:
        return within_reopen_window(self.ctx)

    def deadline_passed(self, _event: EventData) -> bool:
        return deadline_passed(self.ctx)


def _unbound(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("model was not added to the machine")


def _declare_bindings(cls: type) -> None:
    # With model_override=True transitions binds only the conveniences a model
    # declares (and warns about every other one, on every add_model). Declare
    # them all, derived from the table, so nothing is silently missing.
    names = ["may_trigger"]
    names += [t.value for t in Trigger] + [f"may_{t.value}" for t in Trigger]
    names += [f"is_{s.value}" for s in State]
    for name in names:
        if not hasattr(cls, name):
            setattr(cls, name, _unbound)


_declare_bindings(_Model)


@dataclass(frozen=True)
class StepRequest:
    """What the engine asks the store to persist for one step (see `Store.apply_transition`)."""

    incident_id: IncidentId
    expected_version: int
    trigger: str
    source: str
    dest: str
    actor: str
    reason: str
    at: datetime
    deadline_at: datetime | None
    flap_count: int
    resolved_at: datetime | None
    details: Mapping[str, Any] = field(default_factory=dict)
    intent: ActionIntent | None = None
    notifications: Sequence[Any] = ()


@dataclass(frozen=True)
class AttemptView:
    """The incident's latest real action attempt, as a notification policy sees it."""

    action: str
    tier: str
    #: how it ended (`ok`, `failed`, `timed_out`, `skipped`, `interrupted`); None while it runs
    outcome: str | None = None
    #: the action's own one-line account of what it did
    summary: str = ""


@dataclass(frozen=True)
class StepView:
    """What a notification policy sees of one step: plain data, guards passed, not yet written.

    `incident_id` is None when the step opens a new incident (the row has no
    id yet); `source` is None there too. `notified_before` says whether the
    incident already has outbox rows (read only for steps that can resolve it
    and for `action_finished`). `attempt` is the latest real attempt, read
    only for steps leaving `remediating` or `verifying`.
    """

    trigger: str
    source: str | None
    dest: str
    incident_id: IncidentId | None
    target: str
    kind: str
    severity: str
    actor: str
    reason: str
    at: datetime
    details: Mapping[str, Any] = field(default_factory=dict)
    flap_count: int = 0
    strikes: int = 0
    notified_before: bool = False
    attempt: AttemptView | None = None


#: Turns a step into the notifications it owes (see `incident_fsm.outbox`).
OutboxPolicy = Callable[[StepView], "Sequence[OutboxMessage]"]


class IncidentEngine:
    """Fires triggers on persisted incidents: validate, guard, persist in one transaction.

    With an `outbox` policy every step (and every opening) also writes the
    notifications the policy asks for, in the same transaction; explicit
    `notifications=` win over the policy for the channels they name (one row
    per step and channel). `on_outbox` is called after a commit that wrote
    outbox rows, e.g. a dispatcher's `nudge`.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        policy: MachinePolicy | None = None,
        outbox: OutboxPolicy | None = None,
        on_outbox: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.policy = policy or MachinePolicy()
        self._outbox = outbox
        self._on_outbox = on_outbox
        self._machine = AsyncMachine(
            model=None,
            states=[s.value for s in State],
            transitions=transition_table(),
            initial=State.DETECTED.value,
            auto_transitions=False,
            send_event=True,
            model_override=True,
            before_state_change=[self._persist],
        )

    async def open(
        self,
        *,
        target: str,
        kind: str,
        severity: str,
        reason: str,
        actor: str = "agent",
        summary: str = "",
        details: Mapping[str, Any] | None = None,
        notifications: Sequence[Any] = (),
    ) -> Opened:
        """Open an incident in `detected` with its first deadline, or return the open one."""
        now = self._clock.now()
        if self._outbox is not None:
            view = StepView(
                trigger=OPEN_TRIGGER, source=None, dest=State.DETECTED.value, incident_id=None,
                target=target, kind=kind, severity=severity, actor=actor, reason=reason,
                at=now, details=dict(details or {}),
            )
            notifications = _merge_outbox(notifications, self._outbox(view))
        opened = await self._store.open_incident(
            target=target, kind=kind, severity=severity, at=now,
            deadline_at=self.policy.deadline_for(State.DETECTED, now), reason=reason,
            actor=actor, summary=summary, details=details, notifications=notifications,
        )
        if opened.created and notifications:
            self._outbox_written()
        return opened

    async def fire(
        self,
        incident_id: IncidentId,
        trigger: str,
        *,
        actor: str,
        reason: str,
        details: Mapping[str, Any] | None = None,
        intent: ActionIntent | None = None,
        notifications: Sequence[Any] = (),
    ) -> Incident:
        """Apply `trigger` to the incident and return it as persisted afterwards.

        Raises `IncidentNotFound`, `InvalidTransition` (trigger has no edge from
        the current state), `GuardRejected` (it has, but the guards refused),
        `ConcurrentUpdate` (someone else moved the incident first) or
        `InvalidInput`; in every one of those cases nothing was written.
        """
        if not reason or not reason.strip():
            raise InvalidInput("a transition needs a reason")
        if not actor or not actor.strip():
            raise InvalidInput("a transition needs an actor")
        incident = await self._store.get_incident(incident_id)
        allowed = operator_triggers_from(incident.state)
        if trigger not in triggers_from(incident.state):
            raise InvalidTransition(
                incident_id=incident_id, state=incident.state, trigger=trigger, allowed=allowed
            )
        # Read before the step: the version check makes it still true at commit.
        notified = (
            self._outbox is not None
            and (State.RESOLVED.value in edge_destinations(trigger, incident.state)
                 or trigger == Trigger.ACTION_FINISHED)
            and await self._store.has_notifications(incident_id)
        )
        attempt = None
        if self._outbox is not None and incident.state in (State.REMEDIATING, State.VERIFYING):
            attempt = await self._latest_attempt(incident_id)
        model = _Model(
            ctx=GuardContext(incident=incident, now=self._clock.now(), policy=self.policy,
                             intent=intent),
            state=incident.state,
            actor=actor.strip(),
            reason=reason.strip(),
            details=dict(details or {}),
            notifications=tuple(notifications),
            notified_before=notified,
            attempt=attempt,
        )
        self._machine.add_model(model, initial=incident.state)
        try:
            moved = await model.trigger(trigger)
        finally:
            self._machine.remove_model(model)
        # transitions turns a cancellation during a step into `False`; give it back.
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not moved or model.result is None:
            refused = [
                f"{e.trigger}->{e.dest}: needs {' and '.join(e.guards)}"
                for e in EDGES
                if e.trigger == trigger and incident.state in e.sources
            ]
            raise GuardRejected(
                incident_id=incident_id, state=incident.state, trigger=trigger, allowed=allowed,
                detail="guards refused (" + "; ".join(refused) + ")",
            )
        result = model.result
        logger.bind(incident_id=incident_id, state=result.state, target=result.target).info(
            "incident {} {} → {} ({}) by {}: {}",
            incident_id, incident.state, result.state, trigger, one_line(model.actor, 200),
            one_line(model.reason),
        )
        if model.written_notifications:
            self._outbox_written()
        return result

    def _outbox_written(self) -> None:
        if self._on_outbox is not None:
            self._on_outbox()

    async def _latest_attempt(self, incident_id: IncidentId) -> AttemptView | None:
        """The latest real attempt, for the notification's wording; None if unknown."""
        try:
            runs = await self._store.attempts(incident_id)
        except StoreUnavailable:
            # Only the wording of a message depends on it: never fail a step over it.
            return None
        real = [r for r in runs if not r.dry_run]
        if not real:
            return None
        run = real[-1]
        summary = (run.evidence or {}).get("summary")
        return AttemptView(run.action, run.tier, run.outcome,
                           summary if isinstance(summary, str) else "")

    async def _persist(self, event: EventData) -> None:
        model = event.model
        assert isinstance(model, _Model)
        assert event.transition is not None
        incident = model.ctx.incident
        now = model.ctx.now
        source = incident.state
        dest = event.transition.dest or source
        flap_count = incident.flap_count
        resolved_at = incident.resolved_at
        if event.event.name == Trigger.REOPEN:
            flap_count += 1
            resolved_at = None
        if dest == State.RESOLVED:
            resolved_at = now
        trigger = event.event.name
        if trigger == Trigger.ACKNOWLEDGE and source == State.ESCALATED:
            deadline = None  # a human owns it now: no more repeated escalations
        elif dest == source and trigger != Trigger.TIMEOUT:
            deadline = incident.deadline_at
        else:
            deadline = self.policy.deadline_for(State(dest), now)
        starts_action = dest == State.REMEDIATING and source != State.REMEDIATING
        step_details = _with_verdict(model.details, model.ctx.intent)
        notifications: Sequence[Any] = model.notifications
        if self._outbox is not None:
            view = StepView(
                trigger=event.event.name, source=source, dest=dest,
                incident_id=incident.incident_id, target=incident.target, kind=incident.kind,
                severity=incident.severity, actor=model.actor, reason=model.reason, at=now,
                details=step_details, flap_count=flap_count, strikes=incident.strikes,
                notified_before=model.notified_before, attempt=model.attempt,
            )
            notifications = _merge_outbox(notifications, self._outbox(view))
        request = StepRequest(
            incident_id=incident.incident_id,
            expected_version=incident.version,
            trigger=event.event.name,
            source=source,
            dest=dest,
            actor=model.actor,
            reason=model.reason,
            at=now,
            deadline_at=deadline,
            flap_count=flap_count,
            resolved_at=resolved_at,
            details=step_details,
            intent=model.ctx.intent if starts_action else None,
            notifications=notifications,
        )
        # Shielded: once the write is on its way we want to know how it ended,
        # or the model and the database could disagree.
        with anyio.CancelScope(shield=True):
            model.result = await self._store.apply_transition(request)
        model.written_notifications = bool(notifications)


def _merge_outbox(explicit: Sequence[Any], policy: Sequence[Any]) -> tuple[Any, ...]:
    # One row per step and channel (the dedupe key): an explicit message wins.
    taken = {m.channel for m in explicit}
    return (*explicit, *(m for m in policy if m.channel not in taken))


def _with_verdict(details: Mapping[str, Any], intent: ActionIntent | None) -> dict[str, Any]:
    out = dict(details)
    if intent is not None:
        out.setdefault("action", intent.action)
        out.setdefault("tier", intent.tier)
        out.setdefault("verdict", intent.verdict.value)
        out.setdefault("verdict_reason", intent.why)
        if intent.dry_run:
            out.setdefault("dry_run", True)
    return out
