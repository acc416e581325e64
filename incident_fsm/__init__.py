"""incident_fsm: keeps a web service healthy through incidents driven by a persisted state machine.

The public surface is re-exported here; everything else is internal.
"""

from typing import TYPE_CHECKING, Any

from incident_fsm.clock import Clock, SystemClock
from incident_fsm.errors import (
    ConcurrentUpdate,
    GuardRejected,
    IncidentFSMError,
    IncidentNotFound,
    InvalidInput,
    InvalidTransition,
    SchemaNotReady,
    StoreError,
    StoreUnavailable,
)
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.graph import EDGES, Edge
from incident_fsm.fsm.steps import ActionIntent, MachinePolicy
from incident_fsm.models import (
    ActionRun,
    Incident,
    IncidentId,
    Notification,
    Opened,
    OutboxMessage,
    Timeline,
    Transition,
)
from incident_fsm.notify.relay import pam_relay
from incident_fsm.persistence.store import Store
from incident_fsm.remediation.actions import Action, ActionContext, Outcome, OutcomeStatus, Tier
from incident_fsm.runtime.agent import Agent
from incident_fsm.runtime.embedding import EmbeddedAgent, lifespan
from incident_fsm.vocabulary import State, Trigger, Verdict

if TYPE_CHECKING:
    from incident_fsm.testing import ManualClock


def __getattr__(name: str) -> Any:
    # The test clock reads asyncio internals: it is loaded only when asked for.
    if name == "ManualClock":
        from incident_fsm.testing import ManualClock

        return ManualClock
    raise AttributeError(f"module 'incident_fsm' has no attribute {name!r}")


__all__ = [
    "EDGES",
    "Action",
    "ActionContext",
    "ActionIntent",
    "ActionRun",
    "Agent",
    "Clock",
    "ConcurrentUpdate",
    "Edge",
    "EmbeddedAgent",
    "GuardRejected",
    "Incident",
    "IncidentEngine",
    "IncidentFSMError",
    "IncidentId",
    "IncidentNotFound",
    "InvalidInput",
    "InvalidTransition",
    "MachinePolicy",
    "ManualClock",
    "Notification",
    "Opened",
    "OutboxMessage",
    "Outcome",
    "OutcomeStatus",
    "SchemaNotReady",
    "State",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SystemClock",
    "Tier",
    "Timeline",
    "Transition",
    "Trigger",
    "Verdict",
    "lifespan",
    "pam_relay",
]
