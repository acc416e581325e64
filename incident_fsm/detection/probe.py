"""Probes: how a target's health is read, over HTTP or, as a fallback, from this host.

`Probe` is the plug-in interface (one coroutine, `probe()`, returning a
`HealthSnapshot` or a `ProbeFailure`, never raising for anything the target
does). `HttpProbe` reads the target's health endpoints through an injected
client (httpx, or the leaner `http1.Http1Client` the agent gives it), each
request bounded in time (connect, headers and the whole body: a trickling
body cannot hold it) and in size (a 50 MB body is
cut off after the cap and is a failure). Each request costs the reference
service about a second of its single event loop, so by default one endpoint
is read per poll and the next only when it fails; `read_all` reads every
endpoint concurrently and combines the answers. An endpoint that fails
while another answers is logged once, when it starts failing, and once when
it answers again (per endpoint, so polls that do not read it change
nothing); `failing_endpoints` lists them. Every failure carries its
cause (see `health`): only no answer or a 5xx says the endpoint is down; a
429 says it is alive and busy (with the wait it asked for); any other
answer that is not a reading says the probe itself is wrong.
`LocalProbe` reads memory, disk and cpu of the machine the agent runs on in
a worker thread: inside a container from its cgroup v2 files (usage against
the container's limits), elsewhere with psutil; its snapshots say
`source="local"`, and `components` says which (`cgroup` or `host`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

import anyio
from loguru import logger

from incident_fsm.detection.http1 import Http1Client, TransportFailed
from incident_fsm.detection.payload import (
    DOWN,
    THROTTLED,
    UNUSABLE,
    HealthSnapshot,
    ProbeFailure,
    ProbeResult,
    combine,
    parse_health,
)
from incident_fsm.http_body import ACCEPT_ENCODING, BodyRefused, BodyTooLarge, read_capped
from incident_fsm.lazy import HttpClient, httpx
from incident_fsm.retry_after import retry_after_seconds

#: The most body bytes read from one health endpoint (decoded); more is a failure.
MAX_BODY: Final = 256 * 1024
#: The longest `Retry-After` honoured: a hostile or broken answer cannot stop polling.
MAX_RETRY_AFTER: Final = 3600.0
LOCAL_SOURCE: Final = "local"


class Probe(Protocol):
    """Reads one target's health. Must not raise for anything the target does."""

    async def probe(self) -> ProbeResult: ...


