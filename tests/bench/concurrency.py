"""Concurrency: 1,000 incidents open at once on separate targets, each needing one action.

`incident-fsm run` (a child process, Postgres) watches 1,000 targets on one
loopback `Tenants` simulator, polling every 10 s (5 s while suspect). All
targets get memory pressure at the same moment; each is cured by one Render
restart of its own service. Measured: breach -> all incidents opened (split
into breach -> the poll that opened each incident, and that poll -> the
opening), and breach -> all resolved. No incident may be handled twice: the restarts the
simulator received per service (outside our tables) must be exactly one
each, and so must the attempts recorded per incident. Baseline, same run,
same settings: one target alone, breach -> resolved.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import psycopg

from .common import Row, knob, libpq, throwaway_postgres
from .memory import start, stop, wait_for
from .world import Tenants, agent_config

EXTRA = ("verify_window = 1", 'health_log_level = "DEBUG"')


def counts(url: str) -> tuple[int, int, int]:
    """(incidents, resolved, action attempts)."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("select count(*), count(*) filter (where state = 'resolved'), "
                           "(select count(*) from action_run) from incident").fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])


def attempts_per_incident(url: str) -> int:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("select coalesce(max(n), 0) from (select count(*) n from action_run "
                           "group by incident_id) c").fetchone()
        assert row is not None
        return int(row[0])


def opening_split(url: str, breach: datetime) -> tuple[float, float, float, float]:
    """Where the time to open went: (p50, max) of breach -> the poll that opened the
    incident (its health row is written with the poll's start), and of that poll's
    start -> the incident's opening, over all incidents."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            "select percentile_disc(0.5) within group (order by polled), max(polled), "
            "percentile_disc(0.5) within group (order by lag), max(lag) from ("
            " select extract(epoch from p.at - %(breach)s) polled, "
            "        extract(epoch from i.opened_at - p.at) lag from incident i "
            " cross join lateral (select max(h.at) at from health_check h "
            "   where h.target = i.target and h.at <= i.opened_at) p) s",
            {"breach": breach}).fetchone()
        assert row is not None
        return float(row[0]), float(row[1]), float(row[2]), float(row[3])


async def episode(tenants: Tenants, tmp: Path, *, prefix: str, n: int,
                  within: float) -> dict[str, float]:
    names = [f"{prefix}{i}" for i in range(n)]
    with throwaway_postgres() as url:
        config = agent_config(tmp / f"{prefix}.toml", db_url=url,
                              targets=[(k, tenants.url(k), f"srv-web-{k}") for k in names],
                              poll=10.0, fast=5.0, jitter=0.5, extra=EXTRA,
                              render_api=tenants.render_api_url)
        proc = start([sys.executable, "-c", "from incident_fsm.cli.main import main; main()", "run",
                      "--config", str(config)], tmp / f"{prefix}.log")
        try:
            await wait_for(lambda: tenants.polls(prefix) >= n, within=120)
            breach = time.monotonic()
            breach_at = datetime.now(UTC)
            for k in names:
                tenants.states[k].leaked_memory_pct = 50.0
            opened_at = resolved_at = None
            deadline = breach + within
            while resolved_at is None:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise TimeoutError(f"{prefix}: not all {n} incidents resolved in {within} s")
                total, resolved, _ = await anyio.to_thread.run_sync(counts, url)
                now = time.monotonic()
                if opened_at is None and total >= n:
                    opened_at = now - breach
                if resolved >= n:
                    resolved_at = now - breach
                await anyio.sleep(0.2)
            await anyio.sleep(1.0)  # anything late would show now
            restarts = [tenants.state.requests[f"POST /v1/services/srv-web-{k}/restart"]
                        for k in names]
            total, resolved, runs = await anyio.to_thread.run_sync(counts, url)
            most = await anyio.to_thread.run_sync(attempts_per_incident, url)
            split = await anyio.to_thread.run_sync(opening_split, url, breach_at)
            return {"opened": opened_at or float("nan"), "resolved": resolved_at,
                    "max_restarts": max(restarts), "min_restarts": min(restarts),
                    "incidents": total, "runs": runs, "max_attempts": most,
                    "polled_p50": split[0], "polled_max": split[1], "lag_p50": split[2],
                    "lag_max": split[3]}
        finally:
            stop(proc)


async def run() -> list[Row]:
    n = int(knob("concurrency_incidents", 1000, 200))
    names = ["solo0", *(f"c{i}" for i in range(n))]
    with tempfile.TemporaryDirectory() as d:
        async with Tenants(names) as tenants:
            solo = await episode(tenants, Path(d), prefix="solo", n=1, within=120)
            many = await episode(tenants, Path(d), prefix="c", n=n, within=600)
    once = many["max_restarts"] == 1 and many["min_restarts"] == 1 and many["max_attempts"] == 1
    return [
        Row("concurrency", f"breach -> all {n} incidents opened", many["opened"], "s",
            solo["opened"], "one target alone", "<= 20 s", many["opened"] <= 20),
        Row("concurrency", "breach -> the poll that opened an incident, max",
            many["polled_max"], "s", solo["polled_max"], "one target alone",
            note=f"p50 {many['polled_p50']:.1f} s; floor one interval and one fast one, 15 s"),
        Row("concurrency", "that poll's start -> its incident opened, max",
            many["lag_max"], "s", solo["lag_max"], "one target alone",
            note=f"p50 {many['lag_p50']:.2f} s"),
        Row("concurrency", f"breach -> all {n} incidents resolved", many["resolved"], "s",
            solo["resolved"], "one target alone"),
        Row("concurrency", "restarts per service at the simulator (min..max)",
            many["max_restarts"], "", target="exactly 1", ok=once,
            note=f"min {many['min_restarts']}, max {many['max_restarts']}; attempts recorded "
                 f"{many['runs']} for {many['incidents']} incidents, at most "
                 f"{many['max_attempts']} per incident"),
    ]
