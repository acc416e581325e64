"""The webhook channel: POSTs each notification as JSON, signed with HMAC-SHA256 over the body.

Request: `POST <url>` with the body `{"dedupe_key", "incident_id", "text",
...payload fields}` (compact JSON, sorted keys) and the headers
`X-Incident-FSM-Signature: sha256=<hex HMAC of the exact body bytes>` (when
`secret_env` is set), `X-Incident-FSM-Dedupe-Key` and `X-Incident-FSM-Attempt`.

A 2xx answer is delivered. 429 is retried after its `Retry-After` (seconds
or an HTTP date); any other status, a timeout or a transport error is
retried after the dispatcher's backoff, up to the attempt bound. Guarantee:
at least once -- a lost 2xx, or a crash between the answer and the commit,
sends the same body again with the same dedupe key; receivers that must act
once deduplicate on it. The secret is read from its environment variable at
each send and never logged; URLs are logged without query or credentials.

The answer's body is never used: it is read to its end (so the connection
can be reused) but at most `MAX_RESPONSE` bytes of it, the whole exchange
within `timeout`, and none of it is kept. A bigger body is a failure
("response larger than N bytes") even with a 2xx: the peer is broken, and
resending is safe.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import anyio
from loguru import logger

from incident_fsm.clock import Clock
from incident_fsm.http_body import BodyTooLarge, drain_capped
from incident_fsm.lazy import HttpClient, httpx
from incident_fsm.notify.channels.base import Delivery, DeliveryStatus, Outgoing
from incident_fsm.retry_after import retry_after_seconds
from incident_fsm.settings import WebhookSettings

SIGNATURE_HEADER = "X-Incident-FSM-Signature"
DEDUPE_HEADER = "X-Incident-FSM-Dedupe-Key"
ATTEMPT_HEADER = "X-Incident-FSM-Attempt"
#: A Retry-After beyond this is taken as this (a day): the attempt bound still applies.
MAX_RETRY_AFTER = 86400.0
#: How long to wait before asking again when the secret is missing from the environment.
CONFIG_RETRY = 60.0
#: The most of an answer's body that is read (and thrown away).
MAX_RESPONSE = 64 * 1024


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for `body`: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def body_of(item: Outgoing) -> bytes:
    """The exact JSON bytes that are sent (and signed) for one notification."""
    document = {**item.payload, "incident_id": item.incident_id, "dedupe_key": item.dedupe_key,
                "text": item.text}
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def safe_url(url: str) -> str:
    """The URL without credentials, query or fragment, for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookChannel:
    name = "webhook"

    def __init__(self, settings: WebhookSettings, *, client: HttpClient, clock: Clock,
                 environ: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._missing_secret_logged = False

    async def run(self, ready: Callable[[], None]) -> None:
        return  # one request per notification: nothing to keep up

    def blocked_for(self) -> float:
        return 0.0

    async def send(self, batch: Sequence[Outgoing]) -> Sequence[Delivery]:
        secret = self._secret()
        if isinstance(secret, Delivery):
            return [secret]
        outcomes: list[Delivery] = []
        for item in batch:
            outcome = await self._post(item, secret)
            outcomes.append(outcome)
            if outcome.status is not DeliveryStatus.DELIVERED:
                break  # later rows wait: order per incident
        return outcomes

    def _secret(self) -> bytes | Delivery | None:
        name = self._settings.secret_env
        if name is None:
            return None
        value = self._environ.get(name)
        if not value:
            # Sending unsigned would be worse than waiting: keep the rows queued.
            if not self._missing_secret_logged:
                logger.error("webhook secret variable {} is not set: webhook notifications stay "
                             "queued until it is", name)
                self._missing_secret_logged = True
            return Delivery.unavailable(f"webhook secret variable {name} is not set",
                                       retry_after=CONFIG_RETRY)
        self._missing_secret_logged = False
        return value.encode()

    async def _post(self, item: Outgoing, secret: bytes | None) -> Delivery:
        body = body_of(item)
        headers = {"Content-Type": "application/json", DEDUPE_HEADER: item.dedupe_key,
                   ATTEMPT_HEADER: str(item.attempt)}
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        where = safe_url(self._settings.url)
        try:
            response = await self._exchange(body, headers)
        except (httpx.TimeoutException, TimeoutError):
            error = f"webhook {where} timed out after {self._settings.timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"webhook {where} unreachable ({type(exc).__name__})"
        except BodyTooLarge as exc:
            error = f"webhook {where} answered HTTP {exc.status} with a {exc}"
        else:
            if response.is_success:
                return Delivery.delivered()
            error = f"webhook {where} answered HTTP {response.status_code}"
            if response.status_code == 429:
                wait = retry_after_seconds(response.headers.get("Retry-After"),
                                           self._clock.now(), cap=MAX_RETRY_AFTER)
                logger.warning("{}; retrying in {}", error,
                               "the dispatcher's backoff" if wait is None else f"{wait:g} s")
                return Delivery.failed(error, retry_after=wait)
        logger.warning("{} for {}", error, item.dedupe_key)
        return Delivery.failed(error)

    async def _exchange(self, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST `body`; the answer, its body read (bounded) and dropped."""
        timeout = self._settings.timeout
        # fail_after bounds the whole exchange: httpx's own timeout is per socket
        # operation, so a body trickling in byte by byte would pass it.
        with anyio.fail_after(timeout):
            async with self._client.stream("POST", self._settings.url, content=body,
                                           headers=headers, timeout=timeout) as response:
                await drain_capped(response, limit=MAX_RESPONSE)
                return response
