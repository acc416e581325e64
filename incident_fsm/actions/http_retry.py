"""One HTTP request, retried politely until it succeeds, fails for good, or the deadline comes.

The retry rules the remote actions share: 2xx is success; 429 waits as long
as `Retry-After` says; 5xx, timeouts and connection errors back off
exponentially (1 s, 2 s, 4 s ... capped at 30 s); any other status fails at
once (401/403 bad key, 404 unknown service: retrying cannot help). Retrying
goes on until the deadline (the incident's), and the reply is then
`timed_out`, so the incident escalates; no try starts after it. Every wait
goes through the injected clock.
Nothing here logs or returns request headers, so credentials stay out of
logs and outcomes.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
from loguru import logger

from ..clock import Clock
from .base import OutcomeStatus
from .redaction import excerpt

#: Attempts per request at most, whatever the deadline (a bound on every loop).
MAX_ATTEMPTS: Final = 50
BACKOFF_START: Final = 1.0
BACKOFF_CAP: Final = 30.0
#: Longest Retry-After honoured; a longer one is treated as "not before the deadline".
RETRY_AFTER_CAP: Final = 3600.0
BODY_EXCERPT: Final = 500


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


def backoff(attempt: int) -> float:
    """The wait after failed attempt number `attempt` (1-based)."""
    return float(min(BACKOFF_CAP, BACKOFF_START * 2 ** (attempt - 1)))


def retry_after(response: httpx.Response, now: datetime) -> float | None:
    """Seconds `Retry-After` asks for (delta-seconds or an HTTP date), if usable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP)


async def send_with_retry(
    http: httpx.AsyncClient,
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
        attempt += 1
        try:
            response = await http.request(
                method, url, headers=dict(headers or {}), json=json, content=content,
                timeout=httpx.Timeout(min(request_timeout, remaining)),
            )
        except httpx.TimeoutException:
            problem, wait = "request timed out", backoff(attempt)
        except httpx.TransportError as exc:
            problem, wait = f"connection failed ({type(exc).__name__})", backoff(attempt)
        else:
            last_status = response.status_code
            body = excerpt(response.text, secrets, limit=BODY_EXCERPT)
            if response.is_success:
                return HttpReply(OutcomeStatus.OK, last_status, attempt, body=body,
                                 data=_json_or_none(response))
            if last_status == 429:
                asked = retry_after(response, clock.now())
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


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
