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

The demo never touches anyone's data. `prepare_database` gives it a fresh
SQLite file of its own (marked as the demo's, so a later demo may replace it
and nothing else is ever replaced), and `run_demo` refuses a database that
already holds incidents: the agent would otherwise act on them, e.g. run a
failover an operator approved elsewhere. The demo follows only the incidents
its own agent opened, by id.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from incident_fsm.demo.pam_simulator import ConnectionManager
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.errors import InvalidInput
from incident_fsm.models import Incident, IncidentId, Opened, Transition
from incident_fsm.persistence import database
from incident_fsm.persistence.journal import JournalingStore
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.agent import Agent
from incident_fsm.runtime.preflight import FAIL, OK, WARN, run_checks
from incident_fsm.settings import (
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
from incident_fsm.vocabulary import NotificationStatus

#: the PAM user told (a Supabase UUID in the real service)
OPERATOR = "00000000-0000-4000-8000-00000000beef"
PAM_CHANNEL = "pam_inprocess"
RENDER_KEY = "rnd_simulated"
#: How long one scenario may take before the demo gives up on it (seconds).
SCENARIO_LIMIT = 30.0
#: Where `incident-fsm demo` writes by default (in the working directory).
DEFAULT_DATABASE = "incident_fsm_demo.db"
#: SQLite's `application_id` header field of a database the demo wrote ("IFSD"): the
#: only mark that lets a later demo replace the file.
DEMO_APPLICATION_ID = 0x49465344


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
    """The operator's open PAM socket, as the service's manager holds it: keeps what it got,
    and shows each alert's text as the operator reads it."""

    def __init__(self, echo: Callable[[str], None] = lambda _line: None) -> None:
        self.received: list[dict[str, Any]] = []
        self._echo = echo

    async def send_text(self, message: str) -> None:
        alert = json.loads(message)
        self.received.append(alert)
        self._echo(f"   📱 PAM ▸ {alert.get('content', {}).get('message', '')}")


class DemoStore(JournalingStore):
    """The demo agent's store; it notes the incidents it opens, the only ones the demo follows."""

    def __init__(self, url: str, *, journal_path: Path) -> None:
        super().__init__(url, journal_path=journal_path)
        self.opened: list[IncidentId] = []

    async def open_incident(self, **kwargs: Any) -> Opened:
        opened = await super().open_incident(**kwargs)
        if opened.created:
            self.opened.append(opened.incident.incident_id)
        return opened


def prepare_database(path: Path) -> str:
    """A fresh, migrated SQLite database at `path` for the demo; returns its URL.

    `path` must not exist, or be a database an earlier demo wrote (it is
    replaced, with its -wal/-shm/.journal files); anything else is refused
    (`InvalidInput`) and left as it was.
    """
    path = path.resolve()
    if path.exists() or path.is_symlink():
        if not is_demo_database(path):
            raise InvalidInput(
                f"{path} exists and is not a database an earlier demo wrote; the demo only "
                "writes a fresh database of its own: pass a new file with --database")
        for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.journal")):
            stale.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA application_id = {DEMO_APPLICATION_ID}")
        conn.commit()
    url = f"sqlite:///{path}"
    database.upgrade(url)
    return url


def is_demo_database(path: Path) -> bool:
    """Whether `path` is a regular SQLite file carrying the demo's mark (read-only check)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
            (found,) = conn.execute("PRAGMA application_id").fetchone()
    except sqlite3.Error:
        return False  # not SQLite at all
    return bool(found == DEMO_APPLICATION_ID)


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
    """Play every scenario against the migrated database at `url`; returns the summary rows.

    The database must hold no incident (`InvalidInput` otherwise, before anything
    runs): the demo's agent would act on every open incident it finds.
    """
    async with Store(url) as check:
        if await check.list_incidents(limit=1):
            raise InvalidInput(f"the demo runs only on a database of its own, and "
                               f"{database.redact(url)} already holds incidents")
    logs = workdir / "app-logs"
    logs.mkdir(parents=True, exist_ok=True)
    state = ServiceState(disk_dir=logs, disk_capacity_bytes=2_000_000, disk_base_bytes=600_000)
    manager, operator = ConnectionManager(), OperatorSocket(echo)
    manager.connect(operator, OPERATOR)
    results: list[ScenarioResult] = []
    started = time.monotonic()
    env = {"RENDER_API_KEY": RENDER_KEY}
    store = DemoStore(url, journal_path=workdir / "agent.journal")
    # The demo reads through a store of its own, so its polling never meddles with the
    # agent's working set; the agent closes its store when it stops.
    async with Simulator(state) as sim, Store(url) as reader:
        settings = demo_settings(sim, url, logs)
        # What `incident-fsm check` says of this configuration, before the agent may act.
        checks = await run_checks(settings, environ=env)
        counts = Counter(c.status for c in checks)
        echo(f"preflight (incident-fsm check): {counts[OK]} ok, {counts[WARN]} warning(s), "
             f"{counts[FAIL]} failed")
        for told in (c for c in checks if c.status != OK):
            echo(f"   {told.line()}")
        async with Agent(settings, environ=env, store=store,
                         pam_manager=manager), anyio.create_task_group() as tg:
            tg.start_soon(_print_timeline, reader, store.opened, started, echo)

            async def scenario(name: str, kind: str, start: Callable[[], None],
                               done: str = "resolved", *, pam_back: bool = False) -> None:
                echo(f"\n== {name}")
                injected = datetime.now(UTC)
                already = len(store.opened)
                start()
                incident = await _until_state(reader, store.opened, already, f"api:{kind}",
                                              done)
                if incident is not None:
                    if pam_back:
                        echo("   the operator is back on PAM: what waited goes out")
                        manager.connect(operator, OPERATOR)
                    # Counted once everything it owed the operator went out.
                    await _until_pam_settled(reader, incident)
                results.append(await _summarise(reader, name, f"api:{kind}", injected,
                                                incident))

            await scenario("1. memory pressure (a leak)", "memory_high",
                           lambda: setattr(state, "leaked_memory_pct", 50.0))
            await scenario("2. disk spike (old logs)", "disk_high",
                           lambda: _old_logs(logs, files=12, size=100_000))
            await scenario("3. worker failure (Celery worker died)", "service_down:celery",
                           lambda: setattr(state, "worker_alive", False))

            def outage() -> None:
                manager.disconnect(operator, OPERATOR)
                echo("   the operator's PAM socket is closed: notifications wait")
                state.cpu_load_pct = 150.0  # 100 % on one instance, 75 % on two

            await scenario("4. PAM outage (CPU spike handled without PAM)", "cpu_high",
                           outage, pam_back=True)
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


async def _until_state(store: Store, opened: Sequence[IncidentId], already: int,
                       fingerprint: str, state: str) -> Incident | None:
    """The incident for `fingerprint` opened after the first `already` of `opened`, once in
    `state`. Only incidents this demo's agent opened are looked at, by id.
    """
    with anyio.move_on_after(SCENARIO_LIMIT):
        followed: IncidentId | None = None
        while True:
            if followed is None:
                for iid in opened[already:]:
                    if (await store.get_incident(iid)).fingerprint == fingerprint:
                        followed = iid
                        break
            if followed is not None:
                incident = await store.get_incident(followed)
                if incident.state == state:
                    return incident
            await anyio.sleep(0.1)
    return None


async def _until_pam_settled(store: Store, incident: Incident) -> None:
    """Until every PAM row of `incident` is delivered or given up on.

    Every row the incident owes up to its current state exists already: the
    engine writes a step's rows in the step's own transaction.
    """
    with anyio.move_on_after(SCENARIO_LIMIT):
        while True:
            rows = (await store.timeline(incident.incident_id)).notifications
            settled = (NotificationStatus.DELIVERED, NotificationStatus.DEAD)
            if all(n.status in settled for n in rows if n.channel == PAM_CHANNEL):
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
    delivered = sum(n.status == NotificationStatus.DELIVERED for n in pam)
    outcome = timeline.incident.state
    if real:
        outcome += " after " + ", ".join(f"{r.action} ({r.outcome})" for r in real)
    notifications = f"{delivered}/{len(pam)} to PAM"
    dead = sum(n.status == NotificationStatus.DEAD for n in pam)
    waiting = sum(n.status == NotificationStatus.PENDING for n in pam)
    if dead or waiting:
        notifications += f" ({dead} given up, {waiting} waiting)"
    return ScenarioResult(name, incident.id, fingerprint,
                          (incident.opened_at - injected).total_seconds(), first, outcome,
                          notifications)


async def _print_timeline(store: Store, opened: Sequence[IncidentId], started: float,
                          echo: Callable[[str], None]) -> None:
    """Echo each step of the incidents in `opened` (the demo agent's), as it is written."""
    seen: set[int] = set()
    while True:
        steps: list[Transition] = []
        for iid in list(opened):
            steps += [t for t in (await store.timeline(iid)).transitions
                      if t.id is not None and t.id not in seen]
        for step in sorted(steps, key=lambda t: (t.at, t.id or 0)):
            seen.add(step.id or 0)
            line = (f"  +{time.monotonic() - started:5.1f}s  incident {step.incident_id} "
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


def closing_advice(url: str, results: Sequence[ScenarioResult], *,
                   program: str = "incident-fsm") -> str:
    """Commands to explore what the demo did, each naming the demo's own database.

    The URL goes on every command rather than into the environment, so nothing
    else the user runs afterwards reads the demo's database by accident.
    `program` is the command as the user can type it (`.venv/bin/incident-fsm`
    when the virtual environment is not activated).
    """
    where = f"--database-url {shlex.quote(url)}"
    ids = [r.incident_id for r in results if r.incident_id is not None]
    held = next((r.incident_id for r in results
                 if r.incident_id is not None and r.outcome.startswith("escalated")), None)
    lines = ["explore it (every command names this demo's database):",
             f"  {program} incidents {where}"]
    if ids:
        lines.append(f"  {program} show {ids[0]} {where}")
    lines += [f"  {program} history {where}", f"  {program} stats {where}"]
    if held is not None:
        lines += [f"  {program} graph --incident {held} {where}",
                  f"  {program} force {held} approve --reason 'failover approved' {where}"
                  "   # the held failover: recorded; an agent on this database would run it"]
    else:
        lines.append(f"  {program} graph")
    return "\n".join(lines)
