"""Render.com service restart and scaling, through Render's REST API.

`render_restart` restarts a service (`POST /services/{id}/restart`; any 2xx
is success, Render answers 200); `restart_celery_workers` is the same call
on the target's worker service; `render_scale` reads the service
(`GET /services/{id}`) and asks for one more instance
(`POST /services/{id}/scale`), never outside the configured
`min_instances`..`max_instances` and never downwards. A scale that cannot
help is *not applicable* -- no strike, the next candidate is tried -- when
autoscaling is on (Render ignores a manual scale then), the plan is `free`
(one instance at most), or the count would not go up; a failed read is a
failure, never taken as "applicable".

Render allows about 30 POSTs (and 400 GETs) a minute per key and says how
many are left in `Ratelimit-Remaining` / `Ratelimit-Reset` on every answer.
One `RateGate` per key and kind of request, shared by every action using the
key in the process, holds the next request until a spent window resets
(within the attempt's deadline).

The API key is read from the environment variable `api_key_env` names at
the moment of each attempt and goes only into the Authorization header:
never into a log line, an outcome or an exception (the gates know it only
by a digest). Retries and their bounds, and the bound on the size of an
answer (1 MiB: a bigger one is a failure), are `http_retry`'s; the attempt's
deadline is the incident's.
"""

from __future__ import annotations

import hashlib
import math
import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from incident_fsm.errors import InvalidInput
from incident_fsm.lazy import HttpClient
from incident_fsm.remediation.actions.base import ActionContext, Outcome, OutcomeStatus, Tier
from incident_fsm.remediation.actions.http_retry import HttpReply, RateGate, send_with_retry
from incident_fsm.settings import RenderSettings

_SERVICE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
#: The plan that cannot run more than one instance.
FREE_PLAN: Final = "free"


def checked_service_id(service_id: str, *, what: str) -> str:
    """A Render service id that is safe to put into a URL path."""
    if not _SERVICE_ID.match(service_id):
        raise InvalidInput(f"{what}: {service_id!r} is not a Render service id (like srv-abc123)")
    return service_id


class RateGates:
    """The rate gates of one process: one per API, key and kind of request (GET or POST)."""

    def __init__(self) -> None:
        self._gates: dict[tuple[str, str, str], RateGate] = {}

    def gate(self, *, api_url: str, key: str, method: str) -> RateGate:
        # A digest, so the key itself is not kept around as a lookup key.
        digest = hashlib.sha256(key.encode()).hexdigest()
        kind = "GET" if method.upper() in ("GET", "HEAD") else "POST"
        return self._gates.setdefault((api_url, digest, kind), RateGate())


#: One `RateGates` per HTTP client: the agent shares one client across all its
#: targets, so every action using a key sees the same quota.
_BY_CLIENT: weakref.WeakKeyDictionary[HttpClient, RateGates] = (
    weakref.WeakKeyDictionary())


def shared_gates(http: HttpClient) -> RateGates:
    """The rate gates every `RenderApi` on `http` shares."""
    gates = _BY_CLIENT.get(http)
    if gates is None:
        gates = _BY_CLIENT[http] = RateGates()
    return gates


class RenderApi:
    """Authenticated calls to the Render API with the shared retry and rate-limit rules."""

    def __init__(self, settings: RenderSettings, *, http: HttpClient,
                 environ: Mapping[str, str], gates: RateGates | None = None) -> None:
        if not settings.api_url.startswith(("https://", "http://")):
            raise InvalidInput("actions.render.api_url must be an http(s) URL")
        if settings.timeout <= 0:
            raise InvalidInput("actions.render.timeout must be greater than 0")
        self.settings = settings
        self._http = http
        self._environ = environ
        self._gates = shared_gates(http) if gates is None else gates

    def url(self, path: str) -> str:
        return self.settings.api_url.rstrip("/") + path

    def key(self) -> str | None:
        key = self._environ.get(self.settings.api_key_env, "").strip()
        return key or None

    async def call(self, method: str, path: str, *, ctx: ActionContext,
                   json: Any = None) -> HttpReply:
        key = self.key()
        if key is None:
            return HttpReply(OutcomeStatus.FAILED, None, 0,
                             problem=f"env {self.settings.api_key_env} is not set")
        gate = self._gates.gate(api_url=self.settings.api_url, key=key, method=method)
        return await send_with_retry(
            self._http, method=method, url=self.url(path), clock=ctx.clock,
            deadline=ctx.deadline, request_timeout=self.settings.timeout,
            # Render ignores the key; it ties each request to its attempt in the
            # logs of a proxy in between (and lets a simulator count executions).
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json",
                     "Idempotency-Key": ctx.idempotency_key},
            json=json, secrets=(key,), what=f"Render {method} {path}", gate=gate,
        )


