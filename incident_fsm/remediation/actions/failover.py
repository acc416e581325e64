"""The failover hook: hand the service over to its standby, by webhook or by command.

Failing over is the heaviest thing the agent can do, so its tier is
`approval` unless configured otherwise: policy holds it for an operator.
The webhook gets a JSON body naming the incident and the attempt's
idempotency key (also sent as the `Idempotency-Key` header, so a receiver
can ignore a repeated call), signed with HMAC-SHA256 when `secret_env`
names a secret: header `X-Incident-FSM-Signature: sha256=<hex>` over the
exact body bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta

from incident_fsm.errors import InvalidInput
from incident_fsm.lazy import HttpClient, httpx
from incident_fsm.remediation.actions.base import ActionContext, Outcome, Tier, parse_tier
from incident_fsm.remediation.actions.command import checked_argv, run_argv
from incident_fsm.remediation.actions.http_retry import send_with_retry
from incident_fsm.remediation.actions.redaction import redact
from incident_fsm.settings import FailoverSettings

SIGNATURE_HEADER = "X-Incident-FSM-Signature"


class Failover:
    name = "failover"

    def __init__(self, settings: FailoverSettings, *, http: HttpClient,
                 environ: Mapping[str, str],
                 secrets: Callable[[], Iterable[str]] = tuple) -> None:
        if (settings.url is None) == (settings.argv is None):
            raise InvalidInput("actions.failover: set exactly one of url and argv")
        if settings.url is not None and not settings.url.startswith(("https://", "http://")):
            raise InvalidInput("actions.failover.url must be an http(s) URL")
        if settings.timeout <= 0:
            raise InvalidInput("actions.failover.timeout must be greater than 0")
        self.argv = (None if settings.argv is None
                     else checked_argv(settings.argv, what="actions.failover"))
        self.settings = settings
        self.kinds = frozenset(settings.kinds)
        self.tier: Tier = parse_tier(settings.tier, what="actions.failover")
        self.timeout = settings.timeout
        self._http = http
        self._environ = environ
        self._secrets = secrets

    async def run(self, ctx: ActionContext) -> Outcome:
        secrets = tuple(self._secrets())
        if self.argv is not None:
            shown = redact(shlex.join(self.argv), secrets)
            if ctx.dry_run:
                return Outcome.ok(f"would run {shown}", evidence={"dry_run": True, "argv": shown})
            return await run_argv(self.argv, clock=ctx.clock,
                                  limit=min(self.timeout, ctx.remaining()), secrets=secrets)
        assert self.settings.url is not None
        url = self.settings.url
        if ctx.dry_run:
            return Outcome.ok(f"would POST the failover webhook {httpx.URL(url).host}",
                              evidence={"dry_run": True})
        incident = ctx.incident
        body = json.dumps({
            "event": "failover", "incident_id": incident.id, "target": incident.target,
            "kind": incident.kind, "fingerprint": incident.fingerprint,
            "idempotency_key": ctx.idempotency_key,
        }, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": ctx.idempotency_key}
        secret_env = self.settings.secret_env
        if secret_env:
            secret = self._environ.get(secret_env, "")
            if not secret:
                return Outcome.failed(f"env {secret_env} (the failover webhook secret) is not set")
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
            secrets = (*secrets, secret)
        deadline = min(ctx.deadline, ctx.clock.now() + timedelta(seconds=self.timeout))
        reply = await send_with_retry(
            self._http, method="POST", url=url, clock=ctx.clock, deadline=deadline,
            request_timeout=self.timeout, headers=headers, content=body, secrets=secrets,
            what="failover webhook",
        )
        summary = (f"failover webhook accepted ({reply.http_status})" if reply.ok
                   else f"failover webhook failed: {reply.problem}")
        return Outcome(reply.status, summary, evidence=reply.evidence(),
                       output_excerpt=reply.body, http_status=reply.http_status)
