"""Optional installs: the base install brings none of them, and each refusal names its pip line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from incident_fsm import extras
from incident_fsm.cli import main as cli
from incident_fsm.runtime import preflight
from incident_fsm.runtime.preflight import PreflightFailed, start_failures
from incident_fsm.settings import AgentSettings, DependencyCheck, Settings, TargetSettings

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
#: what only the extras bring (kombu comes with celery)
OPTIONAL = ("celery", "redis", "kombu", "graphviz")


def _name(requirement: str) -> str:
    """The distribution a requirement names: `celery[redis]>=5.3` -> `celery`."""
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower()


def _project() -> Any:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


def test_the_base_dependencies_hold_no_optional_package() -> None:
    base = {_name(r) for r in _project()["dependencies"]}
    assert base, "no dependencies read from pyproject.toml"
    assert base.isdisjoint(OPTIONAL), base & set(OPTIONAL)


def test_every_extra_the_code_names_exists_and_the_tests_install_it() -> None:
    optional = _project()["optional-dependencies"]
    for extra, module in extras.EXTRAS.items():
        assert module in {_name(r) for r in optional[extra]}, extra
        # The suite exercises every extra, so `.[test]` brings them all.
        assert module in {_name(r) for r in optional["test"]}, extra
    assert {_name(r) for r in optional["graph"]} == {"graphviz"}
    assert extras.install_line("graph") == "pip install 'incident-fsm[graph]'"
    with pytest.raises(KeyError):
        extras.install_line("nonsense")


# The agent is built, started and stopped in a fresh interpreter, so nothing
# an earlier test imported can hide an import of an optional package.
_PROBE = """
import sys
import anyio
from incident_fsm import Agent
from incident_fsm.config import load_settings
from incident_fsm.runtime.preflight import start_failures

settings = load_settings(sys.argv[1])
assert [d.kind for t in settings.targets for d in t.dependencies] == ["http"], settings
assert start_failures(settings, environ={}) == []
agent = Agent(settings, environ={})

async def start_and_stop() -> None:
    async with agent:
        await anyio.sleep(0.2)
    assert agent.started_at is not None, "the agent did not start"

anyio.run(start_and_stop)
print("loaded:" + ",".join(m for m in %r if m in sys.modules))
"""


def _run_agent(code: str, tmp_path: Path, config: str) -> list[str]:
    """The lines `code` prints, run with a config of `config` after the SQLite database."""
    path_ = tmp_path / "agent.toml"
    path_.write_text(f'[agent]\ndatabase_url = "sqlite:///{tmp_path / "agent.db"}"\n{config}',
                     encoding="utf-8")
    # This checkout first on the path, whatever else is installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-c", code, str(path_)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_an_agent_without_redis_or_celery_checks_imports_no_optional_package(
        tmp_path: Path) -> None:
    # Port 9 (discard) on loopback: nobody answers, the probes fail fast and stay local.
    lines = _run_agent(_PROBE % (OPTIONAL,), tmp_path, """
[[targets]]
name = "api"
base_url = "http://127.0.0.1:9"
fallback_local = false

