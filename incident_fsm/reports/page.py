"""The read-only status page: server-rendered HTML, no JavaScript, everything escaped.

Two pages, both built from what the status endpoints already read:

- the overview: the agent (running, role, version), each target's last
  reading and poll, the open incidents (each a link), the approvals waiting
  with the command that approves them, the silences in force;
- one incident: its facts, the state graph with its path drawn on it
  (`graph_svg`), every step, action and notification, and the silences
  that covered it.

Every text that came from outside (health payload errors, reasons, actors,
details) is hostile input: it goes through `html.escape` on its way in, and
the page carries a Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Final

from incident_fsm.models import Silence, Timeline
from incident_fsm.persistence.statistics import OpenIncident
from incident_fsm.reports.figures import AgentStatus
from incident_fsm.reports.format import age, approve_command, attempt_status, covering
from incident_fsm.reports.format import reading_pct as _pct
from incident_fsm.reports.graph_svg import state_svg

#: No scripts, no remote anything: the page is text, tables and one inline SVG.
CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"
_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111;background:#fafafa}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#eee}code{background:#eee;padding:0 3px}
.bad{color:#a00;font-weight:600}.ok{color:#070}.muted{color:#666}
svg .state rect{fill:#fff;stroke:#555;stroke-width:1.5}
svg .state.visited rect{fill:#ffe08a;stroke:#b8860b}
svg .state.current rect{fill:#f4a261;stroke:#7a3500;stroke-width:4}
svg .edge{fill:none;stroke:#999;stroke-width:1.2}svg .edge.taken{stroke:#b8860b;stroke-width:4}
svg .edge-label{font-size:11px;fill:#7a3500}
"""


def _page(title: str, body: Iterable[str]) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            + "".join(body) + "</body></html>")


def _e(value: object) -> str:
    return escape("-" if value is None or value == "" else str(value))


def _when(value: datetime | None) -> str:
    return "-" if value is None else escape(value.strftime("%Y-%m-%d %H:%M:%S UTC"))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """Cells are HTML already (escaped by the caller); headers are ours."""
    lines = list(rows)
    if not lines:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in lines)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def overview_page(status: AgentStatus, open_: Sequence[OpenIncident],
                  silences: Sequence[Silence], *, now: datetime, root: str) -> str:
    """The overview: is the agent up, what each target reads, what is open, waits, is silent."""
    acting = status.acting
    state = ('<span class="ok">running, acting</span>' if acting else
             '<span class="bad">running, standing by</span>' if status.running else
             '<span class="bad">not running</span>')
    body = [f"<h1>incident-fsm on {_e(status.replica)}</h1>",
            f"<p>Agent: {state} · role {_e(status.role)} · version {_e(status.version)} · "
            f"started {_when(status.started_at)}</p>", "<h2>Targets</h2>"]
    body.append(_table(
        ["target", "memory", "disk", "cpu", "source", "read", "last poll", "problem"],
        [[_e(t.name), _pct(t.memory_pct), _pct(t.disk_pct), _pct(t.cpu_pct),
          _e(t.reading_source),
          _e(f"{age((now - t.read_at).total_seconds())} ago") if t.read_at else "-",
          _e(f"{age((now - t.last_poll_at).total_seconds())} ago") if t.last_poll_at else "-",
          "" if t.last_ok or t.last_ok is None else
          f'<span class="bad">{_e(t.last_cause)}</span>: {_e(t.last_error)}']
         for t in status.targets], "no targets"))
    body.append("<h2>Open incidents</h2>")
    body.append(_table(
        ["incident", "state", "target", "kind", "age", "in state", "deadline", "acknowledged by"],
        [[f'<a href="{escape(root)}/incidents/{o.incident.id}">{o.incident.id}</a>',
          _e(o.incident.state), _e(o.incident.target), _e(o.incident.kind),
          _e(age((now - o.incident.opened_at).total_seconds())),
          _e(age((now - o.entered_at).total_seconds())), _when(o.incident.deadline_at),
          _e(o.acknowledged_by)] for o in open_], "nothing is open"))
    body.append("<h2>Approvals waiting</h2>")
    body.append(_table(
        ["incident", "held action", "why", "to approve"],
        [[f'<a href="{escape(root)}/incidents/{o.incident.id}">{o.incident.id}</a>',
          _e(o.held_action),
          _e(o.entered_by.details.get("verdict_reason", "") if o.entered_by else ""),
          f"<code>{escape(approve_command(o.incident.id))}</code>"]
         for o in open_ if o.held_action is not None], "nothing waits for an operator"))
    body += ["<h2>Silences</h2>", _silences(s for s in silences if s.active(now))]
    return _page("incident-fsm status", body)


def _silences(silences: Iterable[Silence]) -> str:
    return _table(["silence", "target", "kind", "from", "until", "by", "reason"],
                  [[_e(s.id), _e(s.target), _e(s.kind or "(all)"), _when(s.starts_at),
                    _when(s.expired_at or s.ends_at), _e(s.actor), _e(s.reason)]
                   for s in silences], "none")


def incident_page(timeline: Timeline, silences: Sequence[Silence], *, now: datetime,
                  root: str) -> str:
    """One incident: its facts, its path on the state graph, its whole history."""
    i = timeline.incident
    steps = [(t.source, t.dest) for t in timeline.transitions]
    body = [f'<p><a href="{escape(root)}/">← status</a></p>',
            f"<h1>Incident {i.id}: {_e(i.fingerprint)}</h1>",
            f"<p>State <strong>{_e(i.state)}</strong> · severity {_e(i.severity)} · "
            f"strikes {i.strikes} · opened {_when(i.opened_at)} · deadline "
            f"{_when(i.deadline_at)} · resolved {_when(i.resolved_at)}</p>",
            f"<p>{escape(i.summary)}</p>" if i.summary else "", "<h2>Its path</h2>",
            state_svg(steps),
            "<h2>Transitions</h2>"]
    body.append(_table(
        ["#", "at", "trigger", "from", "to", "by", "reason"],
        [[str(t.seq), _when(t.at), _e(t.trigger), _e(t.source), _e(t.dest), _e(t.actor),
          _e(t.reason)] for t in timeline.transitions], "no steps"))
    body.append("<h2>Actions</h2>")
    body.append(_table(
        ["attempt", "action", "tier", "started", "finished", "status", "what it said"],
        [[str(r.attempt), _e(r.action), _e(r.tier), _when(r.started_at), _when(r.finished_at),
          _e(attempt_status(r)), _e((r.evidence or {}).get("summary", ""))]
         for r in timeline.actions], "no action was tried"))
    body.append("<h2>Notifications</h2>")
    body.append(_table(
        ["channel", "step", "status", "attempts", "delivered", "last error", "text"],
        [[_e(n.channel), str(n.transition_seq), _e(n.status), str(n.attempts),
          _when(n.delivered_at), _e(n.last_error), _e((n.payload or {}).get("text", ""))]
         for n in timeline.notifications], "none owed"))
    body += ["<h2>Silences that covered it</h2>", _silences(covering(silences, i, now))]
    return _page(f"incident {i.id}", body)
