"""What every notification channel is: a `Channel` takes outbox rows and says what became of each.

The dispatcher hands a channel a batch of claimed rows (`Outgoing`, oldest
first) and gets back one `Delivery` per row it dealt with, in order. A channel
stops at its first failure and leaves the rest of the batch unreported:
those rows were not attempted and go back to the queue untouched, so a later
notification of an incident is never delivered before an earlier one.

Outcomes:
- `delivered`: the channel took the message (each channel's module says what
  that means exactly);
- `failed`: this attempt did not get through; it counts against the row's
  attempt bound and is retried after a backoff (or the server's Retry-After);
- `unavailable`: the channel cannot take anything now (not connected,
  rejected credentials, rate budget spent); the attempt does not count and
  the row waits for the channel to come back.

A channel sends `Outgoing.text`, the text `incident_fsm.notify.policy` wrote for
the row, and writes none of its own; it only frames it (a PAM frame, a
webhook body) and carries the structured fields next to it.

Errors in outcomes end up in the database and the logs: channels put status
codes and exception class names there, never URLs with tokens, secrets or
response bodies.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from incident_fsm.models import IncidentId
from incident_fsm.notify.policy import notification_text


@dataclass(frozen=True)
class Outgoing:
    """One claimed outbox row, as a channel sees it."""

    notification_id: int
    incident_id: IncidentId
    channel: str
    #: `incident-<id>-seq-<n>-<channel>`: the same on every attempt, so receivers can deduplicate
    dedupe_key: str
    #: 1 on the first attempt
    attempt: int
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The message text, written by `incident_fsm.notify.policy`, never here."""
        return notification_text(self.incident_id, self.payload)

    def metadata(self) -> dict[str, Any]:
        """The structured fields: the payload without its text, plus id and dedupe key."""
        meta = {k: v for k, v in self.payload.items() if k != "text"}
        meta["incident_id"] = self.incident_id
        meta["dedupe_key"] = self.dedupe_key
        return meta


class DeliveryStatus(enum.StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Delivery:
    status: DeliveryStatus
    error: str = ""
    #: seconds the channel asks us to wait (429 Retry-After, reconnect backoff)
    retry_after: float | None = None

    @classmethod
    def delivered(cls) -> Delivery:
        return cls(DeliveryStatus.DELIVERED)

    @classmethod
    def failed(cls, error: str, *, retry_after: float | None = None) -> Delivery:
        return cls(DeliveryStatus.FAILED, error, retry_after)

    @classmethod
    def unavailable(cls, error: str, *, retry_after: float | None = None) -> Delivery:
        return cls(DeliveryStatus.UNAVAILABLE, error, retry_after)


class Channel(Protocol):
    """A way to tell operators something. Implementations: log, webhook, pam, pam_inprocess,
    pam_relay."""

    @property
    def name(self) -> str:
        """The `channel` value of the outbox rows this channel delivers."""
        ...

    async def run(self, ready: Callable[[], None]) -> None:
        """Keep the channel up (connections, keepalive) until cancelled; may return at once.

        Call `ready()` whenever the channel can take messages again (e.g. after
        a reconnect), so queued rows go out without waiting for a poll.
        """
        ...

    def blocked_for(self) -> float:
        """Seconds until it is worth offering messages again; 0 when it can take them now."""
        ...

    async def send(self, batch: Sequence[Outgoing]) -> Sequence[Delivery]:
        """Deliver `batch` in order; one outcome per row dealt with, stopping at a failure."""
        ...
