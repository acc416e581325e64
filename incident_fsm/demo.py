"""The demo: the PRD's four scenarios, played by the real agent against the built-in simulator.

Nothing here is staged: the agent polls the simulated service over HTTP on
loopback, opens incidents from what it reads, runs real actions (Render-like
API calls that change the simulated service, a disk cleanup that deletes real
files in a temporary folder), verifies with fresh samples, and notifies PAM
as it does embedded in the service: through the service's connection
manager (the simulator's, of the same shape), to an operator whose socket is
open. A notification counts as delivered only when it reached that socket.
Only time is compressed (polls every 0.2 s).

1. memory pressure: a leak -> `render_restart` -> verified -> resolved;
2. disk spike: old logs fill the disk -> `disk_cleanup` deletes them -> resolved;
3. worker failure: the Celery worker dies -> `restart_celery_workers` -> resolved;
4. PAM outage: the operator's PAM socket closes, a CPU spike is handled
   (`render_scale`) without it, and the notifications that waited are delivered
   once, in order, when the operator is back;
then a health endpoint that stays down: a restart does not help, the
failover (approval tier) is held and the incident escalated, for the
operator to approve with `incident-fsm force`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from .agent import Agent
from .models import Incident
from .settings import (
    ActionsSettings,
    AgentSettings,
    ChannelsSettings,
    DependencyCheck,
    DiskCleanupSettings,
    FailoverSettings,
    PamInProcessSettings,
    RenderSettings,
    Settings,
    TargetSettings,
)
from .simulator import ConnectionManager, ServiceState, Simulator
from .store import Store

#: the PAM user told (a Supabase UUID in the real service)
OPERATOR = "00000000-0000-4000-8000-00000000beef"
PAM_CHANNEL = "pam_inprocess"
RENDER_KEY = "rnd_simulated"
#: How long one scenario may take before the demo gives up on it (seconds).
SCENARIO_LIMIT = 30.0


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    incident_id: int | None
    fingerprint: str
    detected_after: float | None
    first_action_after: float | None
    outcome: str
    notifications: str


class OperatorSocket:
    """The operator's open PAM socket, as the service's manager holds it: keeps what it got."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def send_text(self, message: str) -> None:
        self.received.append(json.loads(message))


def demo_settings(sim: Simulator, url: str, logs: Path) -> Settings:
    target = TargetSettings(
        name="api", base_url=sim.base_url, render_service_id=sim.state.web_service_id,
        worker_service_id=sim.state.worker_service_id, fallback_local=False,
        dependencies=(DependencyCheck(name="celery", kind="http", path="/health/workers",
                                      timeout=1.0),),
        probe_timeout=1.0, failures_before_down=3, max_requests_per_minute=100000)
    failover = FailoverSettings(
        argv=(sys.executable, "-c", "print('failover: traffic moved to the standby region')"),
        tier="approval", timeout=10.0, kinds=("health_endpoint_down",))
    return Settings(
        agent=AgentSettings(
            database_url=url, poll_interval=0.2, fast_poll_interval=0.1, poll_jitter=0.0,
            verify_window=0.5, detect_deadline=30.0, action_deadline=30.0, reopen_window=1.0,
            # Five scenarios on one target within seconds: the default budget (3 actions
            # per target per 30 min) would rightly hold the fourth.
            action_budget=10, leader_election=False, health_log_level="DEBUG"),
        targets=(target,),
        actions=ActionsSettings(
            disk_cleanup=DiskCleanupSettings(roots=(str(logs),), max_age_days=7),
            render=RenderSettings(api_url=sim.render_api_url, timeout=2.0),
            failover=failover),
        policy={"memory_high": ("render_restart", "render_scale"),
                "cpu_high": ("render_scale",),
                "health_endpoint_down": ("render_restart", "failover")},
        channels=ChannelsSettings(
            pam_inprocess=PamInProcessSettings(user_ids=(OPERATOR,), watch_interval=0.1),
            retry_initial=0.5, retry_max=2.0))


