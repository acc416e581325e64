"""A simulated service on loopback, for the demo, end-to-end tests and benchmarks.

It speaks the reference deployment's HTTP surface (REFERENCE.md) from a
state the caller controls:

- `GET /health/resources` and `GET /health/system` (current or older schema),
  `/health`, `/health/ready`, and `/health/workers` (a dependency check of
  kind `http`: 503 while the Celery worker is dead);
- a Render-like API under `/v1`: `POST /services/{id}/restart`,
  `POST /services/{id}/scale` (`numInstances`), `GET /services/{id}`, with a
  Bearer key, whose calls change the state the way the real ones would
  (restarting the web service frees leaked memory, restarting the worker
  service revives the worker, scaling spreads the load);
- disk usage computed from the bytes really present in a directory, so a
  real cleanup really lowers it.

Every request is counted per route, so tests can count what the agent
actually did at the service rather than trusting our own tables. Faults
can be switched on per endpoint: `error` (200 with `"status": "ERROR"`),
`500`, `garbage` (not JSON), `hang` (never answers), `close` (drops the
connection), `429` (rate limited, `Retry-After: 1`), `huge` (a 50 MB body),
`trickle` (a valid body sent one byte per second); and `bodies` serves a
route's raw body of the caller's choosing with status 200 (hostile payloads).
It is a minimal HTTP/1.1 server on asyncio streams: loopback only, one
request per connection.

`PamSimulator` is the PAM side: a WebSocket endpoint that behaves like the
assistant's notification socket, for the demo and for delivery tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

MAX_REQUEST = 64 * 1024
_HUGE_BODY = b'{"pad": "' + b"x" * (50 * 1024**2) + b'"}'  # the `huge` fault: 50 MB of JSON


@dataclass
class ServiceState:
    """What the simulated service looks like right now. Mutate it freely."""

    #: memory pressure that a restart of the web service clears
    leaked_memory_pct: float = 0.0
    #: memory pressure that no restart clears (spread across instances when scaled)
    load_memory_pct: float = 40.0
    #: cpu load; spread across instances when scaled
    cpu_load_pct: float = 12.5
    #: bytes counted as used on the disk besides the directory's content
    disk_base_bytes: int = 0
    disk_capacity_bytes: int = 10 * 1024**3
    disk_dir: Path | None = None
    worker_alive: bool = True
    instances: int = 1
    #: restarting the web service clears the leak only if this is True
    restart_fixes_leak: bool = True
    system_schema: str = "current"  # or "legacy"
    #: endpoint path -> fault name (error, 500, garbage, hang, close, 429, huge, trickle)
    faults: dict[str, str] = field(default_factory=dict)
    #: endpoint path -> raw body served with 200 instead of the real one (faults win)
    bodies: dict[str, bytes] = field(default_factory=dict)
    web_service_id: str = "srv-web"
    worker_service_id: str = "srv-worker"
    render_api_key: str = "rnd_simulated"
    requests: Counter[str] = field(default_factory=Counter)

    def memory_pct(self) -> float:
        return min(100.0, self.leaked_memory_pct + self.load_memory_pct / max(1, self.instances))

    def cpu_pct(self) -> float:
        return min(100.0, self.cpu_load_pct / max(1, self.instances))

    def disk_pct(self) -> float:
        used = self.disk_base_bytes + (_tree_bytes(self.disk_dir) if self.disk_dir else 0)
        return min(100.0, 100.0 * used / self.disk_capacity_bytes)


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _level(value: float, warning: float, critical: float) -> str | None:
    if value >= critical:
        return "CRITICAL"
    return "WARNING" if value >= warning else None


def resources_payload(state: ServiceState) -> dict[str, Any]:
    """`/health/resources` as the reference service builds it, quirks included."""
    stats = {"memory_pct": round(state.memory_pct(), 1), "disk_pct": round(state.disk_pct(), 1),
             "cpu_pct": round(state.cpu_pct(), 1)}
    limits = {"memory": (65.0, 80.0), "disk": (75.0, 85.0), "cpu": (85.0, 95.0)}
    alerts = []
    for component, (warning, critical) in limits.items():
        value = stats[f"{component}_pct"]
        level = _level(value, warning, critical)
        if level:
            threshold = critical if level == "CRITICAL" else warning
            alerts.append({"component": component, "level": level,
                           "message": f"{level.title()} {component} usage: {value}%",
                           "value": value, "threshold": threshold})
    criticals = sum(a["level"] == "CRITICAL" for a in alerts)
    # The quirk: one critical component only makes the service say WARNING.
    status = "CRITICAL" if criticals >= 2 else ("WARNING" if alerts else "HEALTHY")
    return {"status": status, "health_score": round(100 - 100 * len(alerts) / 3, 2),
            "alerts": len(alerts), "alert_details": alerts, "stats": stats,
            "timestamp": datetime.now().isoformat()}  # naive local time, as the service does


def system_payload(state: ServiceState) -> dict[str, Any]:
    """`/health/system`, in the current schema or the older `SUCCESS`/`data` one."""
    memory, disk, cpu = state.memory_pct(), state.disk_pct(), state.cpu_pct()
    if state.system_schema == "legacy":
        return {"status": "SUCCESS", "data": {"memory_percent": memory, "disk_percent": disk,
                                              "cpu_percent": cpu},
                "timestamp": datetime.now(UTC).timestamp()}

    def status(value: float, degraded: float, unhealthy: float) -> str:
        return "unhealthy" if value > unhealthy else ("degraded" if value > degraded else "healthy")

    checks = {
        "cpu": {"status": status(cpu, 75, 90), "usage_percent": cpu, "cores": 2},
        "memory": {"status": status(memory, 80, 90), "usage_percent": memory,
                   "available_gb": round(2.0 * (1 - memory / 100), 2), "total_gb": 2.0},
        "disk": {"status": status(disk, 85, 95), "usage_percent": disk,
                 "free_gb": round(10.0 * (1 - disk / 100), 2), "total_gb": 10.0},
        "process": {"status": "healthy", "memory_mb": 310.2, "threads": 17,
                    "uptime_seconds": 86400},
    }
    order = ["healthy", "degraded", "unhealthy"]
    worst = max((str(c["status"]) for c in checks.values()), key=order.index)
    issues = [f"High {name} usage: {c['usage_percent']}%" for name, c in checks.items()
              if c["status"] != "healthy"]
    return {"status": worst, "checks": checks, "issues": issues,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


class Simulator:
    """Serves a `ServiceState` on 127.0.0.1. Use `async with Simulator(state) as sim:`."""

    def __init__(self, state: ServiceState | None = None) -> None:
        self.state = state or ServiceState()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def render_api_url(self) -> str:
        return f"{self.base_url}/v1"

    async def __aenter__(self) -> Simulator:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), 10)
            if request is None:
                return
            method, path, headers, body = request
            route = path.split("?", 1)[0]
            self.state.requests[f"{method} {route}"] += 1
            fault = self.state.faults.get(route)
            if fault == "hang":
                await asyncio.sleep(3600)
                return
            if fault == "close":
                return
            if fault is None and route in self.state.bodies:
                status, payload = 200, self.state.bodies[route]
            else:
                status, payload = self._respond(method, route, headers, body, fault)
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            if fault == "huge":
                raw = _HUGE_BODY
            extra = "Retry-After: 1\r\n" if status == 429 else ""
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
                    f"{extra}Connection: close\r\n\r\n").encode()
            if fault == "trickle":
                writer.write(head)
                for byte in raw:  # bounded by the client hanging up (a reset ends it)
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
            else:
                writer.write(head + raw)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(self, method: str, route: str, headers: dict[str, str], body: bytes,
                 fault: str | None) -> tuple[int, Any]:
        s = self.state
        if fault == "500":
            return 500, {"detail": "internal error"}
        if fault == "429":
            return 429, {"message": "rate limit exceeded"}
        if fault == "garbage":
            return 200, b"<html>502 Bad Gateway</html>"
        if fault == "error":
            return 200, {"status": "ERROR", "message": "psutil failed",
                         "timestamp": datetime.now().isoformat()}
        if method == "GET" and route == "/health/resources":
            return 200, resources_payload(s)
        if method == "GET" and route == "/health/system":
            return 200, system_payload(s)
        if method == "GET" and route == "/health":
            return 200, {"status": "healthy", "timestamp": datetime.now(UTC).isoformat()}
        if method == "GET" and route == "/health/ready":
            return (200, {"status": "ready"}) if s.worker_alive else (
                503, {"status": "not ready", "services": {"celery": "down"}})
        if method == "GET" and route == "/health/workers":
            return (200, {"workers": s.instances}) if s.worker_alive else (
                503, {"workers": 0, "error": "no Celery worker answered ping"})
        if route.startswith("/v1/services/"):
            return self._render(method, route, headers, body)
        return 404, {"detail": "not found"}

    def _render(self, method: str, route: str, headers: dict[str, str],
                body: bytes) -> tuple[int, Any]:
        s = self.state
        if headers.get("authorization") != f"Bearer {s.render_api_key}":
            return 401, {"message": "unauthorized"}
        parts = route.split("/")  # ['', 'v1', 'services', id, action?]
        service = parts[3] if len(parts) > 3 else ""
        action = parts[4] if len(parts) > 4 else ""
        if service not in (s.web_service_id, s.worker_service_id):
            return 404, {"message": "service not found"}
        if method == "GET" and not action:
            return 200, {"id": service, "serviceDetails": {"numInstances": s.instances}}
        if method == "POST" and action == "restart":
            if service == s.worker_service_id:
                s.worker_alive = True
            elif s.restart_fixes_leak:
                s.leaked_memory_pct = 0.0
            return 202, {}
        if method == "POST" and action == "scale" and service == s.web_service_id:
            try:
                count = int(json.loads(body or b"{}")["numInstances"])
            except (ValueError, KeyError, TypeError):
                return 400, {"message": "numInstances required"}
            if not 1 <= count <= 100:
                return 400, {"message": "numInstances out of range"}
            s.instances = count
            return 202, {}
        return 404, {"message": "not found"}


_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_REQUEST:
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, _version = lines[0].split(" ", 2)
    except ValueError:
        return None
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length", "0") or 0), MAX_REQUEST)
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


# --- PAM ------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PamSimulator:
    """A loopback WebSocket server that behaves like PAM's notification socket (REFERENCE.md).

    It sends the `connection` message, pings every `ping_interval` seconds and
    closes (1001) a client that has not answered with a pong within
    `pong_timeout`, checks the token, and records what clients send. Knobs:
    `mode = "refuse"` answers the handshake with HTTP 503, `mode = "auth"`
    accepts and closes with 4001; `freeze()` stops reading the open connections
    (frames pile up unread, pings go unanswered) and `kill_connections()` then
    resets them; `stop()` / `start()` take the port down and up again.
    """

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
