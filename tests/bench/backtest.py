"""Backtest speed: 48 hours of 10 targets polled every 10 s, replayed under a candidate.

The record is loaded straight into a migrated database (SQLite file and a
throwaway Postgres database), 172,800 `health_check` rows by default, with a
memory breach, a one-poll spike and an endpoint outage on every target so the
detector has work. Timed: `reports.backtest.backtest`, the function the
command calls (reading the rows, replaying them, comparing with the live
incidents), median of `BENCH_BACKTEST_REPS` runs; and the whole command in
a fresh process. The baseline is the same rows read by a bare `SELECT`
through the same driver: the ratio is what replaying costs over reading.
Target: the command under 5 s.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa

from incident_fsm import Store
from incident_fsm.models import HealthCheck
from incident_fsm.persistence import database
from incident_fsm.reports.backtest import backtest
from incident_fsm.settings import AgentSettings, Settings, TargetSettings

from .common import ROOT, Row, knob, python, throwaway_postgres

INTERVAL = 10.0


def _rows(targets: int, hours: float, end: datetime) -> list[dict[str, Any]]:
    polls = int(hours * 3600 / INTERVAL)
    start = end - timedelta(seconds=polls * INTERVAL)
    out: list[dict[str, Any]] = []
    for t in range(targets):
        for n in range(polls):
            at = start + timedelta(seconds=n * INTERVAL + t * 0.1)
            memory = 90.0 if 1000 <= n < 1040 or n == 5000 else 50.0
            down = 9000 <= n < 9020
            out.append({"target": f"t{t}", "at": at, "source": "/health/resources",
                        "ok": not down, "latency_ms": 4.0,
                        "memory_pct": None if down else memory,
                        "disk_pct": None if down else 60.0, "cpu_pct": None if down else 10.0,
                        "error": "HTTP 503" if down else "", "cause": "down" if down else None})
    return out


def _load(url: str, rows: list[dict[str, Any]]) -> None:
    engine = sa.create_engine(database.resolve_url(url))
    try:
        with engine.begin() as conn:
            table = HealthCheck.__table__  # type: ignore[attr-defined]
            for i in range(0, len(rows), 10_000):
                conn.execute(table.insert(), rows[i:i + 10_000])
    finally:
        engine.dispose()


def _bare_read(url: str, since: datetime, until: datetime) -> float:
    engine = sa.create_engine(database.resolve_url(url))
    try:
        started = time.perf_counter()
        with engine.connect() as conn:
            conn.execute(sa.text(
                "SELECT at, source, ok, latency_ms, memory_pct, disk_pct, cpu_pct, error, cause "
                "FROM health_check WHERE at >= :since AND at < :until ORDER BY target, at, id"),
                {"since": since if "postgres" in url else since.replace(tzinfo=None),
                 "until": until if "postgres" in url else until.replace(tzinfo=None)}).all()
        return time.perf_counter() - started
    finally:
        engine.dispose()


def _config(path: Path, targets: int) -> Settings:
    lines = ["[agent]", "poll_interval = 10", "fast_poll_interval = 5",
             "health_retention = 0"]
    for t in range(targets):
        lines += ["[[targets]]", f'name = "t{t}"', 'base_url = "http://127.0.0.1:9"',
                  "fallback_local = false", "max_requests_per_minute = 600"]
    path.write_text("\n".join(lines) + "\n")
    return Settings(agent=AgentSettings(poll_interval=10, fast_poll_interval=5,
                                        health_retention=0),
                    targets=tuple(TargetSettings(name=f"t{t}", base_url="http://127.0.0.1:9",
                                                 fallback_local=False,
                                                 max_requests_per_minute=600)
                                  for t in range(targets)))


async def _one(label: str, url: str, *, targets: int, hours: float, reps: int,
               config: Path) -> list[Row]:
    end = datetime.now(UTC)
    rows = _rows(targets, hours, end)
    _load(url, rows)
    settings = _config(config, targets)
    since = end - timedelta(hours=hours)
    times = []
    report = None
    async with Store(url) as store:
        for _ in range(reps):
            started = time.perf_counter()
            report = await backtest(store, settings, since=since, until=end + timedelta(seconds=1),
                                    candidate="bench", now=end)
            times.append(time.perf_counter() - started)
    assert report is not None and report.recorded == len(rows), report
    bare = statistics.median(_bare_read(url, since - timedelta(hours=1), end) for _ in range(reps))
    env = {**os.environ, "INCIDENT_FSM_DATABASE_URL": url}
    started = time.perf_counter()
    with anyio.fail_after(300):
        done = await anyio.run_process(
            [str(Path(python()).parent / "incident-fsm"), "backtest", "--config", str(config),
             "--since", f"{hours * 3600 + 60:.0f}s", "--json"],
            cwd=ROOT, env=env, check=False)
    command = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"backtest command failed: {done.stderr.decode()[-2000:]}")
    median = statistics.median(times)
    size = f"{hours:g} h x {targets} targets x {INTERVAL:g} s = {len(rows):,} rows"
    return [
        Row("backtest", f"{label}: backtest() median, {size}", median, "s", bare,
            "bare SELECT of the rows", note=f"{len(report.rows)} incidents, "
            f"ratio {median / bare:.1f}"),
        Row("backtest", f"{label}: the command in a fresh process", command, "s",
            target="< 5 s", ok=command < 5.0),
    ]


async def run() -> list[Row]:
    targets = int(knob("backtest_targets", 10, 10))
    hours = knob("backtest_hours", 48, 4)
    reps = int(knob("backtest_reps", 3, 1))
    out: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "candidate.toml"
        url = f"sqlite:///{tmp}/backtest.db"
        database.upgrade(url)
        out += await _one("SQLite", url, targets=targets, hours=hours, reps=reps, config=config)
        with throwaway_postgres() as pg:
            out += await _one("Postgres", pg, targets=targets, hours=hours, reps=reps,
                              config=config)
    return out
