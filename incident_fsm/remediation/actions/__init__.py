"""The remediation library: the action interface and the real actions behind it.

`base` defines what an action is; `disk_cleanup`, `command`, `render` and
`failover` are the actions; `catalog` builds the ones each target has from
the settings.
"""

from incident_fsm.remediation.actions.base import (
    Action,
    ActionContext,
    Outcome,
    OutcomeStatus,
    Tier,
)

__all__ = ["Action", "ActionContext", "Outcome", "OutcomeStatus", "Tier"]
