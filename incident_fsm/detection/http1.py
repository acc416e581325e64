"""A target's health GETs over kept-alive HTTP/1.1 connections, without httpx's layers.

At a thousand targets the poll's GET is the agent's main cost, and httpx
spends about 0.8 ms of CPU on each here, most of it on what a poll never
uses (auth and redirect hooks, cookies, request and response models, the
pool's bookkeeping, h11's event objects); the bare exchange costs a fifth of
that. `Http1Client` does only what a health poll needs: GET on the target's
own origin, HTTP/1.1 keep-alive, a Content-Length, chunked or read-to-close
body, gzip and deflate inflated under the same size bound as `http_body`,
and TLS with the context httpx would use (`TargetClients`). It follows no
redirect (a poll reports one), keeps no cookies and knows no proxy: the
agent reads through httpx when the environment names a proxy or the base
URL carries credentials (`suits`).

A kept-alive connection the server closed meanwhile is replaced once, when
not one byte of the answer came (a GET is safe to send again); any other
failure closes the connection, so a half-read answer is never reused. The
caller bounds each exchange in time (`probe.fetch`); a cancelled exchange
closes its connection too.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Final, NamedTuple
from urllib.parse import quote, urlsplit

from incident_fsm.http_body import ACCEPT_ENCODING, BodyTooLarge, CappedBody

#: The most bytes of status line and headers read before an answer is refused.
MAX_HEAD: Final = 64 * 1024
#: The longest chunk-size line (with extensions) read before a chunked body is refused.
MAX_CHUNK_LINE: Final = 1024
#: The environment variables by which httpx would route a request through a proxy.
PROXY_VARIABLES: Final = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_NO_BODY: Final = (204, 304)


class TransportFailed(Exception):
    """No usable answer: no connection, one closed early, or a peer not speaking HTTP/1.x."""


class _Stale(TransportFailed):
    """The connection closed before a byte of the answer came (a kept-alive one may be retried)."""


class Answer(NamedTuple):
    """An HTTP answer read whole: status, headers (lower-case names) and inflated body."""

    status: int
    headers: dict[str, str]
    body: bytes


def suits(base_url: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `Http1Client` reads `base_url` as httpx would: no proxy, no credentials."""
    parts = urlsplit(base_url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return False
    return not any(environ.get(v) or environ.get(v.lower()) for v in PROXY_VARIABLES)


# Where an answer's reading stands: the head, a body by length, chunked parts, to the close.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _TO_CLOSE, _DONE = range(8)


class _Reading:
    """One answer as its bytes arrive: the framing state and the body collected so far."""

    __slots__ = (
        "body",
        "future",
        "headers",
        "keep_alive",
        "limit",
        "received",
        "remaining",
        "state",
        "status",
    )

    def __init__(self, future: asyncio.Future[Answer], limit: int) -> None:
        self.future = future
        self.limit = limit
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: CappedBody | None = None
        self.state = _HEAD
        self.remaining = 0
        self.keep_alive = False
        self.received = False

    def advance(self, buf: bytearray) -> None:
        """Consume what `buf` holds of the answer; set the future once it is whole."""
        while self.state != _DONE:
            if self.state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise TransportFailed(f"RemoteProtocolError: headers exceed {MAX_HEAD} "
                                              "bytes")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._head(head)
            elif self.state == _LENGTH or self.state == _CHUNK_DATA:
                if not buf:
                    return
                take = min(self.remaining, len(buf))
                self._feed(bytes(buf[:take]))
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self.state = _DONE if self.state == _LENGTH else _CHUNK_END
            elif self.state == _TO_CLOSE:
                if buf:
                    self._feed(bytes(buf))
                    buf.clear()
                return
            else:
                line = _line(buf)
                if line is None:
                    return
                self._chunk_line(line)
        if buf:
            # Bytes past the answer: the connection is out of step, so not reused.
            self.keep_alive = False
        self.finish()

    def finish(self) -> None:
        """Resolve the future with the answer read (at its end, or at the close)."""
        assert self.body is not None
        if not self.future.done():
            self.future.set_result(Answer(self.status, self.headers, self.body.finish()))

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if (version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit()
                or rest[3:4] not in (b"", b" ")):
            raise TransportFailed(
                f"RemoteProtocolError: not an HTTP/1.x answer: {lines[0][:60]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            name, sep, value = raw.partition(b":")
            if not sep or not name or name != name.strip():
                raise TransportFailed(f"RemoteProtocolError: malformed header {raw[:60]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if 100 <= status < 200:
            if status == 101:
                raise TransportFailed("RemoteProtocolError: the server switched protocols")
            return  # an interim answer: the real one follows
        self.status, self.headers = status, headers
        self.body = CappedBody(self.limit, headers.get("content-encoding", ""), status=status)
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self.keep_alive = version == b"HTTP/1.1" and "close" not in tokens
        coding = headers.get("transfer-encoding", "")
        if status in _NO_BODY:
            self.state = _DONE
        elif coding:
            if coding.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self.state = _CHUNK_SIZE
            else:
                self.state, self.keep_alive = _TO_CLOSE, False
        elif "content-length" in headers:
            self.remaining = _content_length(headers["content-length"])
            if self.remaining > self.limit:
                raise BodyTooLarge(self.limit, status=status, declared=self.remaining)
            self.state = _LENGTH if self.remaining else _DONE
        else:
            self.state, self.keep_alive = _TO_CLOSE, False

    def _chunk_line(self, line: bytes) -> None:
        if self.state == _CHUNK_END:
            if line:
                raise TransportFailed("RemoteProtocolError: a chunk did not end with CRLF")
            self.state = _CHUNK_SIZE
        elif self.state == _CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            try:
                self.remaining = int(size, 16)
            except ValueError:
                raise TransportFailed(
                    f"RemoteProtocolError: bad chunk size {size[:20]!r}") from None
            if self.remaining < 0:
                raise TransportFailed("RemoteProtocolError: negative chunk size")
            self.state = _CHUNK_DATA if self.remaining else _TRAILER
        elif not line:  # the empty line after the trailers
            self.state = _DONE

    def _feed(self, data: bytes) -> None:
        assert self.body is not None
        self.body.feed(data)


def _line(buf: bytearray) -> bytes | None:
    end = buf.find(b"\r\n")
    if end < 0:
        if len(buf) > MAX_CHUNK_LINE:
            raise TransportFailed("RemoteProtocolError: a chunk line is too long")
        return None
    line = bytes(buf[:end])
    del buf[:end + 2]
    return line


def _content_length(value: str) -> int:
    # Repeated headers were joined with ", ": equal copies are one length, others a lie.
    copies = {v.strip() for v in value.split(",")}
    if len(copies) != 1 or not (text := copies.pop()).isdigit():
        raise TransportFailed(f"RemoteProtocolError: bad Content-Length {value[:40]!r}")
    return int(text)


#: How many bytes one socket read may bring (a health answer is far smaller).
RECEIVE_SIZE: Final = 64 * 1024


class _ReceiveBuffer(threading.local):
    """The buffer every connection of a thread's event loop reads its socket into.

    With `asyncio.Protocol` the loop allocates 256 KiB for each read and shrinks it
    to what came, for every poll of every target. One buffer serves every
    connection: the loop runs one read at a time (TLS's included), and
    `buffer_updated` copies out what it got before the next."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(RECEIVE_SIZE))


_receive = _ReceiveBuffer()


class _Connection(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection; reads the answer to the one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._reading: _Reading | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive.view

    def buffer_updated(self, nbytes: int) -> None:
        reading = self._reading
        if reading is None:
            # Bytes nobody asked for: out of step. Closing a TLS connection reads
            # again into the shared buffer, so nothing here may touch it after this.
            self.close()
            return
        reading.received = True
        self._buf += _receive.view[:nbytes]
        try:
            reading.advance(self._buf)
        except Exception as exc:  # the answer is refused; the future says why
            if not reading.future.done():
                reading.future.set_exception(exc)

    def eof_received(self) -> bool:
        return False  # close; connection_lost settles what was being read

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reading = self._reading
        if reading is None or reading.future.done():
            return
        if reading.state == _TO_CLOSE:
            reading.finish()
        elif not reading.received:
            reading.future.set_exception(
                _Stale("RemoteProtocolError: the server closed the connection without answering"))
        else:
            reading.future.set_exception(
                TransportFailed("RemoteProtocolError: the connection closed before the answer "
                                "ended"))

    async def exchange(self, request: bytes, limit: int) -> tuple[Answer, bool]:
        """Send `request`; the answer and whether the connection may carry another."""
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            raise _Stale("RemoteProtocolError: the connection was closed")
        reading = _Reading(asyncio.get_running_loop().create_future(), limit)
        self._reading = reading
        self.used = True
        try:
            self.transport.write(request)
            answer = await reading.future
        finally:
            self._reading = None
        return answer, reading.keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Client:
    """GETs on one origin (a target's base URL), keeping up to `max_connections` alive."""

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None = None,
                 keepalive_expiry: float = 60.0, max_connections: int = 8,
                 user_agent: str = "incident-fsm") -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.hostname
        self._port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self._tls = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" \
            else None
        self._head = (f"Host: {parts.netloc}\r\nAccept: application/json\r\n"
                      f"Accept-Encoding: {ACCEPT_ENCODING}\r\nUser-Agent: {user_agent}\r\n"
                      "\r\n").encode("ascii")
        self.keepalive_expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._requests: dict[str, bytes] = {}
        self._closed = False
        #: connections opened so far (a kept-alive one is opened once)
        self.connections_opened = 0

    async def get(self, url: str, *, max_body: int) -> Answer:
        """GET `url` (on this client's origin); `TransportFailed` or `BodyRefused` if unusable."""
        request = self._requests.get(url) or self._request_for(url)
        async with self._slots:
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._send(conn, request, max_body)
                except _Stale:
                    pass  # closed by the server while idle: once more, on a new connection
            return await self._send(await self._connect(), request, max_body)

    async def aclose(self) -> None:
        """Close the idle connections; one in use closes when its exchange ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _request_for(self, url: str) -> bytes:
        if not url.startswith(self._origin) or url[len(self._origin):][:1] not in ("/", ""):
            raise ValueError(f"{url!r} is not on {self._origin}")
        parts = urlsplit(url)
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        request = f"GET {target} HTTP/1.1\r\n".encode("ascii") + self._head
        self._requests[url] = request
        return request

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_expiry:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection, self._host, self._port, ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise TransportFailed(f"ConnectError: {exc}"[:160]) from None
        self.connections_opened += 1
        return conn

    async def _send(self, conn: _Connection, request: bytes, limit: int) -> Answer:
        try:
            answer, reusable = await conn.exchange(request, limit)
        except BaseException:
            conn.close()
            raise
        if reusable and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return answer
