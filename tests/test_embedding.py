"""The agent embedded in a web app: FastAPI lifespan, served by uvicorn on loopback."""

from __future__ import annotations

import dataclasses
import re
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

from .logcapture import captured_logs
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
                assert 'incident_fsm_transitions_total{dest="detected",trigger="open"}' in metrics
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


def _readme_snippet() -> str:
    """The README's embedded-host snippet, exactly as printed."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    [snippet] = [b for b in blocks if "agent.status_app()" in b]
    return snippet


TOKEN = "st-0f6c2a9e71d84b35"


async def test_the_readme_snippet_mounts_the_status_endpoints_before_the_agent_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Simulator(ServiceState()) as sim:
        (tmp_path / "agent.toml").write_text(
            "[agent]\n"
            f'database_url = "sqlite:///{tmp_path}/incidents.db"\n'
            "poll_interval = 0.2\nfast_poll_interval = 0.1\nauto_remediation = false\n"
            'status_token_env = "AGENT_STATUS_TOKEN"\n'
            "[[targets]]\n"
            f'name = "api"\nbase_url = "{sim.base_url}"\nfallback_local = false\n')
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("AGENT_STATUS_TOKEN", TOKEN)
        namespace: dict[str, object] = {}
        exec(compile(_readme_snippet(), "README.md", "exec"), namespace)
        app = namespace["app"]
        embedded = namespace["agent"]
        assert isinstance(app, FastAPI) and isinstance(embedded, incident_fsm.EmbeddedAgent)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            before = await client.get("/agent/")
            assert before.status_code == 503 and before.headers["retry-after"] == "5"
            assert (await client.get("/agent/live")).status_code == 503
            with captured_logs() as logs:
                async with app.router.lifespan_context(app):
                    await until(lambda: _running(embedded), within=10)
                    bearer = {"authorization": f"Bearer {TOKEN}"}
                    status = await client.get("/agent/", headers=bearer)
                    assert status.status_code == 200 and status.json()["running"] is True
                    assert (await client.get("/agent/live")).json() == {"running": True}
                    assert app.state.incident_agent is embedded.agent
            assert "served without a token" not in "".join(logs)
            after = await client.get("/agent/", headers=bearer)
            assert after.status_code == 503


async def _running(embedded: incident_fsm.EmbeddedAgent) -> bool:
    return embedded.agent is not None and embedded.agent.running


@pytest.mark.parametrize(("route", "answer"), [
    ("/", 200), ("/incidents", 200), ("/history", 200), ("/metrics", 200),
    ("/incidents/1", 404), ("/?page", 200)])
async def test_every_route_but_liveness_asks_for_the_token(
    db_url: str, tmp_path: Path, route: str, answer: int
) -> None:
    async with Simulator(ServiceState()) as sim:
        settings = sim_settings(sim, db_url)
        settings = dataclasses.replace(settings, agent=dataclasses.replace(
            settings.agent, status_token_env="AGENT_STATUS_TOKEN"))
        environ = {**ENV, "AGENT_STATUS_TOKEN": TOKEN}
        async with incident_fsm.Agent(settings, environ=environ,
                                      journal_path=tmp_path / "j") as agent:
            transport = httpx.ASGITransport(app=agent.status_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
                # "/?page": the status page, as a browser asks for it.
                html = {"accept": "text/html"} if route == "/?page" else {}
                missing = await client.get(route, headers=html)
                wrong = await client.get(route, headers={
                    **html, "authorization": f"Bearer {TOKEN}x"})
                bare = await client.get(route, headers={**html, "authorization": TOKEN})
                right = await client.get(route, headers={
                    **html, "authorization": f"Bearer {TOKEN}"})
                live = await client.get("/live")
    for refused in (missing, wrong, bare):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in refused.text
    assert right.status_code == answer
    assert live.status_code == 200


async def test_without_a_token_the_endpoints_are_open_and_the_start_says_so(
    db_url: str, tmp_path: Path
) -> None:
    async with Simulator(ServiceState()) as sim:
        embedded = incident_fsm.lifespan(sim_settings(sim, db_url), environ=ENV,
                                         journal_path=tmp_path / "j")
        app = FastAPI(lifespan=embedded)
        app.mount("/agent", embedded.status_app())
        with captured_logs() as logs:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://h") as c:
                    await until(lambda: _running(embedded), within=10)
                    assert (await c.get("/agent/incidents")).status_code == 200
    assert "served without a token" in "".join(logs)


async def test_a_token_variable_named_but_unset_stops_the_start(
    db_url: str, tmp_path: Path
) -> None:
    async with Simulator(ServiceState()) as sim:
        settings = sim_settings(sim, db_url)
        settings = dataclasses.replace(settings, agent=dataclasses.replace(
            settings.agent, status_token_env="AGENT_STATUS_TOKEN"))
        app = FastAPI(lifespan=incident_fsm.lifespan(settings, environ=ENV,
                                                     journal_path=tmp_path / "j"))
        with pytest.raises(Exception, match="AGENT_STATUS_TOKEN"):
            async with app.router.lifespan_context(app):
                pass  # pragma: no cover - never reached
