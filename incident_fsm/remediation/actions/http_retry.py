"""One HTTP request, retried politely until it succeeds, fails for good, or the deadline comes.

The retry rules the remote actions share: 2xx is success; 429 waits as long
as `Retry-After` says (or, without it, until `Ratelimit-Reset`); 5xx,
timeouts and connection errors back off exponentially (1 s, 2 s, 4 s ...
capped at 30 s); any other status fails at once (401/403 bad key, 404
unknown service: retrying cannot help). Retrying goes on until the deadline
(the incident's), and the reply is then `timed_out`, so the incident
escalates; no try starts after it. Every wait goes through the injected
clock.

A `RateGate` carries what the far side says about its quota between
requests: once an answer says `Ratelimit-Remaining: 0`, or a 429 says how
long to wait, no request through the same gate starts before the window
resets -- within the deadline, or not at all. Callers share one gate per
quota (e.g. per API key), so one action's spent quota holds back the others.

An answer's body is read up to `max_body` bytes (1 MiB by default) and the
whole exchange, body included, within the request timeout: a bigger body
fails at once ("response larger than N bytes", never retried: the same peer
would send the same again), and neither it nor an excerpt of it is kept; a
body still arriving at the timeout counts as a timeout.

Nothing here logs or returns request headers, so credentials stay out of
logs and outcomes.
"""

from __future__ import annotations

import json as jsonlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from loguru import logger

from incident_fsm.backoff import Backoff
from incident_fsm.clock import Clock
from incident_fsm.http_body import BodyRefused, exchange
from incident_fsm.lazy import HttpClient, httpx
from incident_fsm.remediation.actions.base import OutcomeStatus
from incident_fsm.remediation.actions.redaction import excerpt
from incident_fsm.retry_after import retry_after_seconds

#: Attempts per request at most, whatever the deadline (a bound on every loop).
MAX_ATTEMPTS: Final = 50
BACKOFF_START: Final = 1.0
BACKOFF_CAP: Final = 30.0
#: Longest Retry-After honoured; a longer one is treated as "not before the deadline".
RETRY_AFTER_CAP: Final = 3600.0
BODY_EXCERPT: Final = 500
#: The most body bytes read from one answer (inflated); more is a failure.
MAX_BODY: Final = 1024 * 1024
#: A `Ratelimit-Reset` above this is a Unix time, not seconds (some APIs send one).
_EPOCH_SECONDS: Final = 1_000_000_000.0


@dataclass(frozen=True)
class HttpReply:
    """How a retried request ended. `problem` explains a failure; `data` is a success's JSON."""

    status: OutcomeStatus
    http_status: int | None
    attempts: int
    problem: str = ""
    body: str = ""
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.status is OutcomeStatus.OK

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attempts": self.attempts}
        if self.body:
            out["response_excerpt"] = self.body
        return out


#: 1 s, 2 s, 4 s ... at most 30 s; only its arithmetic is used (`delay`)
_BACKOFF: Final = Backoff(BACKOFF_START, cap=BACKOFF_CAP)


def backoff(attempt: int) -> float:
    """The wait after failed attempt number `attempt` (1-based)."""
    return _BACKOFF.delay(attempt)


def retry_after(response: httpx.Response, now: datetime) -> float | None:
    """Seconds `Retry-After` asks for (delta-seconds or an HTTP date), if usable."""
    return retry_after_seconds(response.headers.get("retry-after"), now, cap=RETRY_AFTER_CAP)


