"""Probes: how a target's health is read, over HTTP or, as a fallback, from this host.

`Probe` is the plug-in interface (one coroutine, `probe()`, returning a
`HealthSnapshot` or a `ProbeFailure`, never raising for anything the target
does). `HttpProbe` reads the target's health endpoints concurrently through
an injected `httpx.AsyncClient`, each request bounded in time (connect,
headers and the whole body: a trickling body cannot hold it) and in size (a
50 MB body is cut off after the cap and is a failure), and combines the
answers: one failing endpoint is not a failed target if another answers.
`LocalProbe` reads memory, disk and cpu of the host the agent runs on with
psutil in a worker thread; its snapshots say `source="local"`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol

import anyio
import httpx
import psutil

from .health import HealthSnapshot, ProbeFailure, ProbeResult, combine, parse_health

#: The most body bytes read from one health endpoint (decoded); more is a failure.
MAX_BODY: Final = 256 * 1024
LOCAL_SOURCE: Final = "local"


class Probe(Protocol):
    """Reads one target's health. Must not raise for anything the target does."""

    async def probe(self) -> ProbeResult: ...


class HttpProbe:
    """Reads `endpoints` under `base_url` concurrently and combines what answers."""

    def __init__(
        self,
        *,
        base_url: str,
        endpoints: Sequence[str],
        client: httpx.AsyncClient,
        timeout: float = 5.0,
        max_body: int = MAX_BODY,
    ) -> None:
        if not endpoints:
            raise ValueError("an HTTP probe needs at least one endpoint")
        if timeout <= 0 or max_body <= 0:
            raise ValueError("timeout and max_body must be positive")
        self.base_url = base_url.rstrip("/")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.max_body = max_body
        self._client = client

    @property
    def requests_per_probe(self) -> int:
        return len(self.endpoints)

    async def probe(self) -> ProbeResult:
        results: list[ProbeResult] = [
            ProbeFailure(path, "not probed") for path in self.endpoints
        ]

        async def read(index: int, path: str) -> None:
            results[index] = await self.read_endpoint(path)

        async with anyio.create_task_group() as tg:
            for index, path in enumerate(self.endpoints):
                tg.start_soon(read, index, path)
        return combine(results)

    async def read_endpoint(self, path: str) -> ProbeResult:
        """GET one endpoint and parse it; every failure becomes a `ProbeFailure`."""
        try:
            fetched = await fetch(self._client, self.base_url + path, time_limit=self.timeout,
                                  max_body=self.max_body)
        except FetchFailed as exc:
            return ProbeFailure(path, exc.reason, exc.latency_ms)
        if not 200 <= fetched.status < 300:
            return ProbeFailure(path, f"HTTP {fetched.status}", fetched.latency_ms)
        return parse_health(fetched.body, source=path, latency_ms=fetched.latency_ms)


@dataclass(frozen=True)
class Fetched:
    """An HTTP answer read within the time and size bounds."""

    status: int
    body: bytes
    latency_ms: float


