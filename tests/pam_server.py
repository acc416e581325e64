"""The PAM-like WebSocket server lives in the package (the demo uses it); tests import it here.

`FakePam` tells the truth by default: like PAM's real socket it answers
`system_message` (and every type it does not know) with an error. Tests of
the outbox's own mechanics (backlogs, ordering, resends), which need a
transport that works, pass `accepts=ACCEPTS`: a PAM that took notifications.
"""

from incident_fsm.demo.pam_simulator import PamSimulator as FakePam
from incident_fsm.demo.pam_simulator import free_port

#: the frame type the PAM channel sends, taken as a notification (the real PAM does not)
ACCEPTS = ("system_message",)

__all__ = ["ACCEPTS", "FakePam", "free_port"]
