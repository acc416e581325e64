"""Backtest: what candidate settings would have opened over a recorded window, against what did.

`backtest` reads each target's recorded health checks of the window (plus a
lead-in of `LEAD_IN`, so a problem already open at the start is seen),
replays them through the detector under the candidate settings
(`detection.replay`), and sets the incidents it would have opened beside
the incidents the agent did open (their episodes: a reopened incident has
one per opening). A would-be incident and a live one are the same when
they share target and kind and their times overlap; the rest are *added*
(the candidate opens them, the live settings did not) or *removed*.

It only reads: nothing is written, nothing is fetched, no action is built
to run. Where the record cannot answer (gaps, pruned rows, failures kept
without their cause, a record slower than the candidate polls) the report
says so in `limits`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import anyio

from incident_fsm.detection.replay import GAP_FACTOR, Gap, Replayed, WouldBe, polls, replay
from incident_fsm.detection.targets import cadences, default_probes
from incident_fsm.lazy import httpx
from incident_fsm.persistence.recorded import CheckRow, LiveEpisode
from incident_fsm.remediation.actions.catalog import offline_catalog, policy_tiers
from incident_fsm.reports.format import clock, reading_pct, table
from incident_fsm.settings import Settings

#: Replayed before the window starts, so problems open at its start are seen.
LEAD_IN: Final = timedelta(hours=1)

ADDED: Final = "added"
REMOVED: Final = "removed"
UNCHANGED: Final = "unchanged"


class RecordStore(Protocol):
    """What a backtest reads (`persistence.recorded`)."""

    async def recorded_targets(self, *, since: datetime, until: datetime) -> dict[str, int]: ...

    async def recorded_checks(self, target: str, *, since: datetime,
                              until: datetime) -> Sequence[CheckRow]: ...

    async def oldest_check(self) -> datetime | None: ...

    async def episodes(self, *, since: datetime, until: datetime) -> list[LiveEpisode]: ...


@dataclass(frozen=True)
class Compared:
    """One line of the comparison: a would-be incident, a live one, or both."""

    change: str
    target: str
    kind: str
    would: WouldBe | None
    live: LiveEpisode | None
    #: the first action the candidate's policy lists, with its tier
    first_action: str | None = None

    @property
    def start(self) -> datetime:
        if self.would is not None:
            return self.would.start
        assert self.live is not None
        return self.live.start


@dataclass
class Backtest:
    """The whole answer: the comparison, the gaps, and what the record could not say."""

    since: datetime
    until: datetime
    candidate: str
    targets: list[str]
    rows: list[Compared] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    recorded: int = 0
    taken: int = 0
    seconds: float = 0.0

    def count(self, change: str) -> int:
        return sum(1 for r in self.rows if r.change == change)


async def backtest(store: RecordStore, settings: Settings, *, since: datetime,
                   until: datetime, candidate: str, target: str | None = None,
                   now: datetime | None = None) -> Backtest:
    """Replay [since, until) under `settings` and compare with the incidents recorded."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    targets = [t for t in settings.targets if target is None or t.name == target]
    report = Backtest(since, until, candidate, [t.name for t in targets])
    lead_from = since - LEAD_IN
    recorded = await store.recorded_targets(since=lead_from, until=until)
    found: list[Replayed] = []
    # The probes are built only to count the requests a poll sends (the rate
    # limit's floor under the cadence); none of them is sent.
    async with httpx.AsyncClient() as http:
        per_poll = {t.name: default_probes(t, client=http).requests_per_poll for t in targets}
    for settings_of in targets:
        rows = await store.recorded_checks(settings_of.name, since=lead_from, until=until)
        _, effective = cadences(settings.agent, settings_of, per_poll[settings_of.name])
        # A target's replay is a tenth of a second of pure computation: off the loop.
        found.append(await anyio.to_thread.run_sync(functools.partial(
            replay, settings_of, polls(rows), cadence=effective,
            jitter=settings.agent.poll_jitter, since=lead_from, until=until,
            report_from=since)))
        del rows
    live = [e for e in await store.episodes(since=since, until=until)
            if target is None or e.target == target]
    async with offline_catalog(settings) as catalog:
        def first_action(target_name: str, kind: str) -> str:
            tiers = policy_tiers(catalog, settings, target=target_name, kind=kind)
            if not tiers:
                return "none: a person decides"
            name, tier = next(iter(tiers.items()))
            dry = "" if settings.agent.auto_remediation else ", dry run"
            return f"{name} ({tier}{dry})"
        would = [i for r in found for i in r.incidents]
        report.rows = compare(would, live, until=until, first_action=first_action)
    for r in found:
        report.recorded += r.recorded
        report.taken += r.taken
        report.gaps += r.gaps
    report.limits = _limits(settings, report, found, recorded,
                            await store.oldest_check(), target=target, now=now)
    report.seconds = time.perf_counter() - started
    return report


def compare(would: Sequence[WouldBe], live: Sequence[LiveEpisode], *, until: datetime,
            first_action: Any = None) -> list[Compared]:
    """Pair would-be and live incidents of one fingerprint whose times overlap, in time order."""
    unmatched = sorted(live, key=lambda e: (e.start, e.incident_id))
    rows: list[Compared] = []
    for incident in sorted(would, key=lambda i: (i.start, i.target, i.kind)):
        end = incident.end or until
        match = next((e for e in unmatched
                      if (e.target, e.kind) == (incident.target, incident.kind)
                      and e.start <= end and incident.start <= (e.end or until)), None)
        action = None if first_action is None else first_action(incident.target, incident.kind)
        if match is not None:
            unmatched.remove(match)
        rows.append(Compared(ADDED if match is None else UNCHANGED, incident.target,
                             incident.kind, incident, match, action))
    rows += [Compared(REMOVED, e.target, e.kind, None, e) for e in unmatched]
    return sorted(rows, key=lambda r: (r.start, r.target, r.kind))


