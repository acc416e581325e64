"""Turning incidents and their history into text for people and JSON for scripts.

Pure formatting: no database access. The CLI calls these; a host app can
use them for its own admin pages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from incident_fsm.models import (
    ActionRun,
    Incident,
    IncidentLabel,
    Notification,
    Silence,
    Timeline,
    Transition,
)
from incident_fsm.persistence.effects import cleared_without_working_action
from incident_fsm.persistence.statistics import OpenIncident, Statistics
from incident_fsm.remediation.ranking import Ranked
from incident_fsm.text import one_line
from incident_fsm.vocabulary import NotificationStatus


def clock(value: datetime | None) -> str:
    """A time for a table (its header says UTC)."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


_when = clock


def reading_pct(value: float | None) -> str:
    """A reading (memory, disk, cpu: 0 to 100) for a table."""
    return "-" if value is None else f"{value:.1f}%"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Aligned columns under a header line, for the terminal."""
    return _table(headers, rows)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(r) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)]).rstrip()


def incidents_table(incidents: Sequence[Incident], *, now: datetime,
                    acknowledged: Mapping[int, str] | None = None) -> str:
    """`incidents`: one line each, with its age, who acknowledged it and its summary."""
    if not incidents:
        return "no incidents match"
    acked = acknowledged or {}
    return _table(
        ["ID", "STATE", "TARGET", "KIND", "SEV", "STRIKES", "OPEN FOR", "OPENED (UTC)",
         "DEADLINE (UTC)", "ACK BY", "SUMMARY"],
        [[str(i.id), i.state, i.target, i.kind, i.severity, str(i.strikes),
          age(((i.resolved_at or now) - i.opened_at).total_seconds()), _when(i.opened_at),
          _when(i.deadline_at), one_line(acked.get(i.id or 0, "-"), 40),
          one_line(i.summary or "-", 60)] for i in incidents],
    )


def age(seconds: float | None) -> str:
    """A duration as a person reads it at a glance: 45s, 12m, 3h05m, 2d04h."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 120:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def silences_table(silences: Sequence[Silence], now: datetime) -> str:
    if not silences:
        return "no silences"
    return _table(
        ["ID", "TARGET", "KIND", "FROM (UTC)", "UNTIL (UTC)", "STATUS", "BY", "REASON"],
        [[str(s.id), s.target, s.kind or "(all)", _when(s.starts_at), _when(s.ends_at),
          silence_status(s, now), s.actor, one_line(s.reason, 60)] for s in silences],
    )


def silence_status(silence: Silence, now: datetime) -> str:
    if silence.expired_at is not None:
        return f"expired by {silence.expired_by or '?'}"
    if silence.ends_at <= now:
        return "ended"
    return "active" if silence.starts_at <= now else "pending"


def timeline_text(timeline: Timeline, silences: Sequence[Silence] = (),
                  labels: Sequence[IncidentLabel] = ()) -> str:
    """`show`: the incident, every step, action and notification, and the silences that
    covered it. Every time is UTC, and says so."""
    i = timeline.incident
    out = [
        f"incident {i.id}  {i.fingerprint}  severity {i.severity}",
        f"state: {i.state}   strikes: {i.strikes}   flaps: {i.flap_count}   "
        f"deadline: {_utc(i.deadline_at)}",
        f"opened: {_utc(i.opened_at)}   resolved: {_utc(i.resolved_at)}",
    ]
    if i.summary:
        out.append(f"summary: {i.summary}")
    held = held_action_of(timeline)
    if held is not None:
        out.append(f"waiting for approval: {held}; approve it: {approve_command(i.id)}")
    if labels:
        out += ["", "labels (UTC; the last is the incident's):"]
        out += [f"  {_when(lb.at)}  {lb.label:<5}  by {one_line(lb.actor, 200)}: "
                f"{one_line(lb.reason)}" for lb in labels]
    if silences:
        out += ["", "silences (UTC):"]
        out += [f"  {s.id:>3}  {_when(s.starts_at)} → {_when(s.expired_at or s.ends_at)}  "
                f"by {one_line(s.actor, 200)}: {one_line(s.reason)}" for s in silences]
    out += ["", "transitions (UTC):"]
    out += [f"  {t.seq:>3}  {_when(t.at)}  {t.trigger:<16} {(t.source or '-'):>11} → "
            f"{t.dest:<11}  by {one_line(t.actor, 200)}: {one_line(t.reason)}"
            for t in timeline.transitions]
    out += ["", "actions:"]
    out += [_action_line(r, timeline) for r in timeline.actions] or ["  none"]
    out += ["", "notifications:"]
    out += [_notification_line(n) for n in timeline.notifications] or ["  none"]
    return "\n".join(out)


