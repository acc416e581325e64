"""The PAM channel: notifications as `system_message`s over PAM's WebSocket.

Connection (`run`): `{url}/api/v1/pam/ws/{user_id}?token=<token>`, the token
read from the environment variable `token_env` at each connect and never
logged (logs and errors show `token=***`; websockets' own debug log goes
through a filter that redacts it too). While connected a reader answers the
server's `{"type": "ping"}` with `{"type": "pong"}`. After a close the
channel reconnects with bounded exponential backoff (`reconnect_initial` ..
`reconnect_max`, jittered), at most `connects_per_minute` connects a minute.
Close code 4001 (auth) or 4003 (blocked), or an HTTP 401/403 at the
handshake, marks the channel failed: it says so once at error level and
does not connect again until `reconfigure` gives it different settings.
Notifications meanwhile stay queued.

Sending: each notification is one `{"type": "system_message", "message":
text, "metadata": {incident_id, state, target, kind, action, outcome,
dedupe_key, ...}, "timestamp": ...}` -- never `chat`, which would make PAM's
assistant answer. At most `messages_per_minute` messages go out a minute;
when a batch is larger than what is left of that budget, several
notifications share one `system_message` (texts one per line, metadata
`{"batched": n, "notifications": [...]}`).

"Delivered" means: written to an open socket and confirmed by a WebSocket
protocol ping sent after it, whose pong proves the server's end read every
frame before it. PAM has no application-level acknowledgement, so this is
the strongest receipt available. Guarantee: at least once. If the
connection drops after the frames left but before the pong (or the process
dies before the delivery is committed), the rows are sent again with the
same `dedupe_key` in their metadata, and a receiver can drop the repeat.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random as _random
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

import anyio
from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ..clock import Clock, sleep_or_wake
from ..settings import PamSettings
from .base import Outcome, Outgoing

#: Close codes after which the token will not work again (REFERENCE.md).
FINAL_CLOSE_CODES: Final = frozenset({4001, 4003})
#: At most this many notifications share one batched message.
MAX_PER_MESSAGE: Final = 25
#: How long `blocked_for` tells the dispatcher to wait while disconnected or failed;
#: `ready()` wakes it earlier on reconnect.
IDLE_HINT: Final = 30.0
WINDOW: Final = timedelta(seconds=60)

_TOKEN = re.compile(r"(token=)[^&\s'\"]*")


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
_WS_LOG = logging.getLogger("incident_fsm.channels.pam.websocket")
_WS_LOG.addFilter(_RedactToken())


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
        self._failed: str | None = None
        self._changed: anyio.Event | None = None
        self._connects: deque[datetime] = deque()
        self._sent: deque[datetime] = deque()
        self._ready: Callable[[], None] = lambda: None
        #: consecutive connects that did not reach PAM's "connected" message
        self.failures = 0

    # --- state, for the dispatcher and operators ---------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def failed(self) -> str | None:
        """Why the channel stopped for good (until `reconfigure`), or None."""
        return self._failed

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
        if self._changed is not None:
            self._changed.set()

    def blocked_for(self) -> float:
        if self._failed is not None or self._ws is None:
            return IDLE_HINT
        self._forget_old(self._sent)
        if len(self._sent) >= self._settings.messages_per_minute:
            return max(0.1, (self._sent[0] + WINDOW - self._clock.now()).total_seconds())
        return 0.0

    # --- connection upkeep ---------------------------------------------------------

    async def run(self, ready: Callable[[], None]) -> None:
        self._ready = ready
        self._changed = anyio.Event()
        while True:
            if self._failed is not None:
                await self._changed.wait()
            if self._changed.is_set():
                self._changed = anyio.Event()  # consumed: the next change sets a fresh one
            await self._connect_slot()
            error = await self._connect_once()
            if error is None:
                continue  # failed for good, or settings changed: decided at the top
            self.failures += 1
            delay = self._backoff()
            # The first failure is news; repeating it every few seconds is not.
            log = logger.warning if self.failures == 1 else logger.debug
            log("PAM {}: {}; notifications stay queued, reconnecting in {:.1f} s",
                self.url(), error, delay)
            await self._nap(delay)

    async def _connect_once(self) -> str | None:
        """One connection's life. Returns why it ended, or None if nothing is left to retry."""
        token = self._environ.get(self._settings.token_env)
        if not token:
            self._fail(f"the token variable {self._settings.token_env} is not set")
            return None
        self._connects.append(self._clock.now())
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
        if code in FINAL_CLOSE_CODES:
            self._fail(f"PAM closed the connection with code {code} "
                       f"({'auth' if code == 4001 else 'blocked'})")
            return None
        if settings != self._settings:
            return None  # reconfigured: connect again at once with the new settings
        return f"connection closed (code {code})"

    async def _serve(self, ws: ClientConnection) -> int | None:
        self._ws = ws
        changed = self._changed
        logger.info("PAM connected: {}", self.url())
        self._ready()
        try:
            async with anyio.create_task_group() as tg:
                if changed is not None:
                    tg.start_soon(self._close_on_change, ws, changed)
                await self._read(ws)
                tg.cancel_scope.cancel()
        finally:
            self._ws = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await ws.close()
        return ws.close_code

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong",
                                              "timestamp": self._clock.now().isoformat()}))
                elif kind == "connection":
                    self.failures = 0
                elif kind == "error":
                    logger.warning("PAM reported an error: {}", str(message.get("message"))[:200])
        except ConnectionClosed:
            pass

    async def _close_on_change(self, ws: ClientConnection, changed: anyio.Event) -> None:
        await changed.wait()
        await ws.close()

    def _fail(self, why: str) -> None:
        self._failed = why
        logger.error("PAM notifications stopped: {} ({}). They stay queued; fix the settings or "
                     "token and reconfigure the channel to resume.", why, self.url())

    async def _connect_slot(self) -> None:
        self._forget_old(self._connects)
        if len(self._connects) >= self._settings.connects_per_minute:
            wait = (self._connects[0] + WINDOW - self._clock.now()).total_seconds()
            await self._nap(max(wait, 0.0))

    def _backoff(self) -> float:
        s = self._settings
        delay = min(s.reconnect_max, s.reconnect_initial * 2.0 ** min(self.failures - 1, 30))
        return delay / 2 + delay / 2 * self._random()

    async def _nap(self, seconds: float) -> None:
        """Wait through the clock, or until the settings change."""
        changed = self._changed
        if changed is None or changed.is_set():
            await self._clock.sleep(seconds)
        else:
            await sleep_or_wake(self._clock, seconds, changed)

    def _forget_old(self, times: deque[datetime]) -> None:
        cutoff = self._clock.now() - WINDOW
        while times and times[0] <= cutoff:
            times.popleft()

    # --- sending -------------------------------------------------------------------

    async def send(self, batch: Sequence[Outgoing]) -> Sequence[Outcome]:
        ws = self._ws
        if self._failed is not None:
            return [Outcome.unavailable(f"PAM channel failed: {self._failed}",
                                        retry_after=IDLE_HINT)]
        if ws is None:
            return [Outcome.unavailable("PAM is not connected", retry_after=IDLE_HINT)]
        self._forget_old(self._sent)
        budget = self._settings.messages_per_minute - len(self._sent)
        if budget <= 0:
            return [Outcome.unavailable("PAM message rate limit reached",
                                        retry_after=self.blocked_for())]
        groups = pack(batch, budget=budget)
        written: list[Sequence[Outgoing]] = []
        try:
            with anyio.fail_after(self._settings.timeout):
                for group in groups:
                    await ws.send(json.dumps(self._message(group), ensure_ascii=False))
                    self._sent.append(self._clock.now())
                    written.append(group)
                # The pong to a ping sent after our frames proves the server read them.
                pong = await ws.ping()
                await pong
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            lost = written if len(written) == len(groups) else [*written, groups[len(written)]]
            why = ("no confirmation" if isinstance(exc, TimeoutError)
                   else f"connection lost ({type(exc).__name__})")
            error = f"PAM {why} after {len(written)} of {len(groups)} message(s)"
            logger.warning("{}; will retry", error)
            return [Outcome.failed(error) for group in lost for _ in group]
        for group in groups:
            for item in group:
                logger.bind(incident_id=item.incident_id, state=item.payload.get("state"),
                            target=item.payload.get("target")).info(
                    "📱 Sent notification to PAM: {}", item.text)
        return [Outcome.delivered() for group in groups for _ in group]

    def _message(self, group: Sequence[Outgoing]) -> dict[str, Any]:
        if len(group) == 1:
            text, metadata = group[0].text, group[0].metadata()
        else:
            text = "\n".join(item.text for item in group)
            metadata = {"batched": len(group), "notifications": [i.metadata() for i in group]}
        return {"type": "system_message", "message": text, "metadata": metadata,
                "timestamp": self._clock.now().isoformat()}


def pack(batch: Sequence[Outgoing], *, budget: int,
         per_message: int = MAX_PER_MESSAGE) -> list[Sequence[Outgoing]]:
    """Split `batch` into at most `budget` messages, in order; one each while the budget allows.

    Rows that do not fit (more than `budget * per_message`) are left out: they
    were not attempted and go out with the next batch.
    """
    if budget < 1 or not batch:
        return []
    size = min(per_message, max(1, math.ceil(len(batch) / budget)))
    groups = [batch[i:i + size] for i in range(0, len(batch), size)]
    return groups[:budget]
