"""PAM in-process: notifications pushed through the host's own connection manager (embedded mode).

PAM's WebSocket is a chat socket that relays nothing a client sends
(REFERENCE.md, "Corrections"); the service itself reaches a user by calling
its connection manager, `await manager.send_message_to_user(json.dumps(msg),
user_id)`, where `manager.user_connections[user_id]` holds the user's open
sockets. When the agent runs inside the service (`lifespan(...,
pam_manager=manager)`, or `[channels.pam_inprocess] manager =
"app.core.websocket_manager:manager"`), this channel does exactly that, with
the message the service's own frontend renders:

    {"type": "proactive_alert", "timestamp": ISO, "id": <dedupe key>,
     "content": {"type": "proactive_suggestion", "category": "system_health",
                 "message": TEXT (at most 2,000 characters), "priority":
                 "low|normal|high|urgent", "actions": [], "alert_type": <kind>}}

"Delivered" means: at least one configured user had an open socket when the
message was sent, the send did not raise (within `timeout`), and the user
still had a socket afterwards (the reference manager drops a socket it
failed to write to without a word: that reached nobody). The manager's send
says nothing when nobody is connected, so the channel looks first: with no
configured user connected (before or after the send) it is *unavailable*,
the row stays pending without counting an attempt, and `run` watches
`user_connections` so the backlog goes out, oldest first, as soon as a user
connects. A send that raises or times out is a failed attempt (retried
after the dispatcher's backoff, up to its attempt bound). Guarantee: at
least once; the message `id` is the dedupe key, the same on every attempt.

`deliver` is the one delivery step, shared with the relay (`incident_fsm.notify.relay`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence, Sized
from typing import Any, Final, Protocol

import anyio
from loguru import logger

from incident_fsm.clock import Clock
from incident_fsm.config import ConfigError
from incident_fsm.notify.channels.base import Delivery, Outgoing
from incident_fsm.settings import PamInProcessSettings

#: PAM's limit on a message's text.
MAX_TEXT: Final = 2000
ELLIPSIS: Final = "…"
#: How long `blocked_for` tells the dispatcher to wait while nobody is connected;
#: `run` calls `ready()` earlier when someone connects.
IDLE_HINT: Final = 30.0
PRIORITIES: Final = ("low", "normal", "high", "urgent")
#: The configuration key that names the manager, for errors.
KEY: Final = "channels.pam_inprocess.manager"


class ConnectionManager(Protocol):
    """The host's WebSocket connection manager (the reference's `websocket_manager.manager`)."""

    @property
    def user_connections(self) -> Mapping[str, Sized]:
        """user id -> that user's open sockets (a list, set or dict of them)."""
        ...

    async def send_message_to_user(self, message: str, user_id: str) -> Any:
        """Write `message` to every open socket of `user_id`."""
        ...


def load_manager(path: str) -> ConnectionManager:
    """The object named by `package.module:attribute` (imported once, at start-up)."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(KEY, f"cannot import {path!r} ({type(exc).__name__})") from None
    if not (hasattr(target, "user_connections")
            and callable(getattr(target, "send_message_to_user", None))):
        raise ConfigError(KEY, f"{path!r} has no user_connections and send_message_to_user")
    manager: ConnectionManager = target
    return manager


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[:limit - len(ELLIPSIS)] + ELLIPSIS


def priority_of(payload: Mapping[str, Any]) -> str:
    """`urgent` for escalations, else from the notice's level (critical/warning/info)."""
    if payload.get("event") == "escalated" or payload.get("state") == "escalated":
        return "urgent"
    level = payload.get("level") or payload.get("severity")
    return {"critical": "high", "warning": "normal", "info": "low"}.get(str(level), "normal")


