"""Done-when: the monitor against a real HTTP server on loopback, on SQLite and Postgres.

The server (tests/health_server.py) serves the REFERENCE.md payloads from a
state the test controls. Time is virtual (ManualClock); every request,
response and database write is real. For each endpoint schema, and for the
fallback path, a single-sample spike opens nothing and a sustained problem
opens exactly one incident, which is resolved once the problem clears.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import psutil
import pytest

from incident_fsm.detection.targets import default_probes
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.models import Incident
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.monitor import Monitor
from incident_fsm.settings import AgentSettings, TargetSettings, Threshold, Thresholds
from incident_fsm.testing import ManualClock

from .health_server import HealthServer
from .monitor_helpers import run_virtual

pytestmark = pytest.mark.anyio

AGENT = AgentSettings(health_retention=0)  # default 30 s / 10 s polling
SCHEMAS = {
    "resources": (("/health/resources",), False),
    "system": (("/health/system",), False),
    "legacy-system": (("/health/system",), True),
    "both": (("/health/resources", "/health/system"), False),
}
MEMORY_ONLY = (91.0, 60.0, 12.5)  # a memory problem and nothing else


@asynccontextmanager
async def monitoring(server: HealthServer, api: TargetSettings, engine: IncidentEngine,
                     store: Store, clock: ManualClock) -> AsyncIterator[Monitor]:
    async with httpx.AsyncClient() as client:
        monitor = Monitor(targets=[api], agent=AGENT,
                          probes={api.name: default_probes(api, client=client)},
                          engine=engine, store=store, clock=clock, random=lambda: 0.0)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(monitor.run)
                await run_virtual(clock, monitor, 0.001)  # the first poll
                yield monitor
                tg.cancel_scope.cancel()


async def _incidents(store: Store) -> list[Incident]:
    return await store.list_incidents(target="api")


@pytest.mark.parametrize("schema", SCHEMAS)
async def test_real_server_spike_opens_nothing_sustained_opens_exactly_one(
    schema: str, engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    endpoints, legacy = SCHEMAS[schema]
    with HealthServer() as server:
        server.legacy = legacy
        api = TargetSettings(name="api", base_url=server.base_url, endpoints=endpoints,
                             fallback_local=False)
        async with monitoring(server, api, engine, store, clock) as monitor:
            # A spike: one poll sees critical memory, the next does not.
            server.spike(MEMORY_ONLY, endpoints)
            await run_virtual(clock, monitor, 30)
            reading = monitor.latest("api")
            assert reading is not None and reading.snapshot is not None
            assert reading.snapshot.memory_pct == 91.0
            await run_virtual(clock, monitor, 10 + 120)
            assert await _incidents(store) == []

            # Sustained: confirmed on the next (fast) poll, then nothing new for minutes.
            server.set(MEMORY_ONLY)
            await run_virtual(clock, monitor, 30 + 10)
            await run_virtual(clock, monitor, 300)
            [incident] = await _incidents(store)
            assert (incident.kind, incident.state, incident.severity) == (
                "memory_high", "detected", "critical")

            # Cleared: back under the clear threshold resolves the same incident.
            server.set("normal")
            await run_virtual(clock, monitor, 10)
            [incident] = await _incidents(store)
            assert incident.state == "resolved"
        requests = sum(server.requests[path] for path in endpoints)
    polls = len({r.at for r in await store.health_checks(target="api")})
    # One request per poll: the second endpoint is read only when the first fails.
    assert requests == polls


@pytest.mark.parametrize("failure", ["503", "error200", "hang"])
async def test_real_server_down_falls_back_to_local_readings(
    failure: str, engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    # Thresholds under this host's real memory use, so the local readings are
    # a genuine sustained memory problem; disk and cpu can never trigger.
    host_memory = psutil.virtual_memory().percent
    thresholds = Thresholds(memory=Threshold(critical=host_memory / 2, clear=host_memory / 4),
                            disk=Threshold(critical=100.0, clear=99.0),
                            cpu=Threshold(critical=100.0, clear=99.0))
    with HealthServer() as server:
        server.set((0.0, 10.0, 5.0))
        api = TargetSettings(name="api", base_url=server.base_url, fallback_local=True,
                             thresholds=thresholds, failures_before_down=3, probe_timeout=0.3)
        async with monitoring(server, api, engine, store, clock) as monitor:
            # One failed poll: local readings are used, but nothing is opened.
            server.mode = failure
            await run_virtual(clock, monitor, 30)
            reading = monitor.latest("api")
            assert reading is not None and reading.snapshot is not None
            assert reading.snapshot.source == "local"
            server.mode = "ok"
            await run_virtual(clock, monitor, 10 + 120)
            assert await _incidents(store) == []

            # Down for good: memory_high from the local readings on the 2nd failed
            # poll, health_endpoint_down on the 3rd, and nothing more after that.
            # A 200 saying ERROR comes from a live service that cannot measure
            # itself: the probe is what is wrong, not the service.
            lost = "probe_misconfigured" if failure == "error200" else "health_endpoint_down"
            server.mode = failure
            await run_virtual(clock, monitor, 30 + 10)
            assert [i.kind for i in await _incidents(store)] == ["memory_high"]
            await run_virtual(clock, monitor, 10)
            assert sorted(i.kind for i in await _incidents(store)) == sorted([lost, "memory_high"])
            await run_virtual(clock, monitor, 120)
            assert len(await _incidents(store)) == 2

            # The endpoint answers again (memory 0 %): both are resolved.
            server.mode = "ok"
            await run_virtual(clock, monitor, 10)
            assert {(i.kind, i.state) for i in await _incidents(store)} == {
                (lost, "resolved"), ("memory_high", "resolved")}
    rows = await store.health_checks(target="api")
    local = [r for r in rows if r.source == "local"]
    assert local and all(r.ok and r.memory_pct is not None for r in local)
    assert all(not r.ok and r.error for r in rows if r.source.startswith("/health/resources")
               and r.memory_pct is None)
