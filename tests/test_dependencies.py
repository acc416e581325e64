"""Dependency checks against the real local Redis, a real Celery worker, and respx for HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import respx

from incident_fsm.detection.dependencies import (
    READY_NAME,
    CeleryCheck,
    HttpDependencyCheck,
    RedisCheck,
    dependency_checks,
)
from incident_fsm.settings import DependencyCheck, TargetSettings

from .respx_helpers import answer as respond

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("INCIDENT_FSM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# A database of its own so the workers of this test never see anyone else's pings.
CELERY_BROKER = REDIS_URL.rsplit("/", 1)[0] + "/13"
BASE = "http://api.test"


def _dead_url() -> str:
    """A loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def _redis_or_skip() -> None:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2):
            pass
    except OSError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("Redis is not reachable on 127.0.0.1:6379 (CI=true: it must be)")
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")


async def test_redis_up(monkeypatch: pytest.MonkeyPatch) -> None:
    _redis_or_skip()
    monkeypatch.setenv("TEST_REDIS_URL", REDIS_URL)
    status = await RedisCheck(name="cache", url_env="TEST_REDIS_URL", timeout=2).check()
    assert (status.name, status.state, status.reason) == ("cache", "up", "PONG")
    assert status.latency_ms > 0


async def test_redis_down_says_why_without_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = _dead_url().replace("redis://", "redis://:s3cret@")
    monkeypatch.setenv("TEST_REDIS_URL", url)
    status = await RedisCheck(name="cache", url_env="TEST_REDIS_URL", timeout=2).check()
    assert status.state == "down"
    assert "ConnectionError" in status.reason
    assert "s3cret" not in status.reason


async def test_missing_env_is_unknown_not_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_REDIS_URL", raising=False)
    for check in (RedisCheck(name="cache", url_env="TEST_REDIS_URL"),
                  CeleryCheck(name="celery", url_env="TEST_REDIS_URL")):
        status = await check.check()
        assert (status.state, status.reason) == ("unknown", "env TEST_REDIS_URL is not set")


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` on the local Redis, answering remote-control pings."""
    _redis_or_skip()
    (tmp_path / "ping_app.py").write_text(
        "import os\nfrom celery import Celery\n"
        "app = Celery('ping_app', broker=os.environ['BROKER'])\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "ping_app", "worker", "--pool=solo",
         "--concurrency=1", "-n", "probe-test@%h", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--loglevel=WARNING"],
        cwd=tmp_path, env={**os.environ, "BROKER": CELERY_BROKER},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=5)


async def test_celery_worker_answers_the_ping(
    celery_worker: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_BROKER", CELERY_BROKER)
    check = CeleryCheck(name="celery", url_env="TEST_BROKER", timeout=1.0)
    deadline = time.monotonic() + 30  # the worker needs a moment to start listening
    status = await check.check()
    while status.state != "up" and time.monotonic() < deadline:
        await anyio.sleep(0.5)
        status = await check.check()
    assert status.state == "up", status.reason
    assert status.reason.startswith("1 worker(s) answered: probe-test@")

    celery_worker.terminate()
    await anyio.to_thread.run_sync(celery_worker.wait, 15)
    status = await check.check()
    assert status.state == "down"
    assert status.reason == "no worker answered the ping within 1s"


async def test_celery_with_a_dead_broker_is_down_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_BROKER", _dead_url())
    started = anyio.current_time()
    status = await CeleryCheck(name="celery", url_env="TEST_BROKER", timeout=1.0).check()
    assert status.state == "down"
    assert status.reason.startswith("broker unreachable: OperationalError")
    assert anyio.current_time() - started < 8.0


@pytest.mark.parametrize(("answer", "state", "reason"), [
    (httpx.Response(200, json={"status": "ready"}), "up", "/health/ready: HTTP 200"),
    (httpx.Response(503, json={"status": "not ready"}), "down", "/health/ready: HTTP 503"),
    (httpx.Response(404), "unknown", "/health/ready: HTTP 404"),
    (httpx.ConnectError("refused"), "unknown", "/health/ready: ConnectError: refused"),
])
@respx.mock
async def test_http_dependency(answer: object, state: str, reason: str) -> None:
    respond(respx.get(f"{BASE}/health/ready"), answer)
    async with httpx.AsyncClient() as client:
        status = await HttpDependencyCheck(name="database", base_url=BASE, path="/health/ready",
                                           client=client, timeout=1).check()
    assert (status.state, status.reason) == (state, reason)


@pytest.mark.parametrize(("services", "state"), [
    ({"database": {"status": "healthy"}, "cache": {"status": "unhealthy"}}, "up"),
    ({"database": "disconnected"}, "down"),
    ({"database": {"status": "mystery"}}, "unknown"),
])
@respx.mock
async def test_http_dependency_reads_services_entry(services: dict[str, object],
                                                    state: str) -> None:
    respx.get(f"{BASE}/health/detailed").respond(200, json={"status": "ok",
                                                            "services": services})
    async with httpx.AsyncClient() as client:
        status = await HttpDependencyCheck(name="database", base_url=BASE,
                                           path="/health/detailed", client=client).check()
    assert status.state == state
    assert status.reason.startswith("/health/detailed: services.database is ")


def test_checks_are_built_from_settings() -> None:
    target = TargetSettings(
        name="api", base_url=BASE, ready_endpoint="/health/ready",
        dependencies=(DependencyCheck(name="celery", kind="celery", url_env="BROKER"),
                      DependencyCheck(name="cache", kind="redis", url_env="REDIS"),
                      DependencyCheck(name="db", kind="http", path="/health/detailed")),
    )
    checks = dependency_checks(target, client=httpx.AsyncClient())
    assert [(type(c).__name__, c.name) for c in checks] == [
        ("CeleryCheck", "celery"), ("RedisCheck", "cache"), ("HttpDependencyCheck", "db"),
        ("HttpDependencyCheck", READY_NAME)]
    assert sum(c.requests_per_check for c in checks) == 2
    with pytest.raises(ValueError, match="unknown kind 'kafka'"):
        dependency_checks(TargetSettings(name="x", base_url=BASE, dependencies=(
            DependencyCheck(name="q", kind="kafka"),)), client=httpx.AsyncClient())
