"""Secrets under failure: every path that could echo a credential is driven, then scanned.

The suite-wide `exposure` fixture (tests/faults/conftest.py) scans every
fault test's logs, errors, database rows and `--json` output for the Render
key, the PAM token, the webhook secret and the database password. Here the
scan itself is shown to catch a planted secret, and one agent run uses all
four credentials on paths that fail: Render refusing the key, PAM closing
4001, a webhook endpoint answering 404, and a database URL with a password.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from loguru import logger

from incident_fsm.clock import SystemClock
from incident_fsm.demo.pam_simulator import PamSimulator
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.agent import Agent
from incident_fsm.settings import WebhookSettings

from ..scenario import PAM_TOKEN, RENDER_KEY, incident_state, sim_settings, until
from .exposure import DB_PASSWORD, ENV, WEBHOOK_SECRET, Exposure, exposed


def test_the_scan_catches_a_planted_secret_in_logs_rows_and_json(
    sqlite_template: Path, tmp_path: Path, exposure: Exposure
) -> None:
    path = tmp_path / "planted.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    anyio.run(_plant, url)
    with exposed() as found:
        logger.info("token {}", PAM_TOKEN)
        logging.getLogger("incident_fsm.test").warning("secret %s", WEBHOOK_SECRET)
        found.texts.append(f"postgresql://u:{DB_PASSWORD}@h/db")
        found.databases.append(url)
        leaks = found.leaks()
    # Planted on purpose: not a leak of this test (the suite-wide scan saw them too).
    exposure.logs[:] = [line for line in exposure.logs if line not in found.logs]
    assert any(leak.startswith("PAM token in log") for leak in leaks)
    assert any(leak.startswith("webhook secret in log") for leak in leaks)
    assert any(leak.startswith("database password in text") for leak in leaks)
    assert any("Render key in table incident" in leak for leak in leaks)
    assert any("Render key in incidents --json" in leak for leak in leaks)
    assert any("Render key in table transition" in leak for leak in leaks)
    assert any("Render key in show 1 --json" in leak for leak in leaks)
    assert any("Render key in history --json" in leak for leak in leaks)


@pytest.mark.anyio
async def test_every_credential_on_a_failing_path_stays_out_of_everything(
    sqlite_url: str, tmp_path: Path, exposure: Exposure
) -> None:
    exposure.databases.append(sqlite_url)
    state = ServiceState(leaked_memory_pct=50.0, load_memory_pct=40.0,
                         render_api_key="rnd_rotated_elsewhere")
    pam = PamSimulator(token=PAM_TOKEN)
    pam.mode = "auth"
    async with pam, Simulator(state) as sim, Store(sqlite_url) as store:
        settings = sim_settings(sim, sqlite_url, pam_url=pam.url)
        hook = WebhookSettings(url=f"{sim.base_url}/hooks/incidents", secret_env="WEBHOOK_SECRET")
        settings = replace(settings, channels=replace(settings.channels, webhook=hook))
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j"):
            await until(lambda: _escalated(store), within=15)
            await until(lambda: _hooked(state, 2), within=10)
            await anyio.sleep(0.5)
        # A database URL with a password, refused: the error names the host, not the password.
        refused = f"postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:1/nowhere"
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any failure; its text matters
            async with Store(refused, call_timeout=3.0) as dead:
                await dead.list_incidents(limit=1)
        exposure.texts += [str(caught.value), repr(caught.value)]
    assert state.requests["POST /v1/services/srv-web/restart"] == 1  # the key was really sent
    assert pam.connections == 1  # the token was really presented
    assert state.requests["POST /hooks/incidents"] >= 2  # the secret really signed requests


async def _plant(url: str) -> None:
    async with Store(url) as store:
        await IncidentEngine(store, clock=SystemClock()).open(
            target="api", kind="memory_high", severity="warning", reason=f"key {RENDER_KEY}",
            summary=f"key {RENDER_KEY}")


async def _escalated(store: Store) -> bool:
    return await incident_state(store, "api:memory_high") == "escalated"


async def _hooked(state: ServiceState, count: int) -> bool:
    return state.requests["POST /hooks/incidents"] >= count