async def run_demo(url: str, *, workdir: Path,
                   echo: Callable[[str], None] = print) -> list[ScenarioResult]:
    """Play every scenario against a migrated database at `url`; returns the summary rows."""
    logs = workdir / "app-logs"
    logs.mkdir(parents=True, exist_ok=True)
    state = ServiceState(disk_dir=logs, disk_capacity_bytes=2_000_000, disk_base_bytes=600_000)
    manager, operator = ConnectionManager(), OperatorSocket()
    manager.connect(operator, OPERATOR)
    results: list[ScenarioResult] = []
    started = time.monotonic()
    env = {"RENDER_API_KEY": RENDER_KEY}
    async with Simulator(state) as sim, Store(url) as store:
        settings = demo_settings(sim, url, logs)
        async with Agent(settings, environ=env, journal_path=workdir / "agent.journal",
                         pam_manager=manager) as agent, anyio.create_task_group() as tg:
            tg.start_soon(_print_timeline, store, started, echo)

            async def scenario(name: str, kind: str, start: Callable[[], None],
                               done: str = "resolved",
                               after: Callable[[Incident], Awaitable[None]] | None = None,
                               ) -> None:
                echo(f"\n== {name}")
                injected = datetime.now(UTC)
                start()
                incident = await _until_state(agent.store, f"api:{kind}", done, injected)
                if incident is not None and after is not None:
                    await after(incident)
                results.append(await _summarise(agent.store, name, f"api:{kind}",
                                                injected, incident))

            await scenario("1. memory pressure (a leak)", "memory_high",
                           lambda: setattr(state, "leaked_memory_pct", 50.0))
            await scenario("2. disk spike (old logs)", "disk_high",
                           lambda: _old_logs(logs, files=12, size=100_000))
            await scenario("3. worker failure (Celery worker died)", "service_down:celery",
                           lambda: setattr(state, "worker_alive", False))

            async def pam_back(incident: Incident) -> None:
                echo("   the operator is back on PAM: what waited goes out")
                manager.connect(operator, OPERATOR)
                await _until_pam_settled(agent.store, incident)

            def outage() -> None:
                manager.disconnect(operator, OPERATOR)
                echo("   the operator's PAM socket is closed: notifications wait")
                state.cpu_load_pct = 150.0  # 100 % on one instance, 75 % on two

            await scenario("4. PAM outage (CPU spike handled without PAM)", "cpu_high",
                           outage, after=pam_back)
            await scenario("5. health endpoint down: restart fails, failover held",
                           "health_endpoint_down",
                           lambda: state.faults.update({"/health/resources": "500",
                                                        "/health/system": "500"}),
                           done="escalated")
            await anyio.sleep(0.5)  # let the printer catch up
            tg.cancel_scope.cancel()
    echo(f"\nall scenarios played in {time.monotonic() - started:.1f} s; the operator's PAM "
         f"socket received {len(operator.received)} proactive_alert(s)")
    return results


def _old_logs(root: Path, *, files: int, size: int) -> None:
    stamp = time.time() - 30 * 86400
    for n in range(files):
        path = root / f"app-{n}.log"
        path.write_bytes(b"x" * size)
        os.utime(path, (stamp, stamp))


async def _until_state(store: Store, fingerprint: str, state: str,
                       since: datetime) -> Incident | None:
    with anyio.move_on_after(SCENARIO_LIMIT):
        while True:
            for incident in await store.list_incidents(since=since, limit=20):
                if incident.fingerprint == fingerprint and incident.state == state:
                    return incident
            await anyio.sleep(0.1)
    return None


async def _until_pam_settled(store: Store, incident: Incident) -> None:
    """Until every PAM row of `incident` is delivered or given up on."""
    with anyio.move_on_after(SCENARIO_LIMIT):
        while True:
            rows = (await store.timeline(incident.incident_id)).notifications
            pam = [n for n in rows if n.channel == PAM_CHANNEL]
            if pam and all(n.status in ("delivered", "dead") for n in pam):
                return
            await anyio.sleep(0.1)


async def _summarise(store: Store, name: str, fingerprint: str, injected: datetime,
                     incident: Incident | None) -> ScenarioResult:
    if incident is None:
        return ScenarioResult(name, None, fingerprint, None, None, "did not finish in time", "-")
    timeline = await store.timeline(incident.incident_id)
    real = [r for r in timeline.actions if not r.dry_run]
    first = (real[0].started_at - incident.opened_at).total_seconds() if real else None
    pam = [n for n in timeline.notifications if n.channel == PAM_CHANNEL]
    delivered = sum(n.status == "delivered" for n in pam)
    outcome = timeline.incident.state
    if real:
        outcome += " after " + ", ".join(f"{r.action} ({r.outcome})" for r in real)
    notifications = f"{delivered}/{len(pam)} to PAM"
    dead = sum(n.status == "dead" for n in pam)
    waiting = sum(n.status == "pending" for n in pam)
    if dead or waiting:
        notifications += f" ({dead} given up, {waiting} waiting)"
    return ScenarioResult(name, incident.id, fingerprint,
                          (incident.opened_at - injected).total_seconds(), first, outcome,
                          notifications)


async def _print_timeline(store: Store, started: float, echo: Callable[[str], None]) -> None:
    seen: set[int] = set()
    since = datetime.now(UTC)
    while True:
        for step, incident in await store.history(since=since, limit=500):
            if step.id in seen or step.id is None:
                continue
            seen.add(step.id)
            line = (f"  +{time.monotonic() - started:5.1f}s  incident {incident.id} "
                    f"{(step.source or '-'):>11} → {step.dest:<11} {step.trigger}: {step.reason}")
            echo(line if len(line) <= 160 else line[:157] + "...")
        await anyio.sleep(0.1)


def summary_table(results: list[ScenarioResult]) -> str:
    rows = [["SCENARIO", "INCIDENT", "DETECTED AFTER", "FIRST ACTION AFTER", "ENDED",
             "NOTIFICATIONS"]]
    for r in results:
        rows.append([
            r.scenario, "-" if r.incident_id is None else str(r.incident_id),
            "-" if r.detected_after is None else f"{r.detected_after:.2f}s",
            "-" if r.first_action_after is None else f"{r.first_action_after:.2f}s",
            r.outcome, r.notifications])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
