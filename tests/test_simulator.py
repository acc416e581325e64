"""The simulator serves the reference payloads from its state; Render calls change that state."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from incident_fsm.simulator import ServiceState, Simulator

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
        assert (await client.post("/v1/services/srv-web/restart", headers=KEY)).status_code == 202
        assert state.memory_pct() == 60.0
        assert (await client.post("/v1/services/srv-web/scale", headers=KEY,
                                  json={"numInstances": 3})).status_code == 202
        assert state.memory_pct() == 20.0
        assert (await client.post("/v1/services/srv-worker/restart",
                                  headers=KEY)).status_code == 202
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
