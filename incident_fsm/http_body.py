"""Reading the body of an HTTP answer within a bound on its size.

A hostile or broken peer can answer with a body of any size, or one that
never ends. `read_capped` reads a streamed answer (`client.stream(...)`)
and stops at the first byte past the bound with `BodyTooLarge`, which never
carries the body; a Content-Length over the bound is refused before anything
is read. gzip and deflate are inflated here, never more than one byte past
the bound (httpx inflates a whole chunk at once: a few KiB can become many
MiB), so a request read this way asks for `ACCEPT_ENCODING` only.
`exchange` is one request read that way, bounded in time as a whole.
`drain_capped` does the same for a body nobody needs: it counts the bytes
on the wire and keeps none. The bound is on size, not time: httpx's timeout
is per socket read, so a body trickling in passes it, and callers bound the
whole exchange themselves (`anyio.fail_after`).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Final

import anyio

from incident_fsm.lazy import HttpClient, httpx

#: The encodings `read_capped` inflates: what a request read with it may accept.
ACCEPT_ENCODING: Final = "gzip, deflate, identity"


class BodyRefused(Exception):
    """The body cannot be used: too large, corrupt, or in an encoding not inflated here."""

    def __init__(self, reason: str, *, status: int) -> None:
        super().__init__(reason)
        #: the HTTP status of the answer whose body was refused
        self.status = status


class BodyTooLarge(BodyRefused):
    """More than `limit` bytes: reading stopped there."""

    def __init__(self, limit: int, *, status: int, declared: int | None = None) -> None:
        super().__init__(f"response larger than {limit} bytes", status=status)
        self.limit = limit
        #: the size the answer's Content-Length declared, when that is what refused it
        self.declared = declared


async def read_capped(response: httpx.Response, *, limit: int) -> bytes:
    """The (inflated) body of a streamed answer, or `BodyRefused` past `limit` bytes."""
    _check_declared(response, limit)
    body = CappedBody(limit, response.headers.get("content-encoding", ""),
                       status=response.status_code)
    # Raw bytes, inflated by CappedBody: see the module docstring.
    async for chunk in response.aiter_raw():
        body.feed(chunk)
    return body.finish()


async def drain_capped(response: httpx.Response, *, limit: int) -> int:
    """Read a streamed answer's body to its end, keeping none of it; `BodyTooLarge` past `limit`."""
    _check_declared(response, limit)
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, status=response.status_code)
    return size


async def exchange(
    http: HttpClient, *, method: str, url: str, headers: Mapping[str, str] | None,
    json: Any, content: bytes | None, time_limit: float, max_body: int,
) -> tuple[httpx.Response, bytes]:
    """One request and its body, bounded in time by `time_limit` and in size by `max_body`."""
    # fail_after bounds the whole exchange: httpx's own timeout is per socket
    # operation, so a body trickling in byte by byte would pass it.
    with anyio.fail_after(time_limit):
        async with http.stream(
            method, url, headers={"Accept-Encoding": ACCEPT_ENCODING, **(headers or {})},
            json=json, content=content, timeout=httpx.Timeout(time_limit),
        ) as response:
            return response, await read_capped(response, limit=max_body)


def _check_declared(response: httpx.Response, limit: int) -> None:
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, status=response.status_code, declared=int(declared))


class CappedBody:
    """Collects a body, inflating gzip/deflate itself, and refuses more than `limit` bytes."""

    def __init__(self, limit: int, encoding: str, *, status: int) -> None:
        self.limit = limit
        self.status = status
        self._parts: list[bytes] = []
        self._size = 0
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._inflate: zlib._Decompress | None = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47: a gzip or zlib header, detected; HTTP "deflate" is zlib-wrapped (15).
            self._inflate = zlib.decompressobj(47 if encoding != "deflate" else 15)
        else:
            raise BodyRefused(f"unsupported Content-Encoding {encoding[:30]!r}", status=status)

    def feed(self, chunk: bytes) -> None:
        if self._inflate is None:
            self._add(chunk)
            return
        try:
            # max_length: never inflate more than one byte past the bound.
            self._add(self._inflate.decompress(chunk, self.limit - self._size + 1))
        except zlib.error:
            raise BodyRefused("compressed response is corrupt", status=self.status) from None
        if self._inflate.unconsumed_tail:
            raise BodyTooLarge(self.limit, status=self.status)

    def finish(self) -> bytes:
        return b"".join(self._parts)

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            raise BodyTooLarge(self.limit, status=self.status)
        self._parts.append(data)
