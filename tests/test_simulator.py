"""The simulator serves the reference payloads from its state; Render calls change that state."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import anyio
import httpx
import pytest

import incident_fsm
from incident_fsm.demo import simulator
from incident_fsm.demo.simulator import ServiceState, Simulator

pytestmark = pytest.mark.anyio
KEY = {"Authorization": "Bearer rnd_simulated"}


async def test_resources_payload_has_the_single_critical_quirk() -> None:
    state = ServiceState(leaked_memory_pct=45.0, load_memory_pct=40.0)
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        body = (await client.get("/health/resources")).json()
    assert body["stats"]["memory_pct"] == 85.0
    assert body["status"] == "WARNING"  # one critical component says WARNING
    assert [(a["component"], a["level"]) for a in body["alert_details"]] == [
        ("memory", "CRITICAL")]


async def test_disk_usage_is_the_bytes_really_in_the_directory(tmp_path: Path) -> None:
    state = ServiceState(disk_dir=tmp_path, disk_capacity_bytes=1_000_000)
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        (tmp_path / "app.log").write_bytes(b"x" * 900_000)
        full = (await client.get("/health/system")).json()["checks"]["disk"]
        (tmp_path / "app.log").unlink()
        empty = (await client.get("/health/system")).json()["checks"]["disk"]
    assert (full["usage_percent"], full["status"]) == (90.0, "degraded")
    assert empty["usage_percent"] == 0.0


async def test_render_calls_change_the_state_and_are_counted() -> None:
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=60.0, worker_alive=False)
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        assert (await client.get("/health/workers")).status_code == 503
        assert (await client.post("/v1/services/srv-web/restart")).status_code == 401
        assert (await client.post("/v1/services/srv-web/restart", headers=KEY)).status_code == 200
        assert state.memory_pct() == 60.0
        assert (await client.post("/v1/services/srv-web/scale", headers=KEY,
                                  json={"numInstances": 3})).status_code == 202
        assert state.memory_pct() == 20.0
        assert (await client.post("/v1/services/srv-worker/restart",
                                  headers=KEY)).status_code == 200
        assert (await client.get("/health/workers")).status_code == 200
        assert (await client.post("/v1/services/srv-nope/restart", headers=KEY)).status_code == 404
    assert state.requests["POST /v1/services/srv-web/restart"] == 2
    assert state.requests["POST /v1/services/srv-web/scale"] == 1


async def test_faults_and_the_legacy_schema() -> None:
    state = ServiceState(system_schema="legacy", faults={"/health/resources": "error"})
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        assert (await client.get("/health/resources")).json()["status"] == "ERROR"
        legacy = (await client.get("/health/system")).json()
        assert legacy["status"] == "SUCCESS" and "memory_percent" in legacy["data"]
        state.faults["/health/system"] = "close"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/health/system")
        state.faults["/health/system"] = "hang"
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/health/system", timeout=0.2)
        state.faults["/health/system"] = "garbage"
        assert (await client.get("/health/system")).text.startswith("<html>")


async def test_health_routes_are_limited_per_client_with_retry_after() -> None:
    state = ServiceState(health_rate_limit=3)
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        answers = [await client.get("/health/resources") for _ in range(5)]
        other = await client.get("/v1/services/srv-web", headers=KEY)
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert state.throttled == 2
    assert other.status_code != 429  # the limiter covers /health/* only


async def test_a_slow_health_handler_holds_the_whole_service() -> None:
    state = ServiceState(health_delay=0.3)
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for path in ("/health/resources", "/health/system", "/health"):
                tg.start_soon(client.get, path)
        elapsed = anyio.current_time() - started
    # Two slow handlers one after the other, and /health waited behind them on the one loop.
    assert elapsed >= 0.6


async def test_health_quirks_as_the_service_answers_today() -> None:
    state = ServiceState(faults={"/health/system": "empty_checks"})
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        ready = await client.get("/health/ready")
        empty = (await client.get("/health/system")).json()
        state.faults.clear()
        system = (await client.get("/health/system")).json()
    assert ready.status_code == 503  # whatever the state: theirs calls a missing method
    assert (empty["status"], empty["checks"]) == ("healthy", {})
    assert not system["timestamp"].endswith("Z")  # utcnow() without a zone


def test_importing_the_simulator_allocates_little() -> None:
    # What the package and the simulator's libraries cost is theirs: measured from after them.
    code = ("import incident_fsm, websockets.asyncio.server, tracemalloc; tracemalloc.start(); "
            "import incident_fsm.demo.simulator; print(tracemalloc.get_traced_memory()[1])")
    root = str(Path(incident_fsm.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True, timeout=60)
    assert int(done.stdout) < 5 * 1024**2


async def test_the_disk_is_walked_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_the_loop: list[bool] = []
    walk = simulator._tree_bytes

    def recording(root: Path) -> int:
        on_the_loop.append(threading.current_thread() is threading.main_thread())
        return walk(root)

    monkeypatch.setattr(simulator, "_tree_bytes", recording)
    (tmp_path / "app.log").write_bytes(b"x" * 500_000)
    state = ServiceState(disk_dir=tmp_path, disk_capacity_bytes=1_000_000)
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        assert threading.current_thread() is threading.main_thread()  # where the loop runs
        resources = (await client.get("/health/resources")).json()
        system = (await client.get("/health/system")).json()
    assert resources["stats"]["disk_pct"] == system["checks"]["disk"]["usage_percent"] == 50.0
    assert on_the_loop == [False, False]


async def test_the_huge_body_is_sent_without_ever_being_held_whole() -> None:
    state = ServiceState(faults={"/health/resources": "huge"})
    async with Simulator(state) as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        tracemalloc.start()
        try:
            size = 0
            async with client.stream("GET", "/health/resources") as answer:
                async for chunk in answer.aiter_raw():
                    size += len(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert size == int(answer.headers["Content-Length"]) > 50 * 1024**2
    assert peak < 10 * 1024**2, peak