class FetchFailed(Exception):
    """No usable answer: timeout, transport error, oversized or undecodable body."""

    def __init__(self, reason: str, latency_ms: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.latency_ms = latency_ms


async def fetch(client: httpx.AsyncClient, url: str, *, time_limit: float,
                max_body: int = MAX_BODY) -> Fetched:
    """GET `url`, the whole exchange bounded by `time_limit` s and the body by `max_body` bytes.

    The body of a non-2xx answer is read too (bounded the same way): some
    readiness endpoints explain themselves in it.
    """
    started = anyio.current_time()
    try:
        # fail_after bounds the whole exchange: httpx's own timeout is per
        # socket operation, so a body trickling in byte by byte would pass it.
        with anyio.fail_after(time_limit):
            status, body = await _read(client, url, io_limit=time_limit, max_body=max_body)
    except TimeoutError:
        raise FetchFailed(f"timed out after {time_limit:g}s", ms_since(started)) from None
    except httpx.HTTPError as exc:
        raise FetchFailed(describe_error(exc), ms_since(started)) from None
    except _Refused as exc:
        raise FetchFailed(str(exc), ms_since(started)) from None
    return Fetched(status, body, ms_since(started))


async def _read(client: httpx.AsyncClient, url: str, *, io_limit: float,
                max_body: int) -> tuple[int, bytes]:
    headers = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate, identity"}
    async with client.stream("GET", url, headers=headers, timeout=io_limit) as response:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            raise _Refused(f"body of {int(declared)} bytes exceeds the {max_body} byte cap")
        reader = _CappedBody(max_body, response.headers.get("content-encoding", ""))
        # Raw bytes, inflated here: httpx would inflate a compressed chunk
        # without a bound before our cap could see it.
        async for chunk in response.aiter_raw():
            reader.feed(chunk)
        return response.status_code, reader.finish()


class LocalProbe:
    """Reads this host: memory, the fullest of `mounts`, and cpu since the last reading."""

    def __init__(self, *, mounts: Sequence[str] = ("/",), timeout: float = 5.0) -> None:
        if not mounts:
            raise ValueError("a local probe needs at least one mount point")
        self.mounts = tuple(mounts)
        self.timeout = timeout
        # The first cpu_percent(None) has nothing to compare with and says 0.0;
        # prime it so the first real reading means something.
        psutil.cpu_percent(interval=None)

    async def probe(self) -> ProbeResult:
        started = anyio.current_time()
        try:
            with anyio.fail_after(self.timeout):
                # Abandoned on timeout: a hung mount (stale NFS) must not stall the monitor.
                result = await anyio.to_thread.run_sync(self._read, abandon_on_cancel=True)
        except TimeoutError:
            return ProbeFailure(LOCAL_SOURCE, f"reading the host timed out after "
                                              f"{self.timeout:g}s", ms_since(started))
        return replace(result, latency_ms=ms_since(started))

    def _read(self) -> ProbeResult:
        try:
            memory = float(psutil.virtual_memory().percent)
            disks = {mount: float(psutil.disk_usage(mount).percent) for mount in self.mounts}
            cpu = float(psutil.cpu_percent(interval=None))
        except OSError as exc:
            return ProbeFailure(LOCAL_SOURCE, f"reading the host failed: "
                                              f"{type(exc).__name__}: {exc.strerror or exc}")
        fullest = max(disks, key=lambda m: disks[m])
        return HealthSnapshot(
            source=LOCAL_SOURCE, memory_pct=memory, disk_pct=disks[fullest], cpu_pct=cpu,
            components={f"disk:{m}": f"{p:.1f}%" for m, p in disks.items()},
        )


class _Refused(Exception):
    """Internal: the answer is unusable before parsing (status, size, encoding)."""


class _CappedBody:
    """Collects a body, inflating gzip/deflate itself, and refuses more than `cap` bytes."""

    def __init__(self, cap: int, encoding: str) -> None:
        self.cap = cap
        self._parts: list[bytes] = []
        self._size = 0
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._inflate: zlib._Decompress | None = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47: gzip or zlib header, detected; HTTP "deflate" is zlib-wrapped (15).
            self._inflate = zlib.decompressobj(47 if encoding != "deflate" else 15)
        else:
            raise _Refused(f"unsupported Content-Encoding {encoding[:30]!r}")

    def feed(self, chunk: bytes) -> None:
        if self._inflate is None:
            self._add(chunk)
            return
        try:
            # max_length: never inflate more than one byte past the cap.
            self._add(self._inflate.decompress(chunk, self.cap - self._size + 1))
        except zlib.error as exc:
            raise _Refused(f"compressed body is corrupt ({exc})") from None
        if self._inflate.unconsumed_tail:
            raise _Refused(f"body exceeds the {self.cap} byte cap")

    def finish(self) -> bytes:
        return b"".join(self._parts)

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.cap:
            raise _Refused(f"body exceeds the {self.cap} byte cap")
        self._parts.append(data)


def ms_since(started: float) -> float:
    """Milliseconds since `started` (an `anyio.current_time()` reading)."""
    return round((anyio.current_time() - started) * 1000.0, 3)


def describe_error(exc: BaseException) -> str:
    """An exception as a short reason: its class and first line (httpx's omit the URL)."""
    text = str(exc).split("\n")[0][:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
