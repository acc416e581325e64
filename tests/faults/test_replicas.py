"""Three replicas on one Postgres, each through its own proxy: one killed, one partitioned.

Real `incident-fsm run` processes. The first leader is killed (kill -9); a
standby takes over; that one is then cut off from the database (a silent
black hole on its own proxy) and must stop acting -- its last health poll
-- before the third replica becomes leader. A memory problem that appears
meanwhile is remediated exactly once (counted at the simulator), and when
the partition heals the old leader stays a standby.

Killing the leader alone: `tests/test_agent_process.py::
test_two_replicas_one_acts_and_the_other_takes_over`.
"""

from __future__ import annotations

import re
import subprocess
from contextlib import AsyncExitStack, ExitStack
from datetime import datetime
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import make_url

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.persistence.store import Store

from ..agent_process import agent_process, lease_holder_pid, write_config
from ..scenario import incident_state, until
from ..tcp_proxy import TcpProxy
from .exposure import DB_PASSWORD, Exposure

pytestmark = pytest.mark.anyio

TTL, RENEW = 2.0, 0.4
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \|")


def _times(log: Path, text: str) -> list[datetime]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = STAMP.match(line)
        if match and text in line:
            found.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f"))
    return found


async def test_killed_and_partitioned_replicas_never_act_twice(
    postgres_url: str, tmp_path: Path, exposure: Exposure
) -> None:
    from ..conftest import _empty_postgres

    _empty_postgres(postgres_url)
    upstream = make_url(postgres_url)
    state = ServiceState(load_memory_pct=40.0)
    async with AsyncExitStack() as stack:
        sim = await stack.enter_async_context(Simulator(state))
        store = await stack.enter_async_context(Store(postgres_url))
        proxies, configs = [], []
        for name in "abc":
            proxy = await stack.enter_async_context(
                TcpProxy(upstream.host or "127.0.0.1", upstream.port or 5432))
            url = upstream.set(port=proxy.port, password=DB_PASSWORD)
            proxies.append(proxy)
            configs.append(write_config(
                tmp_path / f"{name}.toml", sim, url.render_as_string(hide_password=False),
                commands={}, policy=["render_restart"],
                extra_agent=f"leader_ttl = {TTL}\nleader_renew = {RENEW}"))
        logs = [tmp_path / f"{name}.log" for name in "abc"]
        exposure.files += logs
        with ExitStack() as procs:
            first = procs.enter_context(agent_process(configs[0], logs[0]))
            await until(lambda: _leads(postgres_url, first.pid), within=60)
            rest = [procs.enter_context(agent_process(c, log))
                    for c, log in zip(configs[1:], logs[1:], strict=True)]
            await until(lambda: _all_started(logs[1:]), within=60)
            by_pid = {p.pid: i for i, p in enumerate([first, *rest])}

            first.kill()  # the leader dies mid-flight
            await anyio.to_thread.run_sync(first.wait, 10)
            await until(lambda: _led_by_one_of(postgres_url, [p.pid for p in rest]), within=60)
            second = by_pid[lease_holder_pid(postgres_url) or 0]
            third = 3 - second  # the other survivor (indices 1 and 2)
            await until(lambda: _has_polled(logs[second]), within=10)  # it acts...
            proxies[second].cut("blackhole")  # ...then loses the database
            await until(lambda: _leads(postgres_url, [first, *rest][third].pid), within=60)

            state.leaked_memory_pct = 50.0
            await until(lambda: _is(store, "resolved"), within=60)
            proxies[second].restore()  # the partition heals: it must find it lost the lease
            await anyio.sleep(2 * RENEW + 1.0)
            assert lease_holder_pid(postgres_url) == [first, *rest][third].pid
            _assert_alive(rest)
        (incident,) = await store.list_incidents(kind="memory_high")
        timeline = await store.timeline(incident.incident_id)
    exposure.databases.append(postgres_url)
    assert state.requests["POST /v1/services/srv-web/restart"] == 1  # acted on once
    (run,) = timeline.actions
    assert (run.outcome, run.verified) == ("ok", True)
    # The partitioned leader stopped acting before the third replica started.
    stopped = _times(logs[second], "leadership lost: this replica stops acting")
    polled = _times(logs[second], "📊 Health check")
    took_over = _times(logs[third], "is now the leader")
    assert stopped and took_over
    assert stopped[0] < took_over[0]
    assert polled and max(polled) < took_over[0]  # its last poll came before, none after


def _assert_alive(procs: list[subprocess.Popen[bytes]]) -> None:
    assert all(p.poll() is None for p in procs)


async def _leads(url: str, pid: int) -> bool:
    return lease_holder_pid(url) == pid


async def _led_by_one_of(url: str, pids: list[int]) -> bool:
    return lease_holder_pid(url) in pids


async def _has_polled(log: Path) -> bool:
    return bool(_times(log, "📊 Health check"))


async def _all_started(logs: list[Path]) -> bool:
    return all(log.exists() and "initialized at" in log.read_text(errors="replace")
               for log in logs)


async def _is(store: Store, wanted: str) -> bool:
    return await incident_state(store, "api:memory_high") == wanted
