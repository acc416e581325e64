"""The monitor: polls every target on its own schedule and turns confirmed problems into incidents.

One loop per target runs in an anyio task group, so a slow or dead target
never delays the others (each probe is bounded by its own timeout). Every
poll probes the target's endpoints and its dependencies concurrently, falls
back to the local host when the endpoints fail (if the target allows it),
writes its `health_check` rows, logs the `📊 Health check` line, feeds the
`Detector`, and acts on what it finds:

- *confirmed*: the open incident of that fingerprint stays as it is; else the
  last resolved one is reopened (`reopen`, whose guard checks the reopen
  window); else a new one is opened;
- *cleared*: `recovered` is fired if the incident is in `detected` or
  `escalated`; an incident in `remediating` or `verifying` belongs to the
  remediation driver, which verifies with fresh readings (`latest` /
  `wait_for_reading`).

Polling waits through the injected clock: `poll_interval` normally,
`fast_poll_interval` while anything on the target is suspect or open, up to
`poll_jitter` of the interval early, and never more often than the target's
`max_requests_per_minute` allows; where that stretches an interval, the
first `run` says so once per target, and `cadence` gives both the configured
and the effective intervals. A target that answers 429 is alive and
busy: its next poll waits at least the `Retry-After` it gave, no fallback
is read in its place, nothing is detected from it, and the stretch is
logged once when it starts and once when it ends. Subscribers get every phase change as a
`ProblemEvent` through the `on_problem` callback (keep it quick: hand the
event to your own task or stream).
"""

from __future__ import annotations

import random as _random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol

import anyio
from loguru import logger

from incident_fsm.clock import Clock
from incident_fsm.detection.dependencies import DependencyProbe, DependencyStatus
from incident_fsm.detection.detector import (
    Change,
    Detector,
    Finding,
    Observation,
    Phase,
    status_label,
)
from incident_fsm.detection.payload import THROTTLED, HealthSnapshot, ProbeFailure, ProbeResult
from incident_fsm.detection.targets import Cadence, TargetProbes, cadences
from incident_fsm.detection.targets import min_interval as _min_interval
from incident_fsm.errors import ConcurrentUpdate, GuardRejected, InvalidTransition
from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.logfail import log_failure
from incident_fsm.models import HealthRow, Incident, IncidentId
from incident_fsm.remediation.chooser import NO_SILENCES, SilenceSource
from incident_fsm.runtime.health_rows import HealthRowBuffer, prune_older
from incident_fsm.settings import STATIC_KINDS, AgentSettings, TargetSettings, service_down
from incident_fsm.vocabulary import Actor, State, Trigger

ACTOR: Final = Actor.AGENT
#: How often old health_check rows are pruned (seconds).
PRUNE_EVERY: Final = 3600.0
#: Polls under way at once, across targets. Without a bound, a thousand targets
#: due together queue thousands of requests in httpx's connection pool, whose
#: bookkeeping is quadratic in the queue: the event loop then does nothing else
#: and the leader lease lapses. Below the pool's 100 connections, none queue.
MAX_CONCURRENT_POLLS: Final = 32


class MonitorStore(Protocol):
    """What the monitor needs of a store: open incidents by fingerprint, health-check rows."""

    async def find_open(self, fingerprint: str) -> Incident | None: ...

    async def get_incident(self, incident_id: IncidentId) -> Incident: ...

    async def opening_candidates(self, fingerprint: str
                                 ) -> tuple[Incident | None, Incident | None]: ...

    async def prune_health_checks(self, older_than: datetime, *, limit: int) -> int: ...

    async def record_health_check(self, *checks: HealthRow) -> None: ...


@dataclass(frozen=True)
class Reading:
    """The outcome of one poll of one target; `seq` counts the target's polls from 1."""

    target: str
    seq: int
    at: datetime
    observation: Observation
    status: str

    @property
    def snapshot(self) -> HealthSnapshot | None:
        """The reading problems are judged on (the target's own, else the local fallback)."""
        return self.observation.reading


