"""CPU: CPU time per healthy poll cycle per target, and the share of a core at the 30 s default.

The agent runs as `incident-fsm run` in a child process against loopback
simulators (in this process, so their CPU is not counted), with the
production log level (INFO: one `📊 Health check` line per poll). For N
targets the interval is compressed (`N / 150` s, at least 0.1 s) so a
bounded window holds many polls; CPU time of the child over the window
(psutil, user + system) divided by the polls completed in it is the cost
of one poll cycle: probe the default endpoint (`/health/resources`), parse,
evaluate, write the `health_check` row, log, plus the agent's own loops
(sweeper, supervisor, dispatcher, lease) at whatever rate they wake, so the
figure is an upper bound. At one target (10 polls a second) that fixed work is a
large part of each poll's share, so the same agent is also run at half the poll
rate with the same fast interval (the same supervisor scans and row flushes):
the CPU the extra polls added, divided by their number, is a poll's marginal
cost. The idle cost at default intervals is measured
separately (one target polled every 30 s), and the share at the default
interval is `idle + per_poll * N / 30` seconds of CPU per second.

The simulator keeps idle connections open for 60 s, as a proxy in front of
the service does, so the agent can reuse one connection per target; the
cost of a fresh connection per request is printed beside it.

Baseline: a child process that does only the HTTP part (an
`httpx.AsyncClient` fetching the same endpoint and parsing the JSON, on a
reused connection), same loop, same simulator, in the same run, just
before and just after each size (this VM's speed drifts over minutes): back
to back, and, for one target, also at the agent's own poll rate
(`paced_rows`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
import psutil
import psycopg

from .common import Row, child_env, knob, libpq, throwaway_postgres
from .memory import start, stop, wait_for
from .world import Tenants, agent_config

#: argv: base URL, requests, keep-alive (1) or a new connection per request (0), and the
#: seconds from one request's start to the next (0: back to back)
BASELINE = """
import asyncio, sys, time, httpx, psutil
async def main(url, n, reuse, every):
    limits = httpx.Limits(max_keepalive_connections=20 if reuse else 0)
    async with httpx.AsyncClient(timeout=5, limits=limits) as client:
        for _ in range(20):
            (await client.get(url + "/health/resources")).json()
        p = psutil.Process(); c0 = sum(p.cpu_times()[:2])
        due = time.monotonic()
        for _ in range(n):
            if every:
                due += every
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            (await client.get(url + "/health/resources")).json()
        print(sum(p.cpu_times()[:2]) - c0)
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])))
"""
#: Seconds the simulator keeps an idle connection (a proxy's figure, not uvicorn's 5 s).
KEEP_ALIVE = 60.0


async def baseline_cost(url: str, *, reuse: bool, requests: int = 1000,
                        every: float = 0.0) -> float:
    """CPU seconds per request of bare httpx (median of three child processes): back to
    back, or one request every `every` seconds."""
    costs = []
    for _ in range(3):
        with anyio.fail_after(120 + requests * every):
            out = await anyio.run_process(
                [sys.executable, "-c", BASELINE, url, str(requests), "1" if reuse else "0",
                 str(every)], env=child_env())
        costs.append(float(out.stdout.decode().strip()) / requests)
    return sorted(costs)[1]


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def measure(tenants: Tenants, tmp: Path, url: str, *, prefix: str, targets: int,
                  poll: float, window: float, fast: float | None = None) -> tuple[float, int]:
    """(CPU seconds, polls) of an agent over `window` seconds after one warm-up interval."""
    names = [f"{prefix}{i}" for i in range(targets)]
    config = agent_config(tmp / f"{prefix}.toml", db_url=url,
                          targets=[(n, tenants.url(n), f"srv-web-{n}") for n in names],
                          poll=poll, fast=min(poll, 10.0) if fast is None else fast,
                          jitter=0.5)
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
    keys = ["i0", "h1x0", *(f"n{n}x{i}" for n in sizes for i in range(n))]
    with tempfile.TemporaryDirectory() as d, throwaway_postgres() as url:
        tmp = Path(d)
        async with Tenants(keys, keep_alive=KEEP_ALIVE) as tenants:
            baseline = await baseline_cost(tenants.url("i0"), reuse=True)
            fresh = await baseline_cost(tenants.url("i0"), reuse=False)
            rows.append(Row("cpu", "httpx GET + parse, a new connection per request",
                            1000 * fresh, "ms", 1000 * baseline, "on a reused connection",
                            note="what keep-alive saves per poll"))
            # CPU time comes in 10 ms ticks: over 20 s one tick is 0.05 % of a core, half
            # the target, so the idle agent is watched for longer.
            idle_window = knob("idle_seconds", 120, 20)
            idle_cpu, _ = await measure(tenants, tmp, url, prefix="i", targets=1, poll=30.0,
                                        window=idle_window)
            idle = idle_cpu / idle_window
            # Judged in whole ticks: 12 ticks in 120 s is the target exactly, and the float
            # sum of user and system time (0.12000000000000001) must not fail it.
            ticks, allowed = round(idle_cpu / 0.01), round(0.001 * idle_window / 0.01)
            rows.append(Row("cpu", "idle agent (1 target, default 30 s / 10 s intervals)",
                            100 * idle, "% core", target="<= 0.1 %", ok=ticks <= allowed,
                            note=f"{idle_window:.0f} s window"))
            for n in sizes:
                poll = max(0.1, n / 150)
                try:
                    before = await baseline_cost(tenants.url("i0"), reuse=True)
                    used, polls = await measure(tenants, tmp, url, prefix=f"n{n}x", targets=n,
                                                poll=poll, window=window)
                    # This VM's speed drifts over minutes: the baseline each size is judged
                    # by is measured just before and just after it.
                    after = await baseline_cost(tenants.url("i0"), reuse=True)
                except TimeoutError:
                    rows.append(Row("cpu", f"CPU share at 30 s interval, {n} target(s)",
                                    float("nan"), "% core", target="< 5 %", ok=False,
                                    note="the agent did not complete one poll per target "
                                         "within 120 s (see README, Performance)"))
                    continue
                near = (before + after) / 2
                per_poll = used / max(1, polls)
                share = idle + per_poll * n / 30.0
                rows.append(Row("cpu", f"CPU per poll cycle, {n} target(s)", 1000 * per_poll,
                                "ms", 1000 * near, "httpx GET + parse, same endpoint, "
                                "just before and after",
                                note=f"{polls} polls in {window:.0f} s at {poll:.2f} s interval"
                                     f" ({polls / window:.0f}/s); httpx {1000 * before:.2f} ms "
                                     f"before, {1000 * after:.2f} after"))
                rows.append(Row("cpu", f"CPU per poll / httpx, {n} target(s)",
                                per_poll / near, "x", target="<= 1.2",
                                ok=per_poll / near <= 1.2))
                if n == 1:
                    rows.append(await marginal_poll(tenants, tmp, url, poll, used, polls,
                                                    window, near))
                    rows += await paced_rows(tenants.url("i0"), per_poll, polls / window,
                                             near)
                bare = near * n / 30.0
                # Issue 16: "CPU share at 30 s, 1,000 targets: <= 5 % of a core ... and
                # <= 1.2x the bare HTTP share". At fewer targets the agent's fixed 0.1 %
                # is most of the share, and only the 5 % applies.
                at_scale = n >= 1000
                rows.append(Row("cpu", f"CPU share at 30 s interval, {n} target(s)",
                                100 * share, "% core", 100 * bare, "the HTTP work alone",
                                "< 5 %, <= 1.2x baseline" if at_scale else "< 5 %",
                                100 * share < 5 and (share <= 1.2 * bare or not at_scale)))
        rows.append(growth_per_day(url))
    return rows


async def marginal_poll(tenants: Tenants, tmp: Path, url: str, poll: float, used: float,
                        polls: int, window: float, baseline: float) -> Row:
    """What one more poll costs at one target: the same agent at half the poll rate, its
    fast interval (so its supervisor's scan) and row flushes unchanged, and the CPU the
    extra polls added divided by their number. At 10 polls a second the agent's work
    that does not follow the polls is a large part of each poll's share."""
    slow_used, slow_polls = await measure(tenants, tmp, url, prefix="h1x", targets=1,
                                          poll=2 * poll, fast=poll, window=window)
    extra = polls - slow_polls
    marginal = (used - slow_used) / extra if extra > 0 else float("nan")
    # CPU time comes in 10 ms ticks: each of the two figures may be one tick off.
    error = 2 * 0.01 / extra if extra > 0 else float("nan")
    return Row("cpu", "CPU per poll / httpx, 1 target, marginal", marginal / baseline, "x",
               target="<= 1.2", ok=marginal / baseline <= 1.2,
               note=f"{1000 * marginal:.2f} ms per extra poll (+/- {1000 * error:.2f} ms, "
                    f"{error / baseline:.2f}x, from 10 ms CPU ticks): {1000 * used:.0f} ms "
                    f"over {polls} polls at {poll:g} s against {1000 * slow_used:.0f} ms over "
                    f"{slow_polls} at {2 * poll:g} s, same fast interval")


async def paced_rows(url: str, per_poll: float, rate: float, baseline: float) -> list[Row]:
    """Bare httpx at the one-target agent's own rate, and the agent's poll against it.

    Back to back, each request's answer is waited for in the same wake-up as
    the next one is sent. At ten polls a second every request starts from an
    idle process: a timer wake-up, and the caches and CPU frequency of a
    machine that went idle. The agent pays that at one target, and httpx at
    the same rate pays it too."""
    paced = await baseline_cost(url, reuse=True, requests=int(10 * rate), every=1.0 / rate)
    return [
        # The pace goes in the note: rows of the runs are merged by name.
        Row("cpu", "httpx GET + parse at the one-target agent's rate", 1000 * paced, "ms",
            1000 * baseline, "back to back",
            note=f"one request every {1000 / rate:.0f} ms"),
        Row("cpu", "CPU per poll / httpx at the same rate, 1 target", per_poll / paced, "x",
            target="<= 1.2", ok=per_poll / paced <= 1.2,
            note=f"{1000 * per_poll:.2f} ms per poll against {1000 * paced:.2f} ms"),
    ]


def growth_per_day(url: str) -> Row:
    """The health_check table's bytes per row (heap, indexes, TOAST) after the runs above,
    times one row per 30 s poll for a day: what one target adds at default intervals."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE health_check")
        count, size = conn.execute(
            "SELECT count(*), pg_total_relation_size('health_check') FROM health_check"
        ).fetchone() or (0, 0)
    per_row = size / max(1, count)
    return Row("cpu", "database growth per target per day (30 s polls, one row each)",
               per_row * 86400 / 30 / 1024, "KiB",
               note=f"{per_row:.0f} bytes per health_check row over {count} rows; "
                    "health_retention (14 days) bounds it")
