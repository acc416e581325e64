"""A simulated service on loopback, for the demo, end-to-end tests and benchmarks.

It speaks the reference deployment's HTTP surface (REFERENCE.md) from a
state the caller controls:

- `GET /health/resources` and `GET /health/system` (current or older schema),
  optionally each holding the service's one event loop for `health_delay`
  seconds and limited per client IP (`health_rate_limit`, 429 with
  `Retry-After`), as theirs are; `/health`; `/health/ready`, which answers
  503 always, as theirs does today; and `/health/workers` (a dependency
  check of kind `http`: 503 while the Celery worker is dead);
- a Render-like API under `/v1`: `POST /services/{id}/restart` (200),
  `POST /services/{id}/scale` (`numInstances`), `GET /services/{id}` (with
  `serviceDetails.numInstances`, `.plan`, `.autoscaling.enabled`), with a
  Bearer key, whose calls change the state the way the real ones would
  (restarting the web service frees leaked memory, restarting the worker
  service revives the worker, scaling spreads the load -- not while
  autoscaling is on, and not above 1 on the free plan); each answer carries
  `Ratelimit-Limit`, `Ratelimit-Remaining` and `Ratelimit-Reset`, and a key
  over its quota (30 POSTs / 400 GETs a minute unless set lower) gets 429;
- disk usage computed from the bytes really present in a directory, so a
  real cleanup really lowers it; the directory is walked in a worker thread,
  so a big one never holds up the simulator's own event loop (and with it the
  agent under test, sharing that loop).

Every request is counted per route, so tests can count what the agent
actually did at the service rather than trusting our own tables. Faults
can be switched on per endpoint: `error` (200 with `"status": "ERROR"`),
`500`, `garbage` (not JSON), `hang` (never answers), `close` (drops the
connection), `429` (rate limited, `Retry-After: 1`), `empty_checks`
(`/health/system` with empty `checks` still saying "healthy", as when psutil
fails there), `huge` (a 50 MB body, written in 64 KiB pieces: never held
whole),
`trickle` (a valid body sent one byte per second); and `bodies` serves a
route's raw body of the caller's choosing with status 200 (hostile payloads).
It is a minimal HTTP/1.1 server on asyncio streams (`demo.wire`): loopback
only, keeping a connection open between requests for `keep_alive` seconds as
uvicorn does.

The PAM side is `demo.pam_simulator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from incident_fsm.demo.wire import REASONS, RenderQuota, huge_length, huge_pieces, read_request

#: The routes whose handlers block the service's loop for `health_delay`.
_SLOW_ROUTES = frozenset({"/health/resources", "/health/system"})


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
    #: seconds each `/health/resources` or `/health/system` request holds the service's
    #: one event loop (theirs call `psutil.cpu_percent(interval=1)`): other requests wait
    health_delay: float = 0.0
    #: requests per minute one client IP may make to `/health/*` before 429 with
    #: `Retry-After` (theirs: about 50, each request counted twice); None: no limit
    health_rate_limit: int | None = None
    #: seconds an idle keep-alive connection stays open (uvicorn's default is 5; 0 closes
    #: after every answer)
    keep_alive: float = 5.0
    #: endpoint path -> fault name (error, 500, garbage, hang, close, 429, huge, trickle)
    faults: dict[str, str] = field(default_factory=dict)
    #: endpoint path -> raw body served with 200 instead of the real one (faults win)
    bodies: dict[str, bytes] = field(default_factory=dict)
    web_service_id: str = "srv-web"
    worker_service_id: str = "srv-worker"
    render_api_key: str = "rnd_simulated"
    #: Render service id -> plan (`free` cannot scale above 1 instance); others: `standard`
    render_plans: dict[str, str] = field(default_factory=dict)
    #: Render service ids with autoscaling on (Render then ignores a manual scale)
    render_autoscaling: set[str] = field(default_factory=set)
    #: Render requests one key may make per `render_window` seconds before 429
    render_post_limit: int = 30
    render_get_limit: int = 400
    render_window: float = 60.0
    #: Render requests answered 429 by the Render limiter (not by a `429` fault)
    render_throttled: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    #: health requests answered 429 by the limiter (not by a `429` fault)
    throttled: int = 0

    def memory_pct(self) -> float:
        return min(100.0, self.leaked_memory_pct + self.load_memory_pct / max(1, self.instances))

    def cpu_pct(self) -> float:
        return min(100.0, self.cpu_load_pct / max(1, self.instances))

    def disk_pct(self) -> float:
        """Walks `disk_dir`: blocking, so the simulator calls it in a worker thread."""
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


def resources_payload(state: ServiceState, *, disk_pct: float | None = None) -> dict[str, Any]:
    """`/health/resources` as the reference service builds it, quirks included.

    `disk_pct`: the disk usage if already measured (else `state.disk_pct()`, a disk walk).
    """
    disk = state.disk_pct() if disk_pct is None else disk_pct
    stats = {"memory_pct": round(state.memory_pct(), 1), "disk_pct": round(disk, 1),
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


def system_payload(state: ServiceState, *, disk_pct: float | None = None) -> dict[str, Any]:
    """`/health/system`, in the current schema or the older `SUCCESS`/`data` one.

    `disk_pct`: the disk usage if already measured (else `state.disk_pct()`, a disk walk).
    """
    memory, cpu = state.memory_pct(), state.cpu_pct()
    disk = state.disk_pct() if disk_pct is None else disk_pct
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
            # utcnow() without a zone, as theirs does
            "timestamp": datetime.now(UTC).replace(tzinfo=None).isoformat()}


class Simulator:
    """Serves a `ServiceState` on 127.0.0.1. Use `async with Simulator(state) as sim:`."""

    def __init__(self, state: ServiceState | None = None) -> None:
        self.state = state or ServiceState()
        self._server: asyncio.Server | None = None
        self.port = 0
        # The service's single event loop: a slow health handler holds it.
        self._loop_busy = asyncio.Lock()
        #: client IP -> monotonic times of its recent /health/* requests
        self._health_hits: dict[str, deque[float]] = {}
        #: (Authorization header, GET or POST) -> [window start (monotonic), requests in it]
        self._render_windows: dict[tuple[str, str], list[float]] = {}

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
        # HTTP/1.1 keep-alive as uvicorn serves it: one connection answers request
        # after request until the client closes it, asks to, or leaves it idle
        # for `keep_alive` seconds.
        try:
            first = True
            while True:
                wait = 10.0 if first else self.state.keep_alive
                if wait <= 0:
                    return
                request = await asyncio.wait_for(read_request(reader), wait)
                first = False
                if request is None or not await self._answer(request, writer):
                    return
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, request: tuple[str, str, dict[str, str], bytes],
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True if the connection stays open for the next."""
        method, path, headers, body = request
        route = path.split("?", 1)[0]
        self.state.requests[f"{method} {route}"] += 1
        fault = self.state.faults.get(route)
        if fault == "hang":
            await asyncio.sleep(3600)
            return False
        if fault == "close":
            return False
        peer = writer.get_extra_info("peername")
        retry_after = self._limit(route, peer[0] if peer else "?")
        quota = self._render_quota(method, route, headers)
        payload: Any
        async with self._loop_busy:
            if route in _SLOW_ROUTES and self.state.health_delay > 0 and retry_after is None:
                await asyncio.sleep(self.state.health_delay)
        if retry_after is not None:
            status, payload = 429, {"detail": "Rate limit exceeded"}
        elif quota is not None and quota.exceeded:
            status, payload = 429, {"message": "rate limit exceeded"}
        elif fault is None and route in self.state.bodies:
            status, payload = 200, self.state.bodies[route]
        else:
            disk = None
            if method == "GET" and route in _SLOW_ROUTES and self.state.disk_dir is not None:
                # The walk blocks: in a thread, so this loop serves other requests meanwhile.
                disk = await anyio.to_thread.run_sync(self.state.disk_pct)
            status, payload = self._respond(method, route, headers, body, fault,
                                            disk_pct=disk)
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        length = huge_length() if fault == "huge" else len(raw)
        extra = f"Retry-After: {retry_after or 1}\r\n" if status == 429 else ""
        if quota is not None:
            extra = quota.header_lines(retry_after=status == 429)
        streamed = fault in ("huge", "trickle")
        keep = (not streamed and self.state.keep_alive > 0
                and headers.get("connection", "").lower() != "close")
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
                f"{extra}Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode()
        if fault == "huge":
            writer.write(head)
            for piece in huge_pieces():  # bounded by the client hanging up too
                writer.write(piece)
                await writer.drain()
        elif fault == "trickle":
            writer.write(head)
            for byte in raw:  # bounded by the client hanging up (a reset ends it)
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
        else:
            writer.write(head + raw)
            await writer.drain()
        return keep

    def _limit(self, route: str, client: str) -> int | None:
        """A sliding-window limit on `/health/*` per client: seconds to wait, or None."""
        limit = self.state.health_rate_limit
        if limit is None or not route.startswith("/health"):
            return None
        now = time.monotonic()
        hits = self._health_hits.setdefault(client, deque())
        while hits and hits[0] <= now - 60.0:
            hits.popleft()
        if len(hits) >= limit:
            self.state.throttled += 1
            return max(1, math.ceil(hits[0] + 60.0 - now))
        hits.append(now)
        return None

    def _respond(self, method: str, route: str, headers: dict[str, str], body: bytes,
                 fault: str | None, *, disk_pct: float | None = None) -> tuple[int, Any]:
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
        if fault == "empty_checks":  # psutil failed inside /health/system: still "healthy"
            return 200, {"status": "healthy", "checks": {}, "issues": [],
                         "timestamp": datetime.now(UTC).replace(tzinfo=None).isoformat()}
        if method == "GET" and route == "/health/resources":
            return 200, resources_payload(s, disk_pct=disk_pct)
        if method == "GET" and route == "/health/system":
            return 200, system_payload(s, disk_pct=disk_pct)
        if method == "GET" and route == "/health":
            return 200, {"status": "healthy", "timestamp": datetime.now(UTC).isoformat()}
        if method == "GET" and route == "/health/ready":
            # Theirs calls a database method that does not exist: 503 whatever the state.
            return 503, {"status": "not_ready", "error": "'DatabaseService' object has no "
                                                        "attribute 'health_check'"}
        if method == "GET" and route == "/health/workers":
            return (200, {"workers": s.instances}) if s.worker_alive else (
                503, {"workers": 0, "error": "no Celery worker answered ping"})
        if route.startswith("/v1/services/"):
            return self._render(method, route, headers, body)
        return 404, {"detail": "not found"}

    def _render_quota(self, method: str, route: str,
                      headers: dict[str, str]) -> RenderQuota | None:
        """Count a Render request against its key's window (fixed, like Render's); None: not one."""
        if not route.startswith("/v1/services/"):
            return None
        s = self.state
        kind = "GET" if method in ("GET", "HEAD") else "POST"
        limit = s.render_get_limit if kind == "GET" else s.render_post_limit
        now = time.monotonic()
        window = self._render_windows.setdefault((headers.get("authorization", ""), kind),
                                                 [now, 0])
        if now >= window[0] + s.render_window:
            window[:] = [now, 0]
        reset = max(1, math.ceil(window[0] + s.render_window - now))
        if window[1] >= limit:
            s.render_throttled += 1
            return RenderQuota(limit, 0, reset, exceeded=True)
        window[1] += 1
        return RenderQuota(limit, max(0, limit - int(window[1])), reset, exceeded=False)

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
        plan = s.render_plans.get(service, "standard")
        autoscaling = service in s.render_autoscaling
        if method == "GET" and not action:
            return 200, render_service_payload(s, service)
        if method == "POST" and action == "restart":
            if service == s.worker_service_id:
                s.worker_alive = True
            elif s.restart_fixes_leak:
                s.leaked_memory_pct = 0.0
            return 200, {}  # Render answers 200 here (its older docs said 202)
        if method == "POST" and action == "scale" and service == s.web_service_id:
            try:
                count = int(json.loads(body or b"{}")["numInstances"])
            except (ValueError, KeyError, TypeError):
                return 400, {"message": "numInstances required"}
            if not 1 <= count <= 100:
                return 400, {"message": "numInstances out of range"}
            if plan == "free" and count > 1:
                return 400, {"message": "free instances cannot scale above 1"}
            if not autoscaling:  # accepted either way; ignored while autoscaling is on
                s.instances = count
            return 202, {}
        return 404, {"message": "not found"}


