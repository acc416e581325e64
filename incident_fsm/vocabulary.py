"""The names the whole package speaks: states, triggers, verdicts, actors, outcomes, statuses.

Each is a `StrEnum` defined once here; the database stores their values,
so a member compares equal to the text in a row. Nothing here imports
anything else of the package: every layer may use it.
"""

from __future__ import annotations

import enum
from typing import Final


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


class Label(enum.StrEnum):
    """An operator's judgement of an incident: a real problem, or noise."""

    REAL = "real"
    NOISE = "noise"



class Verdict(enum.StrEnum):
    """What policy says about running a proposed action now."""

    AUTO = "auto"  # safe tier: run without asking
    NOTIFY = "notify"  # major tier: run, and tell the operators
    APPROVED = "approved"  # an operator said yes
    HOLD = "hold"  # needs approval, or guardrails forbid it now


class Actor(enum.StrEnum):
    """Who took a step, when it was not a person (a person's steps carry their own name)."""

    AGENT = "agent"


class AttemptOutcome(enum.StrEnum):
    """How an attempt ended, as recorded (`action_run.outcome`)."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    #: the agent stopped while it ran; it is judged, never run again
    INTERRUPTED = "interrupted"
    #: not applicable, or a dry run: it changed nothing at the service
    SKIPPED = "skipped"


class NotificationStatus(enum.StrEnum):
    """Where an outbox row stands (`notification.status`)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    #: given up after the attempt bound; kept for a human
    DEAD = "dead"
    #: never sent: its channel is no longer configured
    SKIPPED = "skipped"
