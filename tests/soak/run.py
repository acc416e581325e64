"""One soak run: build the world, start the replicas, play the schedule, check, report."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
from sqlalchemy.engine import make_url

from incident_fsm.persistence import database

from ..agent_process import lease_holder_pid
from ..bench.common import ADMIN_URL, libpq, throwaway_postgres
from ..tcp_proxy import TcpProxy
from . import checks
from .agents import Replica, config_text, scaled
from .chaos import OPERATOR_EVERY, Fault, schedule
from .world import DISK_CAPACITY, Peers, RenderHub, Target, serving


@dataclass
class Options:
    hours: float = 24.0
    speedup: float = 60.0
    seed: int = 1
    targets: int = 3
    replicas: int = 2
    sqlite: bool = False
    out: Path = Path("soak-report")


@dataclass
class Run:
    """What happened, for the checker and the report."""

    options: Options
    faults: list[Fault]
    started: float = 0.0
    ended: float = 0.0
    applied: list[tuple[float, float, Fault]] = field(default_factory=list)
    #: (target, or "*" for all, from, to): no automatic action may start inside
    silences: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    operator: list[tuple[float, str]] = field(default_factory=list)
    #: (wall time, open incidents)
    open_series: list[tuple[float, int]] = field(default_factory=list)
    verdicts: list[checks.Verdict] = field(default_factory=list)
    checkpoints: list[tuple[float, list[checks.Verdict]]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    db_url: str = ""


@contextlib.contextmanager
def _database(options: Options, root: Path) -> Iterator[str]:
    if options.sqlite:
        url = f"sqlite:///{root / 'soak.db'}"
        database.upgrade(url)
        yield url
    else:
        with throwaway_postgres() as url:
            yield url


async def _cli(url: str, *args: str) -> tuple[int, str]:
    done = await anyio.run_process(
        [sys.executable, "-c", "from incident_fsm.cli.main import main; main()", *args,
         "--database-url", url], check=False)
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


class Soak:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.root = options.out / "work"
        self.root.mkdir(parents=True, exist_ok=True)
        self.run = Run(options, schedule(hours=options.hours, targets=options.targets,
                                         seed=options.seed))
        self.targets = [Target.make(i, self.root) for i in range(options.targets)]
        self.hub = RenderHub()
        self.peers = Peers()
        self.proxies: list[TcpProxy] = []
        self.acked: set[int] = set()
        self.monitor_only_since = datetime.now(UTC)

    def wall(self, virtual_seconds: float) -> float:
        return virtual_seconds / self.o.speedup

    async def main(self) -> Run:
        with _database(self.o, self.root) as url:
            self.run.db_url = url
            async with contextlib.AsyncExitStack() as stack:
                for t in self.targets:
                    await stack.enter_async_context(t.sim)
                    self.hub.add(t.sim)
                await stack.enter_async_context(self.hub)
                await stack.enter_async_context(serving(self.peers))
                urls = [url] * self.o.replicas
                if not self.o.sqlite:
                    upstream = make_url(url)
                    urls = []
                    for _ in range(self.o.replicas):
                        proxy = await stack.enter_async_context(
                            TcpProxy(upstream.host or "127.0.0.1", upstream.port or 5432))
                        self.proxies.append(proxy)
                        urls.append(upstream.set(port=proxy.port).render_as_string(
                            hide_password=False))
                for i, replica_url in enumerate(urls):
                    config = self.root / f"replica-{i}.toml"
                    config.write_text(config_text(
                        db_url=replica_url, speedup=self.o.speedup, targets=self.targets,
                        hub=self.hub, peers=self.peers, journal=self.root / f"replica-{i}.journal",
                        sqlite=self.o.sqlite))
                    replica = Replica(i, config, self.o.out / f"replica-{i}.log")
                    replica.log.unlink(missing_ok=True)
                    self.run.replicas.append(replica)
                for replica in self.run.replicas:
                    replica.start()
                try:
                    await self._play()
                    self.run.verdicts = await self._check(final=True)
                finally:
                    # In a thread: the agents' last calls reach peers served by this loop.
                    for replica in self.run.replicas:
                        await anyio.to_thread.run_sync(lambda r=replica: r.stop("sigterm"))
                self.run.verdicts.append(checks.clean_logs(self.run.replicas))
                self.run.verdicts.insert(0, checks.agents_ran(
                    url, self.run.replicas,
                    target_faults=sum(1 for f in self.run.faults if f.target is not None)))
                self.run.counts = self._counts(url)
        return self.run

    async def _play(self) -> None:
        o = self.o
        self.run.started = time.time()
        end = self.run.started + self.wall(o.hours * 3600)
        pending = [(self.run.started + self.wall(f.at), "start", f) for f in self.run.faults]
        next_operator = self.run.started + self.wall(OPERATOR_EVERY)
        next_checkpoint = self.run.started + self.wall(6 * 3600)
        next_sample = 0.0
        print(f"soak: {o.hours:g} h at {o.speedup:g}x = {self.wall(o.hours * 3600) / 60:.1f} min, "
              f"{o.targets} targets, {o.replicas} replica(s) on "
              f"{'SQLite' if o.sqlite else 'Postgres'}, seed {o.seed}; the schedule:", flush=True)
        for fault in self.run.faults:
            print(f"  {fault.line()}", flush=True)
        print("running:", flush=True)
        async with anyio.create_task_group() as tg:
            while (now := time.time()) < end:
                pending.sort(key=lambda p: p[0])
                while pending and pending[0][0] <= now:
                    _, phase, fault = pending.pop(0)
                    if phase == "start":
                        await self._start(fault)
                        pending.append((now + self.wall(fault.duration), "end", fault))
                        self.run.applied.append((now, now + self.wall(fault.duration), fault))
                    else:
                        await self._end(fault)
                if now >= next_operator:
                    next_operator += self.wall(OPERATOR_EVERY)
                    tg.start_soon(self._operator)
                if now >= next_checkpoint:
                    next_checkpoint += self.wall(6 * 3600)
                    found = await self._check(final=False)
                    self.run.checkpoints.append((now, found))
                    broken = [v.name for v in found if not v.held]
                    print(f"  checkpoint at {(now - self.run.started) * o.speedup / 3600:.1f} h: "
                          f"{'all held' if not broken else 'BROKEN: ' + ', '.join(broken)}",
                          flush=True)
                if now >= next_sample:
                    next_sample = now + 1.0
                    for replica in self.run.replicas:
                        replica.sample()
                        replica.check_exit()
                    self.run.open_series.append((now, await anyio.to_thread.run_sync(
                        self._open_count)))
                await anyio.sleep(0.05)
            for _, phase, fault in pending:
                if phase == "end":
                    await self._end(fault)
            await self._operator()
        self.run.ended = time.time()

    def _open_count(self) -> int:
        rows = checks._rows(self.run.db_url,
                            "SELECT count(*) FROM incident WHERE state <> 'resolved'")
        return int(rows[0][0])

    # --- faults ------------------------------------------------------------------------------

    async def _start(self, f: Fault) -> None:
        t = self.targets[f.target] if f.target is not None else None
        st = t.sim.state if t is not None else None
        k = f.kind
        if k in ("memory_leak", "memory_stubborn", "silence"):
            assert st is not None and t is not None
            if k == "silence":
                minutes = self.wall(f.duration) / 60
                begin = datetime.now(UTC)
                code, _ = await _cli(self.run.db_url, "silence", "add", "--target", t.name,
                                       "--for", f"{minutes * 60:.0f}s", "--reason",
                                       "soak: maintenance window", "--actor", "soak-operator")
                self.run.operator.append((time.time(), f"silence {t.name}: exit {code}"))
                self.run.silences.append((t.name, begin,
                                          begin + timedelta(seconds=minutes * 60)))
                await anyio.sleep(self.wall(120))  # the leak comes inside the window
            st.restart_fixes_leak = k != "memory_stubborn"
            st.leaked_memory_pct = 60.0 if k == "memory_stubborn" else 45.0
        elif k == "disk_fill":
            assert t is not None
            await anyio.to_thread.run_sync(lambda: t.fill_disk(0.40, old=True))
        elif k == "disk_stubborn":
            assert st is not None
            st.disk_base_bytes = int(0.90 * DISK_CAPACITY)
        elif k == "worker_death":
            assert st is not None
            st.worker_alive = False
        elif k.startswith("endpoint_"):
            assert st is not None
            mode = k.removeprefix("endpoint_")
            st.faults["/health/resources"] = st.faults["/health/system"] = mode
        elif k == "pam_outage":
            self.peers.manager.online = False
        elif k == "pam_token_expiry":
            self.peers.relay_env["INCIDENT_FSM_PAM_RELAY_SECRET"] = "rotated-by-the-host"
        elif k == "render_outage":
            self.hub.mode = "500"
        elif k == "render_429":
            self.hub.mode = "429"
        elif k == "webhook_outage":
            self.peers.webhook_mode = "500"
        elif k == "pg_terminate":
            await anyio.to_thread.run_sync(self._terminate_backends)
        elif k == "db_cutoff":
            for proxy in self.proxies:
                proxy.cut("refuse")
        elif k == "monitor_only":
            await self._restart_all({"AUTO_REMEDIATION_ENABLED": "false"})
            self.monitor_only_since = datetime.now(UTC)
        elif k in ("kill9", "sigterm"):
            replica = self._leader()
            if replica is not None:
                await anyio.to_thread.run_sync(lambda: replica.stop(k))
                self.run.operator.append((time.time(), f"{k} replica {replica.index}"))

    async def _end(self, f: Fault) -> None:
        t = self.targets[f.target] if f.target is not None else None
        st = t.sim.state if t is not None else None
        k = f.kind
        if k in ("memory_leak", "memory_stubborn", "silence"):
            assert st is not None
            st.leaked_memory_pct, st.restart_fixes_leak, st.instances = 0.0, True, 1
        elif k == "disk_fill":
            assert t is not None
            await anyio.to_thread.run_sync(t.empty_disk)
        elif k == "disk_stubborn":
            assert st is not None
            st.disk_base_bytes = int(0.40 * DISK_CAPACITY)
        elif k == "worker_death":
            assert st is not None
            st.worker_alive = True
        elif k.startswith("endpoint_"):
            assert st is not None
            st.faults.clear()
        elif k == "pam_outage":
            self.peers.manager.online = True
        elif k == "pam_token_expiry":
            from .world import RELAY_SECRET
            self.peers.relay_env["INCIDENT_FSM_PAM_RELAY_SECRET"] = RELAY_SECRET
        elif k in ("render_outage", "render_429"):
            self.hub.mode = "up"
        elif k == "webhook_outage":
            self.peers.webhook_mode = "up"
        elif k == "db_cutoff":
            for proxy in self.proxies:
                proxy.restore()
        elif k == "monitor_only":
            self.run.silences.append(("*", self.monitor_only_since, datetime.now(UTC)))
            await self._restart_all({})
        elif k in ("kill9", "sigterm"):
            for replica in self.run.replicas:
                if not replica.alive:
                    replica.start()

    async def _restart_all(self, env: dict[str, str]) -> None:
        """Every replica stopped (SIGTERM) and started again with `env` added."""
        for replica in self.run.replicas:
            await anyio.to_thread.run_sync(lambda r=replica: r.stop("sigterm"))
            replica.extra_env = dict(env)
            replica.start()
        self.run.operator.append((time.time(), f"restarted every replica with {env or 'defaults'}"))

    def _leader(self) -> Replica | None:
        alive = [r for r in self.run.replicas if r.alive]
        if self.o.sqlite or not alive:
            return alive[0] if alive else None
        try:
            pid = lease_holder_pid(self.run.db_url)
        except Exception:
            pid = None
        return next((r for r in alive if r.proc is not None and r.proc.pid == pid), alive[0])

    def _terminate_backends(self) -> None:
        if self.o.sqlite:
            return
        name = make_url(self.run.db_url).database
        with psycopg.connect(libpq(ADMIN_URL), autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))

    # --- the operator ------------------------------------------------------------------------

    async def _operator(self) -> None:
        """Acknowledge what escalated, approve what waits, resolve what was acknowledged."""
        url = self.run.db_url
        try:
            escalated = await anyio.to_thread.run_sync(lambda: checks.cli_json(
                url, "incidents", "--state", "escalated", "--limit", "10000"))
            waiting = await anyio.to_thread.run_sync(lambda: checks.cli_json(
                url, "incidents", "--waiting-approval", "--limit", "10000"))
        except Exception as exc:  # the CLI saying the database is away, say
            self.run.operator.append((time.time(), f"read failed: {type(exc).__name__}"))
            return
        waiting_ids = {int(i["id"]) for i in waiting}
        for incident in escalated:
            iid = int(incident["id"])
            if iid in waiting_ids:
                trigger, reason = "approve", "soak: approved by the operator"
            elif iid in self.acked:
                trigger, reason = "resolve", "soak: fixed by the on-call"
            else:
                trigger, reason = "acknowledge", "soak: looking"
            code, _ = await _cli(url, "force", str(iid), trigger, "--reason", reason,
                                   "--actor", "soak-operator")
            if code == 0 and trigger == "acknowledge":
                self.acked.add(iid)
            self.run.operator.append((time.time(), f"{trigger} #{iid}: exit {code}"))

    # --- judging -----------------------------------------------------------------------------

    async def _check(self, *, final: bool) -> list[checks.Verdict]:
        url = self.run.db_url
        s = self.o.speedup

        def work() -> list[checks.Verdict]:
            found = [*checks.graph_and_sequence(url), checks.executions(url, self.hub, self.peers),
                     checks.notifications(url, self.peers),
                     checks.strikes_and_budget(url, max_strikes=3, budget=3,
                                               window=scaled(1800, s)),
                     checks.silences_obeyed(url, self.run.silences)]
            if final:
                found += [checks.none_stuck(url, datetime.now(UTC)),
                          checks.open_incidents_agree(url),
                          checks.leadership(self.run.replicas),
                          checks.memory(self.run.replicas),
                          checks.database_growth(
                              url, sqlite_path=self.root / "soak.db" if self.o.sqlite else None,
                              bound_mb=64.0 * max(1.0, self.o.hours / 24.0))]
            return found
        return await anyio.to_thread.run_sync(work)

    def _counts(self, url: str) -> dict[str, Any]:
        rows = checks._rows
        return {
            "faults": dict(sorted(_tally(f.kind for f in self.run.faults).items())),
            "incidents": [list(r) for r in rows(
                url, "SELECT kind, state, count(*) FROM incident GROUP BY kind, state "
                     "ORDER BY kind, state")],
            "actions": [list(r) for r in rows(
                url, "SELECT action, dry_run, coalesce(outcome, '-'), count(*) FROM action_run "
                     "GROUP BY action, dry_run, outcome ORDER BY action, dry_run, 3")],
            "notifications": [list(r) for r in rows(
                url, "SELECT channel, status, count(*) FROM notification GROUP BY channel, "
                     "status ORDER BY channel, status")],
            "executions": {"render": dict(sorted(
                (f"{sid} {action}", n) for (sid, action), n in self.hub.by_service.items())),
                           "failover": sum(self.peers.failovers.values())},
            "operator": len(self.run.operator),
            "opened": [r[0] for r in rows(url, "SELECT opened_at FROM incident")],
        }


def _tally(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out
