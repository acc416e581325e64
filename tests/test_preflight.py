"""`incident-fsm check` and the start-up checks: everything the agent needs, changing nothing.

The demo's configuration passes; each broken variant fails, naming its
cause; no check writes anything (no POST to Render, no message to a person,
no database file). The agent refuses to start on a local failure, such as a
secret the configuration needs and the environment lacks.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from incident_fsm import Agent
from incident_fsm.demo.pam_simulator import free_port
from incident_fsm.demo.scenarios import demo_settings
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence import database
from incident_fsm.runtime.preflight import (
    FAIL,
    OK,
    WARN,
    Check,
    PreflightFailed,
    cleanup_root_check,
    filesystem_type,
    render_checks,
    run_checks,
    start_failures,
)
from incident_fsm.settings import (
    ChannelsSettings,
    DependencyCheck,
    PamRelaySettings,
    PamSettings,
    Settings,
    WebhookSettings,
)

from .conftest import create_database, drop_database
from .pam_server import FakePam
from .scenario import PAM_TOKEN, RENDER_KEY

pytestmark = pytest.mark.anyio

ENV = {"RENDER_API_KEY": RENDER_KEY}


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    logs = tmp_path / "app-logs"
    logs.mkdir()
    async with Simulator(ServiceState(disk_dir=logs)) as simulator:
        yield simulator


def demo(sim: Simulator, tmp_path: Path, **changes: Any) -> Settings:
    settings = demo_settings(sim, f"sqlite:///{tmp_path / 'demo.db'}", tmp_path / "app-logs")
    return replace(settings, **changes)


def by_name(checks: list[Check], prefix: str) -> list[Check]:
    return [c for c in checks if c.name.startswith(prefix)]


def the(checks: list[Check], prefix: str) -> Check:
    found = by_name(checks, prefix)
    assert len(found) == 1, (prefix, checks)
    return found[0]


async def test_the_demo_configuration_passes_and_nothing_is_changed(
        sim: Simulator, tmp_path: Path) -> None:
    checks = await run_checks(demo(sim, tmp_path), environ=ENV)
    assert [c for c in checks if c.status == FAIL] == []
    assert the(checks, "configuration").status == OK
    endpoint = the(checks, "target api /health/resources")
    assert endpoint.status == OK and "memory " in endpoint.detail and "disk " in endpoint.detail
    assert the(checks, "target api dependency celery").status == OK
    render = the(checks, "render service srv-web")
    assert render.status == OK and "plan standard" in render.detail
    assert "autoscaling off" in render.detail
    assert the(checks, "render worker service srv-worker").status == OK
    assert the(checks, "secret RENDER_API_KEY").status == OK
    assert the(checks, "cleanup root").status == OK
    assert the(checks, "channel pam_inprocess").status == WARN
    assert the(checks, "database").status == WARN  # a fresh file: `run` migrates it
    assert not (tmp_path / "demo.db").exists()  # a check creates no database
    posts = [k for k, n in sim.state.requests.items() if k.startswith("POST") and n]
    assert posts == []  # Render was only read
    assert RENDER_KEY not in json.dumps([c.as_dict() for c in checks])


async def test_each_broken_variant_fails_naming_its_cause(sim: Simulator,
                                                          tmp_path: Path) -> None:
    good = demo(sim, tmp_path)
    target = good.targets[0]

    no_key = await run_checks(good, environ={})
    secret = the(no_key, "secret RENDER_API_KEY")
    assert secret.status == FAIL and "not set in the environment" in secret.detail
    assert the(no_key, "render service srv-web").status == FAIL

    wrong_key = await run_checks(good, environ={"RENDER_API_KEY": "rnd_wrong"})
    refused = the(wrong_key, "render service srv-web")
    assert refused.status == FAIL and "refused (HTTP 401)" in refused.detail

    unknown = replace(good, targets=(replace(target, render_service_id="srv-nope"),))
    missing = the(await run_checks(unknown, environ=ENV), "render service srv-nope")
    assert missing.status == FAIL and "HTTP 404" in missing.detail

    dead = replace(good, targets=(replace(target, base_url=f"http://127.0.0.1:{free_port()}"),))
    down = the(await run_checks(dead, environ=ENV), "target api /health/resources")
    assert down.status == FAIL and down.detail.startswith("down:")

    wrong_path = replace(good, targets=(replace(target, endpoints=("/healthz",)),))
    unusable = the(await run_checks(wrong_path, environ=ENV), "target api /healthz")
    assert unusable.status == FAIL and "HTTP 404" in unusable.detail

    no_root = replace(good, actions=replace(good.actions, disk_cleanup=replace(
        good.actions.disk_cleanup, roots=(str(tmp_path / "gone"),))))
    root = the(await run_checks(no_root, environ=ENV), "cleanup root")
    assert root.status == FAIL and "does not exist" in root.detail

    redis = replace(good, targets=(replace(target, dependencies=(
        DependencyCheck(name="cache", kind="redis", url_env="CACHE_URL"),)),))
    redis_checks = await run_checks(redis, environ=ENV)
    assert the(redis_checks, "secret CACHE_URL").status == FAIL

    hook = replace(good, channels=replace(good.channels, webhook=WebhookSettings(
        url=f"http://127.0.0.1:{free_port()}/hook", timeout=2.0)))
    webhook = the(await run_checks(hook, environ=ENV), "channel webhook")
    assert webhook.status == FAIL and "unreachable" in webhook.detail


async def test_a_postgres_database_without_its_schema_fails_the_check(
        sim: Simulator, tmp_path: Path) -> None:
    url = create_database()
    try:
        good = demo(sim, tmp_path)
        settings = replace(good, agent=replace(good.agent, database_url=url))
        check = the(await run_checks(settings, environ=ENV), "database")
        assert check.status == FAIL
        assert "run `incident-fsm db upgrade --database-url postgresql+psycopg://" in check.detail
    finally:
        drop_database(url)


async def test_pam_is_checked_by_its_connected_word_and_receives_nothing(
        sim: Simulator, tmp_path: Path) -> None:
    pam = await FakePam(token=PAM_TOKEN).start()
    try:
        good = demo(sim, tmp_path)
        settings = replace(good, channels=ChannelsSettings(
            pam=PamSettings(url=pam.url, user_id="ops", timeout=3.0)))
        ok = the(await run_checks(settings, environ={**ENV, "PAM_TOKEN": PAM_TOKEN}),
                 "channel pam")
        assert ok.status == OK and "accepted the token" in ok.detail
        assert PAM_TOKEN not in ok.name + ok.detail
        bad = the(await run_checks(settings, environ={**ENV, "PAM_TOKEN": "stale"}),
                  "channel pam")
        assert bad.status == FAIL and "refused the token" in bad.detail
        assert pam.received == []  # not a frame reached anyone
    finally:
        await pam.stop()


async def test_the_relay_checks_the_signature_without_delivering(
        sim: Simulator, tmp_path: Path) -> None:
    import uvicorn
    from fastapi import FastAPI

    from incident_fsm import pam_relay
    from incident_fsm.demo.pam_simulator import ConnectionManager

    from .pam_host import add_pam_socket

    class Socket:
        def __init__(self) -> None:
            self.got: list[str] = []

        async def send_text(self, message: str) -> None:
            self.got.append(message)

    manager, socket = ConnectionManager(), Socket()
    manager.connect(socket, "ops")
    app = FastAPI()
    add_pam_socket(app, manager)
    secret = "relay-secret-0123456789"
    app.mount("/relay", pam_relay(manager, environ={"INCIDENT_FSM_PAM_RELAY_SECRET": secret}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await anyio.sleep(0.02)
        good = demo(sim, tmp_path)
        relay = PamRelaySettings(url=f"http://127.0.0.1:{port}/relay/", user_ids=("ops",))
        settings = replace(good, channels=ChannelsSettings(pam_relay=relay))
        env = {**ENV, "INCIDENT_FSM_PAM_RELAY_SECRET": secret}
        ok = the(await run_checks(settings, environ=env), "channel pam_relay")
        assert ok.status == OK and "1 of 1 user(s) connected" in ok.detail
        env["INCIDENT_FSM_PAM_RELAY_SECRET"] = "not-the-relay-secret"
        bad = the(await run_checks(settings, environ=env), "channel pam_relay")
        assert bad.status == FAIL and "refused the signature" in bad.detail
        server.should_exit = True
    assert socket.got == []


def test_cleanup_roots_on_a_network_filesystem_fail(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/x {tmp_path} nfs4 rw 0 0\n")
    assert filesystem_type(tmp_path / "logs", mounts) == "nfs4"
    assert filesystem_type(Path("/usr"), mounts) == "ext4"
    assert cleanup_root_check("relative/logs").status == FAIL
    assert cleanup_root_check(str(tmp_path)).status == OK


# --- the agent refuses to start on a local failure -------------------------------------


async def test_the_agent_refuses_to_start_without_a_secret_it_needs(
        sim: Simulator, tmp_path: Path) -> None:
    settings = demo(sim, tmp_path, channels=ChannelsSettings())
    with pytest.raises(PreflightFailed, match="secret RENDER_API_KEY: not set"):
        async with Agent(settings, environ={}):
            pytest.fail("started without the Render key")
    assert sum(sim.state.requests.values()) == 0
    hook = replace(settings, channels=replace(settings.channels, webhook=WebhookSettings(
        url="http://127.0.0.1:9/hook", secret_env="HOOK_SECRET")))
    assert [c.name for c in start_failures(hook, environ=ENV)] == ["secret HOOK_SECRET"]


async def test_monitor_only_needs_the_render_key_only_as_a_warning(sim: Simulator,
                                                             tmp_path: Path) -> None:
    settings = demo(sim, tmp_path)
    watching = replace(settings, agent=replace(settings.agent, auto_remediation=False))
    assert start_failures(watching, environ={}) == []


# --- the command ------------------------------------------------------------------------


async def _cli(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-c", "from incident_fsm.cli.main import main; main()", *args],
        check=False, env={"PATH": os.environ.get("PATH", "/usr/bin"), **env})
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _toml(sim: Simulator, tmp_path: Path, *, key_env: str = "RENDER_API_KEY") -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
database_url = "sqlite:///{tmp_path / 'agent.db'}"

[[targets]]
name = "api"
base_url = "{sim.base_url}"
render_service_id = "{sim.state.web_service_id}"
fallback_local = false

[actions.render]
api_url = "{sim.render_api_url}"
api_key_env = "{key_env}"
""")
    return config


