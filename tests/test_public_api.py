"""The public surface: exactly the intended names, and a light import for the running agent."""

from __future__ import annotations

import subprocess
import sys

import incident_fsm

INTENDED = {
    "Agent", "lifespan",
    # what a PAM host mounts so a standalone agent can reach its users
    "pam_relay",
    "EDGES", "ActionIntent", "ActionRun", "Clock", "ConcurrentUpdate", "Edge", "EmbeddedAgent",
    "GuardRejected",
    "Incident", "IncidentEngine", "IncidentFSMError", "IncidentId", "IncidentNotFound",
    "InvalidInput", "InvalidTransition", "MachinePolicy", "ManualClock", "Notification", "Opened",
    "OutboxMessage", "State", "Store", "StoreError", "SchemaNotReady", "StoreUnavailable",
    "SystemClock",
    "Timeline", "Transition", "Trigger", "Verdict",
    # the remediation plug-in interface, for host apps that bring their own actions
    "Action", "ActionContext", "Outcome", "OutcomeStatus", "Tier",
}


def test_exported_names_are_exactly_the_intended_ones() -> None:
    assert set(incident_fsm.__all__) == INTENDED
    for name in INTENDED:
        assert getattr(incident_fsm, name) is not None


def test_importing_the_library_leaves_cli_migration_and_diagram_code_out() -> None:
    # transitions' own package init imports its pure-Python diagram module, and
    # httpx imports click whenever click is installed (its optional CLI); the
    # drawing backends (graphviz), celery, and our CLI and migration stack must stay out.
    probe = (
        "import sys, incident_fsm; "
        "print(','.join(m for m in ('alembic', 'graphviz', 'pygraphviz', 'celery', "
        "'incident_fsm.cli.main') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == ""