class HttpProbe:
    """Reads `endpoints` under `base_url`: the first that answers, or all of them (`read_all`)."""

    def __init__(
        self,
        *,
        base_url: str,
        endpoints: Sequence[str],
        client: HttpClient | Http1Client,
        timeout: float = 5.0,
        max_body: int = MAX_BODY,
        read_all: bool = False,
        name: str = "",
    ) -> None:
        if not endpoints:
            raise ValueError("an HTTP probe needs at least one endpoint")
        if timeout <= 0 or max_body <= 0:
            raise ValueError("timeout and max_body must be positive")
        self.base_url = base_url.rstrip("/")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.max_body = max_body
        self.read_all = read_all
        #: the target, in log lines (its base URL if not given)
        self.name = name or self.base_url
        self._client = client
        #: endpoint -> (reason of its last failure, failed reads) while others answer
        self._failing: dict[str, tuple[str, int]] = {}

    @property
    def requests_per_probe(self) -> int:
        """Requests a healthy poll sends (a failing first endpoint adds the next)."""
        return len(self.endpoints) if self.read_all else 1

    @property
    def failing_endpoints(self) -> dict[str, str]:
        """Endpoints failing while another one answers -> the reason of their last failure."""
        return {path: reason for path, (reason, _) in self._failing.items()}

    async def probe(self) -> ProbeResult:
        if not self.read_all:
            return await self._first_answer()
        results: list[ProbeResult] = [
            ProbeFailure(path, "not probed") for path in self.endpoints
        ]

        async def read(index: int, path: str) -> None:
            results[index] = await self.read_endpoint(path)

        async with anyio.create_task_group() as tg:
            for index, path in enumerate(self.endpoints):
                tg.start_soon(read, index, path)
        self._note_endpoints(list(zip(self.endpoints, results, strict=True)))
        return combine(results)

    async def _first_answer(self) -> ProbeResult:
        results: list[ProbeResult] = []
        for path in self.endpoints:
            result = await self.read_endpoint(path)
            results.append(result)
            # A throttled service is throttled for every endpoint: asking the next
            # one would only spend more of its limit.
            if isinstance(result, HealthSnapshot) or result.cause == THROTTLED:
                break
        self._note_endpoints(list(zip(self.endpoints, results, strict=False)))
        return combine(results)

    def _note_endpoints(self, read: Sequence[tuple[str, ProbeResult]]) -> None:
        """Log an endpoint once when it fails while another answers, once when it answers again.

        Only the endpoints read this time are judged: by default a poll reads
        one, so a poll that did not ask an endpoint says nothing about it.
        """
        log = logger.bind(target=self.name)
        answering = [path for path, result in read if isinstance(result, HealthSnapshot)]
        for path, result in read:
            if isinstance(result, HealthSnapshot):
                ended = self._failing.pop(path, None)
                if ended is not None:
                    log.info("✅ {} answers on {} again, after {} failed read(s)",
                             self.name, path, ended[1])
            elif path in self._failing:
                self._failing[path] = (result.reason, self._failing[path][1] + 1)
            elif answering and result.cause != THROTTLED:
                # Once per stretch: the target is still read through the other
                # endpoint, so a warning every poll would only bury the log. With
                # every endpoint failing the monitor warns per poll instead.
                self._failing[path] = (result.reason, 1)
                log.warning("❌ {}: endpoint {} fails while {} answers: {} (said once, "
                            "until it answers again)", self.name, path,
                            ", ".join(answering), result.reason)

    async def read_endpoint(self, path: str) -> ProbeResult:
        """GET one endpoint and parse it; every failure becomes a `ProbeFailure`."""
        url = self.base_url + path
        try:
            fetched = await fetch(self._client, url, time_limit=self.timeout,
                                  max_body=self.max_body)
        except FetchFailed as exc:
            return ProbeFailure(path, exc.reason, exc.latency_ms, cause=exc.cause)
        status = fetched.status
        if 200 <= status < 300:
            return parse_health(fetched.body, source=path, latency_ms=fetched.latency_ms)
        if status == 429:
            wait = fetched.retry_after
            said = f", Retry-After {wait:g}s" if wait is not None else ""
            return ProbeFailure(path, f"HTTP 429 (throttled{said})", fetched.latency_ms,
                                cause=THROTTLED, retry_after=wait)
        if status >= 500 or status == 408:
            return ProbeFailure(path, f"HTTP {status}", fetched.latency_ms, cause=DOWN)
        return ProbeFailure(path, f"HTTP {status} from {url}: {_misconfigured_hint(status)}",
                            fetched.latency_ms, cause=UNUSABLE)


def _misconfigured_hint(status: int) -> str:
    if status in (401, 403):
        return "the endpoint refuses the agent (authentication or an IP rule)"
    if status in (404, 405, 410):
        return "no such health endpoint (check the target's endpoints)"
    if 300 <= status < 400:
        return "a redirect (set the base URL to where it points)"
    return "not a health reading"


@dataclass(frozen=True)
class Fetched:
    """An HTTP answer read within the time and size bounds."""

    status: int
    body: bytes
    latency_ms: float
    #: seconds asked for by a `Retry-After` header, if any
    retry_after: float | None = None


class FetchFailed(Exception):
    """No usable answer: timeout, transport error, oversized or undecodable body."""

    def __init__(self, reason: str, latency_ms: float, cause: str = DOWN) -> None:
        super().__init__(reason)
        self.reason = reason
        self.latency_ms = latency_ms
        #: `down` for no answer; `unusable` for an answer we refuse (size, encoding)
        self.cause = cause