def approve_command(incident_id: int | None, where: str = "") -> str:
    """The command that approves an incident's held action (`where`: e.g. its database)."""
    return f"incident-fsm force {incident_id} approve --reason TEXT{where}"


def held_action_of(timeline: Timeline) -> str | None:
    """The action an escalated incident holds for an operator's approval, if any."""
    i = timeline.incident
    entered = [t for t in timeline.transitions if t.dest == i.state and t.source != t.dest]
    if not entered:
        return None
    return OpenIncident(i, entered[-1].at, entered[-1]).held_action


def _utc(value: datetime | None) -> str:
    return "-" if value is None else f"{_when(value)} UTC"


def covering(silences: Sequence[Silence], incident: Incident, now: datetime) -> list[Silence]:
    """The silences that matched `incident` at some time while it was open."""
    until = incident.resolved_at or now
    return [s for s in silences if s.matches(incident.target, incident.kind)
            and s.starts_at <= until and (s.expired_at or s.ends_at) >= incident.opened_at]


def attempt_status(run: ActionRun, *, approved: bool = False) -> str:
    """Where an attempt stands, in a few words (`show`, and `status` in its JSON).

    An attempt nobody has started yet is waiting for an agent, not running:
    an operator's approval is only recorded, a running agent then runs it.
    """
    if run.outcome is None:
        if run.executing_at is not None:
            return "running"
        return "approved, waiting for an agent" if approved else "waiting for an agent"
    if cleared_without_working_action(run):
        # `verified` says the problem cleared after it; the action did not do it.
        return f"{run.outcome}, cleared without a working action"
    verdict = {True: "verified", False: "not verified", None: "not judged"}[run.verified]
    return f"{run.outcome}, {verdict}"


def _approved(run: ActionRun, timeline: Timeline) -> bool:
    """Whether an operator's approval recorded the attempt (it is written with that step)."""
    return any(t.trigger == "approve" and t.at == run.started_at for t in timeline.transitions)


def _action_line(run: ActionRun, timeline: Timeline) -> str:
    evidence = ", ".join(f"{k}={v}" for k, v in run.evidence.items())
    dry = " (dry run)" if run.dry_run else ""
    status = attempt_status(run, approved=_approved(run, timeline))
    return (f"  #{run.attempt}  {_when(run.started_at)}  {run.action}{dry} [{run.tier}]  "
            f"{status}" + (f"  ({evidence})" if evidence else ""))


def _notification_line(n: Notification) -> str:
    status = n.status + (f" at {_when(n.delivered_at)}" if n.delivered_at else "")
    failing = n.last_error and n.status != NotificationStatus.DELIVERED
    error = f"  last error: {n.last_error}" if failing else ""
    return f"  step {n.transition_seq}  {n.channel:<8} {status}, {n.attempts} attempt(s){error}"


def history_table(rows: Sequence[tuple[Transition, Incident]]) -> str:
    if not rows:
        return "no transitions in that range"
    return _table(
        ["AT (UTC)", "INCIDENT", "TARGET", "KIND", "TRIGGER", "FROM", "TO", "ACTOR", "REASON"],
        [[_when(t.at), str(t.incident_id), i.target, i.kind, t.trigger, t.source or "-", t.dest,
          one_line(t.actor, 200), one_line(t.reason)] for t, i in rows],
    )


def history_lines(rows: Sequence[tuple[Transition, Incident]], *, header: bool) -> str:
    """`history --follow`: fixed columns, so lines printed one batch at a time line up."""
    out = [f"{'AT (UTC)':<19}  {'INCIDENT':>8}  {'TARGET':<12}  {'TRIGGER':<15}  "
           f"{'FROM':<11} → {'TO':<11}  ACTOR: REASON"] if header else []
    out += [f"{_when(t.at):<19}  {t.incident_id:>8}  {one_line(i.target, 12):<12}  "
            f"{t.trigger:<15}  {(t.source or '-'):<11} → {t.dest:<11}  "
            f"{one_line(t.actor, 40)}: {one_line(t.reason, 120)}" for t, i in rows]
    return "\n".join(out)