@dataclass(frozen=True)
class ProblemEvent:
    """A phase change of a problem, with the incident it opened, reopened or recovered."""

    finding: Finding
    at: datetime
    incident: Incident | None = None


ProblemListener = Callable[[ProblemEvent], Awaitable[None]]


class Monitor:
    """Polls targets, records health checks, detects problems and opens/recovers incidents."""

    def __init__(
        self,
        *,
        targets: Sequence[TargetSettings],
        agent: AgentSettings,
        probes: Mapping[str, TargetProbes],
        engine: IncidentEngine,
        store: MonitorStore,
        clock: Clock,
        random: Callable[[], float] = _random.random,
        on_problem: ProblemListener | None = None,
        on_checks: Callable[[Sequence[HealthRow]], None] | None = None,
        silences: SilenceSource = NO_SILENCES,
    ) -> None:
        self._targets = {t.name: t for t in targets}
        if len(self._targets) != len(targets):
            raise ValueError("target names must be unique")
        missing = set(self._targets) - set(probes)
        if missing:
            raise ValueError(f"no probes for target(s) {sorted(missing)}")
        if agent.poll_interval <= 0 or agent.fast_poll_interval <= 0:
            raise ValueError("poll intervals must be positive")
        if not 0.0 <= agent.poll_jitter < 1.0:
            raise ValueError("poll_jitter must be in [0, 1)")
        try:
            logger.level(agent.health_log_level)
        except ValueError:
            raise ValueError(f"health_log_level {agent.health_log_level!r} is not a log level"
                             ) from None
        for t in targets:
            if t.max_requests_per_minute < 1:
                raise ValueError(f"target {t.name!r}: max_requests_per_minute must be >= 1")
        self._agent = agent
        self._probes = dict(probes)
        self._engine = engine
        self._store = store
        self._clock = clock
        self._random = random
        self._on_problem = on_problem
        #: called with each poll's health-check rows, stored or not (e.g. metrics)
        self._on_checks = on_checks
        self._silences = silences
        #: the rows of many polls, written together while `run` runs
        self.health_rows = HealthRowBuffer(store, clock=clock)
        self.detector = Detector(self._targets)
        self._latest: dict[str, Reading] = {}
        self._published = {name: anyio.Event() for name in self._targets}
        self._polling: set[str] = set()
        self._slots = anyio.CapacityLimiter(MAX_CONCURRENT_POLLS)
        self._acting = anyio.CapacityLimiter(MAX_CONCURRENT_POLLS)
        #: target -> polls answered 429 in a row, and the wait the last one asked for
        self._throttled: dict[str, int] = {}
        self._retry_after: dict[str, float] = {}
        # Fixed by the settings, so worked out once: a status view may ask every second.
        self._cadence = {name: cadences(agent, t, self._probes[name].requests_per_poll)
                         for name, t in self._targets.items()}
        self._cadence_said = False

    # --- what others read --------------------------------------------------------

    def latest(self, target: str) -> Reading | None:
        """The last completed poll of `target`, if any."""
        return self._latest.get(target)

    async def wait_for_reading(self, target: str, *, after_seq: int = 0) -> Reading:
        """Wait until a poll of `target` newer than `after_seq` has completed; return it."""
        if target not in self._targets:
            raise KeyError(f"unknown target {target!r}")
        while True:
            reading = self._latest.get(target)
            if reading is not None and reading.seq > after_seq:
                return reading
            await self._published[target].wait()

    @property
    def targets(self) -> tuple[str, ...]:
        """The names of the monitored targets."""
        return tuple(self._targets)

    @property
    def polling(self) -> frozenset[str]:
        """The targets whose poll is under way right now (a stuck one stays here)."""
        return frozenset(self._polling)

    def min_interval(self, target: str) -> float:
        """The shortest gap between polls the target's rate limit allows (seconds)."""
        return _min_interval(self._targets[target], self._probes[target].requests_per_poll)

    def cadence(self, target: str) -> tuple[Cadence, Cadence]:
        """The configured intervals of `target` and the effective ones its rate limit allows.

        Effective is before jitter (which only shortens, down to the rate
        limit) and before any `Retry-After` the target asks for.
        """
        return self._cadence[target]

    def throttled(self, target: str) -> tuple[int, float | None]:
        """Polls of `target` answered 429 in a row, and the `Retry-After` of the last one."""
        return self._throttled.get(target, 0), self._retry_after.get(target)

    def next_interval(self, target: str) -> float:
        """Seconds from this poll's start to the next: fast while anything is suspect or open.

        Never sooner than the target's rate limit allows, nor than the
        `Retry-After` its last answer asked for.
        """
        base = (self._agent.fast_poll_interval if self.detector.active(target)
                else self._agent.poll_interval)
        # Jitter only ever shortens, so detection never takes longer than the intervals say.
        jittered = base * (1.0 - self._agent.poll_jitter * self._random())
        return max(jittered, self.min_interval(target), self._retry_after.get(target, 0.0))

    # --- running -----------------------------------------------------------------

    async def run(self) -> None:
        """Poll every target until cancelled."""
        try:
            await self.resume()
        except Exception as exc:
            # Monitoring starts anyway; such incidents are then left to their deadlines.
            logger.warning("❌ Failed to read open incidents at start: {}", type(exc).__name__)
        if not self._cadence_said:
            # Once per monitor: `run` starts again with every leadership term.
            self._cadence_said = True
            self._say_stretched_cadences()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.health_rows.run, name="monitor:health-rows")
            for name in self._targets:
                tg.start_soon(self._loop, name, name=f"monitor:{name}")
            if self._agent.health_retention > 0:
                tg.start_soon(self._prune_loop, name="monitor:prune")

    async def resume(self) -> None:
        """Mark problems that already have an open incident as open, e.g. after a restart.

        Without this a restarted agent could not clear them: the detector
        would not know they were open.
        """
        for name in self._targets:
            deps = self._probes[name].dependencies
            for kind in (*STATIC_KINDS, *(service_down(d.name) for d in deps)):
                if self.detector.phase(name, kind) is not Phase.OK:
                    continue
                if await self._store.find_open(f"{name}:{kind}") is not None:
                    self.detector.set_phase(name, kind, Phase.OPEN)

    def _say_stretched_cadences(self) -> None:
        # Without this line a fast interval stretched from 10 s to 40 s would
        # only show as detection taking longer than the settings promise.
        for name, (configured, effective) in self._cadence.items():
            if effective == configured:
                continue
            settings = self._targets[name]
            logger.bind(target=name).warning(
                "⏱️ {} is polled every {:g} s (fast {:g} s), not the configured {:g} s "
                "(fast {:g} s): max_requests_per_minute = {} allows one poll of {} "
                "request(s) every {:g} s", name, effective.normal, effective.fast,
                configured.normal, configured.fast, settings.max_requests_per_minute,
                self._probes[name].requests_per_poll, self.min_interval(name))

    async def _loop(self, name: str) -> None:
        # A random start spreads many targets over the first interval.
        await self._clock.sleep(self._random() * self._agent.poll_jitter *
                                self._agent.poll_interval)
        while True:
            started = self._clock.now()
            self._polling.add(name)
            try:
                await self.poll(name)
            except Exception as exc:
                # One bad poll must not end monitoring of this target.
                log_failure("❌ Failed to poll {}: unexpected error", name, error=exc,
                            log=logger.bind(target=name))
            finally:
                self._polling.discard(name)
            elapsed = (self._clock.now() - started).total_seconds()
            await self._clock.sleep(max(0.0, self.next_interval(name) - elapsed))

    async def _prune_loop(self) -> None:
        while True:
            await self.prune()
            await self._clock.sleep(PRUNE_EVERY)

    async def prune(self) -> int:
        """Delete health-check rows older than `health_retention` (see `prune_older`)."""
        cutoff = self._clock.now() - timedelta(seconds=self._agent.health_retention)
        return await prune_older(self._store, cutoff, clock=self._clock)

    async def poll(self, name: str) -> Reading:
        """One poll of `name`: probe, record, detect, act. Returns the reading."""
        settings = self._targets[name]
        probes = self._probes[name]
        log = logger.bind(target=name)
        at = self._clock.now()
        # A slot is held for the requests only: recording and acting on what they found
        # (opening an incident, its store calls) must not keep other targets' polls
        # waiting, or 1,000 breaches at once delay each other's confirming polls.
        async with self._slots:
            health, statuses = await self._probe_all(probes)
            fallback: HealthSnapshot | None = None
            self._note_throttling(name, health)
            if isinstance(health, ProbeFailure) and health.cause != THROTTLED:
                log.warning("❌ Failed to probe {}: {}", name, health.reason)
                if probes.fallback is not None:
                    local = await probes.fallback.probe()
                    if isinstance(local, HealthSnapshot):
                        fallback = local
                    else:
                        log.warning("❌ Failed to read the local host for {}: {}", name,
                                    local.reason)
        observation = Observation(health, fallback, statuses)
        status = status_label(observation.reading, settings.thresholds)
        snap = observation.reading
        if snap is not None:
            log.log(self._agent.health_log_level,
                    "📊 Health check: Memory {:.1f}%, Disk {:.1f}%, Status: {} ({}, {})",
                    snap.memory_pct, snap.disk_pct, status, name, snap.source)
        await self._record(name, at, observation)
        for finding in self.detector.observe(name, observation):
            # Bounded apart from the polls: a thousand openings at once would otherwise
            # queue ahead of the steps that fix what is already open.
            async with self._acting:
                await self._act(finding, at)
        previous = self._latest.get(name)
        reading = Reading(name, 1 if previous is None else previous.seq + 1, at, observation,
                          status)
        self._latest[name] = reading
        self._published[name].set()
        self._published[name] = anyio.Event()
        return reading

    # --- the parts of a poll -----------------------------------------------------

    def _note_throttling(self, name: str, health: ProbeResult) -> None:
        log = logger.bind(target=name)
        before = self._throttled.get(name, 0)
        if isinstance(health, ProbeFailure) and health.cause == THROTTLED:
            self._throttled[name] = before + 1
            if health.retry_after is not None:
                self._retry_after[name] = health.retry_after
            else:
                self._retry_after.pop(name, None)
            if before == 0:
                # Once per stretch: a busy service answering 429 for an hour must
                # not write an hour of warnings, and is no outage.
                log.warning("⏳ {} is throttling the agent ({}): polls wait for it; "
                            "not counted as down, nothing is run", name, health.reason)
            return
        self._retry_after.pop(name, None)
        if before:
            del self._throttled[name]
            log.info("⏳ {} stopped throttling the agent after {} poll(s) answered 429",
                     name, before)

    async def _probe_all(self, probes: TargetProbes
                         ) -> tuple[ProbeResult, tuple[DependencyStatus, ...]]:
        if not probes.dependencies:
            # The common case needs no task group: its task and cancel scope cost about
            # 27 us of CPU per poll, out of a healthy poll's 0.4-0.8 ms.
            return await probes.health.probe(), ()
        health: list[ProbeResult] = []
        statuses: list[DependencyStatus | None] = [None] * len(probes.dependencies)

        async def read_health() -> None:
            health.append(await probes.health.probe())

        async def check(index: int, dep: DependencyProbe) -> None:
            statuses[index] = await dep.check()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_health)
            for index, dep in enumerate(probes.dependencies):
                tg.start_soon(check, index, dep)
        return health[0], tuple(s for s in statuses if s is not None)

    async def _record(self, name: str, at: datetime, observation: Observation) -> None:
        rows = [_row(name, at, observation.health)]
        if observation.fallback is not None:
            rows.append(_row(name, at, observation.fallback))
        rows += [
            HealthRow(name, at, f"dependency:{s.name}", s.state == "up", s.latency_ms,
                      error="" if s.state == "up" else f"{s.state}: {s.reason}")
            for s in observation.dependencies
        ]
        if self._on_checks is not None:
            self._on_checks(rows)
        self.health_rows.add(rows)
        if not self.health_rows.running:
            # A poll outside `run` (a test, a one-off check) writes its own rows at once.
            await self.health_rows.flush()

    async def _act(self, finding: Finding, at: datetime) -> None:
        problem = finding.problem
        log = logger.bind(target=problem.target)
        incident: Incident | None = None
        # What to do about the change, and the phase to step back to if it fails,
        # so the next sample confirms (or clears) again and the step is retried.
        steps = {Change.CONFIRMED: (self._open_or_reopen, Phase.SUSPECT, "open an incident for"),
                 Change.CLEARED: (self._recover, Phase.OPEN, "recover")}
        if finding.change in steps:
            work, retry_phase, what = steps[finding.change]
            try:
                incident = await work(finding)
            except Exception as exc:
                self.detector.set_phase(problem.target, problem.kind, retry_phase)
                log.error("❌ Failed to {} {}: {}: {}", what, problem.fingerprint,
                          type(exc).__name__, str(exc)[:200])
                return
            if (finding.change is Change.CLEARED and incident is not None
                    and incident.state != State.RESOLVED):
                # Still open: the driver judges it (possibly from a sample taken before
                # this one), or it moved under our write. Stay open, so the next clear
                # sample recovers it once it is detected or escalated again.
                self.detector.set_phase(problem.target, problem.kind, Phase.OPEN)
        else:
            log.info("{} {}: {}", problem.fingerprint, finding.change.value, problem.reason)
        if self._on_problem is not None:
            try:
                await self._on_problem(ProblemEvent(finding, at, incident))
            except Exception as exc:
                log_failure("❌ Failed to deliver a problem event for {}", problem.fingerprint,
                            error=exc, log=log)

    async def _open_or_reopen(self, finding: Finding) -> Incident:
        problem = finding.problem
        details = dict(problem.details)
        silence = await self._silences.silence_for(problem.target, problem.kind,
                                                   self._clock.now())
        if silence is not None:  # the opening notice says it, once
            details["silenced"] = silence.describe()
        existing, last = await self._store.opening_candidates(problem.fingerprint)
        if existing is not None:
            return existing
        if last is not None:
            try:
                return await self._engine.fire(
                    last.incident_id, Trigger.REOPEN, actor=ACTOR,
                    reason=f"came back: {problem.reason}", details=details)
            except (GuardRejected, ConcurrentUpdate):
                # Outside the reopen window (or moved meanwhile): a new incident,
                # or the one another replica opened -- `open` returns that.
                pass
        opened = await self._engine.open(
            target=problem.target, kind=problem.kind, severity=problem.severity,
            reason=problem.reason, actor=ACTOR, summary=problem.reason, details=details)
        return opened.incident

    async def _recover(self, finding: Finding) -> Incident | None:
        problem = finding.problem
        incident = await self._store.find_open(problem.fingerprint)
        if incident is None or incident.state not in (State.DETECTED, State.ESCALATED):
            # Nothing open, or the remediation driver owns it and verifies it itself.
            return incident
        try:
            return await self._engine.fire(incident.incident_id, Trigger.RECOVERED, actor=ACTOR,
                                           reason=problem.reason, details=dict(problem.details))
        except (InvalidTransition, ConcurrentUpdate):
            # It moved meanwhile: a driver picked it up (it verifies it itself), or held
            # it (escalated: the caller keeps the problem open, the next clear sample
            # recovers it). Either way this sample's recovery is not lost.
            return await self._store.get_incident(incident.incident_id)


def _row(name: str, at: datetime, result: ProbeResult) -> HealthRow:
    if isinstance(result, HealthSnapshot):
        return HealthRow(name, at, result.source, True, result.latency_ms, result.memory_pct,
                         result.disk_pct, result.cpu_pct, "; ".join(result.partial_failures))
    return HealthRow(name, at, result.source, False, result.latency_ms, error=result.reason,
                     cause=result.cause)
