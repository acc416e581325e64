"""The soak's world: simulated services, one Render API, PAM and webhook peers, the database.

Everything the agents talk to runs in the harness's own event loop, on
loopback, and counts what it receives, so the invariant checker can judge
from outside:

- one `Simulator` per target (its health endpoints, its disk directory);
- `RenderHub`: one Render-like API for every target, dispatching by service
  id to the target's state, counting each *executed* call (a 2xx answer) per
  `Idempotency-Key`, with outage (500) and throttling (429) switches;
- `Peers`: a uvicorn app with the PAM relay (mounted as a PAM host would,
  over a connection manager whose operator socket can be closed) and a
  webhook receiver and failover hook that count what they receive;
- the database: SQLite, or a throwaway Postgres database reached by each
  replica through its own `TcpProxy`, which can be cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.notify.relay import pam_relay

from ..pam_server import free_port

RENDER_KEY = "rnd_soak_key"
RELAY_SECRET = "soak-relay-secret"
OPERATOR = "00000000-0000-4000-8000-000000000001"
DISK_CAPACITY = 64 * 1024**2


class RenderHub(Simulator):
    """A Render-like API for many services: each id routed to the state that owns it."""

    def __init__(self) -> None:
        super().__init__(ServiceState(render_api_key=RENDER_KEY, render_post_limit=600,
                                      render_get_limit=2000))
        self.owners: dict[str, Simulator] = {}
        #: Idempotency-Key -> executed calls (2xx answers to a POST)
        self.executed: Counter[str] = Counter()
        #: (service id, action) -> executed calls
        self.by_service: Counter[tuple[str, str]] = Counter()
        self.mode = "up"  # or "500", "429"

    def add(self, sim: Simulator) -> None:
        self.owners[sim.state.web_service_id] = sim
        self.owners[sim.state.worker_service_id] = sim

    def _render(self, method: str, route: str, headers: dict[str, str],
                body: bytes) -> tuple[int, Any]:
        if self.mode == "500":
            return 500, {"message": "internal error"}
        if self.mode == "429":
            return 429, {"message": "rate limit exceeded"}
        if headers.get("authorization") != f"Bearer {RENDER_KEY}":
            return 401, {"message": "unauthorized"}
        parts = route.split("/")
        owner = self.owners.get(parts[3] if len(parts) > 3 else "")
        if owner is None:
            return 404, {"message": "service not found"}
        status, payload = owner._render(method, route,
                                        {**headers, "authorization":
                                         f"Bearer {owner.state.render_api_key}"}, body)
        if method == "POST" and 200 <= status < 300:
            self.executed[headers.get("idempotency-key", "<none>")] += 1
            self.by_service[(parts[3], parts[4] if len(parts) > 4 else "")] += 1
        return status, payload


class Manager:
    """The PAM host's connection manager: one operator, whose socket the harness can close."""

    def __init__(self) -> None:
        self.online = True
        self.received: list[dict[str, Any]] = []

    @property
    def user_connections(self) -> dict[str, list[str]]:
        return {OPERATOR: ["socket"]} if self.online else {}

    async def send_message_to_user(self, message: str, user_id: str) -> None:
        self.received.append(json.loads(message))


@dataclass
class Peers:
    """The HTTP peers: PAM relay, webhook receiver, failover hook."""

    port: int = 0
    manager: Manager = field(default_factory=Manager)
    relay_env: dict[str, str] = field(default_factory=lambda: {
        "INCIDENT_FSM_PAM_RELAY_SECRET": RELAY_SECRET})
    #: dedupe key -> webhook POSTs received (2xx answered)
    webhooks: Counter[str] = field(default_factory=Counter)
    webhook_mode: str = "up"  # or "500"
    #: Idempotency-Key -> failover hook calls received
    failovers: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/webhook")
        async def webhook(request: Request) -> Response:
            if self.webhook_mode != "up":
                return Response(status_code=500)
            self.webhooks[request.headers.get("x-incident-fsm-dedupe-key", "<none>")] += 1
            await request.body()
            return Response(status_code=204)

        @app.post("/failover")
        async def failover(request: Request) -> Response:
            self.failovers[request.headers.get("idempotency-key", "<none>")] += 1
            return Response(status_code=200)

        app.mount("/incident-fsm/pam", pam_relay(self.manager, environ=self.relay_env))
        return app

    def pam_deliveries(self) -> Counter[str]:
        return Counter(str(m.get("id")) for m in self.manager.received)


@contextlib.asynccontextmanager
async def serving(peers: Peers) -> AsyncIterator[Peers]:
    peers.port = free_port()
    server = uvicorn.Server(uvicorn.Config(peers.app(), host="127.0.0.1", port=peers.port,
                                           log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or task.done():
            raise RuntimeError("the peers' server did not start")
        await asyncio.sleep(0.05)
    try:
        yield peers
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


@dataclass
class Target:
    """One simulated service and the directory its disk usage is measured from."""

    name: str
    sim: Simulator
    logs: Path

    @classmethod
    def make(cls, index: int, root: Path) -> Target:
        logs = root / f"t{index}-logs"
        logs.mkdir(parents=True, exist_ok=True)
        state = ServiceState(load_memory_pct=40.0, cpu_load_pct=10.0, disk_dir=logs,
                             disk_capacity_bytes=DISK_CAPACITY,
                             disk_base_bytes=int(0.40 * DISK_CAPACITY),
                             web_service_id=f"srv-web-{index}",
                             worker_service_id=f"srv-worker-{index}",
                             render_api_key=RENDER_KEY)
        return cls(f"t{index}", Simulator(state), logs)

    def fill_disk(self, share: float, *, old: bool) -> None:
        """Write log files worth `share` of the disk; old ones are what cleanup removes."""
        size = int(share * DISK_CAPACITY)
        chunk = 4 * 1024**2
        written = 0
        n = len(list(self.logs.iterdir()))
        while written < size:
            path = self.logs / f"app-{n}.log"
            path.write_bytes(b"x" * min(chunk, size - written))
            if old:
                stamp = time.time() - 30 * 86400
                os.utime(path, (stamp, stamp))
            written += chunk
            n += 1

    def empty_disk(self) -> None:
        for path in self.logs.iterdir():
            if path.is_file():
                path.unlink()