[[targets.dependencies]]
name = "workers"
kind = "http"
path = "/health/workers"
""")
    assert lines[-1] == "loaded:", lines


def _with_checks(*kinds: str) -> Settings:
    checks = tuple(DependencyCheck(name="ready", kind="http", path="/health/ready")
                   if kind == "http" else
                   DependencyCheck(name=f"dep-{kind}", kind=kind, url_env="BROKER_URL")
                   for kind in kinds)
    target = TargetSettings(name="api", base_url="http://127.0.0.1:9", fallback_local=False,
                            dependencies=checks)
    return Settings(agent=AgentSettings(database_url="sqlite:///unused.db"), targets=(target,))


@pytest.mark.parametrize("kind", ["redis", "celery"])
def test_a_check_whose_package_is_missing_is_refused_with_its_pip_line(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _with_checks("redis", "celery")
    env = {"BROKER_URL": "redis://127.0.0.1:6379/0"}
    monkeypatch.setattr(preflight, "installed", lambda module: module != kind)
    [failure] = start_failures(settings, environ=env)
    line = f"pip install 'incident-fsm[{kind}]'"
    assert failure.name == f"package {kind}" and line in failure.detail
    # What the agent says when it refuses to start carries the line too.
    assert line in str(PreflightFailed([failure]))


def test_nothing_is_refused_when_no_check_needs_a_missing_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "installed", lambda module: False)
    assert start_failures(_with_checks("http"), environ={}) == []


@pytest.mark.parametrize(("package", "dot", "said", "unsaid"), [
    (False, True, "pip install 'incident-fsm[graph]'", "apt-get install graphviz"),
    (True, False, "apt-get install graphviz", "pip install"),
    (False, False, "pip install 'incident-fsm[graph]'", None),
])
def test_graph_to_an_image_names_what_is_missing_and_the_line_that_installs_it(
        package: bool, dot: bool, said: str, unsaid: str | None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setattr(extras, "installed", lambda module: package or module != "graphviz")
    monkeypatch.setattr(shutil, "which", lambda program: "/usr/bin/dot" if dot else None)
    result = CliRunner().invoke(cli.cli, ["graph", "--output", str(tmp_path / "g.png")])
    assert result.exit_code == 2, result.output
    assert "needs Graphviz" in result.output and said in result.output
    if unsaid is not None:
        assert unsaid not in result.output
    else:
        assert "apt-get install graphviz" in result.output
    assert not (tmp_path / "g.png").exists()


def test_the_agent_loads_no_optional_library_its_configuration_does_not_use() -> None:
    # A subprocess: this test session has long imported all of them. SQLite's driver
    # too: an agent on Postgres never needs it.
    code = ("import sys, incident_fsm.runtime.agent, incident_fsm.runtime.embedding, "
            "incident_fsm.cli.main\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'websockets', 'psutil', 'redis', 'celery', 'sqlite3'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


#: What an agent loads only when it sends a request through httpx or is scraped.
_ON_FIRST_USE = ("httpx", "httpcore", "certifi", "prometheus_client")

_POLLS_ONLY = """
import sys
import anyio
from incident_fsm import Agent
from incident_fsm.config import load_settings
agent = Agent(load_settings(sys.argv[1]), environ={"RENDER_API_KEY": "rnd_unused"})
watched = %r

async def main() -> None:
    async with agent:
        # Three failed polls of the target, each at least 0.1 s apart.
        for _ in range(3):
            seen = agent.status().targets[0].last_poll_at
            while agent.status().targets[0].last_poll_at == seen:
                await anyio.sleep(0.02)
        assert agent.status().targets[0].last_ok is False
        print("polled:" + ",".join(m for m in watched if m in sys.modules))
        text = await agent.metrics.exposition(agent.status(), agent.store, agent.clock.now())
        assert b"incident_fsm_health_checks_total" in text, text
        print("scraped:" + ",".join(m for m in watched if m in sys.modules))

anyio.run(main)
"""


def test_an_agent_that_only_polls_loads_httpx_and_prometheus_client_only_when_used(
        tmp_path: Path) -> None:
    # The target is read with the lean client and nobody answers on port 9: its polls
    # fail, and a render_restart waits in the catalog with its (unbuilt) httpx client.
    # No incident opens in the test's time, so no action or notification sends a request.
    lines = _run_agent(_POLLS_ONLY % (_ON_FIRST_USE,), tmp_path, """
poll_interval = 0.1
fast_poll_interval = 0.1

[[targets]]
name = "api"
base_url = "http://127.0.0.1:9"
render_service_id = "srv-api"
fallback_local = false
failures_before_down = 1000

[policy]
memory_high = ["render_restart"]
""")
    assert lines[-2:] == ["polled:", "scraped:prometheus_client"], lines
