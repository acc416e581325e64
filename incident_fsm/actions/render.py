"""Render.com service restart and scaling, through Render's REST API.

`render_restart` restarts a service (`POST /services/{id}/restart`);
`restart_celery_workers` is the same call on the target's worker service;
`render_scale` reads the instance count (`GET /services/{id}`) and asks for
one more (`POST /services/{id}/scale`), never outside the configured
`min_instances`..`max_instances` and never downwards.

The API key is read from the environment variable `api_key_env` names at
the moment of each attempt and goes only into the Authorization header:
never into a log line, an outcome or an exception. Retries and their
bounds are `http_retry`'s; the attempt's deadline is the incident's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import httpx

from ..errors import InvalidInput
from ..settings import RenderSettings
from .base import ActionContext, Outcome, OutcomeStatus, Tier
from .http_retry import HttpReply, send_with_retry

_SERVICE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


def checked_service_id(service_id: str, *, what: str) -> str:
    """A Render service id that is safe to put into a URL path."""
    if not _SERVICE_ID.match(service_id):
        raise InvalidInput(f"{what}: {service_id!r} is not a Render service id (like srv-abc123)")
    return service_id


class RenderApi:
    """Authenticated calls to the Render API with the shared retry rules."""

    def __init__(self, settings: RenderSettings, *, http: httpx.AsyncClient,
                 environ: Mapping[str, str]) -> None:
        if not settings.api_url.startswith(("https://", "http://")):
            raise InvalidInput("actions.render.api_url must be an http(s) URL")
        if settings.timeout <= 0:
            raise InvalidInput("actions.render.timeout must be greater than 0")
        self.settings = settings
        self._http = http
        self._environ = environ

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
        return await send_with_retry(
            self._http, method=method, url=self.url(path), clock=ctx.clock,
            deadline=ctx.deadline, request_timeout=self.settings.timeout,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            json=json, secrets=(key,), what=f"Render {method} {path}",
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
        return _outcome(reply, what=f"restart of {self.service_id}", done="accepted",
                        evidence=evidence)


class RenderScale:
    """Add one instance to a Render service, within the configured bounds."""

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
        service = f"/services/{self.service_id}"
        evidence: dict[str, Any] = {"service_id": self.service_id, "min_instances": low,
                                    "max_instances": high}
        if ctx.dry_run:
            return Outcome.ok(
                f"would read the instance count of {self.service_id} and add one (at most {high})",
                evidence={**evidence, "dry_run": True},
            )
        read = await self._api.call("GET", service, ctx=ctx)
        if not read.ok:
            return _outcome(read, what=f"reading the instance count of {self.service_id}",
                            done="read", evidence=evidence)
        current, autoscaling = _instances(read.data)
        if current is None:
            return Outcome.failed(f"Render's answer for {self.service_id} has no instance count",
                                  evidence=evidence, http_status=read.http_status)
        evidence["from_instances"] = current
        if autoscaling:
            return Outcome.failed(
                f"{self.service_id} autoscales: Render ignores manual scaling",
                evidence={**evidence, "autoscaling": True}, http_status=read.http_status,
            )
        if current >= high:
            return Outcome.failed(
                f"{self.service_id} already runs {current} instances (max_instances {high})",
                evidence=evidence, http_status=read.http_status,
            )
        wanted = min(high, max(low, current + 1))
        evidence["to_instances"] = wanted
        reply = await self._api.call("POST", f"{service}/scale", ctx=ctx,
                                     json={"numInstances": wanted})
        return _outcome(reply, what=f"scaling {self.service_id}",
                        done=f"{current} → {wanted} instances", evidence=evidence)


def _instances(data: Any) -> tuple[int | None, bool]:
    """(instance count, autoscaling on) from a `GET /services/{id}` answer, read defensively."""
    if not isinstance(data, dict):
        return None, False
    details = data.get("serviceDetails")
    details = details if isinstance(details, dict) else {}
    count = details.get("numInstances", data.get("numInstances"))
    auto = details.get("autoscaling")
    autoscaling = isinstance(auto, dict) and auto.get("enabled") is True
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None, autoscaling
    return count, autoscaling