def to_json(value: Any) -> str:
    """JSON for `--json`: rows as objects, datetimes as ISO 8601 UTC."""
    return json.dumps(_plain(value), indent=2, ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Statistics):
        return {
            "states": value.states,
            "kinds": [dict(_plain(vars(k)), escalation_rate=k.escalation_rate)
                      for k in value.kinds],
            "actions": [dict(_plain(vars(a)), success_rate=a.success_rate)
                        for a in value.actions],
            "channels": [dict(_plain(vars(c)), delivery_rate=c.delivery_rate)
                         for c in value.channels],
            "checks": [_plain(vars(c)) for c in value.checks],
        }
    if isinstance(value, Timeline):
        return {
            "incident": _plain(value.incident),
            "transitions": _plain(value.transitions),
            "actions": [dict(_plain(r), status=attempt_status(r, approved=_approved(r, value)))
                        for r in value.actions],
            "notifications": _plain(value.notifications),
        }
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


def statistics_text(stats: Statistics,
                    rankings: Mapping[str, Sequence[Ranked]] | None = None,
                    labels: Mapping[str, Mapping[str, int]] | None = None) -> str:
    states = ", ".join(f"{k} {v}" for k, v in sorted(stats.states.items())) or "none"
    parts = [f"incidents by state: {states}", "", "per problem kind:"]
    parts.append(_table(
        ["KIND", "INCIDENTS", "OPEN", "RESOLVED", "ESCALATED", "P50 TO RESOLVE", "P95"],
        [[k.kind, str(k.incidents), str(k.open), str(k.resolved), _pct(k.escalation_rate),
          _secs(k.resolution_p50_s), _secs(k.resolution_p95_s)] for k in stats.kinds],
    ) if stats.kinds else "  none")
    if labels:
        parts += ["", "operators' labels (each incident's latest: was it a real problem?):"]
        parts.append(_table(
            ["KIND", "REAL", "NOISE", "PRECISION"],
            [[kind, str(n.get("real", 0)), str(n.get("noise", 0)),
              _pct(n.get("real", 0) / (n.get("real", 0) + n.get("noise", 0))
                   if n.get("real", 0) + n.get("noise", 0) else None)]
             for kind, n in sorted(labels.items())]))
    parts += ["", "actions (success = the action worked and verification passed afterwards):"]
    parts.append(_table(
        ["KIND", "ACTION", "ATTEMPTS", "VERIFIED", "FAILED", "SUCCESS", "DRY RUNS"],
        [[a.kind, a.action, str(a.attempts), str(a.verified), str(a.failed),
          _pct(a.success_rate), str(a.dry_runs)] for a in stats.actions],
    ) if stats.actions else "  none")
    if rankings:
        parts += ["", "learned ranking (the order the agent would try them now, best first):"]
        for kind, ranked in sorted(rankings.items()):
            order = ", ".join(f"{r.action} {r.score:.2f} ({r.successes}✓ {r.failures}✗)"
                              for r in ranked) or "no candidates"
            parts.append(f"  {kind}: {order}")
    parts += ["", "notifications:"]
    parts.append(_table(
        ["CHANNEL", "DELIVERED", "PENDING", "DEAD", "SKIPPED", "DELIVERY RATE"],
        [[c.channel, str(c.delivered), str(c.pending), str(c.dead), str(c.skipped),
          _pct(c.delivery_rate)] for c in stats.channels],
    ) if stats.channels else "  none")
    parts += ["", "health checks:"]
    parts.append(_table(
        ["TARGET", "CHECKS", "FAILED", "AVG LATENCY", "MAX LATENCY"],
        [[c.target, str(c.checks), str(c.failed),
          "-" if c.latency_avg_ms is None else f"{c.latency_avg_ms:.0f}ms",
          "-" if c.latency_max_ms is None else f"{c.latency_max_ms:.0f}ms"] for c in stats.checks],
    ) if stats.checks else "  none")
    return "\n".join(parts)
