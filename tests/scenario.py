"""Shared set-up for end-to-end tests: settings that point the agent at a loopback simulator."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from incident_fsm.demo.simulator import Simulator
from incident_fsm.persistence.store import Store
from incident_fsm.settings import (
    ActionsSettings,
    AgentSettings,
    ChannelsSettings,
    DependencyCheck,
    DiskCleanupSettings,
    PamSettings,
    RenderSettings,
    Settings,
    TargetSettings,
)

RENDER_KEY = "rnd_simulated"
PAM_TOKEN = "pam-jwt-secret-token"
ENV = {"RENDER_API_KEY": RENDER_KEY, "PAM_TOKEN": PAM_TOKEN}


def fast_agent(db_url: str, **changes: Any) -> AgentSettings:
    """Compressed time: polls every 0.2 s (0.1 s while suspect), judged 0.3 s after acting."""
    base = AgentSettings(database_url=db_url, poll_interval=0.2, fast_poll_interval=0.1,
                         poll_jitter=0.0, verify_window=0.3, detect_deadline=20.0,
                         action_deadline=20.0, reopen_window=60.0, health_log_level="DEBUG")
    return replace(base, **changes)


def sim_settings(sim: Simulator, db_url: str, *, cleanup_root: Path | None = None,
                 pam_url: str | None = None, agent: AgentSettings | None = None,
                 policy: dict[str, tuple[str, ...]] | None = None) -> Settings:
    target = TargetSettings(
        name="api", base_url=sim.base_url, render_service_id=sim.state.web_service_id,
        worker_service_id=sim.state.worker_service_id, fallback_local=False,
        dependencies=(DependencyCheck(name="celery", kind="http", path="/health/workers",
                                      timeout=1.0),),
        probe_timeout=1.0, max_requests_per_minute=100000)
    actions = ActionsSettings(
        disk_cleanup=DiskCleanupSettings(roots=(str(cleanup_root),) if cleanup_root else ()),
        render=RenderSettings(api_url=sim.render_api_url, timeout=2.0))
    channels = ChannelsSettings(
        pam=PamSettings(url=pam_url, user_id="ops", reconnect_initial=0.1,
                        reconnect_max=0.5) if pam_url else None,
        retry_initial=0.2, retry_max=1.0)
    return Settings(agent=agent or fast_agent(db_url), targets=(target,), actions=actions,
                    policy=policy or {"memory_high": ("render_restart", "render_scale")},
                    channels=channels)


def old_logs(root: Path, *, files: int, size: int, days: float = 30) -> int:
    """Write `files` log files of `size` bytes, `days` old; returns the bytes written."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.time() - days * 86400
    for n in range(files):
        path = root / f"app-{n}.log"
        path.write_bytes(b"x" * size)
        os.utime(path, (stamp, stamp))
    return files * size


async def until(check: Callable[[], Awaitable[bool]], *, within: float = 30.0,
                step: float = 0.05) -> float:
    """Wait (real time, bounded) until `check()` is true; returns the seconds it took."""
    started = time.monotonic()
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - polling an outside process by design
            await anyio.sleep(step)
    return time.monotonic() - started


async def incident_state(store: Store, fingerprint: str) -> str | None:
    rows = [i for i in await store.list_incidents(limit=100) if i.fingerprint == fingerprint]
    return rows[0].state if rows else None
