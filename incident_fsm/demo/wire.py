"""The simulated service's HTTP framing: reading a request, the reason
phrases, Render's rate-limit headers and the `huge` fault's body.

Kept apart from `demo.simulator` so the service's behaviour reads without the
bytes on the wire in the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

MAX_REQUEST = 64 * 1024
#: The `huge` fault: 50 MB of JSON, `{"pad": "xxx..."}`.
HUGE_PAD = 50 * 1024**2
_HUGE_OPEN, _HUGE_CLOSE = b'{"pad": "', b'"}'
_HUGE_PIECE = 64 * 1024


@dataclass(frozen=True)
class RenderQuota:
    """One Render answer's rate-limit headers."""

    limit: int
    remaining: int
    #: seconds until the key's window resets
    reset: int
    exceeded: bool

    def header_lines(self, *, retry_after: bool) -> str:
        lines = (f"Ratelimit-Limit: {self.limit}\r\nRatelimit-Remaining: {self.remaining}\r\n"
                 f"Ratelimit-Reset: {self.reset}\r\n")
        if retry_after:
            lines += f"Retry-After: {self.reset if self.exceeded else 1}\r\n"
        return lines


def huge_length() -> int:
    return len(_HUGE_OPEN) + HUGE_PAD + len(_HUGE_CLOSE)


def huge_pieces() -> Iterator[bytes]:
    """The `huge` body, piece by piece: 64 KiB in memory, never 50 MB."""
    yield _HUGE_OPEN
    piece = b"x" * _HUGE_PIECE
    left = HUGE_PAD
    while left > 0:
        yield piece if left >= _HUGE_PIECE else piece[:left]
        left -= _HUGE_PIECE
    yield _HUGE_CLOSE


REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}


async def read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_REQUEST:
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, _version = lines[0].split(" ", 2)
    except ValueError:
        return None
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length", "0") or 0), MAX_REQUEST)
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body
