"""The PAM relay: a small ASGI app the PAM service mounts so a standalone agent can reach its users.

PAM's socket relays nothing a client sends (REFERENCE.md, "Corrections"):
only the service's own connection manager reaches a user. A host that runs
the agent elsewhere mounts this app, e.g.
`app.mount("/incident-fsm/pam", pam_relay(manager))`, and the agent's
`pam_relay` channel POSTs each alert to it. No dependency beyond the
standard library and anyio: it is plain ASGI.

Request: `POST` with the headers `X-Incident-Fsm-Timestamp: <unix seconds>`
and `X-Incident-Fsm-Signature: sha256=<hex HMAC-SHA256 over "<timestamp>." +
body>`, and the JSON body `{"user_ids": [...], "message": {"type":
"proactive_alert", ...}}`. Refused, delivering nothing:

- 401: a missing or wrong signature (compared in constant time), a
  timestamp more than `replay_window` seconds (default 300) from now, or a
  request already accepted within the window (a replay);
- 413: a body over `max_body` bytes (default 64 KiB), found while reading
  (the declared length first), never after buffering it whole;
- 400: a body that is not such a document; 405: not a POST;
- 503: the secret variable is not set (the relay then accepts nothing).

A signed `{"user_ids": [...], "check": true}` (no message) is a preflight
(`incident-fsm check`): answered 200 `{"check": "ok", "connected": [...]}`,
delivering nothing.

Answer: 200 `{"delivered_to": [the users that had an open socket and were
sent the message]}`, possibly empty (nobody connected: the agent keeps the
notification queued and offers it again); 502 when every send raised.

The secret is read from the environment variable `secret_env` at each
request and appears in no log, error or answer. Replays are remembered per
process, at most `max_remembered` of them (beyond that the relay answers 429
until old ones expire); with several worker processes each has its own
memory and reaches only its own sockets.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final

import anyio
from loguru import logger

from incident_fsm.notify.channels.pam_inprocess import (
    MAX_TEXT,
    ConnectionManager,
    connected,
    deliver,
)
from incident_fsm.notify.channels.pam_relay import sign
from incident_fsm.reports.status_app import ASGIApp, Receive, Scope, Send

DEFAULT_SECRET_ENV: Final = "INCIDENT_FSM_PAM_RELAY_SECRET"  # noqa: S105 - a variable's name
TIMESTAMP_HEADER: Final = b"x-incident-fsm-timestamp"
SIGNATURE_HEADER: Final = b"x-incident-fsm-signature"
MAX_USERS: Final = 100


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Seen:
    """Signatures accepted within the replay window, bounded in number."""

    def __init__(self, *, window: float, limit: int) -> None:
        self._window = window
        self._limit = limit
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def add(self, signature: str, *, timestamp: float, now: float) -> None:
        """Remember `signature`, or refuse it as a replay (401) or for lack of room (429)."""
        self._forget(now)
        if signature in self._expiry:
            raise _Refused(401, "replayed request")
        if len(self._expiry) >= self._limit:
            raise _Refused(429, "too many recent requests to remember")
        self._expiry[signature] = timestamp + self._window

    def _forget(self, now: float) -> None:
        while self._expiry:
            oldest, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[oldest]
        if len(self._expiry) >= self._limit:  # insertion order is only nearly expiry order
            for signature in [s for s, e in self._expiry.items() if e <= now]:
                del self._expiry[signature]


def pam_relay(
    manager: ConnectionManager,
    *,
    secret_env: str = DEFAULT_SECRET_ENV,
    environ: Mapping[str, str] | None = None,
    max_body: int = 64 * 1024,
    replay_window: float = 300.0,
    max_remembered: int = 10_000,
    send_timeout: float = 10.0,
    read_timeout: float = 10.0,
    now: Callable[[], float] = time.time,
) -> ASGIApp:
    """The relay app for `manager` (see the module docstring); mount it in the host."""
    if max_body < 1 or replay_window <= 0 or max_remembered < 1:
        raise ValueError("max_body, replay_window and max_remembered must be positive")
    env = os.environ if environ is None else environ
    seen = _Seen(window=replay_window, limit=max_remembered)
    missing_logged = False

    async def accept(scope: Scope, receive: Receive) -> dict[str, Any]:
        nonlocal missing_logged
        if scope.get("method") != "POST":
            raise _Refused(405, "only POST")
        headers = _headers(scope)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_body:
            raise _Refused(413, f"body over {max_body} bytes")
        secret = env.get(secret_env)
        if not secret:
            if not missing_logged:
                logger.error("PAM relay: the secret variable {} is not set; refusing every "
                             "request until it is", secret_env)
                missing_logged = True
            raise _Refused(503, "relay not configured")
        missing_logged = False
        stamp = headers.get(TIMESTAMP_HEADER, b"").decode("latin-1")
        signature = headers.get(SIGNATURE_HEADER, b"").decode("latin-1").strip().lower()
        if not stamp or not signature:
            raise _Refused(401, "unsigned request")
        try:
            with anyio.fail_after(read_timeout):
                body = await _read_body(receive, max_body)
        except TimeoutError:
            raise _Refused(408, "body not received in time") from None
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise _Refused(401, "bad timestamp")
        timestamp = float(stamp)
        current = now()
        if abs(current - timestamp) > replay_window:
            raise _Refused(401, "timestamp outside the replay window")
        expected = sign(secret.encode(), stamp, body)  # the agent's channel signs the same way
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise _Refused(401, "bad signature")
        seen.add(signature, timestamp=timestamp, now=current)
        return _document(body)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own rather than mounted
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            document = await accept(scope, receive)
        except _Refused as refused:
            client = (scope.get("client") or ("?",))[0]
            logger.warning("PAM relay refused a request from {}: {} (HTTP {})", client,
                           refused.reason, refused.status)
            await _answer(send, refused.status, {"error": refused.reason})
            return
        except _Disconnected:
            return
        if document.get("check"):
            # A preflight: the signature was good; say who is connected, deliver nothing.
            await _answer(send, 200, {"check": "ok",
                                      "connected": connected(manager, document["user_ids"])})
            return
        message, user_ids = document["message"], document["user_ids"]
        reached, error = await deliver(manager, json.dumps(message, ensure_ascii=False),
                                       user_ids, send_timeout=send_timeout)
        if not reached and error is not None:
            logger.warning("PAM relay: alert {} reached nobody: {}", message.get("id"), error)
            await _answer(send, 502, {"delivered_to": [], "error": error})
            return
        logger.info("PAM relay: alert {} delivered to {} of {} user(s)", message.get("id"),
                    len(reached), len(user_ids))
        await _answer(send, 200, {"delivered_to": reached})

    return app


class _Disconnected(Exception):
    pass


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {bytes(k).lower(): bytes(v) for k, v in scope.get("headers", [])}


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _document(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise _Refused(400, "body is not JSON") from None
    if not isinstance(document, dict):
        raise _Refused(400, "body must be an object")
    users = document.get("user_ids")
    if (not isinstance(users, list) or not 0 < len(users) <= MAX_USERS
            or not all(isinstance(u, str) and 0 < len(u) <= 100 for u in users)):
        raise _Refused(400, f"user_ids must be a list of 1 to {MAX_USERS} user ids")
    if document.get("check") is True and "message" not in document:
        return {"user_ids": list(dict.fromkeys(users)), "check": True}
    message = document.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if (not isinstance(message, dict) or message.get("type") != "proactive_alert"
            or not isinstance(content, dict) or not isinstance(content.get("message"), str)
            or len(content["message"]) > MAX_TEXT):
        raise _Refused(400, "message must be a proactive_alert with a content.message of at "
                            f"most {MAX_TEXT} characters")
    return {"user_ids": list(dict.fromkeys(users)), "message": message}


async def _answer(send: Send, status: int, document: Mapping[str, Any]) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 405:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: MutableMapping[str, Any] = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