def _outcome(reply: HttpReply, *, what: str, done: str, evidence: Mapping[str, Any]) -> Outcome:
    fields: dict[str, Any] = {
        "evidence": {**evidence, **reply.evidence()},
        "http_status": reply.http_status,
        "output_excerpt": reply.body,
    }
    if reply.ok:
        return Outcome.ok(f"{what}: {done}", **fields)
    return Outcome(reply.status, f"{what} failed: {reply.problem}", **fields)


class RenderRestart:
    """Restart one Render service (the web service, or the Celery worker service)."""

    tier = Tier.MAJOR
    #: bounded by the attempt's deadline only: Render's 5xx are retried until then
    timeout = math.inf

    def __init__(self, api: RenderApi, *, service_id: str, kinds: Iterable[str],
                 name: str = "render_restart") -> None:
        self.name = name
        self.kinds = frozenset(kinds)
        self.service_id = checked_service_id(service_id, what=name)
        self._api = api

    async def run(self, ctx: ActionContext) -> Outcome:
        path = f"/services/{self.service_id}/restart"
        evidence = {"service_id": self.service_id}
        if ctx.dry_run:
            return Outcome.ok(f"would POST {self._api.url(path)}",
                              evidence={**evidence, "dry_run": True})
        reply = await self._api.call("POST", path, ctx=ctx)
        return _outcome(reply, what=f"restart of {self.service_id}",
                        done=f"requested (HTTP {reply.http_status})", evidence=evidence)


@dataclass(frozen=True)
class ServiceFacts:
    """What scaling needs from a `GET /services/{id}` answer; None where it says nothing."""

    instances: int | None
    autoscaling: bool
    plan: str | None


def service_facts(data: Any) -> ServiceFacts:
    """The instance count, autoscaling and plan of a service, read defensively."""
    if not isinstance(data, dict):
        return ServiceFacts(None, False, None)
    details = data.get("serviceDetails")
    details = details if isinstance(details, dict) else {}
    count = details.get("numInstances", data.get("numInstances"))
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        count = None
    auto = details.get("autoscaling")
    plan = details.get("plan")
    return ServiceFacts(
        instances=count,
        autoscaling=isinstance(auto, dict) and auto.get("enabled") is True,
        plan=plan.strip().lower() if isinstance(plan, str) and plan.strip() else None,
    )


class RenderScale:
    """Add one instance to a Render service, within the configured bounds, where that can help."""

    name = "render_scale"
    tier = Tier.MAJOR
    timeout = math.inf

    def __init__(self, api: RenderApi, *, service_id: str, kinds: Iterable[str]) -> None:
        low, high = api.settings.min_instances, api.settings.max_instances
        if low < 1 or high < low:
            raise InvalidInput("actions.render: need 1 <= min_instances <= max_instances")
        self.kinds = frozenset(kinds)
        self.service_id = checked_service_id(service_id, what=self.name)
        self._api = api

    async def run(self, ctx: ActionContext) -> Outcome:
        low, high = self._api.settings.min_instances, self._api.settings.max_instances
        sid = self.service_id
        service = f"/services/{sid}"
        evidence: dict[str, Any] = {"service_id": sid, "min_instances": low,
                                    "max_instances": high}
        if ctx.dry_run:
            return Outcome.ok(
                f"would read the instance count of {sid} and add one (at most {high})",
                evidence={**evidence, "dry_run": True},
            )
        read = await self._api.call("GET", service, ctx=ctx)
        if not read.ok:
            return _outcome(read, what=f"reading the instance count of {sid}",
                            done="read", evidence=evidence)
        facts = service_facts(read.data)
        evidence |= {"autoscaling": facts.autoscaling, "plan": facts.plan}
        if facts.instances is None:
            return Outcome.failed(f"Render's answer for {sid} has no instance count",
                                  evidence=evidence, http_status=read.http_status)
        current = facts.instances
        evidence["from_instances"] = current
        wanted = min(high, max(low, current + 1))
        why_not = _why_not_applicable(sid, facts, current=current, wanted=wanted, high=high)
        if why_not:
            return Outcome.not_applicable(why_not, evidence=evidence,
                                          http_status=read.http_status)
        evidence["to_instances"] = wanted
        reply = await self._api.call("POST", f"{service}/scale", ctx=ctx,
                                     json={"numInstances": wanted})
        return _outcome(reply, what=f"scaling {sid}",
                        done=f"{current} → {wanted} instances", evidence=evidence)


def _why_not_applicable(sid: str, facts: ServiceFacts, *, current: int, wanted: int,
                        high: int) -> str:
    """Why a manual scale to `wanted` cannot help (empty: it can)."""
    if facts.autoscaling:
        return f"autoscaling is enabled on {sid}: Render ignores a manual scale"
    if facts.plan == FREE_PLAN and wanted > 1:
        return f"{sid} is on the free plan: it cannot run more than 1 instance"
    if wanted <= current:
        return (f"{sid} already runs {current} instances (max_instances {high}): "
                f"scaling would not add one")
    return ""
