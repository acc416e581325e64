"""The target's health endpoints misbehave in every way we know of; the agent keeps its head.

The real agent polls the loopback simulator with one fault on its endpoints.
Each failed poll is recorded with its reason. An endpoint that gives no
answer or a 5xx opens `health_endpoint_down`; one that answers with no
usable reading (ERROR, not JSON, a huge body, numbers out of range) opens
`probe_misconfigured` instead, since the service is plainly alive. Either
opens only once every endpoint has failed `failures_before_down` polls in a
row, never while one endpoint still answers or while the readings are
merely odd (a wild timestamp), and resolves once the endpoints answer again.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from incident_fsm.demo.pam_simulator import free_port
from incident_fsm.demo.simulator import ServiceState, Simulator, resources_payload, system_payload
from incident_fsm.models import HealthCheck
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.agent import Agent

from ..scenario import incident_state, sim_settings, until
from .exposure import ENV, Exposure

pytestmark = pytest.mark.anyio

ENDPOINTS = ("/health/resources", "/health/system")


def _stats(**stats: Any) -> bytes:
    payload = resources_payload(ServiceState())
    payload["stats"].update(stats)
    return json.dumps(payload).encode()


DOWN, WRONG = "health_endpoint_down", "probe_misconfigured"
# (how the endpoints fail, what the recorded reason says, the kind it opens)
BROKEN = {
    "hang": ("hang", "timed out after 1s", DOWN),
    "close": ("close", "RemoteProtocolError", DOWN),
    "500": ("500", "HTTP 500", DOWN),
    "200 with ERROR": ("error", "ERROR", WRONG),
    "empty checks": ("empty_checks", "'checks' is empty", WRONG),
    "invalid JSON": ("garbage", "body is not JSON", WRONG),
    "50 MB body": ("huge", "exceeds the", WRONG),
    "trickle": ("trickle", "timed out after 1s", DOWN),
    "wrong type": (_stats(memory_pct="85"), "is a string", WRONG),
    "negative": (_stats(memory_pct=-5), "outside 0..100", WRONG),
    "over 100": (_stats(disk_pct=250.0), "outside 0..100", WRONG),
}


def _break(state: ServiceState, fault: str | bytes) -> None:
    for path in ENDPOINTS:
        if fault == "empty_checks" and path != "/health/system":
            state.faults[path] = "error"  # the other endpoint fails its own way
            continue
        if isinstance(fault, bytes):
            state.bodies[path] = fault
        else:
            state.faults[path] = fault


async def _failures(store: Store, reason: str) -> list[HealthCheck]:
    return [c for c in await store.health_checks(target="api", limit=10000)
            if not c.ok and reason in (c.error or "")]


@pytest.mark.parametrize("case", list(BROKEN))
async def test_a_broken_endpoint_is_a_failed_probe_with_its_reason_and_down_after_three(
    sqlite_url: str, tmp_path: Path, case: str, exposure: Exposure
) -> None:
    fault, reason, kind = BROKEN[case]
    other = WRONG if kind == DOWN else DOWN
    state = ServiceState(load_memory_pct=40.0)
    async with Simulator(state) as sim, Store(sqlite_url) as store:
        settings = sim_settings(sim, sqlite_url)
        async with Agent(settings, environ=ENV, journal_path=tmp_path / "j") as agent:
            await until(lambda: _polled(state, 2), within=10)
            assert await incident_state(store, f"api:{kind}") is None
            _break(state, fault)
            started = time.monotonic()
            await until(lambda: _opened_kind(store, kind), within=20)
            opened_after = time.monotonic() - started
            # Fixed again: the agent notices the endpoints answer and closes the incident.
            state.faults.clear()
            state.bodies.clear()
            await until(lambda: _is(store, "resolved", kind), within=20)
            assert agent.running
            assert not await _opened_kind(store, other)
        # Read once the agent has stopped: its rows are written in batches, the last at stop.
        failed = await _failures(store, reason)
    assert len(failed) >= 3, [c.error for c in await _all(sqlite_url)]
    assert any("Failed to probe api" in line and reason in line for line in exposure.logs)
    # Three failed polls; each reads both endpoints one after the other (the second
    # only because the first failed), each bounded by the probe timeout.
    assert opened_after < 3 * (2 * 1.0 + 0.2) + 2.0


@pytest.mark.parametrize("when", ["1970-01-01T00:00:00", "2999-12-31T23:59:59Z", "yesterday"])
async def test_a_wild_timestamp_is_not_a_failure_the_numbers_decide(
    sqlite_url: str, tmp_path: Path, when: str
) -> None:
    state = ServiceState(load_memory_pct=40.0)
    async with Simulator(state) as sim, Store(sqlite_url) as store:
        async with Agent(sim_settings(sim, sqlite_url), environ=ENV, journal_path=tmp_path / "j"):
            for path in ENDPOINTS:
                state.bodies[path] = _with_timestamp(state, path, when)
            await until(lambda: _polled(state, 8), within=10)
            assert await incident_state(store, "api:health_endpoint_down") is None
            state.leaked_memory_pct = 50.0  # and a real problem still counts
            for path in ENDPOINTS:
                state.bodies[path] = _with_timestamp(state, path, when)
            await until(lambda: _opened_kind(store, "memory_high"), within=10)
        checks = await store.health_checks(target="api", limit=10000)
    assert any(c.ok and c.memory_pct == 90.0 for c in checks)


async def test_one_endpoint_down_is_not_a_down_target(sqlite_url: str, tmp_path: Path) -> None:
    # The first endpoint hangs: the second is read in its place on each poll.
    state = ServiceState(load_memory_pct=40.0, faults={"/health/resources": "hang"})
    async with Simulator(state) as sim, Store(sqlite_url) as store:
        async with Agent(sim_settings(sim, sqlite_url), environ=ENV, journal_path=tmp_path / "j"):
            await until(lambda: _polled(state, 4), within=15)
            assert await store.list_incidents(limit=10) == []
        checks = await store.health_checks(target="api", limit=10000)
    probed = [c for c in checks if not c.source.startswith("dependency:")]
    assert probed and all(c.ok and c.memory_pct == 40.0 for c in probed)
    # The failing half is still on record, as a partial failure with its reason.
    assert any("/health/resources: timed out after 1s" in (c.error or "") for c in probed)


async def test_connection_refused_falls_back_to_this_host_and_is_down_after_three_polls(
    sqlite_url: str, tmp_path: Path
) -> None:
    state = ServiceState()
    async with Simulator(state) as sim, Store(sqlite_url) as store:
        settings = sim_settings(sim, sqlite_url)
    # The simulator is gone and nothing listens on the port any more.
    (target,) = settings.targets
    dead = replace(settings, targets=(replace(
        target, base_url=f"http://127.0.0.1:{free_port()}", fallback_local=True),))
    async with Store(sqlite_url) as store:
        async with Agent(dead, environ=ENV, journal_path=tmp_path / "j") as agent:
            await until(lambda: _opened(store), within=10)
            assert agent.running
        failed = await _failures(store, "ConnectError")
        checks = await store.health_checks(target="api", limit=10000)
    assert len(failed) >= 3
    # It fell back to reading this host meanwhile.
    assert any(c.ok and c.source == "local" and c.memory_pct is not None for c in checks)


def _with_timestamp(state: ServiceState, path: str, when: str) -> bytes:
    payload = resources_payload(state) if path.endswith("resources") else system_payload(state)
    payload["timestamp"] = when
    return json.dumps(payload).encode()


async def _polled(state: ServiceState, count: int) -> bool:
    return state.requests["GET /health/resources"] >= count


async def _opened(store: Store) -> bool:
    return await _opened_kind(store, "health_endpoint_down")


async def _opened_kind(store: Store, kind: str) -> bool:
    return bool(await store.list_incidents(kind=kind, limit=10))


async def _is(store: Store, wanted: str, kind: str = DOWN) -> bool:
    return await incident_state(store, f"api:{kind}") == wanted


async def _all(url: str) -> list[HealthCheck]:
    async with Store(url) as store:
        return await store.health_checks(target="api", limit=10000)
