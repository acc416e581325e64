"""The PAM side of the simulated world: its chat WebSocket, and a host's connection manager.

`PamSimulator` is a loopback WebSocket endpoint that behaves like the
assistant's chat socket (REFERENCE.md, Corrections), which answers
notification frames with an error; `ConnectionManager` stands in for the
host application's own manager of connected users (the in-process
channel's peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PamSimulator:
    """A loopback WebSocket server that behaves like PAM's chat socket (REFERENCE.md, Corrections).

    Like the real one it sends the `connection` message, then two ping
    streams (`{"type": "ping", "timestamp": ISO, "ping_number": n}` every
    `ping_interval`, `{"type": "ping", "timestamp": float, "connection_id":
    ...}` every `heartbeat_interval`) and closes (1001) a client that has sent
    no pong for more than `pong_timeout`. It knows the frame types `ping`
    (answered with `pong`), `pong`, `chat`, `context_update`, `init`, `auth`,
    `voice` and `stt_capabilities`; every other type, `system_message`
    included, is answered with `{"type": "error", "message": "Unknown message
    type: ..."}`. Nothing a client sends is relayed to anyone. It allows
    `rate_limit` frames per `rate_window` seconds per user (every frame a
    client sends counts, pongs too: the stricter reading); each excess frame
    is answered with an error and the fifth closes the socket with 4008.

    Tokens: `tokens` is the set of valid ones (the constructor's `token` to
    begin with); `await expire(token)` makes one invalid and closes its open
    sockets with 4001, as the real server does when a token's `exp` passes.

    Knobs: `accepts` lists frame types to take as notifications (no error, at
    most 2,000 characters of `message`) -- the real server takes none; tests
    of the outbox's own mechanics use it to have a transport that works.
    `mode = "refuse"` answers the handshake with HTTP 503, `mode = "auth"`
    accepts and closes with 4001 at once; `freeze()` stops reading the open
    connections (frames pile up unread, pongs go unseen) and
    `kill_connections()` then resets them; `stop()` / `start()` take the port
    down and up again. Everything received is recorded for assertions.
    """

    KNOWN_TYPES = frozenset({"ping", "pong", "chat", "context_update", "init", "auth", "voice",
                             "stt_capabilities"})
    MAX_MESSAGE = 2000
    #: excess frames after which the socket is closed with 4008
    RATE_STRIKES = 5
    #: False: a client's `ping` is taken silently (a server that does not answer it)
    answers_ping = True

    def __init__(self, *, token: str, user_id: str = "ops", port: int | None = None,
                 ping_interval: float = 25.0, heartbeat_interval: float = 20.0,
                 pong_timeout: float = 70.0, rate_limit: int = 60, rate_window: float = 60.0,
                 accepts: Iterable[str] = ()) -> None:
        self.token = token
        self.tokens: set[str] = {token}
        self.user_id = user_id
        self.port = port or free_port()
        self.ping_interval = ping_interval
        self.heartbeat_interval = heartbeat_interval
        self.pong_timeout = pong_timeout
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.accepts = frozenset(accepts)
        self.mode = "up"
        #: every frame a client sent except pongs, in order
        self.received: list[dict[str, Any]] = []
        #: frames of an `accepts` type that were taken
        self.accepted: list[dict[str, Any]] = []
        #: frames answered with an error: (the frame, the error text)
        self.rejected: list[tuple[dict[str, Any], str]] = []
        self.connections = 0
        self.refused = 0
        self.pings = 0
        self.heartbeats = 0
        self.pongs = 0
        self.closed_for_no_pong = 0
        self.closed_for_rate = 0
        self.closed_for_expiry = 0
        self.paths: list[str] = []
        self._frames: list[float] = []
        self._open: dict[ServerConnection, str] = {}
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def system_messages(self) -> list[dict[str, Any]]:
        """The `system_message` frames clients sent (whatever became of them)."""
        return [m for m in self.received if m.get("type") == "system_message"]

    async def start(self) -> PamSimulator:
        self._server = await serve(self._handle, "127.0.0.1", self.port,
                                   process_request=self._process_request, ping_interval=None)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> PamSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def expire(self, token: str) -> None:
        """`token` is no longer valid; its open sockets are closed with 4001."""
        self.tokens.discard(token)
        for ws in [ws for ws, used in self._open.items() if used == token]:
            self.closed_for_expiry += 1
            await ws.close(4001, "token expired")

    def freeze(self) -> None:
        assert self._server is not None
        for connection in self._server.connections:
            connection.transport.pause_reading()

    def kill_connections(self) -> None:
        assert self._server is not None
        for connection in self._server.connections:
            connection.transport.abort()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.mode == "refuse":
            self.refused += 1
            return Response(503, "Service Unavailable", Headers(), b"down\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        self.paths.append(parts.path)
        token = (parse_qs(parts.query).get("token") or [""])[0]
        if (self.mode == "auth" or token not in self.tokens
                or parts.path != f"/api/v1/pam/ws/{self.user_id}"):
            await ws.close(4001, "unauthorized")
            return
        self._open[ws] = token
        await ws.send(json.dumps({"type": "connection", "status": "connected",
                                  "user_id": self.user_id}))
        loop = asyncio.get_running_loop()
        last_pong = [loop.time()]
        tasks = [asyncio.create_task(self._ping(ws)),
                 asyncio.create_task(self._heartbeat(ws, f"{self.user_id}-{number}")),
                 asyncio.create_task(self._watchdog(ws, last_pong))]
        strikes = 0
        try:
            async for raw in ws:
                now = loop.time()
                self._frames = [t for t in self._frames if t > now - self.rate_window]
                self._frames.append(now)
                if len(self._frames) > self.rate_limit:
                    strikes += 1
                    await self._error(ws, {}, "Rate limit exceeded")
                    if strikes >= self.RATE_STRIKES:
                        self.closed_for_rate += 1
                        await ws.close(4008, "rate limit exceeded")
                        return
                    continue
                try:
                    message = json.loads(raw)
                except ValueError:
                    message = None
                if not isinstance(message, dict):
                    await self._error(ws, {}, "Invalid message format")
                    continue
                kind = message.get("type")
                if kind == "pong":
                    self.pongs += 1
                    last_pong[0] = now
                    continue
                self.received.append(message)
                if kind == "ping" and self.answers_ping:
                    await ws.send(json.dumps({"type": "pong",
                                              "timestamp": datetime.now(UTC).isoformat()}))
                elif kind in self.accepts:
                    if len(str(message.get("message", ""))) > self.MAX_MESSAGE:
                        await self._error(ws, message, "Message too long")
                    else:
                        self.accepted.append(message)
                elif kind not in self.KNOWN_TYPES:
                    await self._error(ws, message, f"Unknown message type: {kind}")
        except ConnectionClosed:
            pass
        finally:
            self._open.pop(ws, None)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _error(self, ws: ServerConnection, message: dict[str, Any], text: str) -> None:
        self.rejected.append((message, text))
        await ws.send(json.dumps({"type": "error", "message": text}))

    async def _ping(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.ping_interval)
                self.pings += 1
                await ws.send(json.dumps({"type": "ping", "ping_number": self.pings,
                                          "timestamp": datetime.now(UTC).isoformat()}))

    async def _heartbeat(self, ws: ServerConnection, connection_id: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                self.heartbeats += 1
                await ws.send(json.dumps({"type": "ping", "connection_id": connection_id,
                                          "timestamp": datetime.now(UTC).timestamp()}))

    async def _watchdog(self, ws: ServerConnection, last_pong: list[float]) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(max(0.0, last_pong[0] + self.pong_timeout - loop.time())
                                    + 0.001)
                if loop.time() - last_pong[0] > self.pong_timeout:
                    self.closed_for_no_pong += 1
                    await ws.close(1001, "no pong")
                    return


class ConnectionManager:
    """The PAM service's in-process connection manager, in the reference's shape.

    `user_connections[user_id]` maps each of the user's connection ids to its
    open socket (a dict of dicts, as theirs); `connect` / `disconnect` are what
    the service's WebSocket route calls (theirs also take the connection id;
    here it is the socket's own). As theirs, `send_message_to_user` writes to
    every open socket of the user, drops a socket that is closed or cannot be
    written to, and says nothing when the user has none. A socket is anything
    with `async send_text(str)` (Starlette, FastAPI) or `async send(str)`
    (websockets). `sent` lists each (user id, message) written to at least
    one socket.
    """

    def __init__(self) -> None:
        self.user_connections: dict[str, dict[str, Any]] = {}
        self.sent: list[tuple[str, str]] = []

    def connect(self, websocket: Any, user_id: str) -> None:
        self.user_connections.setdefault(user_id, {})[str(id(websocket))] = websocket

    def disconnect(self, websocket: Any, user_id: str) -> None:
        sockets = self.user_connections.get(user_id, {})
        sockets.pop(str(id(websocket)), None)
        if not sockets:
            self.user_connections.pop(user_id, None)

    async def send_message_to_user(self, message: str, user_id: str) -> None:
        written = False
        for websocket in list(self.user_connections.get(user_id, {}).values()):
            write = getattr(websocket, "send_text", None) or websocket.send
            try:
                # Theirs skips a socket whose state says disconnected, then drops it.
                if getattr(getattr(websocket, "client_state", None), "name", "") == "DISCONNECTED":
                    raise ConnectionError("disconnected")
                await write(message)
            except Exception:  # a dead socket: theirs drops it without a word
                self.disconnect(websocket, user_id)
            else:
                written = True
        if written:
            self.sent.append((user_id, message))
