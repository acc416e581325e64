"""Probes: HTTP against respx and against a real misbehaving server; the local probe."""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
import respx

from incident_fsm.detection.payload import HealthSnapshot, ProbeFailure
from incident_fsm.detection.probe import LOCAL_SOURCE, MAX_BODY, HttpProbe, LocalProbe
from incident_fsm.retry_after import retry_after_seconds

from . import payloads
from .health_server import HealthServer
from .logcapture import captured_logs
from .respx_helpers import answer as respond

pytestmark = pytest.mark.anyio

BASE = "http://api.test"
BOTH = ("/health/resources", "/health/system")


async def _probe(endpoints: tuple[str, ...] = BOTH, limit: float = 5.0,
                 base: str = BASE, read_all: bool = False) -> HealthSnapshot | ProbeFailure:
    async with httpx.AsyncClient() as client:
        probe = HttpProbe(base_url=base, endpoints=endpoints, client=client, timeout=limit,
                          read_all=read_all)
        return await probe.probe()


@respx.mock
async def test_by_default_one_endpoint_is_read_per_poll() -> None:
    first = respx.get(f"{BASE}/health/resources").respond(
        200, json=payloads.resources(85.0, 60.0, 10.0))
    second = respx.get(f"{BASE}/health/system").respond(
        200, json=payloads.system(82.0, 71.0, 30.0))
    result = await _probe()
    assert isinstance(result, HealthSnapshot)
    assert result.source == "/health/resources"
    assert (first.call_count, second.call_count) == (1, 0)


@respx.mock
async def test_a_throttled_first_endpoint_is_not_followed_by_the_second() -> None:
    respx.get(f"{BASE}/health/resources").respond(429, headers={"Retry-After": "17"})
    second = respx.get(f"{BASE}/health/system").respond(
        200, json=payloads.system(82.0, 71.0, 30.0))
    result = await _probe()
    assert isinstance(result, ProbeFailure)
    assert (result.cause, result.retry_after) == ("throttled", 17.0)
    assert second.call_count == 0


@pytest.mark.parametrize(("answer", "cause"), [
    (httpx.Response(404, json={"detail": "Not Found"}), "unusable"),
    (httpx.Response(405), "unusable"),
    (httpx.Response(401), "unusable"),
    (httpx.Response(403), "unusable"),
    (httpx.Response(200, json={"status": "healthy", "version": "1.2"}), "unusable"),
    (httpx.Response(200, json={"status": "healthy", "checks": {}, "issues": []}), "unusable"),
    (httpx.Response(429, headers={"Retry-After": "5"}), "throttled"),
    (httpx.Response(500), "down"),
    (httpx.Response(503), "down"),
    (httpx.ConnectError("refused"), "down"),
    (httpx.ReadTimeout("slow"), "down"),
])
@respx.mock
async def test_each_failure_carries_its_cause(answer: object, cause: str) -> None:
    respx.get(f"{BASE}/health/resources").mock(
        side_effect=answer if isinstance(answer, Exception) else None,
        return_value=answer if isinstance(answer, httpx.Response) else None)
    result = await _probe(("/health/resources",))
    assert isinstance(result, ProbeFailure)
    assert result.cause == cause
    if cause == "unusable" and isinstance(answer, httpx.Response) and answer.status_code >= 400:
        assert f"{BASE}/health/resources" in result.reason  # the URL, for the humans told


