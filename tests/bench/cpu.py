"""CPU: CPU time per healthy poll cycle per target, and the share of a core at the 30 s default.

The agent runs as `incident-fsm run` in a child process against loopback
simulators (in this process, so their CPU is not counted), with the
production log level (INFO: one `📊 Health check` line per poll). For N
targets the interval is compressed (`N / 150` s, at least 0.1 s) so a
bounded window holds many polls; CPU time of the child over the window
(psutil, user + system) divided by the polls completed in it is the cost
of one poll cycle: probe both endpoints, parse, evaluate, write the
`health_check` row, log, plus the agent's fixed loops (sweeper, supervisor,
dispatcher, lease) running at their compressed rates, so the figure is an
upper bound. The idle cost of the fixed loops at default intervals is
measured separately (one target polled every 30 s), and the share at the
default interval is `idle + per_poll * N / 30` seconds of CPU per second.

Baseline: a child process that does only the HTTP part (an
`httpx.AsyncClient` fetching the same two endpoints and parsing the JSON),
same loop, same simulator.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
import psutil

from .common import Row, child_env, knob, throwaway_postgres
from .memory import start, stop, wait_for
from .world import Tenants, agent_config

BASELINE = """
import asyncio, sys, time, httpx, psutil
async def main(url, n):
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(20):
            (await client.get(url + "/health/resources")).json()
        p = psutil.Process(); c0 = sum(p.cpu_times()[:2])
        for _ in range(n):
            (await client.get(url + "/health/resources")).json()
            (await client.get(url + "/health/system")).json()
        print(sum(p.cpu_times()[:2]) - c0)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def measure(tenants: Tenants, tmp: Path, url: str, *, prefix: str, targets: int,
                  poll: float, window: float) -> tuple[float, int]:
    """(CPU seconds, polls) of an agent over `window` seconds after one warm-up interval."""
    names = [f"{prefix}{i}" for i in range(targets)]
    config = agent_config(tmp / f"{prefix}.toml", db_url=url,
                          targets=[(n, tenants.url(n), f"srv-web-{n}") for n in names],
                          poll=poll, fast=min(poll, 10.0), jitter=0.5)
    proc = start([sys.executable, "-c", "from incident_fsm.cli.main import main; main()", "run",
                  "--config", str(config)], tmp / f"{prefix}.log")
    try:
        await wait_for(lambda: tenants.polls(prefix) >= targets, within=120)
        await anyio.sleep(min(poll, 10.0) + 2.0)
        child = psutil.Process(proc.pid)
        c0, p0 = cpu_seconds(child), tenants.polls(prefix)
        await anyio.sleep(window)
        c1, p1 = cpu_seconds(child), tenants.polls(prefix)
        if proc.poll() is not None:
            raise RuntimeError("the agent exited during the CPU benchmark")
        return c1 - c0, p1 - p0
    finally:
        stop(proc)


async def run() -> list[Row]:
    window = knob("cpu_seconds", 20, 6)
    sizes = sorted({1, 100, int(knob("cpu_max_targets", 1000, 1000))})
    rows: list[Row] = []
    keys = ["i0", *(f"n{n}x{i}" for n in sizes for i in range(n))]
    with tempfile.TemporaryDirectory() as d, throwaway_postgres() as url:
        tmp = Path(d)
        async with Tenants(keys) as tenants:
            with anyio.fail_after(120):
                out = await anyio.run_process(
                    [sys.executable, "-c", BASELINE, tenants.url("i0"), "500"], env=child_env())
            baseline = float(out.stdout.decode().strip()) / 500
            idle_cpu, _ = await measure(tenants, tmp, url, prefix="i", targets=1, poll=30.0,
                                        window=window)
            idle = idle_cpu / window
            rows.append(Row("cpu", "idle agent (1 target, default 30 s / 10 s intervals)",
                            100 * idle, "% core", note=f"{window:.0f} s window"))
            for n in sizes:
                poll = max(0.1, n / 150)
                try:
                    used, polls = await measure(tenants, tmp, url, prefix=f"n{n}x", targets=n,
                                                poll=poll, window=window)
                except TimeoutError:
                    rows.append(Row("cpu", f"CPU share at 30 s interval, {n} target(s)",
                                    float("nan"), "% core", target="< 5 %", ok=False,
                                    note="the agent did not complete one poll per target "
                                         "within 120 s (see README, Performance)"))
                    continue
                per_poll = used / max(1, polls)
                share = idle + per_poll * n / 30.0
                rows.append(Row("cpu", f"CPU per poll cycle, {n} target(s)", 1000 * per_poll,
                                "ms", 1000 * baseline, "httpx GET both endpoints + parse",
                                note=f"{polls} polls in {window:.0f} s at {poll:.2f} s interval"
                                     f" ({polls / window:.0f}/s)"))
                rows.append(Row("cpu", f"CPU share at 30 s interval, {n} target(s)",
                                100 * share, "% core", 100 * (baseline * n / 30.0),
                                "baseline HTTP work alone", "< 5 %", 100 * share < 5))
    return rows
