"""Memory: the standalone agent's RSS over many polls, and what the agent adds to a FastAPI host.

Every figure is the RSS of a child process read from outside with psutil.
Baselines, measured in the same run: a bare Python process importing the same
third-party packages the agent process loads (found by importing our CLI in a
child and listing what came from site-packages), and the same FastAPI host
without the agent.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import psutil

from incident_fsm.demo.pam_simulator import free_port

from .common import Row, child_env, knob, throwaway_postgres
from .world import Tenants, agent_config

MB = 1024 * 1024

LIST_STACK = """
import sys, sysconfig
before = set(sys.modules)
import incident_fsm.cli.main
import sqlalchemy.dialects.postgresql.psycopg, psycopg  # loaded on the first connection
site = sysconfig.get_paths()["purelib"]
tops = sorted({m.split(".")[0] for m in set(sys.modules) - before
               if (getattr(sys.modules[m], "__file__", None) or "").startswith(site)
               and not m.startswith("incident_fsm")})
print(",".join(tops))
"""


def rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


def third_party_stack() -> list[str]:
    out = subprocess.run([sys.executable, "-c", LIST_STACK], capture_output=True, text=True,
                         env=child_env(), check=True, timeout=60)
    return [m for m in out.stdout.strip().split(",") if m]


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def wait_for(check: object, *, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark child did not get going in time")
        await anyio.sleep(0.1)


async def baseline_rss(stack: list[str], tmp: Path, settle: float) -> float:
    code = ("import importlib, time\n"
            f"for m in {stack!r}:\n    importlib.import_module(m)\n"
            "print('ready', flush=True)\ntime.sleep(3600)\n")
    log = tmp / "baseline.log"
    proc = start([sys.executable, "-c", code], log)
    try:
        await wait_for(lambda: "ready" in log.read_text(), within=60)
        await anyio.sleep(settle)
        return rss(proc.pid)
    finally:
        stop(proc)


async def hosts(tenants: Tenants, tmp: Path, seconds: float) -> dict[str, tuple[float, float]]:
    """RSS (after start, after `seconds`) of the four FastAPI host variants, run side by side."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    async with AsyncExitStack() as stack:
        for mode in ("bare", "agent", "db", "db+agent"):
            argv = [sys.executable, "-m", "tests.bench.host", mode, str(free_port())]
            if mode.endswith("agent"):
                url = stack.enter_context(throwaway_postgres())
                names = [f"h{mode[0]}{i}" for i in range(10)]
                argv.append(str(agent_config(
                    tmp / f"{mode}.toml", db_url=url,
                    targets=[(n, tenants.url(n), f"srv-web-{n}") for n in names],
                    poll=0.1, fast=0.1, extra=['health_log_level = "DEBUG"'])))
            logs[mode] = tmp / f"host-{mode}.log"
            procs[mode] = start(argv, logs[mode])
        try:
            for log in logs.values():
                await wait_for(lambda log=log: "ready" in log.read_text(), within=60)
            await anyio.sleep(2.0)
            first = {mode: rss(p.pid) for mode, p in procs.items()}
            await anyio.sleep(seconds)
            return {mode: (first[mode], rss(p.pid)) for mode, p in procs.items()}
        finally:
            for p in procs.values():
                stop(p)


async def standalone(tenants: Tenants, tmp: Path, polls: int) -> dict[str, float]:
    """RSS of `incident-fsm run` after start, after 10 % of `polls` (warm) and at the end."""
    with throwaway_postgres() as url:
        names = [f"s{i}" for i in range(10)]
        config = agent_config(tmp / "standalone.toml", db_url=url,
                              targets=[(n, tenants.url(n), f"srv-web-{n}") for n in names],
                              poll=0.05, fast=0.05, extra=['health_log_level = "DEBUG"'])
        proc = start([sys.executable, "-c", "from incident_fsm.cli.main import main; main()",
                      "run", "--config", str(config)], tmp / "standalone.log")
        try:
            base = tenants.polls("s")
            await wait_for(lambda: tenants.polls("s") > base + 10, within=60)
            started = rss(proc.pid)
            await wait_for(lambda: tenants.polls("s") >= base + polls // 10, within=600)
            warm = rss(proc.pid)
            t0, c0 = time.monotonic(), tenants.polls("s")
            peak = warm
            while tenants.polls("s") < base + polls:
                if proc.poll() is not None:
                    raise RuntimeError("the agent exited during the memory benchmark")
                peak = max(peak, rss(proc.pid))
                await anyio.sleep(0.5)
            end = rss(proc.pid)
            rate = (tenants.polls("s") - c0) / (time.monotonic() - t0)
            return {"start": started, "warm": warm, "end": end, "peak": max(peak, end),
                    "polls": tenants.polls("s") - base, "rate": rate}
        finally:
            stop(proc)


async def run() -> list[Row]:
    polls = int(knob("memory_polls", 10_000, 1_000))
    host_seconds = knob("memory_host_seconds", 20, 8)
    stack = third_party_stack()
    names = [*(f"s{i}" for i in range(10)), *(f"ha{i}" for i in range(10)),
             *(f"hd{i}" for i in range(10))]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        async with Tenants(names) as tenants:
            base = await baseline_rss(stack, tmp, settle=2.0)
            host = await hosts(tenants, tmp, host_seconds)
            agent = await standalone(tenants, tmp, polls)
    section = "memory"
    bare_end, agent_end = host["bare"][1], host["agent"][1]
    db_end, dba_end = host["db"][1], host["db+agent"][1]
    return [
        Row(section, "standalone agent RSS after start", agent["start"], "MB", base,
            "bare python + same 3rd-party imports", "< 50 MB", agent["start"] < 50,
            note="third-party stack: " + ",".join(stack)),
        # The count goes in the note: rows of the runs are merged by name.
        Row(section, "standalone agent RSS at the end", agent["end"], "MB",
            base, "bare python + same 3rd-party imports", "< 50 MB", agent["end"] < 50,
            note=f"after {agent['polls']:.0f} polls, {agent['rate']:.0f} polls/s over 10 "
                 f"targets; peak {agent['peak']:.1f} MB"),
        Row(section, "standalone agent own share (RSS - baseline) at end", agent["end"] - base,
            "MB", None, "", "", None),
        Row(section, "standalone RSS growth, warm (10% of polls) -> end",
            agent["end"] - agent["warm"], "MB", None, "", "< 0.5 MB",
            agent["end"] - agent["warm"] < 0.5, note=f"growth from start: "
            f"{agent['end'] - agent['start']:.2f} MB"),
        Row(section, "FastAPI host + agent RSS", agent_end, "MB", bare_end, "host without agent"),
        Row(section, "marginal RSS of the agent in a bare FastAPI host", agent_end - bare_end,
            "MB", None, "", "<= 40 MB", agent_end - bare_end <= 40),
        Row(section, "marginal RSS of the agent in a host with SQLAlchemy/SQLModel",
            dba_end - db_end, "MB", db_end, "RSS of that host without agent", "< 50 MB",
            dba_end - db_end < 50),
        Row(section, f"host+agent RSS growth over {host_seconds:.0f} s of 10 polls/s",
            host["agent"][1] - host["agent"][0], "MB", host["bare"][1] - host["bare"][0],
            "growth of host without agent"),
    ]