@pytest.mark.parametrize(("header", "seconds"), [
    ("120", 120.0), ("0", 0.0), ("999999", 3600.0), ("soon", None), (None, None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
])
def test_retry_after_is_read_as_seconds_and_capped(header: str | None,
                                                   seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 27, 0, tzinfo=UTC)
    assert retry_after_seconds(header, now, cap=3600.0) == seconds


@respx.mock
async def test_both_endpoints_are_read_and_combined() -> None:
    respx.get(f"{BASE}/health/resources").respond(200, json=payloads.resources(85.0, 60.0, 10.0))
    respx.get(f"{BASE}/health/system").respond(200, json=payloads.system(82.0, 71.0, 30.0))
    result = await _probe(read_all=True)
    assert isinstance(result, HealthSnapshot)
    assert (result.memory_pct, result.disk_pct, result.cpu_pct) == (85.0, 71.0, 30.0)
    assert result.source == "/health/resources+/health/system"
    assert result.partial_failures == ()


@respx.mock
async def test_the_older_system_variant_is_accepted() -> None:
    respx.get(f"{BASE}/health/system").respond(200, json=payloads.legacy_system(81.0, 40.0, 5.0))
    result = await _probe(("/health/system",))
    assert isinstance(result, HealthSnapshot)
    assert (result.memory_pct, result.disk_pct, result.reported_status) == (81.0, 40.0, "SUCCESS")


@pytest.mark.parametrize("failure", [
    httpx.Response(503, json={"detail": "down"}),
    httpx.Response(200, json=payloads.ERROR_200),
    httpx.Response(200, text="<html>oops</html>"),
    httpx.ConnectError("Connection refused"),
    httpx.ReadTimeout("timed out"),
])
@respx.mock
async def test_one_failing_endpoint_is_not_a_failed_target(failure: object) -> None:
    respx.get(f"{BASE}/health/resources").mock(
        side_effect=failure if isinstance(failure, Exception) else None,
        return_value=failure if isinstance(failure, httpx.Response) else None)
    respx.get(f"{BASE}/health/system").respond(200, json=payloads.system(50.0, 60.0, 10.0))
    result = await _probe()
    assert isinstance(result, HealthSnapshot)
    assert result.source == "/health/system"
    assert len(result.partial_failures) == 1
    assert result.partial_failures[0].startswith("/health/resources: ")


def _endpoint_lines(logs: list[str]) -> list[str]:
    """The lines about one endpoint failing while another answers, and about its return."""
    return [line for line in logs if "fails while" in line or "again, after" in line]


def _endpoint_of(line: str) -> str:
    found = re.search(r"endpoint (\S+) fails while|answers on (\S+) again", line)
    assert found is not None, line
    return found.group(1) or found.group(2)


@respx.mock
async def test_an_endpoint_failing_while_the_other_answers_is_said_once_per_stretch() -> None:
    first = respx.get(f"{BASE}/health/resources")
    respx.get(f"{BASE}/health/system").respond(200, json=payloads.system(50.0, 60.0, 10.0))
    ok = httpx.Response(200, json=payloads.resources(50.0, 60.0, 10.0))
    async with httpx.AsyncClient() as client:
        probe = HttpProbe(base_url=BASE, endpoints=BOTH, client=client, name="api")
        with captured_logs() as logs:
            first.mock(return_value=httpx.Response(503))
            for _ in range(20):
                assert isinstance(await probe.probe(), HealthSnapshot)
            assert probe.failing_endpoints == {"/health/resources": "HTTP 503"}
            first.mock(return_value=ok)
            for _ in range(20):
                await probe.probe()
            assert probe.failing_endpoints == {}
            first.mock(side_effect=httpx.ConnectError("refused"))  # a new stretch
            for _ in range(20):
                await probe.probe()
    lines = _endpoint_lines(logs)
    assert [line.split("|")[0] for line in lines] == ["WARNING", "INFO", "WARNING"]
    assert "endpoint /health/resources fails while /health/system answers: HTTP 503" in lines[0]
    assert "'target': 'api'" in lines[0]
    assert "api answers on /health/resources again, after 20 failed read(s)" in lines[1]
    assert "ConnectError: refused" in lines[2]


@respx.mock
async def test_endpoint_stretches_are_kept_per_endpoint_when_one_is_read_per_poll() -> None:
    # Three endpoints, read in order until one answers: a poll where the first
    # answers does not read the second, and so says nothing about it.
    paths = ("/health/resources", "/health/system", "/health/detailed")
    routes = {p: respx.get(f"{BASE}{p}") for p in paths}
    routes["/health/system"].mock(return_value=httpx.Response(500))
    routes["/health/detailed"].mock(
        return_value=httpx.Response(200, json=payloads.system(50.0, 60.0, 10.0)))
    ok = httpx.Response(200, json=payloads.resources(50.0, 60.0, 10.0))
    async with httpx.AsyncClient() as client:
        probe = HttpProbe(base_url=BASE, endpoints=paths, client=client, name="api")
        with captured_logs() as logs:
            for first_answers in (False, True, True, False, False, True, False):
                routes["/health/resources"].mock(
                    return_value=ok if first_answers else httpx.Response(503))
                for _ in range(5):
                    await probe.probe()
        assert routes["/health/system"].call_count == 20  # read only when the first failed
    said = [(line.split("|")[0], _endpoint_of(line)) for line in _endpoint_lines(logs)]
    # /health/system failed every time it was read: one warning, never an all-clear.
    assert said == [("WARNING", "/health/resources"), ("WARNING", "/health/system"),
                    ("INFO", "/health/resources"), ("WARNING", "/health/resources"),
                    ("INFO", "/health/resources"), ("WARNING", "/health/resources")]


@respx.mock
async def test_reading_all_endpoints_says_which_one_fails_and_nothing_when_all_fail() -> None:
    resources = respx.get(f"{BASE}/health/resources")
    system = respx.get(f"{BASE}/health/system")
    good = httpx.Response(200, json=payloads.system(50.0, 60.0, 10.0))
    async with httpx.AsyncClient() as client:
        probe = HttpProbe(base_url=BASE, endpoints=BOTH, client=client, read_all=True,
                          name="api")
        with captured_logs() as logs:
            steps = [(httpx.Response(503), httpx.Response(503)),  # all down: the monitor's
                     (good, httpx.Response(404)),                  # to say, every poll
                     (good, good),
                     (httpx.Response(429), good),                  # alive: not failing
                     (httpx.Response(503), good)]
            for first, second in steps:
                resources.mock(return_value=first)
                system.mock(return_value=second)
                for _ in range(5):
                    await probe.probe()
    lines = _endpoint_lines(logs)
    assert len(lines) == 3
    assert "endpoint /health/system fails while /health/resources answers: HTTP 404" in lines[0]
    assert "answers on /health/system again, after 5 failed read(s)" in lines[1]
    assert "endpoint /health/resources fails while /health/system answers: HTTP 503" in lines[2]
    assert "HTTP 429" not in "".join(lines)


@pytest.mark.parametrize(("answer", "reason"), [
    (httpx.Response(503, json={"detail": "down"}), "HTTP 503"),
    (httpx.Response(200, json=payloads.ERROR_200), "endpoint reported status ERROR"),
    (httpx.Response(200, content=b"\x00\x01"), "body is not JSON"),
    (httpx.ConnectError("All connection attempts failed"), "ConnectError"),
    (httpx.ReadTimeout(""), "ReadTimeout"),
    (httpx.Response(200, headers={"Content-Length": str(MAX_BODY + 1)}, content=b"{}"),
     f"body of {MAX_BODY + 1} bytes exceeds"),
])
@respx.mock
async def test_failures_have_reasons(answer: object, reason: str) -> None:
    respond(respx.get(f"{BASE}/health/resources"), answer)
    result = await _probe(("/health/resources",))
    assert isinstance(result, ProbeFailure)
    assert result.reason.startswith(f"/health/resources: {reason}")


@respx.mock
async def test_gzip_bodies_are_inflated_and_gzip_bombs_are_cut_off() -> None:
    good = gzip.compress(json.dumps(payloads.resources(70.0, 60.0, 10.0)).encode())
    respx.get(f"{BASE}/health/resources").respond(
        200, content=good, headers={"Content-Encoding": "gzip"})
    result = await _probe(("/health/resources",))
    assert isinstance(result, HealthSnapshot) and result.memory_pct == 70.0

    bomb = zlib.compress(b" " * (20 * 1024 * 1024), 9)  # 20 MB of spaces in ~20 KB
    assert len(bomb) < 50_000
    respx.get(f"{BASE}/health/system").respond(
        200, content=bomb, headers={"Content-Encoding": "deflate"})
    result = await _probe(("/health/system",))
    assert isinstance(result, ProbeFailure)
    assert "exceeds the 262144 byte cap" in result.reason


async def test_real_server_both_schemas_and_the_legacy_variant() -> None:
    with HealthServer() as server:
        server.set("critical")
        result = await _probe(base=server.base_url)
        assert isinstance(result, HealthSnapshot)
        assert result.memory_pct == 85.0
        assert result.components["memory"] in ("CRITICAL", "degraded")
        server.legacy = True
        result = await _probe(("/health/system",), base=server.base_url)
        assert isinstance(result, HealthSnapshot) and result.reported_status == "SUCCESS"


async def test_real_server_trickling_body_is_cut_off_by_the_total_time_limit() -> None:
    with HealthServer() as server:
        server.mode = "trickle"
        started = anyio.current_time()
        result = await _probe(("/health/resources",), limit=0.5, base=server.base_url)
        elapsed = anyio.current_time() - started
    assert isinstance(result, ProbeFailure)
    assert result.reason == "/health/resources: timed out after 0.5s"
    assert 0.45 <= elapsed < 2.0


async def test_real_server_that_never_answers_times_out() -> None:
    with HealthServer() as server:
        server.mode = "hang"
        result = await _probe(limit=0.3, base=server.base_url)
    assert isinstance(result, ProbeFailure)
    assert "timed out after 0.3s" in result.reason


async def test_real_server_50_mb_body_is_refused_after_the_cap() -> None:
    with HealthServer() as server:
        server.mode = "huge"
        before = psutil.Process(os.getpid()).memory_info().rss
        result = await _probe(("/health/resources",), base=server.base_url)
        grown = psutil.Process(os.getpid()).memory_info().rss - before
    assert isinstance(result, ProbeFailure)
    assert result.reason == f"/health/resources: body exceeds the {MAX_BODY} byte cap"
    assert grown < 20 * 1024 * 1024


async def test_connection_refused_is_a_failure() -> None:
    with HealthServer() as server:
        base = server.base_url
    result = await _probe(base=base, limit=2.0)  # the server is gone: nothing listens
    assert isinstance(result, ProbeFailure)
    assert "ConnectError" in result.reason


async def test_local_probe_reads_this_host() -> None:
    probe = LocalProbe(mounts=("/", "/tmp"), cgroup_root=None)
    result = await probe.probe()
    assert isinstance(result, HealthSnapshot)
    assert result.source == LOCAL_SOURCE
    assert abs(result.memory_pct - psutil.virtual_memory().percent) < 10
    expected_disk = max(psutil.disk_usage(m).percent for m in ("/", "/tmp"))
    assert abs(result.disk_pct - expected_disk) < 1
    assert 0.0 <= result.cpu_pct <= 100.0
    assert set(result.components) == {"memory", "cpu", "disk:/", "disk:/tmp"}
    assert (result.components["memory"], result.components["cpu"]) == ("host", "host")


async def test_local_probe_on_a_missing_mount_fails_with_a_reason() -> None:
    result = await LocalProbe(mounts=("/no/such/mount",)).probe()
    assert isinstance(result, ProbeFailure)
    assert result.source == LOCAL_SOURCE
    assert "FileNotFoundError" in result.reason


# --- the local probe inside a container: cgroup v2 files in a fake tree ---------------------

GIB = 1024**3


def _cgroup(root: Path, **files: str) -> Path:
    """A cgroup v2 directory: `memory_max="..."` writes memory.max, and so on."""
    for name, text in files.items():
        (root / name.replace("_", ".", 1)).write_text(text)
    return root


class FakeTime:
    """The probe's clock and pause: a pause lets `pause_cpu` more cpu time pass in 1 s."""

    def __init__(self, cpu_stat: Path, *, usage_usec: int, pause_cpu: int) -> None:
        self.now = 1000.0
        self.pauses = 0
        self.cpu_stat = cpu_stat
        self.usage = usage_usec
        self.pause_cpu = pause_cpu
        self.run(0.0, 0)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses += 1
        self.run(1.0, self.pause_cpu)

    def run(self, seconds: float, cpu_usec: int) -> None:
        self.now += seconds
        self.usage += cpu_usec
        self.cpu_stat.write_text(f"usage_usec {self.usage}\nuser_usec 1\nsystem_usec 2\n"
                                 "nr_periods 0\n")


async def test_local_probe_in_a_container_reads_memory_from_the_cgroup(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, memory_max=f"{GIB}\n", memory_current=f"{3 * GIB // 4}\n")
    result = await LocalProbe(cgroup_root=root).probe()
    assert isinstance(result, HealthSnapshot)
    assert result.source == LOCAL_SOURCE
    assert result.memory_pct == 75.0
    assert result.components["memory"] == "cgroup"


async def test_cgroup_memory_is_the_working_set_without_inactive_page_cache(
    tmp_path: Path,
) -> None:
    root = _cgroup(tmp_path, memory_max=f"{GIB}\n", memory_current=f"{3 * GIB // 4}\n",
                   memory_stat=f"anon {GIB // 4}\nactive_file 1\ninactive_file {GIB // 4}\n")
    result = await LocalProbe(cgroup_root=root).probe()
    assert isinstance(result, HealthSnapshot)
    assert result.memory_pct == 50.0


async def test_without_a_memory_limit_the_local_probe_reads_psutil(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, memory_max="max\n", memory_current=f"{GIB}\n")
    result = await LocalProbe(cgroup_root=root).probe()
    assert isinstance(result, HealthSnapshot)
    assert result.components["memory"] == "host"
    assert abs(result.memory_pct - psutil.virtual_memory().percent) < 10


async def test_cgroup_cpu_is_usage_growth_against_the_quota(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, cpu_max="50000 100000\n")  # half a cpu
    time = FakeTime(root / "cpu.stat", usage_usec=5_000_000, pause_cpu=250_000)
    probe = LocalProbe(cgroup_root=root, clock=time.clock, sleep=time.sleep, cpu_count=4)

    async def cpu() -> float:
        result = await probe.probe()
        assert isinstance(result, HealthSnapshot)
        assert result.components["cpu"] == "cgroup"
        return result.cpu_pct

    # Nothing to compare with yet: two samples a pause apart (0.25 cpu-s in 1 s).
    assert await cpu() == 50.0 and time.pauses == 1
    time.run(10.0, 2_000_000)  # 2 cpu-s in 10 s, against half a cpu
    assert await cpu() == 40.0 and time.pauses == 1
    time.run(10.0, 20_000_000)  # more than the quota (a burst) is 100 %
    assert await cpu() == 100.0
    (root / "cpu.max").write_text("max 100000\n")  # no quota: the 4 cpus
    time.run(10.0, 2_000_000)
    assert await cpu() == 5.0
    time.run(600.0, 0)  # an old sample is not compared with: a fresh pair instead
    assert await cpu() == 25.0 / 4 and time.pauses == 2


async def test_a_quota_above_the_available_cpus_counts_the_cpus(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, cpu_max="800000 100000\n")  # 8 cpus allowed, 2 present
    time = FakeTime(root / "cpu.stat", usage_usec=0, pause_cpu=1_000_000)
    probe = LocalProbe(cgroup_root=root, clock=time.clock, sleep=time.sleep, cpu_count=2)
    result = await probe.probe()
    assert isinstance(result, HealthSnapshot) and result.cpu_pct == 50.0


async def test_without_cgroup_files_the_local_probe_reads_psutil(tmp_path: Path) -> None:
    result = await LocalProbe(cgroup_root=tmp_path / "none").probe()
    assert isinstance(result, HealthSnapshot)
    assert (result.components["memory"], result.components["cpu"]) == ("host", "host")


async def test_the_cgroup_files_are_read_off_the_event_loop(tmp_path: Path) -> None:
    import threading

    root = _cgroup(tmp_path, memory_max=f"{GIB}\n", memory_current=f"{GIB // 2}\n")
    loop_thread = threading.get_ident()
    seen: list[int] = []
    time = FakeTime(root / "cpu.stat", usage_usec=0, pause_cpu=0)

    def clock() -> float:
        seen.append(threading.get_ident())
        return time.clock()

    await LocalProbe(cgroup_root=root, clock=clock, sleep=time.sleep).probe()
    assert seen and loop_thread not in seen
