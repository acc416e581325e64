"""The PAM-like WebSocket server lives in the package (the demo uses it); tests import it here."""

from incident_fsm.simulator import PamSimulator as FakePam
from incident_fsm.simulator import free_port

__all__ = ["FakePam", "free_port"]
