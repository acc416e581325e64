"""PAM through the relay: a standalone agent POSTs each alert, signed, to the host's relay.

The relay (`incident_fsm.notify.relay.pam_relay`) runs inside the PAM service and
hands the message to its connection manager; this channel is its client.
Request: `POST <url>` with the compact JSON body `{"user_ids": [...],
"message": <proactive_alert>}` (the message as in `pam_inprocess`) and the
headers `X-Incident-Fsm-Timestamp: <unix seconds>` and
`X-Incident-Fsm-Signature: sha256=<hex HMAC-SHA256 over "<timestamp>." +
body>`, signed with the secret in the variable `secret_env`, read at each
send and never logged. Each attempt is signed afresh, so a retry is never
refused as a replay.

`check_relay` sends the relay a signed `{"user_ids": [...], "check": true}`:
the relay checks the signature and says who is connected, delivering
nothing (the preflight of `incident-fsm check`).

Outcomes: a 200 whose `delivered_to` names at least one user is delivered;
a 200 with an empty `delivered_to` means no configured user had an open
socket: *unavailable*, the row stays pending without counting an attempt
and is offered again after a wait that doubles from 1 s to 60 s while nobody
is connected (the relay cannot tell us when someone connects). A missing
secret, and 401 (wrong secret, or our clock off by more than the relay's
window) and 503 (the relay has no secret) are configuration problems: the
channel says so at error level and rows wait. Any other status, a timeout
or a transport error is a failed attempt, retried after the dispatcher's
backoff. Guarantee: at least once, the message `id` being the dedupe key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from loguru import logger

from incident_fsm.backoff import Backoff
from incident_fsm.clock import Clock, SystemClock
from incident_fsm.http_body import BodyRefused, exchange
from incident_fsm.lazy import HttpClient, httpx
from incident_fsm.notify.channels.base import Delivery, DeliveryStatus, Outgoing
from incident_fsm.notify.channels.pam_inprocess import proactive_alert
from incident_fsm.notify.channels.webhook import safe_url
from incident_fsm.settings import PamRelaySettings

#: bytes of the relay's answer read at most (it is a short JSON object)
MAX_ANSWER: Final = 64 * 1024
TIMESTAMP_HEADER: Final = "X-Incident-Fsm-Timestamp"
SIGNATURE_HEADER: Final = "X-Incident-Fsm-Signature"
#: How long to wait before asking again after a configuration problem.
CONFIG_RETRY: Final = 60.0
#: While nobody is connected: first wait and cap (s) before offering again.
IDLE_INITIAL: Final = 1.0
IDLE_MAX: Final = 60.0
#: only its arithmetic is used (`delay`): `idle` counts the empty answers
_IDLE: Final = Backoff(IDLE_INITIAL, cap=IDLE_MAX)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value: `sha256=<hex HMAC of "<timestamp>." + body>`."""
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body,
                                hashlib.sha256).hexdigest()


def encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class RelayPamChannel:
    """PAM via the host's relay. One request per notification; nothing to keep up."""

    name = "pam_relay"

    def __init__(self, settings: PamRelaySettings, *, client: HttpClient, clock: Clock,
                 environ: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._complained: str | None = None
        #: consecutive offers that found nobody connected
        self.idle = 0

    async def run(self, ready: Callable[[], None]) -> None:
        return

    def blocked_for(self) -> float:
        return 0.0

    async def send(self, batch: Sequence[Outgoing]) -> Sequence[Delivery]:
        name = self._settings.secret_env
        secret = self._environ.get(name)
        if not secret:
            return [self._config_problem(f"the relay secret variable {name} is not set")]
        outcomes: list[Delivery] = []
        for item in batch:
            outcome = await self._post(item, secret.encode())
            outcomes.append(outcome)
            if outcome.status is not DeliveryStatus.DELIVERED:
                break  # later rows wait: order per incident
        return outcomes

    async def _post(self, item: Outgoing, secret: bytes) -> Delivery:
        s = self._settings
        now = self._clock.now()
        message = proactive_alert(item, category=s.category, timestamp=now.isoformat())
        body = encode({"user_ids": list(s.user_ids), "message": message})
        timestamp = str(int(now.timestamp()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(secret, timestamp, body)}
        where = safe_url(s.url)
        try:
            response, answer = await exchange(
                self._client, method="POST", url=s.url, headers=headers, json=None,
                content=body, time_limit=s.timeout, max_body=MAX_ANSWER)
        except (httpx.TimeoutException, TimeoutError):
            error = f"PAM relay {where} timed out after {s.timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"PAM relay {where} unreachable ({type(exc).__name__})"
        except BodyRefused as exc:
            error = f"PAM relay {where} answered HTTP {exc.status} with a {exc}"
        else:
            if response.status_code in (401, 503):
                return self._config_problem(
                    f"PAM relay {where} answered HTTP {response.status_code} (check that both "
                    f"sides have the same {s.secret_env}, and the clocks)")
            if response.status_code == 200:
                return self._judge(item, answer, where)
            error = f"PAM relay {where} answered HTTP {response.status_code}"
        logger.warning("{} for {}; will retry", error, item.dedupe_key)
        return Delivery.failed(error)

    def _judge(self, item: Outgoing, answer: bytes, where: str) -> Delivery:
        try:
            reached = json.loads(answer).get("delivered_to")
        except (ValueError, AttributeError):
            reached = None
        if not isinstance(reached, list):
            error = f"PAM relay {where} answered 200 without a delivered_to list"
            logger.warning("{} for {}; will retry", error, item.dedupe_key)
            return Delivery.failed(error)
        self._complained = None
        if not reached:
            self.idle += 1
            wait = _IDLE.delay(self.idle)
            return Delivery.unavailable("no configured PAM user has an open socket",
                                       retry_after=wait)
        self.idle = 0
        logger.bind(incident_id=item.incident_id, state=item.payload.get("state"),
                    target=item.payload.get("target")).info(
            "📱 Sent notification to PAM via the relay ({} user(s)): {}", len(reached),
            item.text)
        return Delivery.delivered()

    def _config_problem(self, why: str) -> Delivery:
        # Rows wait rather than burn their attempts on a problem only a human can fix.
        if why != self._complained:
            logger.error("{}: PAM relay notifications stay queued until it is fixed", why)
            self._complained = why
        return Delivery.unavailable(why, retry_after=CONFIG_RETRY)


async def check_relay(settings: PamRelaySettings, *, http: HttpClient,
                      environ: Mapping[str, str],
                      clock: Clock | None = None) -> tuple[bool | None, str]:
    """Reach the relay with a signed check request: reachable, secret accepted, who listens.

    Returns (True: fine, None: works but nobody listens now, False: broken; why).
    """
    secret = environ.get(settings.secret_env)
    if not secret:
        return (False, f"no secret: {settings.secret_env} is not set")
    now = (clock or SystemClock()).now()
    body = encode({"user_ids": list(settings.user_ids), "check": True})
    timestamp = str(int(now.timestamp()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
               SIGNATURE_HEADER: sign(secret.encode(), timestamp, body)}
    try:
        response, answer = await exchange(
            http, method="POST", url=settings.url, headers=headers, json=None, content=body,
            time_limit=settings.timeout, max_body=MAX_ANSWER)
    except (httpx.HTTPError, TimeoutError) as exc:
        return (False, f"unreachable ({type(exc).__name__})")
    except BodyRefused as exc:
        return (False, f"HTTP {exc.status} with a {exc}")
    if response.status_code == 401:
        return (False, f"the relay refused the signature (HTTP 401): check that both "
                       f"sides have the same {settings.secret_env}, and the clocks")
    if response.status_code == 503:
        return (False, "the relay has no secret set (HTTP 503)")
    try:
        listening = json.loads(answer).get("connected") if response.status_code == 200 else None
    except (ValueError, AttributeError):
        listening = None
    if not isinstance(listening, list):
        return (False, f"HTTP {response.status_code}, not a relay's check answer "
                       "(is the URL the relay's mount point?)")
    users = len(settings.user_ids)
    if not listening:
        return (None, f"secret accepted; none of the {users} configured user(s) has "
                      "an open socket now: alerts wait until one connects")
    return (True, f"secret accepted; {len(listening)} of {users} user(s) connected "
                  "(nothing was delivered)")
