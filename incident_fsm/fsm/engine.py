"""The engine that fires triggers on persisted incidents: validate, guard, persist at once.

All I/O happens in `IncidentEngine.step`: it lets the machine decide on the
incident it is given, and writes the step through its step writer in one
transaction from the machine's `before_state_change` callback, checked
against the version it was given. If that write fails, the machine never
changes state: the database is the truth, the machine is the judge.
`fire` is `step` on the incident as stored now (operators, the sweeper,
the monitor); the remediator holds the incident it drives and calls `step`
with it and its attempts, so it reads neither again between steps.

One `AsyncMachine` serves every incident: each `fire` adds a short-lived
model, triggers, and removes it again, so no per-incident state lives in
memory between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import anyio
from loguru import logger
from transitions.core import EventData
from transitions.extensions.asyncio import AsyncMachine

from incident_fsm.clock import Clock
from incident_fsm.errors import GuardRejected, InvalidInput, InvalidTransition, StoreUnavailable
from incident_fsm.fsm.graph import (
    EDGES,
    GUARDS,
    GuardContext,
    edge_destinations,
    operator_triggers_from,
    transition_table,
    triggers_from,
)
from incident_fsm.fsm.steps import (
    ActionIntent,
    AttemptView,
    MachinePolicy,
    OutboxPolicy,
    Stepped,
    StepRequest,
    StepView,
)
from incident_fsm.models import ActionRun, Incident, IncidentId, Opened, OutboxMessage
from incident_fsm.text import one_line
from incident_fsm.vocabulary import OPEN_TRIGGER, State, Trigger


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
    result: Stepped | None = None

    async def trigger(self, name: str, *args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("model was not added to the machine")  # replaced by add_model


def _unbound(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("model was not added to the machine")


def _guard_method(guard: Callable[[GuardContext], bool]) -> Callable[[_Model, EventData], bool]:
    def method(self: _Model, _event: EventData) -> bool:
        return guard(self.ctx)

    method.__name__ = method.__qualname__ = guard.__name__
    return method


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
    # The guards as the machine calls them (with the event), each the pure
    # function of `GUARDS` applied to the model's context: one table, no copies.
    for name, guard in GUARDS.items():
        setattr(cls, name, _guard_method(guard))


_declare_bindings(_Model)


class StepWriter(Protocol):
    """What the engine needs of a store: read the incident it moves, write each step."""

    async def get_incident(self, incident_id: IncidentId) -> Incident: ...

    async def has_notifications(self, incident_id: IncidentId) -> bool: ...

    async def attempts(self, incident_id: IncidentId) -> list[ActionRun]: ...

    async def open_incident(
        self, *, target: str, kind: str, severity: str, at: datetime,
        deadline_at: datetime | None, reason: str, actor: str = ..., summary: str = ...,
        details: Mapping[str, Any] | None = ..., notifications: Sequence[OutboxMessage] = ...,
    ) -> Opened: ...

    async def apply_transition(self, step: StepRequest) -> Stepped: ...


class IncidentEngine:
    """Fires triggers on persisted incidents: validate, guard, persist in one transaction.

    With an `outbox` policy every step (and every opening) also writes the
    notifications the policy asks for, in the same transaction; explicit
    `notifications=` win over the policy for the channels they name (one row
    per step and channel). `on_outbox` is called after a commit that wrote
    outbox rows, e.g. a dispatcher's `nudge`; `on_step(trigger, dest)` after
    every committed step and opening (e.g. a metrics counter).
    """

    def __init__(
        self,
        store: StepWriter,
        *,
        clock: Clock,
        policy: MachinePolicy | None = None,
        outbox: OutboxPolicy | None = None,
        on_outbox: Callable[[], None] | None = None,
        on_step: Callable[[str, str], None] | None = None,
    ) -> None:
        self._store = store
        self._on_step = on_step
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
        if opened.created:
            self._stepped(OPEN_TRIGGER, State.DETECTED)
            if notifications:
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
        """Apply `trigger` to the incident as stored now; return it as persisted afterwards.

        Raises `IncidentNotFound`, `InvalidTransition` (trigger has no edge from
        the current state), `GuardRejected` (it has, but the guards refused),
        `ConcurrentUpdate` (someone else moved the incident first) or
        `InvalidInput`; in every one of those cases nothing was written.
        """
        _check_words(actor, reason)
        incident = await self._store.get_incident(incident_id)
        stepped = await self.step(incident, trigger, actor=actor, reason=reason,
                                  details=details, intent=intent, notifications=notifications)
        return stepped.incident

    async def step(
        self,
        incident: Incident,
        trigger: str,
        *,
        actor: str,
        reason: str,
        details: Mapping[str, Any] | None = None,
        intent: ActionIntent | None = None,
        notifications: Sequence[Any] = (),
        attempts: Sequence[ActionRun] | None = None,
    ) -> Stepped:
        """Apply `trigger` to `incident` as the caller holds it; return what the step left.

        For a caller that holds the incident it moves (the remediator): it is
        not read again. The write is checked against the held version, so a
        stale row is refused with `ConcurrentUpdate`, nothing written. Pass
        the incident's `attempts` when held too: the notifications name the
        latest, and it is not read again either. Raises as `fire` does.
        """
        _check_words(actor, reason)
        incident_id = incident.incident_id
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
            attempt = await self._latest_attempt(incident_id, attempts)
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
        result = model.result.incident
        logger.bind(incident_id=incident_id, state=result.state, target=result.target).info(
            "incident {} {} → {} ({}) by {}: {}",
            incident_id, incident.state, result.state, trigger, one_line(model.actor, 200),
            one_line(model.reason),
        )
        self._stepped(trigger, result.state)
        if model.written_notifications:
            self._outbox_written()
        return model.result

    def _stepped(self, trigger: str, dest: str) -> None:
        if self._on_step is not None:
            self._on_step(trigger, dest)

    def _outbox_written(self) -> None:
        if self._on_outbox is not None:
            self._on_outbox()

    async def _latest_attempt(self, incident_id: IncidentId,
                              held: Sequence[ActionRun] | None) -> AttemptView | None:
        """The latest real attempt, for the notification's wording; None if unknown."""
        try:
            runs = await self._store.attempts(incident_id) if held is None else held
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


def _check_words(actor: str, reason: str) -> None:
    if not reason or not reason.strip():
        raise InvalidInput("a transition needs a reason")
    if not actor or not actor.strip():
        raise InvalidInput("a transition needs an actor")


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
