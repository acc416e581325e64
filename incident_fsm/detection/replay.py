"""Replay recorded health checks through the detector, under settings of one's choosing.

The monitor writes one `health_check` row per probe of each poll, all at the
poll's time: the target's own probe first, then the local fallback when it
was read, then one row per dependency (`dependency:<name>`). `polls` groups
them back into the `Observation` the detector saw. `replay` feeds them to a
fresh `Detector` built from the candidate settings, on a virtual clock: a
recorded poll is taken when the candidate's interval (fast while anything
on the target is suspect or open, less at most its jitter, never under its
rate limit: `targets.cadences`) has passed since the last one taken, so a
candidate that would poll slower skips the record's fast polls. Nothing is
fetched and nothing is written.

Where the record cannot answer, the replay says so rather than guess:

- a *gap*: no poll for longer than `GAP_FACTOR` times the candidate's normal
  interval (the agent or its database was away, rows were pruned, the window
  starts before the record). Nothing is confirmed across a gap: a suspect
  kind is forgotten, and an incident open across one is marked;
- *late* polls: the candidate was polling faster than the record was taken,
  so its confirmations come at the next recorded poll and their times are
  upper bounds;
- failures recorded without their cause (rows written before the cause was
  kept) are replayed as `down`, and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from incident_fsm.detection.dependencies import DependencyStatus
from incident_fsm.detection.detector import (
    METRIC_KINDS,
    Change,
    Detector,
    Observation,
    Phase,
)
from incident_fsm.detection.payload import DOWN, HealthSnapshot, ProbeFailure, ProbeResult
from incident_fsm.detection.targets import Cadence
from incident_fsm.persistence.recorded import CheckRow
from incident_fsm.settings import TargetSettings

#: A pause longer than this many normal intervals is a gap in the record.
GAP_FACTOR: Final = 3.0
#: A poll later than this many of the candidate's intervals is a late one.
LATE_FACTOR: Final = 1.5
DEPENDENCY_PREFIX: Final = "dependency:"
_KIND_OF_METRIC = {kind: metric for metric, kind in METRIC_KINDS.items()}


@dataclass(frozen=True, slots=True)
class RecordedPoll:
    """One poll as recorded: when, and what the detector saw."""

    at: datetime
    observation: Observation
    #: a failure of the target's own probe recorded without its cause
    cause_unknown: bool = False


@dataclass
class WouldBe:
    """An incident the candidate settings would have opened (`end` None: open at the end)."""

    target: str
    kind: str
    severity: str
    reason: str
    start: datetime
    end: datetime | None = None
    #: metric kinds: the highest reading while open (percent)
    peak: float | None = None
    polls: int = 1
    #: open across a gap in the record: its end (or its being one incident) is not known
    across_gap: bool = False


@dataclass(frozen=True)
class Gap:
    """A stretch of a target with no recorded poll."""

    target: str
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass
class Replayed:
    """What a replay of one target found, and how far the record could answer."""

    target: str
    incidents: list[WouldBe] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    recorded: int = 0
    taken: int = 0
    late: int = 0
    cause_unknown: int = 0


def polls(rows: Iterable[CheckRow]) -> Iterator[RecordedPoll]:
    """Group one target's rows (in written order) into its polls."""
    group: list[CheckRow] = []
    for row in rows:
        if group and row.at != group[0].at:
            yield _poll(group)
            group = []
        group.append(row)
    if group:
        yield _poll(group)


def _poll(rows: Sequence[CheckRow]) -> RecordedPoll:
    first = rows[0]
    if len(rows) == 1 and not first.source.startswith(DEPENDENCY_PREFIX):
        # Most polls: the target's own probe and nothing else.
        health, unknown = _result(first)
        return RecordedPoll(first.at, Observation(health), unknown)
    probes = [r for r in rows if not r.source.startswith(DEPENDENCY_PREFIX)]
    dependencies = tuple(_dependency(r) for r in rows if r.source.startswith(DEPENDENCY_PREFIX))
    if not probes:  # only dependency rows: the health row did not fit the window
        return RecordedPoll(rows[0].at, Observation(
            ProbeFailure("", "no health row recorded", cause=DOWN), None, dependencies), True)
    health, unknown = _result(probes[0])
    fallback = None
    if len(probes) > 1:
        local, _ = _result(probes[1])
        fallback = local if isinstance(local, HealthSnapshot) else None
    return RecordedPoll(rows[0].at, Observation(health, fallback, dependencies), unknown)


