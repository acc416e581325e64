"""Health payloads crafted to inject: shell metacharacters, paths, huge and control-laden text.

The target answers with valid numbers (memory 90 %) wrapped in hostile text
in every free-text field (alert messages, issues, component names, an ERROR
message). The agent remediates with an allow-listed command that records
the argv it was given. Nothing from the payload reaches the command, a path,
the database unbounded, or a log line unescaped (no newline, ANSI escape or
bidi override gets through to forge or recolour a line).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from incident_fsm.demo.simulator import ServiceState, Simulator, resources_payload, system_payload
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.agent import Agent
from incident_fsm.settings import CommandSettings

from ..scenario import incident_state, sim_settings, until
from .exposure import ENV, Exposure, database_texts

pytestmark = pytest.mark.anyio

HUGE = "H" * 20_000  # huge for a message, yet the body stays under the 256 KiB cap


def _hostile(tmp: Path) -> str:
    return ("\r\nFORGED-LINE | CRITICAL | fake \x1b[2J\x1b[31m red \u202e{0}{__class__} %s "
            f"$(touch {tmp}/pwned) `touch {tmp}/pwned2`; rm -rf {tmp}/sentinel | "
            f"cat ../../../../etc/passwd > {tmp}/sentinel/x " + HUGE)


def _bodies(state: ServiceState, text: str) -> dict[str, bytes]:
    resources: dict[str, Any] = resources_payload(state)
    for alert in resources["alert_details"]:
        alert["message"] = text
        alert["component"] = alert["component"] + text[:300]
    system: dict[str, Any] = system_payload(state)
    system["issues"] = [text] * 5
    system["checks"]["process"]["status"] = text
    return {"/health/resources": json.dumps(resources).encode(),
            "/health/system": json.dumps(system).encode()}


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


async def test_hostile_payload_text_reaches_no_command_path_or_log_line(
    sqlite_url: str, tmp_path: Path, exposure: Exposure
) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("do not touch")
    before = _tree_hash(sentinel)
    marker = tmp_path / "argv"
    record = [sys.executable, "-c",
              "import json, sys, time; open(sys.argv[1], 'a').write(json.dumps(sys.argv[1:]) "
              "+ chr(10)); time.sleep(1.0)", str(marker), "fixed-argument"]
    text = _hostile(tmp_path)
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0)
    async with Simulator(state) as sim, Store(sqlite_url) as store:
        base = sim_settings(sim, sqlite_url, policy={"memory_high": ("record_argv",)})
        command = CommandSettings(name="record_argv", argv=tuple(record), tier="safe",
                                  timeout=10, kinds=("memory_high",))
        settings = replace(base, actions=replace(base.actions,
                                                 commands={"record_argv": command}))
        state.bodies.update(_bodies(state, text))
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j"):
            await until(lambda: _ran(marker), within=15)
            state.leaked_memory_pct = 0.0  # the "fix" worked; the text stays hostile
            state.bodies.update(_bodies(state, text))
            await until(lambda: _is(store, "resolved"), within=15)
            # And as an ERROR message, which becomes a failed probe's reason.
            error = json.dumps({"status": "ERROR", "message": text}).encode()
            state.bodies.update({"/health/resources": error, "/health/system": error})
            polled = state.requests["GET /health/resources"]
            await until(lambda: _polled_since(state, polled, 2), within=10)
            await anyio.sleep(0.3)
    assert _recorded(marker) == [
        [str(marker), "fixed-argument"]]  # the configured argv, once, nothing added
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert _tree_hash(sentinel) == before
    assert any("FORGED-LINE" in line for line in exposure.logs)  # the text did reach logs...
    for line in exposure.logs:  # ...but only as harmless, bounded, one-line text
        message = line.split("\n", 1)[0]
        assert "\x1b" not in line and "\u202e" not in line and "\r" not in line
        assert "FORGED-LINE" not in line or "FORGED-LINE" in message
        assert len(line) < 20_000
    dumps = await anyio.to_thread.run_sync(lambda: list(database_texts(sqlite_url)))
    assert dumps
    for where, dumped in dumps:
        assert "H" * 1000 not in dumped, where
        assert "\x1b" not in dumped and "\u202e" not in dumped, where


def _recorded(marker: Path) -> list[Any]:
    if not marker.exists():
        return []
    return [json.loads(line) for line in marker.read_text().splitlines()]


async def _ran(marker: Path) -> bool:
    return bool(_recorded(marker))


async def _is(store: Store, wanted: str) -> bool:
    return await incident_state(store, "api:memory_high") == wanted


async def _polled_since(state: ServiceState, before: int, count: int) -> bool:
    return state.requests["GET /health/resources"] >= before + count
