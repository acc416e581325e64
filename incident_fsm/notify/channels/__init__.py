"""Notification channels: how a notification reaches people (log, PAM, webhook).

PAM has three: its WebSocket (`pam`), its own connection manager when the
agent runs inside the service (`pam_inprocess`), and the relay the service
mounts for a standalone agent (`pam_relay`).

Each channel implements the `Channel` protocol of `base`; the dispatcher
drives them. `channels_from_settings` builds the configured ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from incident_fsm.clock import Clock
from incident_fsm.config import ConfigError
from incident_fsm.lazy import HttpClient
from incident_fsm.notify.channels.base import Channel, Delivery, DeliveryStatus, Outgoing
from incident_fsm.notify.channels.log import LogChannel
from incident_fsm.notify.channels.pam_inprocess import (
    ConnectionManager,
    InProcessPamChannel,
    load_manager,
)
from incident_fsm.notify.channels.pam_relay import RelayPamChannel
from incident_fsm.notify.channels.webhook import WebhookChannel
from incident_fsm.settings import ChannelsSettings

if TYPE_CHECKING:
    from incident_fsm.notify.channels.pam import PamChannel

__all__ = [
    "Channel",
    "ConnectionManager",
    "Delivery",
    "DeliveryStatus",
    "InProcessPamChannel",
    "LogChannel",
    "Outgoing",
    "PamChannel",
    "RelayPamChannel",
    "WebhookChannel",
    "channels_from_settings",
]


def __getattr__(name: str) -> Any:
    # `PamChannel` stays importable from here without loading websockets for everyone.
    if name == "PamChannel":
        from incident_fsm.notify.channels.pam import PamChannel

        return PamChannel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def channels_from_settings(settings: ChannelsSettings, *, clock: Clock, http: HttpClient,
                           environ: Mapping[str, str] | None = None,
                           pam_manager: ConnectionManager | None = None) -> list[Channel]:
    """The log channel, plus the PAM channels and the webhook where configured.

    The in-process PAM channel uses `pam_manager`, else the manager its
    settings name (imported here, so a wrong path fails the start-up).
    """
    channels: list[Channel] = [LogChannel()]
    if settings.pam is not None:
        # Here, not above: the WebSocket library is loaded only where PAM's socket is used.
        from incident_fsm.notify.channels.pam import PamChannel

        channels.append(PamChannel(settings.pam, clock=clock, environ=environ))
    if settings.webhook is not None:
        channels.append(WebhookChannel(settings.webhook, client=http, clock=clock,
                                       environ=environ))
    inprocess = settings.pam_inprocess
    if inprocess is not None:
        manager = pam_manager
        if manager is None:
            if inprocess.manager is None:
                raise ConfigError("channels.pam_inprocess.manager",
                                  "is required unless the host passes pam_manager=")
            manager = load_manager(inprocess.manager)
        channels.append(InProcessPamChannel(inprocess, manager=manager, clock=clock))
    elif pam_manager is not None:
        raise ConfigError("channels.pam_inprocess",
                          "pam_manager was given but the channel is not configured: add "
                          "[channels.pam_inprocess] with the user_ids to notify")
    if settings.pam_relay is not None:
        channels.append(RelayPamChannel(settings.pam_relay, client=http, clock=clock,
                                        environ=environ))
    return channels
