"""The agent: the one place where probes, incidents, actions and notifications meet.

`Agent(settings)` wires the parts together and runs them in one anyio task
group:

- the **monitor** polls every target and opens, reopens and recovers incidents;
- the **supervisor** keeps one driver task per active incident (detected,
  remediating, verifying): each runs `Remediator.drive` — choose, record,
  claim, run, verify with fresh samples, judge — sequential per incident,
  parallel across incidents, bounded by `max_concurrent_incidents`;
- the **sweeper** fires `timeout` for every overdue deadline (deadlines are
  columns, so ones set before a crash still fire);
- the **dispatcher** delivers the outbox;
- with Postgres, a **leader lease** decides which replica does all of the
  above; the others stand by and take over within `ttl + renew` seconds. A
  leader that cannot renew stops acting before anyone could take over, so
  replicas are never both acting, at the price of pausing during a database
  outage. With SQLite, or `leader_election = false` (exactly one agent on the
  database), the agent always acts, through outages too, from its journal;
- with a journaling store, a **replayer** writes back what was journaled
  while the database was away.

Embedded: `async with Agent(settings) as agent:` (or `lifespan(settings)` for
FastAPI); inside the PAM service, `pam_manager=` hands the agent the service's
connection manager for the `pam_inprocess` channel; `migrate=True` lets it
migrate a Postgres schema that is behind (SQLite always is). Standalone:
`incident-fsm run`.
Cancelling the agent stops it: a running action is stopped and recorded as
interrupted (a restart judges it, never reruns it), and everything written
before is durable.
"""

from __future__ import annotations

import os
import random as _random
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus
from loguru import logger
from sqlalchemy.engine import make_url

from incident_fsm.about import VERSION
from incident_fsm.backoff import Backoff, keep_running
from incident_fsm.clock import Clock, SystemClock, sleep_or_wake
from incident_fsm.detection.detector import Change
from incident_fsm.detection.payload import HealthSnapshot
from incident_fsm.detection.targets import TargetClients, TargetProbes, default_probes
from incident_fsm.detection.verification import judge
from incident_fsm.errors import InvalidInput, SchemaNotReady, StoreError, StoreUnavailable
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import MachinePolicy
from incident_fsm.lazy import HttpClient, LazyClient, httpx
from incident_fsm.models import Incident
from incident_fsm.notify.channels.pam_inprocess import ConnectionManager
from incident_fsm.notify.dispatcher import Dispatcher, dispatcher_from_settings
from incident_fsm.notify.policy import policy_from_settings
from incident_fsm.persistence import database
from incident_fsm.persistence.journal import JournalingStore
from incident_fsm.persistence.store import Store
from incident_fsm.persistence.wakeups import Listener, can_listen
from incident_fsm.remediation.actions.catalog import Catalog
from incident_fsm.remediation.policy import Limits
from incident_fsm.remediation.remediator import ActionSource, Remediator, Verification
from incident_fsm.reports.metrics import AgentMetrics
from incident_fsm.reports.status_app import AgentStatus, ASGIApp, TargetStatus, status_app
from incident_fsm.runtime.heartbeat import Heartbeat
from incident_fsm.runtime.leader import LeaderElector, replica_id
from incident_fsm.runtime.monitor import Monitor, ProblemEvent
from incident_fsm.runtime.preflight import PreflightFailed, start_failures
from incident_fsm.runtime.silences import Silences
from incident_fsm.runtime.supervisor import Supervisor
from incident_fsm.runtime.sweeper import DeadlineSweeper
from incident_fsm.settings import (
    Settings,
    TargetSettings,
)


class MonitorVerifier:
    """Judges an incident on the target's next poll, taken after the verify window."""

    def __init__(self, monitor: Monitor, targets: Mapping[str, TargetSettings]) -> None:
        self._monitor = monitor
        self._targets = targets

    async def verify(self, incident: Incident) -> Verification:
        latest = self._monitor.latest(incident.target)
        reading = await self._monitor.wait_for_reading(
            incident.target, after_seq=latest.seq if latest is not None else 0)
        return judge(incident.kind, reading.observation, self._targets[incident.target])


