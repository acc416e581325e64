"""The PAM channel over PAM's WebSocket: it reports honestly that the socket refuses notifications.

PAM's socket is a chat socket (REFERENCE.md, "Corrections"): its handler
knows `ping`, `pong`, `chat`, `context_update`, `init`, `auth`, `voice` and
`stt_capabilities`, answers every other type -- `system_message` included --
with `{"type": "error", "message": "Unknown message type: ..."}`, and relays
nothing a client sends to anyone. Against the reference server this channel
therefore delivers nothing: each notification is recorded failed with PAM's
own answer as the error, retried within the outbox's attempt bound, then
dead, and the channel's `delivery_rate` shows it. Notifications reach a PAM
user for certain only in-process, from inside the service (the embedded
mode); this channel is for a PAM that does take `frame_type` frames, and for
saying so loudly when it does not. It never sends `chat`, which would make
PAM's assistant answer.

Connection (`run`): `{url}/api/v1/pam/ws/{user_id}?token=<token>`, the token
read afresh at each connect from `token_file` (off the event loop) or else
the environment variable `token_env`, and never logged (logs and errors show
`token=***`; websockets' own debug log goes through a filter that redacts
it too). A reader answers both of the server's ping streams with `pong`.
After a close the channel reconnects with bounded exponential backoff
(`reconnect_initial` .. `reconnect_max`, jittered). Close 4001 after the
server had said "connected" means the token expired: the channel says so at
error level, waits a backoff, re-reads the token and connects again; a token
that is then refused again unchanged stops it, as do 4001 on a first
connect, 4003 (blocked) and HTTP 401/403 at the handshake. A stopped channel
says so once at error level and does not connect again until `reconfigure`
gives it different settings; notifications meanwhile stay queued.

Sending: one frame at a time (its shape, the batching and the rate budget
are in `pam_frames`), followed by an application `ping` (the probe) and a
WebSocket protocol ping. The server handles a socket's frames in order, so
its answer to the probe comes after its answer to the frame: an `error`
before the probe's `pong` is the frame's rejection, a `pong` first means
the server took the frame without complaint. A server that does not answer
the probe is judged by the protocol pong, which proves the frame was read,
plus `reply_window` seconds in which an error may still come; that is a
bounded wait, not proof. Every wait is bounded by `timeout`; no answer at
all is "no confirmation", a failure.

"Delivered" therefore means: the server read the frame and did not reject it.
PAM has no application-level acknowledgement, so this is the strongest
receipt the socket gives, and it says nothing about a human seeing it.
Guarantee: at least once -- a frame whose verdict was lost with the
connection is sent again with the same `dedupe_key` in its metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random as _random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from incident_fsm.backoff import Backoff
from incident_fsm.clock import Clock, sleep_or_wake
from incident_fsm.notify.channels.base import Delivery, Outgoing
from incident_fsm.notify.channels.pam_frames import FrameBudget, clip, frame, pack
from incident_fsm.settings import PamSettings

#: Close codes (REFERENCE.md): 4001 auth (an expired token once the socket had worked),
#: 4003 blocked (final).
CLOSE_AUTH: Final = 4001
CLOSE_BLOCKED: Final = 4003
#: How long `blocked_for` tells the dispatcher to wait while disconnected or failed;
#: `ready()` wakes it earlier on reconnect.
IDLE_HINT: Final = 30.0
#: PAM's error texts are shown this long at most.
MAX_ERROR: Final = 200

_TOKEN = re.compile(r"(token=)[^&\s'\"]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def redact(text: str) -> str:
    """`text` with every `token=` query value replaced by `***`."""
    return _TOKEN.sub(r"\1***", text)


class _RedactToken(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


# websockets logs the request line (with the token) at debug level: give it a
# logger of ours whose records are redacted before any handler sees them.
_WS_LOG = logging.getLogger("incident_fsm.notify.channels.pam.websocket")
_WS_LOG.addFilter(_RedactToken())

#: What the reader hands a waiting `send`: ("pong", "") or ("error", text).
_Reply = tuple[str, str]


def _read_token_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def _digest(token: str) -> bytes:
    # Only a digest is kept, to tell "refused again unchanged" from "a new token".
    return hashlib.sha256(token.encode()).digest()


class PamChannel:
    """PAM over its WebSocket. Start `run` in a task group; the dispatcher calls `send`."""

    name = "pam"

    def __init__(self, settings: PamSettings, *, clock: Clock,
                 environ: Mapping[str, str] | None = None,
                 random: Callable[[], float] = _random.random) -> None:
        self._settings = settings
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._random = random
        self._ws: ClientConnection | None = None
        self._replies: MemoryObjectReceiveStream[_Reply] | None = None
        self._replies_in: MemoryObjectSendStream[_Reply] | None = None
        self._waiting = False
        self._sending = anyio.Lock()
        self._failed: str | None = None
        self._changed: anyio.Event | None = None
        self._budget = FrameBudget(clock)
        self._ready: Callable[[], None] = lambda: None
        self._worked = False
        #: digest of the token last closed with 4001 after it had worked, while recovering
        self._expired: bytes | None = None
        self._state = "starting"
        #: consecutive connects that did not reach PAM's "connected" message
        self.failures = 0
        #: consecutive 4001 closes retried with a re-read token
        self.token_retries = 0
        #: notifications the server took / that were offered (since start)
        self.delivered = 0
        self.attempted = 0
        #: PAM's last error reply (its text), for operators
        self.last_error: str | None = None

    # --- state, for the dispatcher and operators ---------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def failed(self) -> str | None:
        """Why the channel stopped for good (until `reconfigure`), or None."""
        return self._failed

    @property
    def status(self) -> str:
        """One line for operators: connected, reconnecting, token expired, failed."""
        if self._failed is not None:
            return f"failed: {self._failed}"
        return self._state

    @property
    def delivery_rate(self) -> float | None:
        """Delivered / offered notifications since start; None before the first offer."""
        return None if self.attempted == 0 else self.delivered / self.attempted

    def url(self, *, token: str = "***") -> str:  # noqa: S107 - the mask shown instead of the token
        """The socket URL; with the default the token is redacted (for logs)."""
        base = self._settings.url.rstrip("/")
        user = quote(self._settings.user_id, safe="")
        query = "token=***" if token == "***" else urlencode({"token": token})  # noqa: S105
        return f"{base}/api/v1/pam/ws/{user}?{query}"

    def reconfigure(self, settings: PamSettings) -> None:
        """New settings: a failed channel tries again, a live one reconnects with them."""
        if settings == self._settings and self._failed is None:
            return
        self._settings = settings
        self._failed = None
        self._expired = None
        self.token_retries = 0
        if self._changed is not None:
            self._changed.set()

    def blocked_for(self) -> float:
        if self._failed is not None or self._ws is None:
            return IDLE_HINT
        return self._budget.wait(self._settings.messages_per_minute)

    # --- connection upkeep ---------------------------------------------------------

    async def run(self, ready: Callable[[], None]) -> None:
        self._ready = ready
        self._changed = anyio.Event()
        while True:
            if self._failed is not None:
                await self._changed.wait()
            if self._changed.is_set():
                self._changed = anyio.Event()  # consumed: the next change sets a fresh one
            error = await self._connect_once()
            if error is None:
                continue  # failed for good, retried, or settings changed: decided at the top
            self.failures += 1
            delay = self._backoff(self.failures)
            self._state = f"reconnecting: {error}"
            # The first failure is news; repeating it every few seconds is not.
            log = logger.warning if self.failures == 1 else logger.debug
            log("PAM {}: {}; notifications stay queued, reconnecting in {:.1f} s",
                self.url(), error, delay)
            await self._nap(delay)

    async def read_token(self) -> tuple[str | None, str | None]:
        """(token, None), or (None, why not) -- why is final only for a missing variable."""
        s = self._settings
        if s.token_file is None:
            token = self._environ.get(s.token_env)
            if not token:
                self._fail(f"the token variable {s.token_env} is not set")
            return token or None, None
        try:
            with anyio.fail_after(s.timeout):
                token = await anyio.to_thread.run_sync(_read_token_file, Path(s.token_file),
                                                       abandon_on_cancel=True)
        except (OSError, UnicodeDecodeError, TimeoutError) as exc:
            return None, f"cannot read the token file {s.token_file} ({type(exc).__name__})"
        if not token:
            return None, f"the token file {s.token_file} is empty"
        return token, None

    async def _connect_once(self) -> str | None:
        """One connection's life. Returns why it ended, or None if it is decided already."""
        token, problem = await self.read_token()
        if token is None:
            return problem
        digest = _digest(token)
        self._state = "connecting"
        try:
            ws = await connect(self.url(token=token), open_timeout=self._settings.timeout,
                               logger=_WS_LOG, close_timeout=self._settings.timeout)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                self._fail(f"PAM refused the token (HTTP {status})")
                return None
            return f"handshake refused (HTTP {status})"
        except (OSError, TimeoutError, WebSocketException) as exc:
            # Only the class name: messages of some of these carry the URL.
            return f"cannot connect ({type(exc).__name__})"
        del token
        settings = self._settings
        code = await self._serve(ws)
        if code == CLOSE_BLOCKED:
            self._fail(f"PAM closed the connection with code {code} (blocked)")
            return None
        if code == CLOSE_AUTH:
            return await self._auth_closed(digest)
        if settings != self._settings:
            return None  # reconfigured: connect again at once with the new settings
        return f"connection closed (code {code})"

    async def _auth_closed(self, digest: bytes) -> str | None:
        """Close 4001: an expired token is re-read and retried; one refused unchanged is final."""
        if digest == self._expired and not self._worked:
            self._fail("PAM refused the token again unchanged (code 4001); put a fresh token "
                       f"in {self._token_source()}")
            return None
        if not self._worked and self._expired is None:
            self._fail("PAM closed the connection with code 4001 (auth)")
            return None
        # It had worked (the token expired), or it is a new token after an expiry.
        self._expired = digest
        self.token_retries += 1
        delay = self._backoff(self.token_retries)
        self._state = "token expired: re-reading it and reconnecting"
        logger.error("PAM closed the connection with code 4001 ({}): the token has expired; "
                     "notifications stay queued, re-reading the token from {} and reconnecting "
                     "in {:.1f} s ({})", "after it had worked" if self._worked else "new token",
                     self._token_source(), delay, self.url())
        await self._nap(delay)
        return None

    def _token_source(self) -> str:
        s = self._settings
        return f"the token file {s.token_file}" if s.token_file else f"${s.token_env}"

    async def _serve(self, ws: ClientConnection) -> int | None:
        self._worked = False
        replies_in, replies = anyio.create_memory_object_stream[_Reply](16)
        self._replies_in, self._replies = replies_in, replies
        self._ws = ws
        changed = self._changed
        self._state = "connected"
        logger.info("PAM connected: {}", self.url())
        self._ready()
        try:
            async with anyio.create_task_group() as tg:
                if changed is not None:
                    tg.start_soon(self._close_on_change, ws, changed)
                await self._read(ws, replies_in)
                tg.cancel_scope.cancel()
        finally:
            self._ws = None
            self._state = "disconnected"
            replies_in.close()  # a waiting `send` sees the end of the stream
            replies.close()
            self._replies = self._replies_in = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await ws.close()
        return ws.close_code

    async def _read(self, ws: ClientConnection, replies: MemoryObjectSendStream[_Reply]) -> None:
        try:
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                if kind == "ping":  # both of PAM's ping streams
                    self._budget.count()
                    await ws.send(json.dumps({"type": "pong",
                                              "timestamp": self._clock.now().isoformat()}))
                elif kind == "connection" and message.get("status") == "connected":
                    self._worked = True
                    self.failures = 0
                    if self._expired is not None:
                        logger.info("PAM accepted the re-read token; notifications resume")
                    self._expired = None
                    self.token_retries = 0
                elif kind in ("pong", "error"):
                    text = _shown(message.get("message")) if kind == "error" else ""
                    if kind == "error" and not self._waiting:
                        logger.warning("PAM reported an error: {}", text)
                    if self._waiting:
                        # A full buffer means nobody is reading it: drop, do not block.
                        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                            replies.send_nowait((kind, text))
        except ConnectionClosed:
            pass

    async def _close_on_change(self, ws: ClientConnection, changed: anyio.Event) -> None:
        await changed.wait()
        await ws.close()

    def _fail(self, why: str) -> None:
        self._failed = why
        logger.error("PAM notifications stopped: {} ({}). They stay queued; fix the settings or "
                     "token and reconfigure the channel to resume.", why, self.url())

    def _backoff(self, attempt: int) -> float:
        # Built each time: `reconfigure` may have changed the numbers. The counters
        # stay ours, since the reader resets `failures` on PAM's "connected".
        s = self._settings
        return Backoff(s.reconnect_initial, cap=s.reconnect_max, jitter=True,
                       random=self._random).delay(attempt)

    async def _nap(self, seconds: float) -> None:
        """Wait through the clock, or until the settings change."""
        changed = self._changed
        if changed is None or changed.is_set():
            await self._clock.sleep(seconds)
        else:
            await sleep_or_wake(self._clock, seconds, changed)

    # --- sending -------------------------------------------------------------------

    async def send(self, batch: Sequence[Outgoing]) -> Sequence[Delivery]:
        if self._failed is not None:
            return [Delivery.unavailable(f"PAM channel failed: {self._failed}",
                                        retry_after=IDLE_HINT)]
        async with self._sending:
            ws, replies = self._ws, self._replies
            if ws is None or replies is None:
                return [Delivery.unavailable("PAM is not connected", retry_after=IDLE_HINT)]
            budget = self._budget.notifications_left(self._settings.messages_per_minute)
            if budget <= 0:
                return [Delivery.unavailable("PAM message rate limit reached",
                                            retry_after=self.blocked_for())]
            groups = pack(batch, budget=budget)
            outcomes: list[Delivery] = []
            for done, group in enumerate(groups):
                self.attempted += len(group)
                try:
                    rejection = await self._deliver(ws, replies, frame(
                        group, frame_type=self._settings.frame_type,
                        timestamp=self._clock.now().isoformat()))
                except (ConnectionClosed, TimeoutError, OSError, anyio.EndOfStream,
                        anyio.ClosedResourceError) as exc:
                    why = ("no confirmation" if isinstance(exc, TimeoutError)
                           else f"connection lost ({type(exc).__name__})")
                    error = f"PAM {why} after {done} of {len(groups)} message(s)"
                    logger.warning("{}; will retry", error)
                    return [*outcomes, *(Delivery.failed(error) for _ in group)]
                if rejection is not None:
                    self.last_error = rejection
                    error = f"PAM answered with an error: {rejection}"
                    logger.warning("PAM did not take {} notification(s) ({}): {}", len(group),
                                   ", ".join(i.dedupe_key for i in group), rejection)
                    return [*outcomes, *(Delivery.failed(error) for _ in group)]
                self.delivered += len(group)
                for item in group:
                    logger.bind(incident_id=item.incident_id, state=item.payload.get("state"),
                                target=item.payload.get("target")).info(
                        "📱 Sent notification to PAM: {}", item.text)
                outcomes.extend(Delivery.delivered() for _ in group)
            return outcomes

    async def _deliver(self, ws: ClientConnection, replies: MemoryObjectReceiveStream[_Reply],
                       message: dict[str, Any]) -> str | None:
        """Send one frame and wait for the verdict: None if taken, else PAM's error text."""
        while True:  # replies nobody waited for belong to no frame of ours
            try:
                replies.receive_nowait()
            except anyio.WouldBlock:
                break
        s = self._settings
        self._waiting = True
        try:
            with anyio.fail_after(s.timeout):
                await ws.send(json.dumps(message, ensure_ascii=False))
                self._budget.count()
                await ws.send(json.dumps({"type": "ping",
                                          "timestamp": self._clock.now().isoformat()}))
                self._budget.count()
                pong = await ws.ping()
                kind, text = "", ""
                with anyio.CancelScope() as window:
                    async with anyio.create_task_group() as tg:
                        async def after_pong() -> None:
                            # The protocol pong proves the frame was read: from then on an
                            # error may come only within `reply_window`.
                            with contextlib.suppress(ConnectionClosed):
                                await pong
                                window.deadline = anyio.current_time() + s.reply_window
                        tg.start_soon(after_pong)
                        # Exceptions stay out of the task group (it would wrap them).
                        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
                            kind, text = await replies.receive()
                        tg.cancel_scope.cancel()
                    if not kind:
                        raise anyio.EndOfStream  # the connection ended: no verdict
                    return text if kind == "error" else None
                return None  # read, and no error within the window
        finally:
            self._waiting = False


def _shown(value: object) -> str:
    """PAM's error text as we record it: one line, no token, at most `MAX_ERROR` characters."""
    return clip(_CONTROL.sub(" ", redact(str(value))).strip(), MAX_ERROR)