async def test_check_exits_0_when_all_pass_1_on_a_failure_2_on_a_bad_config(
        sim: Simulator, tmp_path: Path) -> None:
    config = _toml(sim, tmp_path)
    code, out, err = await _cli("check", "--config", str(config), env=ENV)
    assert code == 0, out + err
    assert "OK    target api /health/resources: memory" in out
    code, out, _ = await _cli("check", "--config", str(config), "--json", env={})
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    failed = {c["name"] for c in report["checks"] if c["status"] == FAIL}
    assert {"secret RENDER_API_KEY", "render service srv-web (target api)"} <= failed
    config.write_text(config.read_text() + "\n[agent.nonsense]\nx = 1\n")
    code, _, err = await _cli("check", "--config", str(config), env=ENV)
    assert code == 2 and "nonsense" in err
    assert not (tmp_path / "agent.db").exists()


async def test_run_refuses_to_start_without_the_render_key(sim: Simulator,
                                                           tmp_path: Path) -> None:
    config = _toml(sim, tmp_path)
    code, _, err = await _cli("run", "--config", str(config), env={})
    assert code == 2
    assert "secret RENDER_API_KEY: not set in the environment" in err
    assert "incident-fsm check" in err
    assert sum(sim.state.requests.values()) == 0
    assert database.sqlite_path(f"sqlite:///{tmp_path / 'agent.db'}") is not None
    assert not (tmp_path / "agent.db").exists()


