"""The probes of one target, as its settings describe them: health source, fallback, checks."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from incident_fsm.about import VERSION
from incident_fsm.detection import http1
from incident_fsm.detection.dependencies import DependencyProbe, dependency_checks
from incident_fsm.detection.probe import HttpProbe, LocalProbe, Probe
from incident_fsm.lazy import HttpClient, LazyClient, httpx
from incident_fsm.settings import AgentSettings, TargetSettings

#: Connections one target's client opens at most: its endpoints read together
#: (`read_all_endpoints`) and its HTTP dependency checks, concurrently.
PER_TARGET_CONNECTIONS: Final = 8


@dataclass(frozen=True)
class TargetProbes:
    """How one target is read: its own probe, an optional fallback, its dependency checks."""

    health: Probe
    fallback: Probe | None = None
    dependencies: Sequence[DependencyProbe] = ()
    #: HTTP requests one poll sends to the target (endpoints + HTTP dependency checks)
    requests_per_poll: int = 1


def default_probes(target: TargetSettings, *, client: HttpClient,
                   health_client: HttpClient | http1.Http1Client | None = None
                   ) -> TargetProbes:
    """The probes a target's settings describe: its health read with `health_client`
    (default `client`), its HTTP dependency checks with `client`."""
    dependencies = dependency_checks(target, client=client)
    return TargetProbes(
        health=HttpProbe(base_url=target.base_url, endpoints=target.endpoints,
                         client=client if health_client is None else health_client,
                         timeout=target.probe_timeout, read_all=target.read_all_endpoints,
                         name=target.name),
        fallback=LocalProbe(mounts=target.local_mounts, timeout=target.probe_timeout)
        if target.fallback_local else None,
        dependencies=dependencies,
        requests_per_poll=(len(target.endpoints) if target.read_all_endpoints else 1)
        + sum(d.requests_per_check for d in dependencies),
    )


class Cadence(NamedTuple):
    """Seconds between polls: normally, and while anything on the target is suspect or open."""

    normal: float
    fast: float


def min_interval(target: TargetSettings, requests_per_poll: int) -> float:
    """The shortest gap between polls the target's rate limit allows (seconds)."""
    return requests_per_poll * 60.0 / target.max_requests_per_minute


def cadences(agent: AgentSettings, target: TargetSettings,
             requests_per_poll: int) -> tuple[Cadence, Cadence]:
    """The configured intervals and the effective ones the target's rate limit allows.

    Effective is before jitter (which only shortens, down to the rate limit)
    and before any `Retry-After` the target asks for. The monitor polls by
    it, and a backtest replays recorded polls by it.
    """
    floor = min_interval(target, requests_per_poll)
    configured = Cadence(agent.poll_interval, agent.fast_poll_interval)
    return configured, Cadence(max(configured.normal, floor), max(configured.fast, floor))


class TargetClients:
    """Small HTTP clients per target, sharing one TLS context; close with `aclose`.

    httpx's pool checks every idle connection it holds on each request, so
    one pool keeping a connection per target costs each poll time in the
    number of targets (a thousand targets: most of a poll's CPU). A pool per
    target keeps its own connection alive from one poll to the next and checks
    only that. The TLS context (the CA bundle) is loaded once, not per target,
    and only when an https target or an httpx client needs it; a target's
    httpx client is built at its first request (see `lazy`). A target's
    health endpoints are read with `health`: the lean `http1.Http1Client`
    where it reads them as httpx would (no proxy in the environment, no
    credentials in the URL), else the target's httpx client.
    """

    def __init__(self, agent: AgentSettings) -> None:
        slowest = max(agent.poll_interval, agent.fast_poll_interval)
        # A connection idle longer than the slowest interval is not reused anyway.
        self._keepalive = slowest + 5.0
        self._tls: ssl.SSLContext | None = None
        self._clients: list[HttpClient | http1.Http1Client] = []

    def new(self) -> HttpClient:
        """A client for one target's probes and HTTP dependency checks, built on first use."""
        client = LazyClient(self._build)
        self._clients.append(client)
        return client

    def health(self, base_url: str, *, fallback: HttpClient,
               environ: Mapping[str, str] = os.environ
               ) -> HttpClient | http1.Http1Client:
        """The client a target's health endpoints are read with (see the class)."""
        if not http1.suits(base_url, environ):
            return fallback
        tls = self._context() if urlsplit(base_url).scheme == "https" else None
        client = http1.Http1Client(base_url, ssl_context=tls, keepalive_expiry=self._keepalive,
                                   max_connections=PER_TARGET_CONNECTIONS,
                                   user_agent=f"incident-fsm/{VERSION}")
        self._clients.append(client)
        return client

    def _build(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=PER_TARGET_CONNECTIONS,
                              max_keepalive_connections=1, keepalive_expiry=self._keepalive)
        return httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False,
                                 verify=self._context(), limits=limits)

    def _context(self) -> ssl.SSLContext:
        # Loaded once, when the first https target or httpx client needs it.
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients.clear()
