"""Read-only status endpoints a host app can mount: agent health, incidents, history, metrics.

`status_app(source, store, clock=...)` is a plain ASGI application (no
framework needed), e.g. `app.mount("/agent", agent.status_app())` in FastAPI:

    GET /            the agent: running, leader or standby, last poll per target, queue depths
    GET /incidents   open incidents (JSON)
    GET /history     transitions of the last `?hours=24` (JSON)
    GET /metrics     Prometheus text format (`reports.metrics`)
    GET /live        liveness only: 200 while the agent runs, else 503; no detail
    GET /incidents/ID  one incident's timeline (JSON)

A browser (`Accept: text/html`) gets the status page instead of JSON at `/`
and `/incidents/ID` (`reports.page`: server-rendered, no JavaScript).

Nothing here can change state: any method but GET/HEAD is answered 405.
With a `token`, every route but `/live` answers 401 unless the request
carries `Authorization: Bearer <token>` (compared in constant time): the
routes show production detail (targets, readings, reasons, who acted).
`until_running(find)` answers 503 until `find()` gives the running agent's
app, so a host can mount the endpoints when it builds the app, before its
lifespan has started the agent.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qs

from incident_fsm.clock import Clock
from incident_fsm.errors import IncidentNotFound, StoreError
from incident_fsm.fsm.graph import OPEN_STATES
from incident_fsm.models import Incident, IncidentId, Silence, Timeline, Transition
from incident_fsm.persistence.statistics import OpenIncident
from incident_fsm.reports.figures import AgentStatus, TargetStatus
from incident_fsm.reports.format import to_json
from incident_fsm.reports.metrics import AgentMetrics
from incident_fsm.reports.page import CSP, incident_page, overview_page

__all__ = ["ASGIApp", "AgentStatus", "ReadModel", "StatusSource", "TargetStatus", "status_app",
           "until_running"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ReadModel(Protocol):
    """What the status endpoints read: incidents, recent history, statistics."""

    async def history(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        target: str | None = None,
        kind: str | None = None,
        limit: int = 1000,
    ) -> list[tuple[Transition, Incident]]: ...

    async def list_incidents(
        self,
        *,
        states: Iterable[str] = (),
        kind: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[Incident]: ...

    async def open_incidents(self, *, limit: int = 1000) -> list[OpenIncident]: ...

    async def pending_notifications(self) -> dict[str, int]: ...

    async def timeline(self, incident_id: IncidentId) -> Timeline: ...

    async def silences(self, *, now: datetime, include_ended: bool = False,
                       target: str | None = None, limit: int = 200) -> list[Silence]: ...


class StatusSource(Protocol):
    def status(self) -> AgentStatus: ...


def status_app(source: StatusSource, store: ReadModel, *, clock: Clock,
               token: str | None = None, metrics: AgentMetrics | None = None) -> ASGIApp:
    """The ASGI app; see the module docstring. `metrics` holds the agent's counters."""
    expected = None if token is None else f"Bearer {token}".encode()
    scrape = metrics or AgentMetrics()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b'{"detail": "read-only"}', "application/json",
                        extra=[(b"allow", b"GET, HEAD")])
            return
        path = _path(scope)
        if path == "/live":
            running = source.status().running
            await _send(send, 200 if running else 503,
                        b'{"running": true}' if running else b'{"running": false}',
                        "application/json")
            return
        if expected is not None and not _authorized(scope, expected):
            await _send(send, 401, b'{"detail": "a bearer token is required"}',
                        "application/json", extra=[(b"www-authenticate", b"Bearer")])
            return
        try:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            html = _wants_html(scope)
            root = str(scope.get("root_path", "")).rstrip("/")
            now = clock.now()
            if path in ("", "/") and html:
                page = overview_page(source.status(), await store.open_incidents(),
                                     await store.silences(now=now), now=now, root=root)
                await _send_page(send, 200, page)
            elif path in ("", "/"):
                body = to_json(asdict(source.status()))
                await _send(send, 200, body.encode(), "application/json")
            elif path.startswith("/incidents/"):
                await _incident(send, store, path.removeprefix("/incidents/"), html=html,
                                now=now, root=root)
            elif path == "/incidents":
                rows = await store.list_incidents(states=[s.value for s in OPEN_STATES], limit=1000)
                await _send(send, 200, to_json(rows).encode(), "application/json")
            elif path == "/history":
                try:
                    hours = min(168.0, max(0.0, float(query.get("hours", ["24"])[0])))
                except ValueError:
                    await _send(send, 400, b'{"detail": "hours must be a number"}',
                                "application/json")
                    return
                since = clock.now() - timedelta(hours=hours)
                steps = await store.history(since=since, limit=5000)
                payload = [{"transition": t, "incident": i} for t, i in steps]
                await _send(send, 200, to_json(payload).encode(), "application/json")
            elif path == "/metrics":
                exposition = await scrape.exposition(source.status(), store, clock.now())
                await _send(send, 200, exposition, scrape.content_type)
            else:
                await _send(send, 404, b'{"detail": "not found"}', "application/json")
        except StoreError as exc:
            # The database did not answer: say so, never a bare 500 with a traceback.
            detail = to_json({"detail": f"the database did not answer: {exc}"})
            await _send(send, 503, detail.encode(), "application/json",
                        extra=[(b"retry-after", b"5")])

    return app


async def _incident(send: Send, store: ReadModel, ref: str, *, html: bool, now: datetime,
                    root: str) -> None:
    """`/incidents/ID`: one incident's page, or its timeline as JSON."""
    if not ref.isdigit() or not 0 < int(ref) < 2**63:
        await _send(send, 404, b'{"detail": "not an incident id"}', "application/json")
        return
    try:
        timeline = await store.timeline(IncidentId(int(ref)))
    except IncidentNotFound:
        await _send(send, 404, b'{"detail": "no such incident"}', "application/json")
        return
    if html:
        silences = await store.silences(now=now, include_ended=True,
                                        target=timeline.incident.target)
        await _send_page(send, 200, incident_page(timeline, silences, now=now, root=root))
    else:
        await _send(send, 200, to_json(timeline).encode(), "application/json")


def _wants_html(scope: Scope) -> bool:
    """A browser asks for HTML; scripts (curl's */*, Accept: application/json) get JSON."""
    accept = next((v for k, v in scope.get("headers", []) if k.lower() == b"accept"), b"")
    return b"text/html" in bytes(accept).lower()


async def _send_page(send: Send, status: int, page: str) -> None:
    await _send(send, status, page.encode(), "text/html; charset=utf-8",
                extra=[(b"content-security-policy", CSP.encode()),
                       (b"x-content-type-options", b"nosniff"),
                       (b"referrer-policy", b"no-referrer")])


def until_running(find: Callable[[], ASGIApp | None]) -> ASGIApp:
    """The app `find()` gives once there is one; until then every request answers 503."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        running = find()
        if running is not None:
            await running(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await _send(send, 503, b'{"detail": "the agent is not running"}',
                        "application/json", extra=[(b"retry-after", b"5")])

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    # Mounted apps may be sent lifespan events: the host's lifespan runs the agent.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _path(scope: Scope) -> str:
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def _authorized(scope: Scope, expected: bytes) -> bool:
    given = next((v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), b"")
    return hmac.compare_digest(bytes(given), expected)


async def _send(send: Send, status: int, body: bytes, content_type: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
