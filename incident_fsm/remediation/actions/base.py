"""What an action is: its interface, the context it runs in, and the outcome it reports.

An action is a plug-in (`Action` protocol): a name, the problem kinds it
applies to, a risk tier and a time limit, and `run(ctx)`. The remediator
records the attempt before calling `run`, hands it the attempt's
idempotency key and deadline in an `ActionContext`, and stores the
`Outcome`. An outcome says what the action did and what it saw -- it is
evidence, not the verdict: only the verification that follows decides
whether the attempt helped. An action that finds it cannot apply (and so
changed nothing) says so with `Outcome.not_applicable`: no strike, no
verification, the next candidate is tried.

With `ctx.dry_run` set an action must touch nothing (no process, no HTTP
request, no file change) and describe what it would have done instead.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from incident_fsm.clock import Clock
from incident_fsm.errors import InvalidInput
from incident_fsm.models import Incident


class Tier(enum.StrEnum):
    """How much trust an action gets."""

    SAFE = "safe"  # run automatically
    MAJOR = "major"  # run, and tell the operators
    APPROVAL = "approval"  # hold until an operator approves


def parse_tier(value: str, *, what: str) -> Tier:
    """A tier from configuration text, or `InvalidInput` naming the setting."""
    try:
        return Tier(value)
    except ValueError:
        raise InvalidInput(
            f"{what}: unknown tier {value!r}; tiers are {[t.value for t in Tier]}"
        ) from None


class OutcomeStatus(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    #: not applicable here (e.g. a scale while Render autoscales): nothing was changed, so
    #: it is no strike and nothing to verify; the next candidate is tried
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, with its evidence. Texts are already free of secrets."""

    status: OutcomeStatus
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    output_excerpt: str = ""
    exit_code: int | None = None
    http_status: int | None = None

    @classmethod
    def ok(cls, summary: str, **fields: Any) -> Outcome:
        return cls(OutcomeStatus.OK, summary, **fields)

    @classmethod
    def failed(cls, summary: str, **fields: Any) -> Outcome:
        return cls(OutcomeStatus.FAILED, summary, **fields)

    @classmethod
    def timed_out(cls, summary: str, **fields: Any) -> Outcome:
        return cls(OutcomeStatus.TIMED_OUT, summary, **fields)

    @classmethod
    def not_applicable(cls, summary: str, **fields: Any) -> Outcome:
        """The action cannot help here and changed nothing; `summary` says why."""
        return cls(OutcomeStatus.SKIPPED, summary, **fields)

    def record(self) -> dict[str, Any]:
        """The evidence as stored on the `action_run` row."""
        out: dict[str, Any] = {"summary": self.summary, **self.evidence}
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        if self.http_status is not None:
            out["http_status"] = self.http_status
        return out


@dataclass(frozen=True)
class ActionContext:
    """One attempt as the action sees it."""

    incident: Incident
    #: unique per attempt (from its `action_run` row); passed on where the far side dedupes
    idempotency_key: str
    #: absolute time by which the attempt must be over (the incident's deadline)
    deadline: datetime
    clock: Clock
    dry_run: bool = False

    def remaining(self) -> float:
        """Seconds left until the deadline (never negative)."""
        return max(0.0, (self.deadline - self.clock.now()).total_seconds())


class Action(Protocol):
    """A remediation. `timeout` may be `math.inf`: then only the attempt's deadline bounds it."""

    @property
    def name(self) -> str: ...

    @property
    def kinds(self) -> frozenset[str]: ...

    @property
    def tier(self) -> Tier: ...

    @property
    def timeout(self) -> float: ...

    async def run(self, ctx: ActionContext) -> Outcome: ...