def proactive_alert(item: Outgoing, *, category: str, timestamp: str) -> dict[str, Any]:
    """The message PAM's frontend renders as an alert, for one notification."""
    payload = item.payload
    alert_type = payload.get("kind") or payload.get("event") or "notification"
    return {
        "type": "proactive_alert",
        "timestamp": timestamp,
        "id": item.dedupe_key,
        "content": {
            "type": "proactive_suggestion",
            "category": category,
            "message": clip(item.text),
            "priority": priority_of(payload),
            "actions": [],
            "alert_type": str(alert_type),
        },
    }


def connected(manager: ConnectionManager, user_ids: Collection[str]) -> list[str]:
    """The users of `user_ids` with at least one open socket right now."""
    connections = manager.user_connections
    return [user for user in user_ids if len(connections.get(user, ())) > 0]


async def deliver(manager: ConnectionManager, message: str, user_ids: Sequence[str], *,
                  send_timeout: float) -> tuple[list[str], str | None]:
    """Send `message` to each connected user of `user_ids`.

    Returns the users it reached (connected before, the send did not raise,
    still connected after) and the last send error (an exception class name),
    if any.
    """
    reached: list[str] = []
    error: str | None = None
    for user in connected(manager, user_ids):
        try:
            with anyio.fail_after(send_timeout):
                await manager.send_message_to_user(message, user)
        except TimeoutError:
            error = f"send timed out after {send_timeout:g} s"
            continue
        except Exception as exc:  # the host's code: any failure is "not reached"
            error = f"send failed ({type(exc).__name__})"
            continue
        if len(manager.user_connections.get(user, ())) > 0:
            reached.append(user)
    return reached, error


class InProcessPamChannel:
    """PAM through the host's connection manager. The dispatcher calls `send`."""

    name = "pam_inprocess"

    def __init__(self, settings: PamInProcessSettings, *, manager: ConnectionManager,
                 clock: Clock) -> None:
        self._settings = settings
        self._manager = manager
        self._clock = clock
        #: notifications that reached someone / that were offered to an open socket
        self.delivered = 0
        self.attempted = 0

    @property
    def delivery_rate(self) -> float | None:
        return None if self.attempted == 0 else self.delivered / self.attempted

    def connected_users(self) -> list[str]:
        return connected(self._manager, self._settings.user_ids)

    async def run(self, ready: Callable[[], None]) -> None:
        # The manager offers no connect hook: look for a user who has just connected,
        # so queued rows go out then rather than at the next idle wake-up.
        was_connected = bool(self.connected_users())
        while True:
            await self._clock.sleep(self._settings.watch_interval)
            now_connected = bool(self.connected_users())
            if now_connected and not was_connected:
                ready()
            was_connected = now_connected

    def blocked_for(self) -> float:
        return 0.0 if self.connected_users() else IDLE_HINT

    async def send(self, batch: Sequence[Outgoing]) -> Sequence[Delivery]:
        s = self._settings
        outcomes: list[Delivery] = []
        for item in batch:
            if not self.connected_users():
                outcomes.append(Delivery.unavailable(
                    "no configured PAM user has an open socket", retry_after=IDLE_HINT))
                break
            message = proactive_alert(item, category=s.category,
                                      timestamp=self._clock.now().isoformat())
            self.attempted += 1
            reached, error = await deliver(
                self._manager, json.dumps(message, ensure_ascii=False), s.user_ids,
                send_timeout=s.timeout)
            if not reached and error is None:
                # Every socket went away during the send: nobody to tell, nothing counted.
                outcomes.append(Delivery.unavailable(
                    "the PAM user's socket closed during the send", retry_after=IDLE_HINT))
                break
            if not reached:
                why = f"PAM in-process: {error}"
                logger.warning("{} for {}; will retry", why, item.dedupe_key)
                outcomes.append(Delivery.failed(why))
                break  # later rows wait: order per incident
            self.delivered += 1
            logger.bind(incident_id=item.incident_id, state=item.payload.get("state"),
                        target=item.payload.get("target")).info(
                "📱 Sent notification to PAM ({} user(s)): {}", len(reached), item.text)
            outcomes.append(Delivery.delivered())
        return outcomes
