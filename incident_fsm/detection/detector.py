"""The detector: from health observations to problems, with hysteresis. Pure: no I/O, no clock.

Each (target, problem kind) has a phase: `ok`, `suspect` or `open`.

- A metric (memory, disk, cpu) above its trigger makes the kind *suspect*; a
  second sample above the trigger *confirms* it (opens). A suspect whose
  value falls under the clear threshold is *dismissed* (a spike: nothing is
  opened); one that stays between clear and trigger stays suspect. An open
  kind is *cleared* only when the value is under the clear threshold, so a
  value oscillating around the trigger neither flaps nor closes.
- Triggers: memory and cpu above `critical`; disk above `cleanup` (severity
  `warning`: cleanup is the remedy) or above `critical` (severity
  `critical`). Comparisons are strict (`>` opens, `<` clears), as the PRD
  says "memory critical > 80 %".
- `health_endpoint_down`: only a probe that got no answer (timeout,
  transport error) or a 5xx counts. The first makes it suspect, the
  target's `failures_before_down`-th in a row confirms it, and the first
  answer of any other kind clears (or dismisses) it: a 429 or a 404 comes
  from a live service. While the endpoint fails, metric kinds follow the
  fallback reading if there is one, and stand still if not.
- `probe_misconfigured`: the service answers, but not with a reading (401,
  403, 404, 405, a body of no known schema, `status: ERROR`): confirmed
  after `failures_before_down` such answers in a row, cleared by the first
  reading. Its incident names the URL and the status; by default no action
  is listed for it, so it goes to humans.
- A 429 (throttled) changes no phase at all: it is neither a reading nor a
  failure of the service.
- `service_down:<name>`: a dependency found `down` twice in a row is
  confirmed; the first `up` clears it; `unknown` changes nothing.

The monitor feeds observations in and acts on the findings that come out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from incident_fsm.detection.dependencies import DependencyStatus
from incident_fsm.detection.payload import DOWN, THROTTLED, HealthSnapshot, ProbeResult
from incident_fsm.settings import (
    CPU_HIGH,
    DISK_HIGH,
    HEALTH_ENDPOINT_DOWN,
    MEMORY_HIGH,
    PROBE_MISCONFIGURED,
    TargetSettings,
    Threshold,
    Thresholds,
    service_down,
)

#: metric -> the problem kind it raises
METRIC_KINDS: Mapping[str, str] = MappingProxyType(
    {"memory": MEMORY_HIGH, "disk": DISK_HIGH, "cpu": CPU_HIGH}
)


class Phase(enum.StrEnum):
    OK = "ok"
    SUSPECT = "suspect"
    OPEN = "open"


class Change(enum.StrEnum):
    SUSPECTED = "suspected"  # first bad sample: poll faster, open nothing yet
    CONFIRMED = "confirmed"  # the problem is real: open (or reopen) the incident
    DISMISSED = "dismissed"  # a suspect went away: it was a spike
    CLEARED = "cleared"  # an open problem is back under its clear threshold


@dataclass(frozen=True)
class Problem:
    """A problem on a target, as the detector sees it at one sample."""

    target: str
    kind: str
    severity: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def fingerprint(self) -> str:
        return f"{self.target}:{self.kind}"


@dataclass(frozen=True)
class Finding:
    """A change of phase of one problem kind on one target."""

    change: Change
    problem: Problem


@dataclass(frozen=True)
class Observation:
    """What one poll of a target saw.

    `health` is the result of the target's own probe (its endpoints);
    `fallback` a reading of the local host taken because `health` failed.
    """

    health: ProbeResult
    fallback: HealthSnapshot | None = None
    dependencies: Sequence[DependencyStatus] = ()

    @property
    def reading(self) -> HealthSnapshot | None:
        """The snapshot metric kinds are judged on: the target's own, else the fallback."""
        return self.health if isinstance(self.health, HealthSnapshot) else self.fallback


@dataclass
class _Track:
    phase: Phase = Phase.OK
    bad_samples: int = 0


@dataclass(frozen=True)
class _Limit:
    """One metric's levels on one target, as the detector compares them."""

    metric: str
    kind: str
    field: str
    threshold: Threshold
    trigger: float
    clear: float

    @classmethod
    def of(cls, metric: str, kind: str, threshold: Threshold) -> _Limit:
        trigger = trigger_level(threshold)
        return cls(metric, kind, f"{metric}_pct", threshold, trigger,
                   min(threshold.clear, trigger))

    def details(self, value: float, reading: HealthSnapshot) -> dict[str, Any]:
        return {"metric": self.metric, "value": value, "trigger": self.trigger,
                "clear": self.clear, "critical": self.threshold.critical,
                "source": reading.source}


