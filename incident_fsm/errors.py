"""The exceptions incident_fsm raises, and what each one means for the caller.

    IncidentFSMError                 base of everything raised on purpose
    ├── InvalidInput (ValueError)    bad argument from a caller: nothing was written
    ├── InvalidTransition            trigger not allowed from the state: nothing written
    │   └── GuardRejected            the edge exists but its guard said no: nothing written
    └── StoreError                   the database said no or could not be reached
        ├── IncidentNotFound (LookupError)
        ├── ConcurrentUpdate         the incident changed first: reload and decide again
        ├── StoreUnavailable         the database is unreachable: retry later, nothing half-written
        └── SchemaNotReady           tables missing or behind: migrate first, nothing written

Messages are written for an operator at 3 a.m.: they name the incident, its
state and what an operator could do there instead.
"""

from __future__ import annotations

from collections.abc import Iterable


class IncidentFSMError(Exception):
    """Base class of every error incident_fsm raises on purpose."""


class InvalidInput(IncidentFSMError, ValueError):
    """A caller passed something unusable (empty reason, unknown name...)."""


class InvalidTransition(IncidentFSMError):
    """A trigger was fired from a state whose edges do not include it.

    `allowed` is what a person could do from that state instead: the operator
    triggers with an edge out of it (`machine.operator_triggers_from`), never
    the agent's internal ones.
    """

    def __init__(
        self,
        *,
        incident_id: int,
        state: str,
        trigger: str,
        allowed: Iterable[str],
        detail: str | None = None,
    ) -> None:
        self.incident_id = incident_id
        self.state = state
        self.trigger = trigger
        self.allowed = tuple(sorted(allowed))
        allowed_text = ", ".join(self.allowed) if self.allowed else "none"
        message = (
            f"incident {incident_id} is '{state}': trigger '{trigger}' is not allowed there "
            f"(operator triggers allowed: {allowed_text})"
        )
        if detail:
            message = f"{message}; {detail}"
        super().__init__(message)


class GuardRejected(InvalidTransition):
    """The trigger is an edge of the current state but every guard on it refused."""


class StoreError(IncidentFSMError):
    """The store could not do what was asked."""


class IncidentNotFound(StoreError, LookupError):
    """No incident has that id."""

    def __init__(self, incident_id: int) -> None:
        self.incident_id = incident_id
        super().__init__(f"no incident with id {incident_id}")


class ConcurrentUpdate(StoreError):
    """The incident changed between read and write; nothing of this write was kept."""

    def __init__(self, *, incident_id: int, expected_version: int, found_version: int,
                 found_state: str) -> None:
        self.incident_id = incident_id
        self.expected_version = expected_version
        self.found_version = found_version
        self.found_state = found_state
        super().__init__(
            f"incident {incident_id} changed concurrently: expected version {expected_version}, "
            f"found version {found_version} in state '{found_state}'; nothing was written"
        )


class StoreUnavailable(StoreError):
    """The database could not be reached or timed out; nothing was written."""


class SchemaNotReady(StoreError):
    """The database's schema is missing or not the revision this code needs; nothing was written.

    Not a `StoreUnavailable`: the outage journal covers a database that went
    away, never one the agent could not have written to in the first place.
    """


class AttemptAlreadySettled(InvalidInput):
    """An attempt's outcome or verdict is on record already and is never overwritten.

    What happens next: nothing needs doing -- the first record stands. A
    replay that meets it knows the write landed before an interruption.
    """

    def __init__(self, run_id: int, what: str) -> None:
        super().__init__(f"action run {run_id} {what}")
        self.run_id = run_id


class AttemptAlreadyFinished(AttemptAlreadySettled):
    """`finish_action` on an attempt whose outcome is recorded."""

    def __init__(self, run_id: int, outcome: str | None) -> None:
        super().__init__(run_id, f"already finished as '{outcome}'")
        self.outcome = outcome


class AttemptAlreadyJudged(AttemptAlreadySettled):
    """`judge_action` with a verdict different from the one recorded."""

    def __init__(self, run_id: int, verified: bool | None) -> None:
        super().__init__(run_id, f"was already judged verified={verified}")
        self.verified = verified