def ratelimit_reset(response: httpx.Response, now: datetime) -> float | None:
    """Seconds until the rate-limit window resets (`Ratelimit-Reset`), if usable."""
    try:
        seconds = float(response.headers.get("ratelimit-reset", "").strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    if seconds > _EPOCH_SECONDS:
        seconds -= now.timestamp()
    return min(max(0.0, seconds), RETRY_AFTER_CAP)


def ratelimit_remaining(response: httpx.Response) -> int | None:
    """Requests left in the window (`Ratelimit-Remaining`), if the answer says."""
    try:
        return int(response.headers.get("ratelimit-remaining", "").strip())
    except ValueError:
        return None


class RateGate:
    """When the next request spending one quota may start, from what the answers said.

    Share one per quota (one API key, one kind of request) across everything
    that spends it in the process. A hold only ever grows until it has
    passed: an answer that still shows quota left may have been sent before
    the one that spent it.
    """

    def __init__(self) -> None:
        self._not_before: datetime | None = None

    def hold(self, now: datetime) -> float:
        """Seconds to wait before the next request (0: go now)."""
        if self._not_before is None:
            return 0.0
        return max(0.0, (self._not_before - now).total_seconds())

    def block(self, now: datetime, seconds: float) -> None:
        """No request before `now + seconds`."""
        until = now + timedelta(seconds=seconds)
        if self._not_before is None or until > self._not_before:
            self._not_before = until

    def observe(self, response: httpx.Response, now: datetime) -> None:
        """Learn from an answer: a spent window holds every request until it resets."""
        if response.status_code == 429:
            asked = retry_after(response, now)
            asked = ratelimit_reset(response, now) if asked is None else asked
            if asked is not None:
                self.block(now, asked)
            return
        remaining = ratelimit_remaining(response)
        reset = ratelimit_reset(response, now)
        if remaining is not None and remaining <= 0 and reset is not None:
            self.block(now, reset)


async def send_with_retry(
    http: HttpClient,
    *,
    method: str,
    url: str,
    clock: Clock,
    deadline: datetime,
    request_timeout: float,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    content: bytes | None = None,
    secrets: Iterable[str] = (),
    what: str = "",
    gate: RateGate | None = None,
    max_body: int = MAX_BODY,
) -> HttpReply:
    """Send until a final answer or the deadline; see the module docstring for the rules."""
    label = what or f"{method} {httpx.URL(url).path}"
    secrets = tuple(secrets)
    last_status: int | None = None
    problem = "no attempt made"
    attempt = 0
    while attempt < MAX_ATTEMPTS:
        remaining = (deadline - clock.now()).total_seconds()
        if remaining <= 0:
            break
        hold = 0.0 if gate is None else gate.hold(clock.now())
        if hold >= remaining:
            problem = f"rate limit spent: the window resets in {hold:g} s"
            logger.warning("{}: {}, after the deadline; not sent", label, problem)
            await clock.sleep(remaining)
            break
        if hold > 0:
            logger.info("{}: rate limit spent; waiting {:g} s for the window to reset", label,
                        hold)
            await clock.sleep(hold)
            remaining = (deadline - clock.now()).total_seconds()
            if remaining <= 0:
                break
        attempt += 1
        try:
            response, raw = await exchange(
                http, method=method, url=url, headers=headers, json=json, content=content,
                time_limit=min(request_timeout, remaining), max_body=max_body,
            )
        except (httpx.TimeoutException, TimeoutError):
            problem, wait = "request timed out", backoff(attempt)
        except httpx.TransportError as exc:
            problem, wait = f"connection failed ({type(exc).__name__})", backoff(attempt)
        except BodyRefused as exc:
            logger.warning("{}: {} (HTTP {}); not read further", label, exc, exc.status)
            return HttpReply(OutcomeStatus.FAILED, exc.status, attempt,
                             problem=f"{exc} (HTTP {exc.status})")
        else:
            last_status = response.status_code
            if gate is not None:
                gate.observe(response, clock.now())
            body = excerpt(raw, secrets, limit=BODY_EXCERPT)
            if response.is_success:
                return HttpReply(OutcomeStatus.OK, last_status, attempt, body=body,
                                 data=_json_or_none(raw))
            if last_status == 429:
                asked = retry_after(response, clock.now())
                if asked is None:
                    asked = ratelimit_reset(response, clock.now())
                problem = "rate limited (429)"
                wait = backoff(attempt) if asked is None else asked
            elif last_status >= 500:
                problem, wait = f"server error ({last_status})", backoff(attempt)
            else:
                return HttpReply(OutcomeStatus.FAILED, last_status, attempt,
                                 problem=_final_problem(last_status), body=body)
        remaining = (deadline - clock.now()).total_seconds()
        if wait >= remaining:
            # No try fits before the deadline; the incident escalates when it passes.
            logger.warning("{}: {} (attempt {}); no retry fits before the deadline", label,
                           problem, attempt)
            await clock.sleep(remaining)
            break
        logger.warning("{}: {} (attempt {}), retrying in {:g} s", label, problem, attempt, wait)
        await clock.sleep(wait)
    if attempt >= MAX_ATTEMPTS:
        return HttpReply(OutcomeStatus.FAILED, last_status, attempt,
                         problem=f"{problem}; gave up after {attempt} attempts")
    return HttpReply(OutcomeStatus.TIMED_OUT, last_status, attempt,
                     problem=f"{problem}; still failing at the deadline")


def _final_problem(status: int) -> str:
    if status in (401, 403):
        return f"the API key was refused ({status})"
    if status == 404:
        return "not found (404)"
    return f"request refused ({status})"


def _json_or_none(body: bytes) -> Any:
    try:
        return jsonlib.loads(body)
    except ValueError:
        return None
