"""Dependency checks: is each service the target relies on alive?

One check per configured `DependencyCheck` (see settings): `redis` sends a
PING, `celery` asks the workers for a remote-control ping through their
broker, `http` GETs a path on the target (`/health/ready`: 503 = down; on
`/health/detailed` the entry `services.<name>` is read when present). A
check answers `up`, `down` or `unknown`; only `down` counts towards the
problem `service_down:<name>`. `unknown` means the check could not tell (the
target itself is unreachable -- that is `health_endpoint_down`'s business --
or a 4xx says the check is misconfigured), so it neither opens nor clears.

Connection URLs come from the environment variable the setting names, read
at the moment of the check, and never appear in a reason or a log line.
Every check is bounded by its `timeout`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import anyio

from incident_fsm.detection.probe import FetchFailed, describe_error, fetch, ms_since
from incident_fsm.lazy import HttpClient
from incident_fsm.settings import DependencyCheck, TargetSettings

DependencyState = Literal["up", "down", "unknown"]

#: Status words of `services.<name>` in `/health/detailed`-style bodies.
UP_WORDS: Final = frozenset({"healthy", "ok", "up", "connected", "available", "pass", "degraded"})
DOWN_WORDS: Final = frozenset(
    {"unhealthy", "down", "error", "disconnected", "unavailable", "fail", "failed", "critical"}
)
#: The dependency name given to a target's `ready_endpoint`.
READY_NAME: Final = "ready"


@dataclass(frozen=True)
class DependencyStatus:
    """What one check found."""

    name: str
    state: DependencyState
    reason: str
    latency_ms: float = 0.0


class DependencyProbe(Protocol):
    """Checks one dependency. Must not raise for anything the dependency does."""

    @property
    def name(self) -> str: ...

    @property
    def requests_per_check(self) -> int:
        """HTTP requests each check sends to the target (counts against its rate limit)."""
        ...

    async def check(self) -> DependencyStatus: ...


class RedisCheck:
    """PING the Redis whose URL is in env `url_env`."""

    requests_per_check = 0

    def __init__(self, *, name: str, url_env: str, timeout: float = 5.0) -> None:
        self.name = name
        self.url_env = url_env
        self.timeout = timeout

    async def check(self) -> DependencyStatus:
        url = os.environ.get(self.url_env)
        if not url:
            return DependencyStatus(self.name, "unknown", f"env {self.url_env} is not set")
        # Imported here: only agents that check Redis pay for the client.
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        started = anyio.current_time()
        try:
            client = Redis.from_url(url, socket_timeout=self.timeout,
                                    socket_connect_timeout=self.timeout,
                                    retry=Retry(NoBackoff(), 0))
        except (ValueError, RedisError) as exc:
            # The message may quote the URL, password included: say only what kind of error.
            return DependencyStatus(self.name, "unknown",
                                    f"env {self.url_env} is not a usable Redis URL "
                                    f"({type(exc).__name__})", ms_since(started))
        try:
            with anyio.fail_after(self.timeout):
                answer = await client.ping()
        except TimeoutError:
            return DependencyStatus(self.name, "down", f"no PONG within {self.timeout:g}s",
                                    ms_since(started))
        except (RedisError, OSError) as exc:
            return DependencyStatus(self.name, "down", describe_error(exc), ms_since(started))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
                await client.aclose()
        if answer is not True:
            return DependencyStatus(self.name, "down", "PING was not answered with PONG",
                                    ms_since(started))
        return DependencyStatus(self.name, "up", "PONG", ms_since(started))


class CeleryCheck:
    """Remote-control ping to the Celery workers through the broker in env `url_env`.

    Celery's client is synchronous, so the ping runs in a worker thread; the
    broker connection is tried once (no endless reconnect loop) and the ping
    waits `timeout` seconds for replies. Up when at least one worker answers.
    """

    requests_per_check = 0

    def __init__(self, *, name: str, url_env: str, timeout: float = 5.0) -> None:
        self.name = name
        self.url_env = url_env
        self.timeout = timeout
        self._app: Any = None
        self._app_url: str | None = None

    async def check(self) -> DependencyStatus:
        url = os.environ.get(self.url_env)
        if not url:
            return DependencyStatus(self.name, "unknown", f"env {self.url_env} is not set")
        started = anyio.current_time()
        try:
            # The thread's own bounds are the connection timeout plus the ping
            # window; the outer bound (with slack) keeps the monitor going
            # should the broker client hang anyway.
            with anyio.fail_after(3 * self.timeout + 5):
                workers = await anyio.to_thread.run_sync(self._ping, url, abandon_on_cancel=True)
        except TimeoutError:
            return DependencyStatus(self.name, "down", "the broker did not answer in time",
                                    ms_since(started))
        except Exception as exc:  # kombu/redis/socket errors have no common base
            return DependencyStatus(self.name, "down", f"broker unreachable: {describe_error(exc)}",
                                    ms_since(started))
        if not workers:
            return DependencyStatus(self.name, "down",
                                    f"no worker answered the ping within {self.timeout:g}s",
                                    ms_since(started))
        return DependencyStatus(self.name, "up",
                                f"{len(workers)} worker(s) answered: {', '.join(workers)[:150]}",
                                ms_since(started))

    def _ping(self, url: str) -> list[str]:
        app = self._app_for(url)
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=self.timeout)
            replies = app.control.ping(timeout=self.timeout, connection=connection)
        return sorted(
            name
            for reply in replies if isinstance(reply, dict)
            for name, answer in reply.items()
            if isinstance(answer, dict) and answer.get("ok") == "pong"
        )

    def _app_for(self, url: str) -> Any:
        if self._app is None or self._app_url != url:
            from celery import Celery  # type: ignore[import-untyped]

            app = Celery(f"incident-fsm-{self.name}", broker=url, set_as_current=False)
            app.conf.update(
                broker_connection_retry=False,
                broker_connection_retry_on_startup=False,
                broker_connection_max_retries=0,
                broker_connection_timeout=self.timeout,
                broker_transport_options={"socket_connect_timeout": self.timeout,
                                          "socket_timeout": self.timeout, "max_retries": 0},
            )
            self._app, self._app_url = app, url
        return self._app


class HttpDependencyCheck:
    """GET `path` on the target: 2xx up, 5xx down, other answers unknown."""

    requests_per_check = 1

    def __init__(self, *, name: str, base_url: str, path: str, client: HttpClient,
                 timeout: float = 5.0) -> None:
        self.name = name
        self.url = base_url.rstrip("/") + path
        self.path = path
        self.timeout = timeout
        self._client = client

    async def check(self) -> DependencyStatus:
        try:
            fetched = await fetch(self._client, self.url, time_limit=self.timeout)
        except FetchFailed as exc:
            return DependencyStatus(self.name, "unknown", f"{self.path}: {exc.reason}",
                                    exc.latency_ms)
        latency = fetched.latency_ms
        if fetched.status >= 500:
            return DependencyStatus(self.name, "down", f"{self.path}: HTTP {fetched.status}",
                                    latency)
        if not 200 <= fetched.status < 300:
            return DependencyStatus(self.name, "unknown",
                                    f"{self.path}: HTTP {fetched.status}", latency)
        word = _service_status(fetched.body, self.name)
        if word is None:
            return DependencyStatus(self.name, "up", f"{self.path}: HTTP {fetched.status}",
                                    latency)
        state: DependencyState = (
            "up" if word in UP_WORDS else "down" if word in DOWN_WORDS else "unknown"
        )
        return DependencyStatus(self.name, state, f"{self.path}: services.{self.name} is "
                                                  f"{word[:40]!r}", latency)


def dependency_checks(target: TargetSettings, *,
                      client: HttpClient) -> list[DependencyProbe]:
    """The checks configured for `target`, plus its `ready_endpoint` if it has one."""
    checks: list[DependencyProbe] = [
        _build(dep, target=target, client=client) for dep in target.dependencies
    ]
    if target.ready_endpoint and not any(
        dep.kind == "http" and dep.path == target.ready_endpoint for dep in target.dependencies
    ):
        checks.append(HttpDependencyCheck(name=READY_NAME, base_url=target.base_url,
                                          path=target.ready_endpoint, client=client,
                                          timeout=target.probe_timeout))
    return checks


def _build(dep: DependencyCheck, *, target: TargetSettings,
           client: HttpClient) -> DependencyProbe:
    if dep.kind in ("redis", "celery"):
        if not dep.url_env:
            raise ValueError(f"dependency {dep.name!r} ({dep.kind}) needs url_env")
        cls = RedisCheck if dep.kind == "redis" else CeleryCheck
        return cls(name=dep.name, url_env=dep.url_env, timeout=dep.timeout)
    if dep.kind == "http":
        if not dep.path:
            raise ValueError(f"dependency {dep.name!r} (http) needs a path")
        return HttpDependencyCheck(name=dep.name, base_url=target.base_url, path=dep.path,
                                   client=client, timeout=dep.timeout)
    raise ValueError(f"dependency {dep.name!r} has unknown kind {dep.kind!r} "
                     "(expected redis, celery or http)")


def _service_status(body: bytes, name: str) -> str | None:
    """`services.<name>` (a string, or an object's `status`), lower-cased; None if absent."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    services = payload.get("services") if isinstance(payload, dict) else None
    entry = services.get(name) if isinstance(services, dict) else None
    if isinstance(entry, dict):
        entry = entry.get("status")
    return entry.strip().lower() if isinstance(entry, str) else None
