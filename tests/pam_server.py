"""A real WebSocket server on loopback that behaves like PAM's notification socket (REFERENCE.md).

It sends the `connection` message, pings every `ping_interval` seconds and
closes (1001) a client that has not answered with a pong within
`pong_timeout`, checks the token, and records what clients send. Test knobs:
`mode = "refuse"` answers the handshake with HTTP 503, `mode = "auth"`
accepts and closes with 4001; `freeze()` stops reading the open connections
(frames pile up unread, pings go unanswered, like a peer that vanished) and
`kill_connections()` then resets them, losing what was not read. `stop()` /
`start()` take the port down and up again (connection refused in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FakePam:
    def __init__(self, *, token: str, user_id: str = "ops", port: int | None = None,
                 ping_interval: float = 0.2, pong_timeout: float = 0.5) -> None:
        self.token = token
        self.user_id = user_id
        self.port = port or free_port()
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.mode = "up"
        self.received: list[dict[str, Any]] = []
        self.connections = 0
        self.refused = 0
        self.pings = 0
        self.pongs = 0
        self.closed_for_no_pong = 0
        self.paths: list[str] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def system_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == "system_message"]

    async def start(self) -> FakePam:
        self._server = await serve(self._handle, "127.0.0.1", self.port,
                                   process_request=self._process_request, ping_interval=None)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakePam:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        self.paths.append(parts.path)
        token = parse_qs(parts.query).get("token")
        if (self.mode == "auth" or token != [self.token]
                or parts.path != f"/api/v1/pam/ws/{self.user_id}"):
            await ws.close(4001, "unauthorized")
            return
        await ws.send(json.dumps({"type": "connection", "status": "connected",
                                  "user_id": self.user_id}))
        pinger = asyncio.create_task(self._ping(ws))
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "pong":
                    self.pongs += 1
                else:
                    self.received.append(message)
        except ConnectionClosed:
            pass
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _ping(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.ping_interval)
                before = self.pongs
                self.pings += 1
                await ws.send(json.dumps({"type": "ping"}))
                await asyncio.sleep(self.pong_timeout)
                if self.pongs == before:
                    self.closed_for_no_pong += 1
                    await ws.close(1001, "no pong")
                    return
