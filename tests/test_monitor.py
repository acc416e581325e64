"""The monitor in virtual time: detection latency, polling, isolation, fallback, incidents."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest
import respx
from loguru import logger

from incident_fsm.detection.dependencies import DependencyStatus
from incident_fsm.detection.detector import Change, Phase
from incident_fsm.detection.payload import ProbeFailure, ProbeResult
from incident_fsm.detection.probe import HttpProbe
from incident_fsm.detection.targets import TargetProbes, default_probes
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import ActionIntent
from incident_fsm.models import HealthCheck
from incident_fsm.persistence.store import Store
from incident_fsm.runtime.monitor import MAX_CONCURRENT_POLLS, Cadence, Monitor, ProblemEvent
from incident_fsm.settings import AgentSettings, TargetSettings
from incident_fsm.testing import ManualClock
from incident_fsm.vocabulary import State, Verdict

from . import payloads
from .logcapture import captured_logs, diagnosed_logs
from .monitor_helpers import HangingProbe, ScriptedProbe, run_virtual, snap

pytestmark = pytest.mark.anyio

BASE = "http://api.test"
QUIET = AgentSettings(health_retention=0)
DOWN = ProbeFailure("/health/resources", "HTTP 503")


def target(name: str = "api", **kw: Any) -> TargetSettings:
    return TargetSettings(name=name, base_url=f"http://{name}.test", **kw)


def make(engine: IncidentEngine, store: Store, clock: ManualClock,
         probes: dict[str, TargetProbes], *, agent: AgentSettings = QUIET,
         targets: list[TargetSettings] | None = None, events: list[ProblemEvent] | None = None,
         random: Callable[[], float] = lambda: 0.0) -> Monitor:
    async def collect(event: ProblemEvent) -> None:
        assert events is not None
        events.append(event)

    return Monitor(
        targets=targets or [target(n) for n in probes], agent=agent, probes=probes,
        engine=engine, store=store, clock=clock, random=random,
        on_problem=collect if events is not None else None,
    )


@asynccontextmanager
async def running(monitor: Monitor) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.run)
        yield
        tg.cancel_scope.cancel()


async def test_breach_right_after_a_poll_is_confirmed_within_40s_with_default_intervals(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    start = clock.now()

    def answer(request: httpx.Request) -> httpx.Response:
        level = "critical" if clock.now() > start else "normal"
        builder = payloads.resources if request.url.path.endswith("resources") else payloads.system
        return httpx.Response(200, json=builder(*payloads.LEVELS[level]))

    async with httpx.AsyncClient() as client:
        # The second endpoint is read only when the first fails, which it does not here.
        with respx.mock(base_url=BASE, assert_all_called=False) as router:
            router.get("/health/resources").mock(side_effect=answer)
            router.get("/health/system").mock(side_effect=answer)
            api = TargetSettings(name="api", base_url=BASE, fallback_local=False)
            monitor = make(engine, store, clock, {"api": default_probes(api, client=client)},
                           agent=QUIET, targets=[api])
            assert (QUIET.poll_interval, QUIET.fast_poll_interval) == (30, 10)  # the defaults
            async with running(monitor):
                await run_virtual(clock, monitor, 0.001)  # the first poll, at `start`: normal
                await run_virtual(clock, monitor, 60)
    incidents = await store.list_incidents(target="api")
    assert sorted(i.kind for i in incidents) == ["cpu_high", "disk_high", "memory_high"]
    for incident in incidents:
        latency = (incident.opened_at - start).total_seconds()
        assert latency <= 40.0, incident.kind
        assert latency == 40.0  # one normal interval to notice, one fast one to confirm


async def test_polling_is_fast_while_suspect_or_open_and_normal_after(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    script = {2: 90.0, 3: 90.0, 4: 90.0}  # polls 2-4 bad, then clear
    probe = ScriptedProbe(clock, lambda n: snap(memory=script.get(n, 50.0)))
    monitor = make(engine, store, clock, {"api": TargetProbes(probe)})
    async with running(monitor):
        await run_virtual(clock, monitor, 150)
    gaps = [(b - a).total_seconds() for a, b in zip(probe.calls, probe.calls[1:], strict=False)]
    # poll 1 ok -> 30; 2 suspect -> 10; 3 open -> 10; 4 open -> 10; 5 cleared -> 30 ...
    assert gaps[:6] == [30.0, 10.0, 10.0, 10.0, 30.0, 30.0]
    assert [i.state for i in await store.list_incidents()] == ["resolved"]


async def test_jitter_only_shortens_and_the_rate_limit_caps(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    probe = TargetProbes(ScriptedProbe(clock, lambda n: snap()), requests_per_poll=2)
    roll = [1.0]
    monitor = make(engine, store, clock, {"api": probe}, agent=AgentSettings(poll_jitter=0.1),
                   random=lambda: roll[0])
    assert monitor.next_interval("api") == pytest.approx(27.0)
    roll[0] = 0.0
    assert monitor.next_interval("api") == 30.0
    monitor.detector.set_phase("api", "memory_high", Phase.SUSPECT)
    assert monitor.next_interval("api") == 10.0
    # Sub-second intervals are allowed, but never more often than 30 requests a minute.
    fast = make(engine, store, clock, {"api": probe},
                agent=AgentSettings(poll_interval=0.5, fast_poll_interval=0.2),
                targets=[target("api", max_requests_per_minute=30)])
    assert fast.min_interval("api") == 4.0
    assert fast.next_interval("api") == 4.0
    quick = make(engine, store, clock, {"api": probe},
                 agent=AgentSettings(poll_interval=0.5, fast_poll_interval=0.2),
                 targets=[target("api", max_requests_per_minute=6000)])
    assert quick.next_interval("api") == 0.5


async def test_a_hanging_target_never_delays_the_others(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    fine = ScriptedProbe(clock, lambda n: snap())
    other = ScriptedProbe(clock, lambda n: snap(memory=90.0))
    stuck = HangingProbe()
    monitor = make(engine, store, clock, {"api": TargetProbes(fine), "web": TargetProbes(other),
                                          "slow": TargetProbes(stuck)})
    start = clock.now()
    async with running(monitor):
        await run_virtual(clock, monitor, 95, stuck={"slow"})
        assert monitor.polling == {"slow"}
    assert [(t - start).total_seconds() for t in fine.calls] == [0.0, 30.0, 60.0, 90.0]
    assert [(t - start).total_seconds() for t in other.calls][:4] == [0.0, 10.0, 20.0, 30.0]
    assert stuck.calls == 1
    assert monitor.latest("slow") is None
    assert len(await store.health_checks(target="api")) == 4
    assert [i.kind for i in await store.list_incidents(target="web")] == ["memory_high"]


async def test_fallback_readings_and_endpoint_down_after_n_failures(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    endpoint_up = [False]
    local = ScriptedProbe(clock, lambda n: snap(memory=91.0, source="local"))

    def answer(request: httpx.Request) -> httpx.Response:
        if not endpoint_up[0]:
            return httpx.Response(503)
        return httpx.Response(200, json=payloads.resources(*payloads.LEVELS["normal"]))

    events: list[ProblemEvent] = []
    async with httpx.AsyncClient() as client:
        with respx.mock(base_url=BASE) as router:
            router.get("/health/resources").mock(side_effect=answer)
            http = HttpProbe(base_url=BASE, endpoints=("/health/resources",), client=client)
            monitor = make(engine, store, clock, {"api": TargetProbes(http, fallback=local)},
                           targets=[target("api", failures_before_down=3)], events=events)
            async with running(monitor):
                await run_virtual(clock, monitor, 0.001)
                reading = monitor.latest("api")
                assert reading is not None and reading.snapshot is not None
                assert reading.snapshot.source == "local"
                assert await store.list_incidents() == []
                await run_virtual(clock, monitor, 10)  # 2nd failure: memory from local confirmed
                assert [i.kind for i in await store.list_incidents()] == ["memory_high"]
                await run_virtual(clock, monitor, 10)  # 3rd failure: the endpoint is down
                kinds = sorted(i.kind for i in await store.list_incidents())
                assert kinds == ["health_endpoint_down", "memory_high"]
                await run_virtual(clock, monitor, 60)  # still down: nothing new
                assert len(await store.list_incidents()) == 2
                endpoint_up[0] = True
                await run_virtual(clock, monitor, 10)
    incidents = {i.kind: i for i in await store.list_incidents()}
    assert incidents["health_endpoint_down"].state == "resolved"
    assert incidents["memory_high"].state == "resolved"  # the endpoint says 50% now
    rows = await store.health_checks(target="api")
    assert {(r.source, r.ok) for r in rows} == {
        ("/health/resources", False), ("local", True), ("/health/resources", True)}
    assert all(r.memory_pct == 91.0 for r in rows if r.source == "local")
    assert next(r.error for r in rows if not r.ok) == "/health/resources: HTTP 503"
    changes = [(e.finding.change, e.finding.problem.kind) for e in events]
    assert changes[:3] == [(Change.SUSPECTED, "health_endpoint_down"),
                           (Change.SUSPECTED, "memory_high"), (Change.CONFIRMED, "memory_high")]
    confirmed = [e for e in events if e.finding.change is Change.CONFIRMED]
    assert all(e.incident is not None and e.incident.state == "detected" for e in confirmed)


async def test_a_resolved_problem_coming_back_is_reopened_inside_the_window_only(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    memory = [90.0]
    probe = ScriptedProbe(clock, lambda n: snap(memory=memory[0]))
    monitor = make(engine, store, clock, {"api": TargetProbes(probe)})
    async with running(monitor):
        await run_virtual(clock, monitor, 11)
        first = (await store.list_incidents())[0]
        memory[0] = 50.0
        await run_virtual(clock, monitor, 10)
        assert (await store.get_incident(first.incident_id)).state == "resolved"
        memory[0] = 90.0
        await run_virtual(clock, monitor, 60)
        again = await store.list_incidents()
        assert [(i.id, i.state, i.flap_count) for i in again] == [(first.id, "detected", 1)]
        memory[0] = 50.0
        await run_virtual(clock, monitor, 30)
        await run_virtual(clock, monitor, engine.policy.reopen_window + 60)
        memory[0] = 90.0
        await run_virtual(clock, monitor, 60)
    incidents = await store.list_incidents()
    assert [i.state for i in incidents] == ["detected", "resolved"]
    assert incidents[0].id != first.id


async def test_recovered_is_fired_only_from_detected_or_escalated(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    memory = {"api": 90.0, "web": 90.0}
    probes = {n: TargetProbes(ScriptedProbe(clock, lambda _, n=n: snap(memory=memory[n])))
              for n in memory}
    monitor = make(engine, store, clock, probes)
    async with running(monitor):
        await run_virtual(clock, monitor, 11)
        api = await store.find_open("api:memory_high")
        web = await store.find_open("web:memory_high")
        assert api is not None and web is not None
        intent = ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "test")
        await engine.fire(api.incident_id, "remediate", actor="driver", reason="t", intent=intent)
        await engine.fire(web.incident_id, "hold", actor="driver", reason="needs approval")
        memory.update(api=50.0, web=50.0)
        await run_virtual(clock, monitor, 30)
    assert (await store.get_incident(api.incident_id)).state == State.REMEDIATING
    assert (await store.get_incident(web.incident_id)).state == State.RESOLVED
    reading = monitor.latest("api")
    assert reading is not None and reading.snapshot is not None
    assert reading.snapshot.memory_pct == 50.0  # what a remediation driver verifies with


async def test_a_clear_seen_while_remediating_still_recovers_the_incident_once_escalated(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    # The driver may judge from a sample taken before the clear and escalate; the
    # monitor must not have forgotten the problem is gone.
    memory = {"api": 90.0}
    probes = {"api": TargetProbes(ScriptedProbe(clock, lambda _: snap(memory=memory["api"])))}
    monitor = make(engine, store, clock, probes)
    async with running(monitor):
        await run_virtual(clock, monitor, 11)
        api = await store.find_open("api:memory_high")
        assert api is not None
        intent = ActionIntent("disk_cleanup", "safe", Verdict.AUTO, "test")
        await engine.fire(api.incident_id, "remediate", actor="driver", reason="t", intent=intent)
        memory["api"] = 50.0
        await run_virtual(clock, monitor, 30)
        assert (await store.get_incident(api.incident_id)).state == State.REMEDIATING
        await engine.fire(api.incident_id, "escalate", actor="driver", reason="judged stale")
        await run_virtual(clock, monitor, 30)
    assert (await store.get_incident(api.incident_id)).state == State.RESOLVED


async def test_open_incidents_are_picked_up_after_a_restart(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    opened = await engine.open(target="api", kind="memory_high", severity="critical",
                               reason="before the restart")
    monitor = make(engine, store, clock, {"api": TargetProbes(ScriptedProbe(clock,
                                                                            lambda n: snap()))})
    async with running(monitor):
        await run_virtual(clock, monitor, 1)
    assert (await store.get_incident(opened.incident.incident_id)).state == "resolved"


async def test_a_dead_dependency_opens_service_down(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    class Dead:
        name = "celery"
        requests_per_check = 0

        async def check(self) -> DependencyStatus:
            return DependencyStatus("celery", "down", "no worker answered the ping within 5s")

    probes = TargetProbes(ScriptedProbe(clock, lambda n: snap()), dependencies=(Dead(),))
    monitor = make(engine, store, clock, {"api": probes})
    async with running(monitor):
        await run_virtual(clock, monitor, 11)
    [incident] = await store.list_incidents()
    assert incident.kind == "service_down:celery"
    rows = await store.health_checks(target="api")
    assert ("dependency:celery", False) in {(r.source, r.ok) for r in rows}


async def test_log_lines_and_their_level(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{level} {message}")
    try:
        results: list[ProbeResult] = [snap(memory=42.0, disk=61.5), DOWN]
        probe = ScriptedProbe(clock, lambda n: results[min(n, 2) - 1])
        monitor = make(engine, store, clock, {"api": TargetProbes(probe)})
        await monitor.poll("api")
        await monitor.poll("api")
        quiet = make(engine, store, clock, {"api": TargetProbes(probe)},
                     agent=AgentSettings(health_log_level="DEBUG"))
        results[1] = snap(memory=43.0)
        await quiet.poll("api")
    finally:
        logger.remove(sink)
    text = "".join(lines)
    assert ("INFO 📊 Health check: Memory 42.0%, Disk 61.5%, Status: healthy "
            "(api, /health/resources)") in text
    assert "WARNING ❌ Failed to probe api: HTTP 503" in text
    assert "Memory 43.0%" not in text
    with pytest.raises(ValueError, match="'LOUD' is not a log level"):
        make(engine, store, clock, {"api": TargetProbes(probe)},
             agent=AgentSettings(health_log_level="LOUD"))


async def test_store_records_and_prunes_health_checks(store: Store, clock: ManualClock) -> None:
    old = clock.now() - timedelta(days=8)
    await store.record_health_check(
        HealthCheck(target="api", at=old, source="/health/resources", ok=True, latency_ms=3.0,
                    memory_pct=50.0, disk_pct=60.0, cpu_pct=1.0),
        HealthCheck(target="api", at=clock.now(), source="/health/resources", ok=False,
                    latency_ms=5000.0, error="x" * 5000),
    )
    rows = await store.health_checks(target="api")
    assert [r.ok for r in rows] == [True, False]
    assert len(rows[1].error) == 1000
    assert await store.prune_health_checks(clock.now() - timedelta(days=7)) == 1
    assert [r.ok for r in await store.health_checks()] == [False]


async def test_monitoring_starts_and_goes_on_when_the_database_is_down(
    clock: ManualClock,
) -> None:
    broken = Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    monitor = Monitor(targets=[target("api")], agent=QUIET,
                      probes={"api": TargetProbes(ScriptedProbe(clock, lambda n: snap(90.0)))},
                      engine=IncidentEngine(broken, clock=clock), store=broken, clock=clock,
                      random=lambda: 0.0)
    async with running(monitor):
        await run_virtual(clock, monitor, 25)
    reading = monitor.latest("api")
    assert reading is not None and reading.seq == 3  # polled at 0, 10 and 20 all the same
    # Opening failed each time, so the detector stepped back and retried.
    assert monitor.detector.phase("api", "memory_high") is Phase.SUSPECT
    await broken.close()


class CountingProbe:
    """A probe that takes a little real time and counts how many run at once."""

    active = 0
    most = 0

    def __init__(self) -> None:
        self.calls = 0

    async def probe(self) -> ProbeResult:
        self.calls += 1
        CountingProbe.active += 1
        CountingProbe.most = max(CountingProbe.most, CountingProbe.active)
        try:
            await anyio.sleep(0.005)
            return snap()
        finally:
            CountingProbe.active -= 1


async def test_many_targets_due_together_poll_at_most_the_bound_at_once(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    CountingProbe.active = CountingProbe.most = 0
    probes = {f"t{n}": CountingProbe() for n in range(3 * MAX_CONCURRENT_POLLS)}
    monitor = make(engine, store, clock, {n: TargetProbes(p) for n, p in probes.items()})
    async with running(monitor):
        await run_virtual(clock, monitor, 1)
    assert [p.calls for p in probes.values()] == [1] * len(probes)
    assert CountingProbe.most == MAX_CONCURRENT_POLLS


async def test_intervals_stretched_by_the_rate_limit_are_said_once_at_start(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    # api: 2 requests a poll at 3 a minute, one poll per 40 s at most: both stretched.
    # ops: 1 request at 4 a minute, one per 15 s: only the fast interval. web: neither.
    api = ScriptedProbe(clock, lambda n: snap())
    monitor = make(engine, store, clock,
                   {"api": TargetProbes(api, requests_per_poll=2),
                    "ops": TargetProbes(ScriptedProbe(clock, lambda n: snap())),
                    "web": TargetProbes(ScriptedProbe(clock, lambda n: snap()))},
                   targets=[target("api", max_requests_per_minute=3),
                            target("ops", max_requests_per_minute=4), target("web")])
    configured = Cadence(30.0, 10.0)
    assert monitor.cadence("api") == (configured, Cadence(40.0, 40.0))
    assert monitor.cadence("ops") == (configured, Cadence(30.0, 15.0))
    assert monitor.cadence("web") == (configured, configured)
    with captured_logs() as logs:
        async with running(monitor):
            await run_virtual(clock, monitor, 200)
        polls = list(api.calls)
        async with running(monitor):  # run again, as with every leadership term
            await run_virtual(clock, monitor, 200)
    said = [line for line in logs if "max_requests_per_minute" in line]
    assert [line.split("|")[2].strip() for line in said] == ["{'target': 'api'}",
                                                             "{'target': 'ops'}"]
    assert all(line.startswith("WARNING|") for line in said)
    assert ("api is polled every 40 s (fast 40 s), not the configured 30 s (fast 10 s): "
            "max_requests_per_minute = 3 allows one poll of 2 request(s) every 40 s") in said[0]
    assert "ops is polled every 30 s (fast 15 s), not the configured 30 s (fast 10 s)" in said[1]
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(polls)}
    assert len(polls) == 6 and gaps == {40.0}  # what was said is what happens


async def test_an_endpoint_failing_while_the_other_answers_is_warned_once_per_stretch(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    first_up = [False]

    def first(request: httpx.Request) -> httpx.Response:
        if not first_up[0]:
            return httpx.Response(503)
        return httpx.Response(200, json=payloads.resources(*payloads.LEVELS["normal"]))

    async with httpx.AsyncClient() as client:
        with respx.mock(base_url=BASE) as router:
            router.get("/health/resources").mock(side_effect=first)
            router.get("/health/system").respond(
                200, json=payloads.system(*payloads.LEVELS["normal"]))
            api = TargetSettings(name="api", base_url=BASE, fallback_local=False)
            monitor = make(engine, store, clock, {"api": default_probes(api, client=client)},
                           targets=[api])
            with captured_logs() as logs:
                async with running(monitor):
                    await run_virtual(clock, monitor, 300)  # 11 polls, the first one failing
                    first_up[0] = True
                    await run_virtual(clock, monitor, 300)
                    first_up[0] = False
                    await run_virtual(clock, monitor, 300)
    warned = [line for line in logs if "fails while" in line]
    back = [line for line in logs if "answers on /health/resources again" in line]
    assert len(warned) == 2 and all(line.startswith("WARNING|") for line in warned)
    assert "endpoint /health/resources fails while /health/system answers: HTTP 503" in warned[0]
    assert len(back) == 1 and back[0].startswith("INFO|")
    assert "after 11 failed read(s)" in back[0]
    assert not [line for line in logs if "Failed to probe" in line]  # the target answered
    assert await store.list_incidents() == []


async def test_a_recovery_that_loses_a_race_with_the_driver_is_not_forgotten(
    engine: IncidentEngine, store: Store, clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The monitor reads the incident as detected and fires `recovered`; meanwhile the
    # driver holds it (detected -> escalated), so the monitor's write is refused as a
    # concurrent update. The problem is gone all the same: it must still be resolved.
    memory = {"api": 90.0}
    probes = {"api": TargetProbes(ScriptedProbe(clock, lambda _: snap(memory=memory["api"])))}
    monitor = make(engine, store, clock, probes)
    original = store.apply_transition
    raced = []

    async def racing(step: Any) -> Any:
        if step.trigger == "recovered" and not raced:
            raced.append(step.incident_id)
            monkeypatch.setattr(store, "apply_transition", original)
            await engine.fire(step.incident_id, "hold", actor="driver", reason="needs approval")
        return await original(step)

    async with running(monitor):
        await run_virtual(clock, monitor, 11)
        api = await store.find_open("api:memory_high")
        assert api is not None and api.state == State.DETECTED
        monkeypatch.setattr(store, "apply_transition", racing)
        memory["api"] = 50.0
        await run_virtual(clock, monitor, 30)
    assert raced == [api.incident_id]
    assert (await store.get_incident(api.incident_id)).state == State.RESOLVED


SECRET = "tok-Sup3rS3cretProbeToken"


class SecretHoldingProbe:
    """A `Probe` that breaks (a bug, not a failed read) while a local variable holds a secret."""

    async def probe(self) -> ProbeResult:
        token = SECRET
        return self._read(token)

    def _read(self, token: str) -> ProbeResult:
        raise RuntimeError("the probe has a bug")


async def test_an_unexpected_poll_error_is_logged_without_the_variables_of_its_frames(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    monitor = make(engine, store, clock, {"api": TargetProbes(SecretHoldingProbe())})
    with diagnosed_logs() as lines:
        async with running(monitor):
            await run_virtual(clock, monitor, 0.001)
    (failed,) = [line for line in lines if "Failed to poll api" in line]
    assert "RuntimeError: the probe has a bug" in failed  # in the traceback of the group
    assert SECRET not in "\n".join(lines)


async def test_a_failing_problem_subscriber_is_logged_without_the_variables_of_its_frames(
    engine: IncidentEngine, store: Store, clock: ManualClock,
) -> None:
    def deliver(event: ProblemEvent, api_key: str) -> None:
        raise ValueError(f"subscriber broke on {event.finding.problem.fingerprint}")

    async def on_problem(event: ProblemEvent) -> None:
        api_key = SECRET
        deliver(event, api_key)

    probes = {"api": TargetProbes(ScriptedProbe(clock, lambda _: snap(memory=95.0)))}
    monitor = Monitor(targets=[target()], agent=QUIET, probes=probes, engine=engine, store=store,
                      clock=clock, on_problem=on_problem)
    with diagnosed_logs() as lines:
        await monitor.poll("api")  # a suspect reading: one event, and the subscriber fails
    (failed,) = [line for line in lines if "Failed to deliver a problem event" in line]
    assert "ValueError: subscriber broke on api:memory_high" in failed
    assert SECRET not in "\n".join(lines)
