"""Notification channels: how a notification reaches people (log, PAM, webhook).

Each channel implements the `Channel` protocol of `base`; the dispatcher
drives them. `channels_from_settings` builds the configured ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from ..clock import Clock
from ..settings import ChannelsSettings
from .base import Channel, Outcome, Outgoing, Status
from .log import LogChannel
from .pam import PamChannel
from .webhook import WebhookChannel

__all__ = [
    "Channel",
    "LogChannel",
    "Outcome",
    "Outgoing",
    "PamChannel",
    "Status",
    "WebhookChannel",
    "channels_from_settings",
]


def channels_from_settings(settings: ChannelsSettings, *, clock: Clock, http: httpx.AsyncClient,
                           environ: Mapping[str, str] | None = None) -> list[Channel]:
    """The log channel, plus PAM and the webhook where configured."""
    channels: list[Channel] = [LogChannel()]
    if settings.pam is not None:
        channels.append(PamChannel(settings.pam, clock=clock, environ=environ))
    if settings.webhook is not None:
        channels.append(WebhookChannel(settings.webhook, client=http, clock=clock,
                                       environ=environ))
    return channels