class Detector:
    """Hysteresis per (target, kind). Deterministic: same observations, same findings."""

    def __init__(self, targets: Mapping[str, TargetSettings]) -> None:
        for name, target in targets.items():
            if target.failures_before_down < 1:
                raise ValueError(f"target {name!r}: failures_before_down must be at least 1")
        self._targets = dict(targets)
        #: target -> kind -> track; per target, so a poll looks at its own tracks only
        self._tracks: dict[str, dict[str, _Track]] = {name: {} for name in targets}
        # Fixed by the settings; worked out once rather than on every sample.
        self._limits = {name: tuple(_Limit.of(metric, kind, getattr(t.thresholds, metric))
                                    for metric, kind in METRIC_KINDS.items())
                        for name, t in targets.items()}
        #: the targets with anything suspect or open, kept as phases change
        self._active: set[str] = set()

    def phase(self, target: str, kind: str) -> Phase:
        track = self._tracks.get(target, {}).get(kind)
        return Phase.OK if track is None else track.phase

    def phases(self, target: str) -> dict[str, Phase]:
        """Every kind of `target` that is not `ok`."""
        return {k: t.phase for k, t in self._tracks.get(target, {}).items()
                if t.phase is not Phase.OK}

    def active(self, target: str) -> bool:
        """Anything suspect or open on `target` (the monitor then polls fast)."""
        return target in self._active

    def _note_active(self, target: str) -> None:
        if any(t.phase is not Phase.OK for t in self._tracks[target].values()):
            self._active.add(target)
        else:
            self._active.discard(target)

    def set_phase(self, target: str, kind: str, phase: Phase) -> None:
        """Force a phase: seed from open incidents at start, or step back when opening failed."""
        track = self._track(target, kind)
        track.phase = phase
        track.bad_samples = {Phase.OK: 0, Phase.SUSPECT: 1, Phase.OPEN: 2}[phase]
        self._note_active(target)

    def observe(self, target: str, observation: Observation) -> list[Finding]:
        """Feed one poll of `target`; returns the phase changes it caused."""
        settings = self._targets[target]
        health = observation.health
        if (target not in self._active and not observation.dependencies
                and isinstance(health, HealthSnapshot)
                and all(getattr(health, limit.field) < limit.clear
                        for limit in self._limits[target])):
            # Most polls: everything was ok and every reading is under its clear
            # level. Each kind stays ok; no phase changes, so nothing is said.
            return []
        findings: list[Finding] = []
        findings += self._endpoint(target, observation, settings.failures_before_down)
        findings += self._misconfigured(target, observation, settings.failures_before_down)
        reading = observation.reading
        if reading is not None:
            for limit in self._limits[target]:
                findings += self._metric(target, reading, limit)
        for dep in observation.dependencies:
            findings += self._dependency(target, dep)
        if findings:  # a phase changes only with a finding
            self._note_active(target)
        return findings

    # --- per kind ----------------------------------------------------------------

    def _endpoint(self, target: str, observation: Observation, needed: int) -> list[Finding]:
        track = self._track(target, HEALTH_ENDPOINT_DOWN)
        health = observation.health
        if isinstance(health, HealthSnapshot):
            if track.phase is Phase.OK:  # the common case: nothing to say
                track.bad_samples = 0
                return []
            return _good(track, lambda: Problem(
                target, HEALTH_ENDPOINT_DOWN, "info",
                f"health endpoint answers again ({health.source})",
                {"source": health.source, "latency_ms": health.latency_ms}))
        if health.cause != DOWN:
            # The service answered (429, 404, a foreign body): it is alive.
            failure = health
            return _good(track, lambda: Problem(
                target, HEALTH_ENDPOINT_DOWN, "info",
                f"health endpoint answers again ({failure.source}: {failure.reason})",
                {"source": failure.source, "reason": failure.reason, "cause": failure.cause}))
        failures = track.bad_samples + 1
        fallback = observation.fallback
        return _bad(track, lambda: Problem(
            target, HEALTH_ENDPOINT_DOWN, "critical",
            f"health endpoint failed {failures} time(s) in a row: {health.reason}",
            {"source": health.source, "reason": health.reason, "consecutive_failures": failures,
             "fallback": None if fallback is None else fallback.source}),
            needed=needed)

    def _misconfigured(self, target: str, observation: Observation,
                       needed: int) -> list[Finding]:
        track = self._track(target, PROBE_MISCONFIGURED)
        health = observation.health
        if isinstance(health, HealthSnapshot):
            if track.phase is Phase.OK:
                track.bad_samples = 0
                return []
            return _good(track, lambda: Problem(
                target, PROBE_MISCONFIGURED, "info",
                f"health endpoint gives a reading again ({health.source})",
                {"source": health.source}))
        if health.cause in (THROTTLED, DOWN):
            return []  # says nothing about whether the probe is right
        answers = track.bad_samples + 1
        base_url = self._targets[target].base_url
        return _bad(track, lambda: Problem(
            # critical: the agent is blind on this target until a person fixes the probe
            target, PROBE_MISCONFIGURED, "critical",
            f"health probe of {base_url} misconfigured: {answers} answer(s) in a row are no "
            f"health reading ({health.reason}); check the target's base_url and endpoints",
            {"base_url": base_url, "source": health.source, "reason": health.reason,
             "consecutive_answers": answers}), needed=needed)

    def _metric(self, target: str, reading: HealthSnapshot, limit: _Limit) -> list[Finding]:
        track = self._track(target, limit.kind)
        value: float = getattr(reading, limit.field)
        trigger, clear, metric = limit.trigger, limit.clear, limit.metric
        if value < clear:
            if track.phase is Phase.OK:  # the common case: nothing to say
                track.bad_samples = 0
                return []
            return _good(track, lambda: Problem(
                target, limit.kind, "info",
                f"{metric} {value:.1f}% < {clear:g}% clear threshold ({reading.source})",
                limit.details(value, reading)))
        if value > trigger:
            critical = limit.threshold.critical
            severity = "critical" if value > critical else "warning"
            above = critical if value > critical else trigger
            samples = min(track.bad_samples + 1, 2)
            return _bad(track, lambda: Problem(
                target, limit.kind, severity,
                f"{metric} {value:.1f}% > {above:g}% on {samples} "
                f"consecutive sample(s) ({reading.source})",
                {**limit.details(value, reading), "threshold": above}))
        # Between clear and trigger: the hysteresis band. Nothing changes.
        return []

    def _dependency(self, target: str, dep: DependencyStatus) -> list[Finding]:
        kind = service_down(dep.name)
        track = self._track(target, kind)

        def problem(severity: str, reason: str) -> Problem:
            return Problem(target, kind, severity, reason,
                           {"dependency": dep.name, "state": dep.state, "reason": dep.reason})
        if dep.state == "down":
            return _bad(track, lambda: problem("critical", f"{dep.name} is down: {dep.reason}"))
        if dep.state == "up":
            return _good(track, lambda: problem("info", f"{dep.name} is up: {dep.reason}"))
        return []

    def _track(self, target: str, kind: str) -> _Track:
        tracks = self._tracks.get(target)
        if tracks is None:
            raise KeyError(f"unknown target {target!r}")
        track = tracks.get(kind)
        if track is None:
            track = tracks[kind] = _Track()
        return track


