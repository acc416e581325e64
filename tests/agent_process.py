"""Running `incident-fsm run` as a real process against a loopback simulator, for crash tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from incident_fsm.demo.simulator import Simulator
from incident_fsm.models import Lease
from incident_fsm.persistence import database
from incident_fsm.runtime.leader import LEADER_LEASE

from .scenario import RENDER_KEY


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def write_config(path: Path, sim: Simulator, db_url: str, *, commands: dict[str, list[str]],
                 policy: Sequence[str], extra_agent: str = "") -> Path:
    """A TOML file for one target (the simulator), memory_high handled by `policy`."""
    blocks = [
        "[agent]",
        f'database_url = "{db_url}"',
        "poll_interval = 0.2", "fast_poll_interval = 0.1", "poll_jitter = 0",
        "verify_window = 0.3", "detect_deadline = 30", "action_deadline = 30",
        'health_log_level = "DEBUG"', extra_agent,
        "[[targets]]", 'name = "api"', f'base_url = "{sim.base_url}"',
        f'render_service_id = "{sim.state.web_service_id}"', "fallback_local = false",
        "probe_timeout = 1", "max_requests_per_minute = 100000",
        "[actions.render]", f'api_url = "{sim.render_api_url}"', "timeout = 2",
    ]
    for name, argv in commands.items():
        blocks += [f"[actions.commands.{name}]", f"argv = {_toml_list(argv)}",
                   'tier = "safe"', "timeout = 25", 'kinds = ["memory_high"]']
    blocks += ["[policy]", f"memory_high = {_toml_list(policy)}"]
    path.write_text("\n".join(blocks) + "\n")
    return path


def marker_command(marker: Path, *, sleep: float) -> list[str]:
    """An action that records each execution (with its pid) and then takes `sleep` seconds."""
    # No backslashes or double quotes: it travels through a TOML basic string.
    code = ("import os, sys, time; print('start', os.getpid(), file=open(sys.argv[1], 'a'), "
            "flush=True); time.sleep(float(sys.argv[2]))")
    return [sys.executable, "-c", code, str(marker), str(sleep)]


def executions(marker: Path) -> list[int]:
    if not marker.exists():
        return []
    return [int(line.split()[1]) for line in marker.read_text().splitlines() if line.strip()]


@contextmanager
def agent_process(config: Path, log: Path,
                  env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "RENDER_API_KEY": RENDER_KEY, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from incident_fsm.cli.main import main; main()", "run",
             "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def kill_leftovers(marker: Path) -> None:
    """Orphans of a killed agent (its running command) are ended by the test."""
    for pid in executions(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def lease_holder_pid(url: str) -> int | None:
    """The pid of the replica holding the leader lease (holders are `host:pid:...`)."""
    engine = database.create_engine(url)
    try:
        with engine.connect() as conn:
            # The leader's row only: every replica also has a heartbeat row in `lease`.
            holder = conn.execute(
                sa.select(Lease.holder).where(Lease.name == LEADER_LEASE)  # type: ignore[call-overload]
            ).scalar()
    finally:
        engine.dispose()
    return None if holder is None else int(str(holder).split(":")[1])