async def test_a_configuration_without_targets_or_with_a_wrong_webhook_path_warns(
        sim: Simulator, tmp_path: Path) -> None:
    nothing = the(await run_checks(Settings(), environ={}), "configuration")
    assert nothing.status == WARN and "no [[targets]]" in nothing.detail
    good = demo(sim, tmp_path)
    hook = replace(good, channels=replace(good.channels, webhook=WebhookSettings(
        url=f"{sim.base_url}/no/such/hook", timeout=2.0)))
    webhook = the(await run_checks(hook, environ=ENV), "channel webhook")
    assert webhook.status == WARN and "HTTP 404 to HEAD: is the path right?" in webhook.detail


async def test_a_redis_or_celery_check_without_its_package_stops_the_start(
        sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from incident_fsm.runtime import preflight

    good = demo(sim, tmp_path, channels=ChannelsSettings())
    target = good.targets[0]
    settings = replace(good, targets=(replace(target, dependencies=(
        DependencyCheck(name="cache", kind="redis", url_env="CACHE_URL"),
        DependencyCheck(name="workers", kind="celery", url_env="CACHE_URL"))),))
    env = {**ENV, "CACHE_URL": "redis://127.0.0.1:6379/0"}
    assert [c.status for c in by_name(start_failures(settings, environ=env), "package")] == []
    monkeypatch.setattr(preflight, "installed", lambda module: module != "celery")
    [missing] = start_failures(settings, environ=env)
    assert missing.name == "package celery"
    assert "pip install 'incident-fsm[celery]'" in missing.detail
    with pytest.raises(PreflightFailed, match=r"package celery: not installed"):
        async with Agent(settings, environ=env):
            pytest.fail("started with a check that could only fail")
    assert sum(sim.state.requests.values()) == 0
    checks = await run_checks(settings, environ=env)  # the check runs, naming the gap
    skipped = the(checks, "target api dependency workers")
    assert skipped.status == FAIL and "the celery package is not installed" in skipped.detail


async def test_an_oversized_render_answer_fails_its_check_without_being_read_whole(
    sim: Simulator, tmp_path: Path,
) -> None:
    import httpx

    from incident_fsm.remediation.actions.http_retry import MAX_BODY

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        return httpx.Response(200, content=b'{"id": "' + b"x" * (MAX_BODY + 1) + b'"}')

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        checks = await render_checks(demo(sim, tmp_path), http, ENV)
    assert checks and all(c.status == FAIL for c in checks)
    assert all(f"larger than {MAX_BODY} bytes" in c.detail and "xxxx" not in c.detail
               for c in checks)