def _result(row: CheckRow) -> tuple[ProbeResult, bool]:
    if row.ok and None not in (row.memory_pct, row.disk_pct, row.cpu_pct):
        return HealthSnapshot(source=row.source, memory_pct=float(row.memory_pct or 0.0),
                              disk_pct=float(row.disk_pct or 0.0),
                              cpu_pct=float(row.cpu_pct or 0.0),
                              latency_ms=row.latency_ms), False
    return ProbeFailure(row.source, row.error, row.latency_ms, cause=row.cause or DOWN), (
        not row.ok and row.cause is None)


def _dependency(row: CheckRow) -> DependencyStatus:
    name = row.source[len(DEPENDENCY_PREFIX):]
    if row.ok:
        return DependencyStatus(name, "up", row.error)
    state, _, reason = row.error.partition(": ")
    return DependencyStatus(name, "unknown" if state == "unknown" else "down", reason)


def replay(target: TargetSettings, recorded: Iterable[RecordedPoll], *, cadence: Cadence,
           jitter: float, since: datetime, until: datetime,
           report_from: datetime | None = None) -> Replayed:
    """Feed `target`'s recorded polls in [since, until) to a fresh detector.

    `cadence` is the candidate's effective one. Incidents that ended before
    `report_from` (a lead-in that lets problems already open at the start
    be seen) are left out, and so are gaps that end before it.
    """
    name = target.name
    detector = Detector({name: target})
    out = Replayed(name)
    gap_limit = timedelta(seconds=GAP_FACTOR * cadence.normal)
    open_now: dict[str, WouldBe] = {}
    last_seen = since
    last_taken: datetime | None = None
    for poll in recorded:
        out.recorded += 1
        if poll.at - last_seen > gap_limit:
            out.gaps.append(Gap(name, last_seen, poll.at))
            last_taken = None
            for kind, phase in detector.phases(name).items():
                if phase is Phase.SUSPECT:
                    detector.set_phase(name, kind, Phase.OK)
            for incident in open_now.values():
                incident.across_gap = True
        last_seen = poll.at
        interval = cadence.fast if detector.active(name) else cadence.normal
        if last_taken is not None:
            since_taken = (poll.at - last_taken).total_seconds()
            # The monitor never polls sooner than the interval less its jitter;
            # the slack absorbs clock noise in the recorded times.
            if since_taken < interval * (1.0 - jitter) - max(0.05, 0.02 * interval):
                continue
            if since_taken > LATE_FACTOR * interval:
                out.late += 1
        last_taken = poll.at
        out.taken += 1
        out.cause_unknown += poll.cause_unknown
        for incident in open_now.values():
            incident.polls += 1
            _note_peak(incident, poll.observation)
        for finding in detector.observe(name, poll.observation):
            problem = finding.problem
            if finding.change is Change.CONFIRMED and problem.kind not in open_now:
                incident = WouldBe(name, problem.kind, problem.severity, problem.reason,
                                   poll.at)
                _note_peak(incident, poll.observation)
                open_now[problem.kind] = incident
                out.incidents.append(incident)
            elif finding.change is Change.CLEARED and problem.kind in open_now:
                open_now.pop(problem.kind).end = poll.at
    if until - last_seen > gap_limit:
        out.gaps.append(Gap(name, last_seen, until))
    if report_from is not None:
        out.incidents = [i for i in out.incidents if i.end is None or i.end >= report_from]
        # Only the part of a gap inside the window is missing from it.
        clipped = (Gap(name, max(g.start, report_from), g.end) for g in out.gaps)
        out.gaps = [g for g in clipped if g.end - g.start > gap_limit]
    return out


def _note_peak(incident: WouldBe, observation: Observation) -> None:
    metric = _KIND_OF_METRIC.get(incident.kind)
    reading = observation.reading
    if metric is None or reading is None:
        return
    value = reading.value(metric)
    if incident.peak is None or value > incident.peak:
        incident.peak = value