# A finding's problem is built only when the phase changes: most samples change
# nothing, and the texts and details cost more than the comparisons.
def _bad(track: _Track, problem: Callable[[], Problem], *, needed: int = 2) -> list[Finding]:
    """A bad sample: the `needed`-th in a row confirms (opens); before that the kind is suspect."""
    track.bad_samples += 1
    if track.phase is not Phase.OPEN and track.bad_samples >= needed:
        track.phase = Phase.OPEN
        return [Finding(Change.CONFIRMED, problem())]
    if track.phase is Phase.OK:
        track.phase = Phase.SUSPECT
        return [Finding(Change.SUSPECTED, problem())]
    return []


def _good(track: _Track, problem: Callable[[], Problem]) -> list[Finding]:
    """A good sample: a suspect is dismissed, an open problem cleared."""
    if track.phase is Phase.OK:
        track.bad_samples = 0
        return []
    change = Change.DISMISSED if track.phase is Phase.SUSPECT else Change.CLEARED
    track.phase, track.bad_samples = Phase.OK, 0
    return [Finding(change, problem())]


def trigger_level(limit: Threshold) -> float:
    """The level above which a metric is a problem: `cleanup` where set (disk), else `critical`."""
    return limit.cleanup if limit.cleanup is not None else limit.critical


def status_label(reading: HealthSnapshot | None, thresholds: Thresholds) -> str:
    """One word for the health-check log line, from the numbers (never the endpoint's status)."""
    if reading is None:
        return "unreachable"
    label = "healthy"
    for metric in METRIC_KINDS:
        limit: Threshold = getattr(thresholds, metric)
        value = reading.value(metric)
        if value > limit.critical:
            return "critical"
        warn = min(x for x in (limit.warning, limit.cleanup, limit.critical) if x is not None)
        if value > warn:
            label = "warning"
    return label
