"""Probes: HTTP against respx and against a real misbehaving server; the local probe."""

from __future__ import annotations

import gzip
import json
import os
import zlib

import anyio
import httpx
import psutil
import pytest
import respx

from incident_fsm.health import HealthSnapshot, ProbeFailure
from incident_fsm.probe import LOCAL_SOURCE, MAX_BODY, HttpProbe, LocalProbe

from . import payloads
from .health_server import HealthServer
from .respx_helpers import answer as respond

pytestmark = pytest.mark.anyio

BASE = "http://api.test"
BOTH = ("/health/resources", "/health/system")


async def _probe(endpoints: tuple[str, ...] = BOTH, limit: float = 5.0,
                 base: str = BASE) -> HealthSnapshot | ProbeFailure:
    async with httpx.AsyncClient() as client:
        probe = HttpProbe(base_url=base, endpoints=endpoints, client=client, timeout=limit)
        return await probe.probe()


@respx.mock
async def test_both_endpoints_are_read_and_combined() -> None:
    respx.get(f"{BASE}/health/resources").respond(200, json=payloads.resources(85.0, 60.0, 10.0))
    respx.get(f"{BASE}/health/system").respond(200, json=payloads.system(82.0, 71.0, 30.0))
    result = await _probe()
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
    probe = LocalProbe(mounts=("/", "/tmp"))
    result = await probe.probe()
    assert isinstance(result, HealthSnapshot)
    assert result.source == LOCAL_SOURCE
    assert abs(result.memory_pct - psutil.virtual_memory().percent) < 10
    expected_disk = max(psutil.disk_usage(m).percent for m in ("/", "/tmp"))
    assert abs(result.disk_pct - expected_disk) < 1
    assert 0.0 <= result.cpu_pct <= 100.0
    assert set(result.components) == {"disk:/", "disk:/tmp"}


async def test_local_probe_on_a_missing_mount_fails_with_a_reason() -> None:
    result = await LocalProbe(mounts=("/no/such/mount",)).probe()
    assert isinstance(result, ProbeFailure)
    assert result.source == LOCAL_SOURCE
    assert "FileNotFoundError" in result.reason