def render_service_payload(state: ServiceState, service_id: str) -> dict[str, Any]:
    """`GET /services/{id}` as Render answers it (the fields that matter, and some that don't)."""
    web = service_id == state.web_service_id
    instances = state.instances if web else 1
    autoscaling = service_id in state.render_autoscaling
    return {
        "id": service_id,
        "name": "pam-backend" if web else "pam-worker",
        "type": "web_service" if web else "background_worker",
        "ownerId": "tea-simulated",
        "repo": "https://github.com/example/pam-backend",
        "branch": "main",
        "autoDeploy": "yes",
        "suspended": "not_suspended",
        "suspenders": [],
        "createdAt": "2025-01-15T09:30:00.000000Z",
        "updatedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "slug": "pam-backend" if web else "pam-worker",
        "serviceDetails": {
            "env": "python",
            "runtime": "python",
            "plan": state.render_plans.get(service_id, "standard"),
            "region": "oregon",
            "numInstances": instances,
            "autoscaling": {
                "enabled": autoscaling,
                "min": 1,
                "max": 3 if autoscaling else 1,
                "criteria": {"cpu": {"enabled": autoscaling, "percentage": 70},
                             "memory": {"enabled": False, "percentage": 0}},
            },
            **({"url": "https://pam-backend.onrender.com", "healthCheckPath": "/health"}
               if web else {}),
        },
    }