async def fetch(client: HttpClient | Http1Client, url: str, *, time_limit: float,
                max_body: int = MAX_BODY) -> Fetched:
    """GET `url`, the whole exchange bounded by `time_limit` s and the body by `max_body` bytes.

    The body of a non-2xx answer is read too (bounded the same way): some
    readiness endpoints explain themselves in it. `client` is httpx, or the
    leaner `Http1Client` a target's own health endpoints are read with.
    """
    started = anyio.current_time()
    try:
        # fail_after bounds the whole exchange: httpx's own timeout is per
        # socket operation, so a body trickling in byte by byte would pass it.
        with anyio.fail_after(time_limit):
            if isinstance(client, Http1Client):
                answer = await client.get(url, max_body=max_body)
                status, body = answer.status, answer.body
                retry_after = answer.headers.get("retry-after")
            else:
                status, body, retry_after = await _read(client, url, io_limit=time_limit,
                                                        max_body=max_body)
    except TimeoutError:
        raise FetchFailed(f"timed out after {time_limit:g}s", ms_since(started)) from None
    except TransportFailed as exc:
        raise FetchFailed(str(exc), ms_since(started)) from None
    except BodyTooLarge as exc:
        size = "body" if exc.declared is None else f"body of {exc.declared} bytes"
        raise FetchFailed(f"{size} exceeds the {exc.limit} byte cap", ms_since(started),
                          cause=UNUSABLE) from None
    except BodyRefused as exc:
        raise FetchFailed(str(exc), ms_since(started), cause=UNUSABLE) from None
    # Last: naming httpx imports it (see lazy), and Http1Client's failures are caught above.
    except httpx.HTTPError as exc:
        raise FetchFailed(describe_error(exc), ms_since(started)) from None
    return Fetched(status, body, ms_since(started),
                   retry_after_seconds(retry_after, datetime.now(UTC), cap=MAX_RETRY_AFTER))


async def _read(client: HttpClient, url: str, *, io_limit: float,
                max_body: int) -> tuple[int, bytes, str | None]:
    headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
    async with client.stream("GET", url, headers=headers, timeout=io_limit) as response:
        body = await read_capped(response, limit=max_body)
        return response.status_code, body, response.headers.get("retry-after")


#: Where cgroup v2 is mounted; inside a container it shows the container's own cgroup.
CGROUP_ROOT: Final = "/sys/fs/cgroup"
#: What `components["memory"]` and `components["cpu"]` of a local reading say it came from.
FROM_CGROUP: Final = "cgroup"
FROM_HOST: Final = "host"
#: A cpu sample older than this (s) is not compared with: a fresh pair is taken instead,
#: so a fallback that was idle for an hour does not report the hour's average.
CPU_SAMPLE_MAX_AGE: Final = 60.0
#: The pause (s) between the two cpu samples of a reading with no recent sample.
CPU_SAMPLE_PAUSE: Final = 0.25


@dataclass(frozen=True)
class _CpuSample:
    at: float
    usage_usec: int


