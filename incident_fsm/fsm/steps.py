"""The plain data of a step: the proposed action, the policy numbers, the write, the view.

`StepRequest` is what the engine hands its step writer (the store) to
persist; `StepView` is what a notification policy sees of a step before it
is written. Both are frozen data with no behaviour beyond validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from incident_fsm.errors import InvalidInput
from incident_fsm.models import ActionRun, Incident, IncidentId, OutboxMessage
from incident_fsm.vocabulary import State, Verdict

if TYPE_CHECKING:
    from incident_fsm.settings import AgentSettings


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
    #: the idempotency key of the attempt `intent` starts, when it already has one (it
    #: ran while the step was journaled offline); None: the store gives the usual one
    attempt_key: str | None = None


@dataclass(frozen=True)
class Stepped:
    """What one persisted step left: the incident's new row and the attempt it recorded.

    `attempt` is set only for a step that starts an action (`remediate`,
    `approve`, a `still_failing` with the next choice): the row it wrote in
    the same transaction, with its id and idempotency key.
    """

    incident: Incident
    attempt: ActionRun | None = None


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


#: Turns a step into the notifications it owes (see `incident_fsm.notify.policy`).
OutboxPolicy = Callable[[StepView], "Sequence[OutboxMessage]"]
