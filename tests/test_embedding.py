"""The agent embedded in a web app: FastAPI lifespan, served by uvicorn on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

import incident_fsm
from incident_fsm.config import ConfigError
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.store import Store

from .scenario import ENV, incident_state, sim_settings, until

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_host_app_starts_serves_detects_and_stops_cleanly(
    db_url: str, tmp_path: Path
) -> None:
    state = ServiceState()
    async with Simulator(state) as sim:
        settings = sim_settings(sim, db_url)
        app = FastAPI(lifespan=incident_fsm.lifespan(settings, environ=ENV,
                                                     journal_path=tmp_path / "j"))

        @app.get("/hello")
        async def hello() -> dict[str, str]:
            return {"hello": "world"}

        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await until(lambda: _answers(client), within=10)
                assert (await client.get("/hello")).json() == {"hello": "world"}
                agent = app.state.incident_agent
                app.mount("/agent", agent.status_app())
                state.leaked_memory_pct = 50.0  # the simulated target gets into trouble
                async with Store(db_url) as store:
                    await until(lambda: _seen(store), within=20)
                status = (await client.get("/agent/")).json()
                assert status["running"] is True
                assert status["role"] == ("single" if db_url.startswith("sqlite") else "leader")
                metrics = (await client.get("/agent/metrics")).text
                assert "incident_fsm_incidents" in metrics
                assert (await client.post("/agent/incidents")).status_code == 405
            server.should_exit = True
        assert not agent.running  # the host's shutdown stopped the agent


async def test_invalid_configuration_stops_the_host_from_starting(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\npoll_interval = 0\n")
    app = FastAPI(lifespan=incident_fsm.lifespan(config))
    with pytest.raises(ConfigError, match=r"agent\.poll_interval"):
        async with app.router.lifespan_context(app):
            pass  # pragma: no cover - never reached


async def test_a_disabled_agent_does_not_start(db_url: str, tmp_path: Path) -> None:
    from dataclasses import replace

    async with Simulator(ServiceState()) as sim:
        settings = sim_settings(sim, db_url)
        settings = replace(settings, agent=replace(settings.agent, enabled=False))
        async with incident_fsm.Agent(settings, journal_path=tmp_path / "j") as agent:
            await anyio.sleep(0.5)
            assert not agent.running
    assert sim.state.requests == {}  # not one poll


async def _answers(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/hello")).status_code == 200
    except httpx.TransportError:
        return False


async def _seen(store: Store) -> bool:
    return await incident_state(store, "api:memory_high") is not None
