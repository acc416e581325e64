"""incident_fsm: keeps a web service healthy through incidents driven by a persisted state machine.

The public surface is re-exported here; everything else is internal.
"""

from .actions import Action, ActionContext, Outcome, OutcomeStatus, Tier
from .agent import Agent, lifespan
from .clock import Clock, ManualClock, SystemClock
from .errors import (
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
from .machine import (
    EDGES,
    ActionIntent,
    Edge,
    IncidentEngine,
    MachinePolicy,
    State,
    Trigger,
    Verdict,
)
from .models import ActionRun, Incident, IncidentId, Notification, OutboxMessage, Transition
from .relay import pam_relay
from .store import Opened, Store, Timeline

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