def _limits(settings: Settings, report: Backtest, found: Sequence[Replayed],
            recorded: dict[str, int], oldest: datetime | None, *, target: str | None,
            now: datetime) -> list[str]:
    limits: list[str] = []
    retention = settings.agent.health_retention
    pruned_before = now - timedelta(seconds=retention)
    if retention > 0 and report.since < pruned_before:
        limits.append(f"readings older than {retention / 86400:g} days are pruned "
                      f"(health_retention): before {clock(pruned_before)} UTC "
                      "the record is gone")
    if oldest is None:
        limits.append("no health checks are recorded at all")
    elif oldest - report.since > timedelta(seconds=GAP_FACTOR * settings.agent.poll_interval):
        limits.append(f"the oldest reading kept is from {clock(oldest)} UTC: "
                      "before it nothing can be said")
    for r in found:
        if r.late:
            limits.append(f"{r.target}: {r.late} poll(s) were recorded later than the candidate "
                          "would have polled: its detection times there are upper bounds")
        if r.cause_unknown:
            limits.append(f"{r.target}: {r.cause_unknown} failed poll(s) were recorded without "
                          "their cause (before causes were kept): replayed as down")
    known = set(report.targets)
    for name in sorted(recorded):
        if name not in known and target is None:
            limits.append(f"{name}: {recorded[name]} reading(s) not replayed: not a target of "
                          "the candidate configuration")
    return limits


# --- rendering -------------------------------------------------------------------------------


def _span(start: datetime, end: datetime | None) -> tuple[str, str]:
    return clock(start), "open" if end is None else clock(end)


def backtest_text(report: Backtest) -> str:
    """The comparison for a terminal: one line per incident, then the gaps and limits."""
    lines = [
        f"backtest {clock(report.since)} to {clock(report.until)} UTC under {report.candidate}: "
        f"{len(report.targets)} target(s), {report.recorded:,} recorded poll(s), "
        f"{report.taken:,} taken at the candidate's cadence ({report.seconds:.1f} s)", ""]
    if report.rows:
        cells = []
        for r in report.rows:
            start, end = _span(r.would.start, r.would.end) if r.would else ("-", "-")
            peak = "-" if r.would is None else reading_pct(r.would.peak)
            live = "-" if r.live is None else (
                f"#{r.live.incident_id} {clock(r.live.start)} to "
                f"{'open' if r.live.end is None else clock(r.live.end)}"
                + ("" if r.live.label is None else f", labelled {r.live.label}"))
            gap = " (across a gap)" if r.would is not None and r.would.across_gap else ""
            cells.append([r.change, r.target, r.kind, start, end + gap, peak,
                          r.first_action or "-", live])
        lines.append(table(["CHANGE", "TARGET", "KIND", "FROM (UTC)", "TO", "PEAK",
                            "FIRST ACTION", "LIVE INCIDENT"], cells))
    else:
        lines.append("no incident would have opened, and none did")
    would = report.count(ADDED) + report.count(UNCHANGED)
    lived = report.count(REMOVED) + report.count(UNCHANGED)
    lines += ["", f"would open {would} ({report.count(ADDED)} added); opened live {lived} "
                  f"({report.count(REMOVED)} removed); {report.count(UNCHANGED)} unchanged"]
    judged = {change: [r.live.label for r in report.rows
                       if r.change == change and r.live is not None and r.live.label]
              for change in (REMOVED, UNCHANGED)}
    for change, labels in judged.items():
        if labels:
            # What the labels say of the change: removing noise is the point of tuning.
            lines.append(f"of the {change}: {labels.count('real')} labelled real, "
                         f"{labels.count('noise')} labelled noise")
    if report.gaps or report.limits:
        lines += ["", "where the record cannot answer:"]
        lines += [f"- gap: {g.target} has no reading from {clock(g.start)} to {clock(g.end)} UTC "
                  f"({_duration(g.seconds)}): nothing is confirmed across it"
                  for g in report.gaps]
        lines += [f"- {text}" for text in report.limits]
    return "\n".join(lines)


def backtest_json(report: Backtest) -> dict[str, Any]:
    """The report for scripts: every time ISO 8601 UTC."""
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    def row(r: Compared) -> dict[str, Any]:
        w = r.would
        return {
            "change": r.change, "target": r.target, "kind": r.kind,
            "would": None if w is None else {
                "from": iso(w.start), "to": iso(w.end), "severity": w.severity,
                "peak": w.peak, "polls": w.polls, "reason": w.reason,
                "across_gap": w.across_gap, "first_action": r.first_action},
            "live": None if r.live is None else {
                "incident_id": r.live.incident_id, "from": iso(r.live.start),
                "to": iso(r.live.end), "label": r.live.label},
        }
    return {
        "since": iso(report.since), "until": iso(report.until), "candidate": report.candidate,
        "targets": report.targets, "recorded_polls": report.recorded,
        "taken_polls": report.taken, "seconds": round(report.seconds, 3),
        "summary": {c: report.count(c) for c in (ADDED, REMOVED, UNCHANGED)},
        "incidents": [row(r) for r in report.rows],
        "gaps": [{"target": g.target, "from": iso(g.start), "to": iso(g.end),
                  "seconds": g.seconds} for g in report.gaps],
        "limits": report.limits,
    }


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