class LocalProbe:
    """Reads this machine: memory, the fullest of `mounts`, and cpu since the last reading.

    Inside a container psutil reports the host node's memory and cpu, not the
    container's limits, so memory and cpu come from the cgroup v2 files under
    `cgroup_root` where they exist (None: psutil only). Memory is cgroup
    figures when `memory.max` is a number, cpu when `cpu.stat` exists (against
    the `cpu.max` quota, else the available cpus); anything else is psutil's.
    cgroup v1 files are not read. `clock` (monotonic seconds) and `sleep`
    time the cpu samples; every file is read in the worker thread.
    """

    def __init__(
        self,
        *,
        mounts: Sequence[str] = ("/",),
        timeout: float = 5.0,
        cgroup_root: str | os.PathLike[str] | None = CGROUP_ROOT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        cpu_count: int | None = None,
    ) -> None:
        if not mounts:
            raise ValueError("a local probe needs at least one mount point")
        self.mounts = tuple(mounts)
        self.timeout = timeout
        self.cgroup_root = None if cgroup_root is None else Path(cgroup_root)
        self._clock = clock
        self._sleep = sleep
        self._cpu_count = cpu_count
        self._cpu_last: _CpuSample | None = None
        import psutil  # loaded only where a local probe is configured

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
        import psutil  # loaded only where a local probe is configured
        try:
            disks = {mount: float(psutil.disk_usage(mount).percent) for mount in self.mounts}
            memory, memory_from = self._memory()
            cpu, cpu_from = self._cpu()
        except OSError as exc:
            return ProbeFailure(LOCAL_SOURCE, f"reading the host failed: "
                                              f"{type(exc).__name__}: {exc.strerror or exc}")
        fullest = max(disks, key=lambda m: disks[m])
        components = {f"disk:{m}": f"{p:.1f}%" for m, p in disks.items()}
        return HealthSnapshot(
            source=LOCAL_SOURCE, memory_pct=memory, disk_pct=disks[fullest], cpu_pct=cpu,
            components={"memory": memory_from, "cpu": cpu_from, **components},
        )

    def _memory(self) -> tuple[float, str]:
        import psutil  # loaded only where a local probe is configured
        if self.cgroup_root is not None:
            limit = _cgroup_number(self.cgroup_root / "memory.max")
            usage = _cgroup_number(self.cgroup_root / "memory.current")
            if limit and usage is not None:
                # The working set, as the kubelet counts it: memory.current includes
                # page cache the kernel reclaims before it OOM-kills, so a service
                # that writes logs would otherwise look close to its limit.
                inactive = _cgroup_stat(self.cgroup_root / "memory.stat").get("inactive_file", 0)
                working = usage - inactive if inactive < usage else 0
                return _percent(working, limit), FROM_CGROUP
        return float(psutil.virtual_memory().percent), FROM_HOST

    def _cpu(self) -> tuple[float, str]:
        import psutil  # loaded only where a local probe is configured
        root = self.cgroup_root
        usage = None if root is None else _cpu_usage(root)
        if root is None or usage is None:
            return float(psutil.cpu_percent(interval=None)), FROM_HOST
        now = self._clock()
        last = self._cpu_last
        if last is None or not 0 < now - last.at <= CPU_SAMPLE_MAX_AGE:
            # Nothing recent to compare with: a pair of samples a moment apart.
            last = _CpuSample(now, usage)
            self._sleep(CPU_SAMPLE_PAUSE)
            now, usage = self._clock(), _cpu_usage(root)
            if usage is None or now <= last.at:
                self._cpu_last = None
                return float(psutil.cpu_percent(interval=None)), FROM_HOST
        self._cpu_last = _CpuSample(now, usage)
        busy = (usage - last.usage_usec) / 1e6
        cpus = _cpu_quota(root, available=float(self._cpu_count or _available_cpus()))
        return _percent(busy, (now - last.at) * cpus), FROM_CGROUP


def _cpu_usage(root: Path) -> int | None:
    """CPU time (µs) the cgroup has used, from `cpu.stat`; None without one."""
    return _cgroup_stat(root / "cpu.stat").get("usage_usec")


def _cpu_quota(root: Path, *, available: float) -> float:
    """CPUs the cgroup may use: its `cpu.max` quota, at most the cpus it can run on."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        return min(available, int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):
        return available  # no file, or "max": no quota


def _cgroup_number(path: Path) -> int | None:
    """A one-number cgroup file; None when absent, unreadable or `max` (no limit)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cgroup_stat(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (`memory.stat`, `cpu.stat`): key -> value; {} when absent."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    stat: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat[key] = int(value)
    return stat


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def _percent(part: float, whole: float) -> float:
    return min(100.0, max(0.0, 100.0 * part / whole)) if whole > 0 else 0.0


def ms_since(started: float) -> float:
    """Milliseconds since `started` (an `anyio.current_time()` reading)."""
    return round((anyio.current_time() - started) * 1000.0, 3)


def describe_error(exc: BaseException) -> str:
    """An exception as a short reason: its class and first line (httpx's omit the URL)."""
    text = str(exc).split("\n")[0][:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