class Agent:
    """The running agent; see the module docstring.

    `actions`, if given, receives the actions the configuration describes
    (an `ActionSource`) and returns the source the remediator uses: how a
    host adds its own `Action` implementations next to the built-in ones.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: Store | JournalingStore | None = None,
        http: HttpClient | None = None,
        probes: Mapping[str, TargetProbes] | None = None,
        journal_path: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        random: Callable[[], float] = _random.random,
        replica: str | None = None,
        max_concurrent_incidents: int = 256,
        pam_manager: ConnectionManager | None = None,
        migrate: bool | None = None,
        actions: Callable[[ActionSource], ActionSource] | None = None,
    ) -> None:
        self.settings = settings
        #: migrate a database behind the code's schema first (default: SQLite only)
        self._migrate = migrate
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self.clock: Clock = clock or SystemClock()
        url = database.resolve_url(settings.agent.database_url)
        self._own_http = http is None
        # Built when an action, a channel or a check first sends a request (see lazy).
        self.http = http or LazyClient(lambda: httpx.AsyncClient(timeout=httpx.Timeout(10.0),
                                                                  follow_redirects=False))
        # Targets get a client each (see TargetClients) unless one client is given.
        self._target_clients = TargetClients(settings.agent)
        self.store = store or JournalingStore(
            url, journal_path=journal_path or settings.agent.journal_path or _journal_for(url))
        agent = settings.agent
        self.metrics = AgentMetrics()
        self._sweep_wake = anyio.Event()
        # On Postgres an operator's command wakes the agent (see persistence.wakeups): the
        # looks for other processes' work can then be a minute apart.
        engine = getattr(self.store, "engine", None)
        self.wakeups = (Listener(engine, self._woken, clock=self.clock)
                        if can_listen(engine) else None)
        self.dispatcher: Dispatcher = dispatcher_from_settings(
            self.store, settings, clock=self.clock, http=self.http, environ=environ,
            pam_manager=pam_manager, on_delivery=self.metrics.delivered, heard=self._heard)
        self.engine = IncidentEngine(
            self.store, clock=self.clock,
            policy=MachinePolicy.from_settings(agent),
            outbox=policy_from_settings(settings), on_outbox=self.dispatcher.nudge,
            on_step=self._stepped)
        targets = {t.name: t for t in settings.targets}
        self.silences = Silences(self.store)
        self.monitor = Monitor(
            targets=settings.targets, agent=agent,
            probes=probes or {t.name: self._probes_of(t) for t in settings.targets},
            engine=self.engine, store=self.store, clock=self.clock, random=random,
            on_problem=self._on_problem, on_checks=self.metrics.checked,
            silences=self.silences)
        self.remediator = Remediator(
            engine=self.engine, store=self.store, clock=self.clock,
            actions=(actions or _as_configured)(
                Catalog.from_settings(settings, http=self.http, environ=environ)),
            verifier=MonitorVerifier(self.monitor, targets),
            limits=Limits.from_settings(agent), policy=settings.policy or None,
            verify_timeout=max(30.0, 3 * agent.fast_poll_interval),
            on_attempt=self.metrics.attempt_finished, silences=self.silences)
        self.sweeper = DeadlineSweeper(engine=self.engine, store=self.store, clock=self.clock,
                                       on_attempt=self.metrics.attempt_finished)
        # Clocks of replicas must agree within the margin (NTP); see incident_fsm.runtime.leader.
        elect = agent.leader_election and not database.is_sqlite(url)
        self.replica = (replica or replica_id()) if elect else f"{os.getpid()}"
        self.heartbeat = Heartbeat(self.store, self.clock, self.replica)
        self.elector = None if not elect else LeaderElector(
            self.store, clock=self.clock, holder=self.replica, ttl=agent.leader_ttl,
            renew_every=agent.leader_renew, skew_margin=min(2.0, agent.leader_ttl / 4),
            heartbeat=self.heartbeat)
        self.running = False
        self.started_at: datetime | None = None
        self.supervisor = Supervisor(
            self.store, lambda iid: self.remediator.drive(iid), clock=self.clock,
            short=agent.fast_poll_interval, heard=self._heard,
            real_id=getattr(self.store, "real_id", lambda i: i),
            max_concurrent=max_concurrent_incidents)
        self._exit: AsyncExitStack | None = None
        self._status_app: ASGIApp | None = None

    # --- embedding ----------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)  # runs first on exit: stop the agent
            await group.start(self.run)
        except BaseException:
            await stack.aclose()
            raise
        self._exit = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._exit is not None:
            stack, self._exit = self._exit, None
            await stack.aclose()

    def status(self) -> AgentStatus:
        targets = []
        for name in self.monitor.targets:
            reading = self.monitor.latest(name)
            health = reading.observation.health if reading else None
            snapshot = reading.observation.reading if reading else None
            throttled, retry_after = self.monitor.throttled(name)
            targets.append(TargetStatus(
                name, reading.at if reading else None,
                None if reading is None else isinstance(health, HealthSnapshot),
                getattr(health, "reason", "") if reading else "",
                getattr(health, "cause", "") if reading else "",
                throttled, retry_after,
                reading_source=snapshot.source if snapshot else "",
                read_at=reading.at if reading and snapshot else None,
                memory_pct=snapshot.memory_pct if snapshot else None,
                disk_pct=snapshot.disk_pct if snapshot else None,
                cpu_pct=snapshot.cpu_pct if snapshot else None))
        role = "single" if self.elector is None else (
            "leader" if self.elector.is_leader else "standby")
        journaled = isinstance(self.store, JournalingStore) and self.store.offline
        return AgentStatus(running=self.running, role=role, replica=self.replica,
                           started_at=self.started_at, targets=tuple(targets),
                           queues={"incident_drivers": len(self.supervisor.drivers),
                                   "store_journal": int(journaled)})

    def status_app(self) -> ASGIApp:
        """The read-only status endpoints (`incident_fsm.reports.status_app`) for a host app.

        They ask for the bearer token in `agent.status_token_env` when it is
        set; without it they are open, and that is said (once) in the log.
        """
        if self._status_app is None:
            self._status_app = status_app(self, self.store, clock=self.clock,
                                          token=self._status_token(), metrics=self.metrics)
        return self._status_app

    def _status_token(self) -> str | None:
        variable = self.settings.agent.status_token_env
        if variable is None:
            logger.warning("the status endpoints are served without a token "
                           "(agent.status_token_env is not set): whoever reaches this port "
                           "reads the targets, their readings and every incident's reasons")
            return None
        token = self._environ.get(variable, "").strip()
        if not token:
            raise InvalidInput(f"agent.status_token_env names {variable}, which is not set: "
                               "the status endpoints are not served open instead")
        return token

    # --- running ------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (returns at once if the agent is disabled)."""
        if not self.settings.agent.enabled:
            logger.warning("AUTONOMOUS_MONITORING_ENABLED is false: the agent does not start")
            task_status.started()
            return
        try:
            failures = start_failures(self.settings, environ=self._environ)
            if failures:
                raise PreflightFailed(failures)
            schema_ready = await self._schema_ready()  # SchemaNotReady: refuse to start
            self.started_at = self.clock.now()
            logger.info("🤖 Technical Monitoring Agent initialized at {} (incident-fsm {})",
                        self.started_at.isoformat(), VERSION)
            self.running = True
            async with anyio.create_task_group() as tg:
                if schema_ready:
                    self._start_parts(tg)
                else:
                    tg.start_soon(self._until_schema, tg, name="agent:schema")
                task_status.started()
        finally:
            self.running = False
            with anyio.CancelScope(shield=True):
                await self._close()
            if self.started_at is not None:  # a refused start said why already
                logger.info("agent stopped")

    def _start_parts(self, tg: TaskGroup) -> None:
        # Every replica beats, leading or not: `force` and `status` tell who is alive.
        # (With leader election the lease's renewals write it, see `LeaderElector`.)
        tg.start_soon(self.heartbeat.run, name="agent:heartbeat")
        if self.elector is not None:
            # Not awaited: a silent database must not hold up the host's start-up.
            tg.start_soon(self.elector.run, name="agent:lease")
        if isinstance(self.store, JournalingStore):
            tg.start_soon(self._keep_running, "journal", self._replay_journal,
                          name="agent:journal")
        tg.start_soon(self._lead, name="agent:lead")

    async def _schema_ready(self) -> bool:
        """Is the schema at head (SQLite: after migrating)? False if the database is away.

        Raises `SchemaNotReady` for a database that answers without the schema
        (Postgres is never migrated here): the agent must not start on it.
        """
        try:
            await anyio.to_thread.run_sync(self._ensure_schema)
        except StoreUnavailable as exc:
            logger.error("❌ {}: the agent acts on nothing until it can read the schema", exc)
            return False
        return True

    def _ensure_schema(self) -> None:
        # The store shows its URL redacted; its engine holds the one to connect with.
        url = self.store.engine.url.render_as_string(hide_password=False)
        database.ensure_schema(url, migrate=self._migrate)

    async def _until_schema(self, tg: TaskGroup) -> None:
        """Retry the schema check with a growing pause; start acting once it passes.

        The outage journal covers a database that went away after it worked,
        never one whose schema was not seen: until then nothing is probed,
        written or run.
        """
        backoff = Backoff(1.0, cap=60.0)
        pause = backoff.next()
        while True:
            await self.clock.sleep(pause)
            pause = backoff.next()
            try:
                await anyio.to_thread.run_sync(self._ensure_schema)
            except StoreUnavailable as exc:
                logger.warning("database still unavailable ({}); next check in {:g} s", exc,
                               pause)
                continue
            except SchemaNotReady as exc:
                logger.error("❌ {}; the agent acts on nothing (next check in {:g} s)", exc,
                             pause)
                continue
            logger.info("database schema at head: the agent starts acting")
            self._start_parts(tg)
            return

    async def _close(self) -> None:
        with anyio.move_on_after(10):
            if self._own_http:
                await self.http.aclose()
            await self._target_clients.aclose()
            await self.store.close(grace=2.0)

    async def _lead(self) -> None:
        """Act while this replica leads; stop acting the moment it does not."""
        while True:
            await self._until_leader()
            async with anyio.create_task_group() as acting:
                parts: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                    ("monitor", self.monitor.run), ("dispatcher", self.dispatcher.run),
                    ("sweeper", self._sweep), ("supervisor", self.supervisor.run)]
                if self.wakeups is not None:
                    parts.append(("wakeups", self.wakeups.run))
                for name, part in parts:
                    acting.start_soon(self._keep_running, name, part, name=f"agent:{name}")
                await self._while_leader()
                logger.warning("leadership lost: this replica stops acting")
                acting.cancel_scope.cancel()

    async def _keep_running(self, name: str, part: Callable[[], Awaitable[None]]) -> None:
        """Run one part; if it fails, log it and start it again after a growing pause.

        A bug in one part must not stop the others (nor a host app embedding
        us); the pause (1 s doubling to 60 s, from 1 s again after a healthy
        minute) keeps a persistent failure from spinning. Cancellation is
        never caught here.
        """
        await keep_running(f"agent {name}", part, clock=self.clock,
                           backoff=Backoff(1.0, cap=60.0), healthy_after=60.0)

    async def _until_leader(self) -> None:
        while self.elector is not None and not self.elector.is_leader:
            await sleep_or_wake(self.clock, self.elector.renew_every, self.elector.changed)

    async def _while_leader(self) -> None:
        if self.elector is None:
            await anyio.sleep_forever()
        while self.elector is not None:
            until = self.elector.valid_until
            if until is None:
                return
            await sleep_or_wake(self.clock, (until - self.clock.now()).total_seconds(),
                                self.elector.changed)

    def _heard(self) -> bool:
        """Whether other processes' writes wake this agent now (see persistence.wakeups)."""
        return self.wakeups is not None and self.wakeups.listening

    def _woken(self) -> None:
        """Look now: another process wrote something, or wake-ups started or stopped."""
        self.supervisor.wake()
        self._sweep_wake.set()
        self.dispatcher.nudge()

    async def _on_problem(self, event: ProblemEvent) -> None:
        if event.incident is not None and event.finding.change is Change.CONFIRMED:
            self.supervisor.confirmed(event.incident.incident_id)

    async def _sweep(self) -> None:
        # Until the nearest deadline; a step (which may set an earlier one) wakes it.
        retry = min(5.0, max(0.05, self.settings.agent.fast_poll_interval / 2))
        while True:
            wake = self._sweep_wake = anyio.Event()
            try:
                await self.sweeper.sweep()
                pause = self.sweeper.pause()
            except StoreError as exc:
                logger.warning("❌ Failed to sweep deadlines: {}", exc)
                pause = retry
            await sleep_or_wake(self.clock, pause, wake)

    def _probes_of(self, target: TargetSettings) -> TargetProbes:
        if not self._own_http:  # one given client reads everything (tests mock it)
            return default_probes(target, client=self.http)
        client = self._target_clients.new()
        return default_probes(target, client=client, health_client=self._target_clients.health(
            target.base_url, fallback=client, environ=self._environ))

    def _stepped(self, trigger: str, dest: str) -> None:
        self.metrics.stepped(trigger, dest)
        self._sweep_wake.set()

    async def _replay_journal(self) -> None:
        assert isinstance(self.store, JournalingStore)
        waiting: str | None = None
        while True:
            if self.store.offline:
                try:
                    await self.store.replay()
                except StoreError as exc:
                    # Expected while the database is away: said once, not every 5 s.
                    if str(exc) != waiting:
                        logger.warning("journal replay waits for the database: {}", exc)
                        waiting = str(exc)
                else:
                    waiting = None
                    self.supervisor.wake()
            await self.clock.sleep(5.0)


def _as_configured(catalog: ActionSource) -> ActionSource:
    return catalog


def _journal_for(url: str) -> Path:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return Path(f"{parsed.database}.journal")
    return Path("incident_fsm.journal")
