"""`status`: is the agent alive, what does each target read, what waits for me, what is silenced.

Like `systemctl status`, one screen from the database alone (the agent
need not answer): the agents seen by heartbeat (alive or not, leading or
standing by, version, uptime); per target the last reading and the poll
cadence (configured, with `--config`, and effective, from the last polls);
the open incidents with their age, deadline and who acknowledged them; the
approvals waiting, each with the command that approves it; each channel's
queue; the silences in force. Exit 0 when an agent is alive and acting,
1 otherwise, so it can serve as a check itself.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from incident_fsm.cli.common import config_option, database_url_option, json_option, with_store

#: Readings and polls older than this are not shown as the target's last.
RECENT = timedelta(hours=24)


@dataclass(frozen=True)
class _Read:
    agents: list[Any]
    checks: dict[str, list[Any]]
    open_: list[Any]
    channels: list[Any]
    silences: list[Any]


@click.command()
@database_url_option
@config_option
@json_option
def status(database_url: str | None, config_path: str | None, as_json: bool) -> None:
    """Agents, targets, open incidents, approvals waiting, channels and silences at a glance.

    Exit 0 when an agent is alive and acting, else 1.

    Example: incident-fsm status --config /etc/incident-fsm/agent.toml
    """
    from incident_fsm.config import load_settings
    from incident_fsm.persistence import database
    from incident_fsm.reports.format import to_json

    settings = load_settings(config_path) if config_path else None
    url = database_url or (settings.agent.database_url if settings else None)
    resolved = database.resolve_url(url)
    # Without an election (SQLite, or leader_election off) an alive agent always acts.
    elects = not database.is_sqlite(resolved) and (
        settings is None or settings.agent.leader_election)
    now = datetime.now(UTC)

    async def read(store: Any) -> _Read:
        return _Read(await store.agents(now), await store.latest_checks(since=now - RECENT),
                     await store.open_incidents(), await store.channel_states(),
                     await store.silences(now=now))

    found = with_store(resolved, read)
    # The commands it suggests work as printed: on this database too.
    where = f" --database-url {database.redact(resolved)}" if database_url else ""
    report = _report(found, now, settings=settings, elects=elects, where=where)
    click.echo(to_json(report) if as_json else _text(report))
    sys.exit(0 if report["acting"] else 1)


def _report(found: _Read, now: datetime, *, settings: Any, elects: bool,
            where: str = "") -> dict[str, Any]:
    from incident_fsm.reports.format import approve_command

    agents = [{"replica": a.replica, "alive": a.alive,
               "role": ("leader" if a.leader else "standby") if elects else "acting",
               "version": a.version, "started_at": a.started_at, "last_beat": a.last_beat,
               "uptime_s": (now - a.started_at).total_seconds() if a.alive else None}
              for a in found.agents]
    acting = [a for a in agents if a["alive"] and a["role"] in ("leader", "acting")]
    configured = {t.name: t for t in settings.targets} if settings is not None else {}
    names = sorted(set(configured) | set(found.checks))
    return {
        "at": now,
        "acting": bool(acting),
        "agents": agents,
        "targets": [_target(name, found.checks.get(name, []), now, settings)
                    for name in names],
        "incidents": [{
            "id": o.incident.id, "state": o.incident.state, "target": o.incident.target,
            "kind": o.incident.kind, "opened_at": o.incident.opened_at,
            "age_s": (now - o.incident.opened_at).total_seconds(),
            "in_state_s": (now - o.entered_at).total_seconds(),
            "deadline_at": o.incident.deadline_at, "acknowledged_by": o.acknowledged_by,
            "silenced_by": next((s.id for s in found.silences if s.active(now)
                                 and s.matches(o.incident.target, o.incident.kind)), None),
        } for o in found.open_],
        "approvals": [{
            "incident": o.incident.id, "target": o.incident.target, "kind": o.incident.kind,
            "action": o.held_action,
            "why": o.entered_by.details.get("verdict_reason", "") if o.entered_by else "",
            "approve": approve_command(o.incident.id, where),
        } for o in found.open_ if o.held_action is not None],
        "channels": [vars(c) for c in found.channels],
        "silences": [{"id": s.id, "target": s.target, "kind": s.kind, "ends_at": s.ends_at,
                      "actor": s.actor, "reason": s.reason}
                     for s in found.silences if s.active(now)],
    }


def _target(name: str, rows: Sequence[Any], now: datetime, settings: Any) -> dict[str, Any]:
    polls = sorted({r.at for r in rows}, reverse=True)
    gaps = [(a - b).total_seconds() for a, b in itertools.pairwise(polls)]
    reading = next((r for r in rows if r.memory_pct is not None), None)
    last = rows[0] if rows else None
    agent = settings.agent if settings is not None else None
    return {
        "name": name,
        "memory_pct": reading.memory_pct if reading else None,
        "disk_pct": reading.disk_pct if reading else None,
        "cpu_pct": reading.cpu_pct if reading else None,
        "source": reading.source if reading else None,
        "read_age_s": (now - reading.at).total_seconds() if reading else None,
        "last_poll_age_s": (now - last.at).total_seconds() if last else None,
        "last_error": last.error if last is not None and not last.ok else "",
        "cadence_configured_s": (agent.poll_interval, agent.fast_poll_interval)
        if agent is not None else None,
        "cadence_effective_s": statistics.median(gaps) if gaps else None,
    }


def _text(report: dict[str, Any]) -> str:
    from incident_fsm.reports.format import age as _age
    from incident_fsm.reports.format import clock as _clock
    from incident_fsm.reports.format import reading_pct as _pct
    from incident_fsm.reports.format import table as columns

    def table(headers: list[str], rows: list[list[str]]) -> str:
        return textwrap.indent(columns(headers, rows), "  ")

    alive = [a for a in report["agents"] if a["alive"]]
    acting = [a["replica"] for a in alive if a["role"] in ("leader", "acting")]
    mark = "●" if report["acting"] else "×"
    head = (f"{mark} incident-fsm: {len(alive)} agent(s) alive; "
            + (f"acting: {', '.join(acting)}" if acting else "NONE ACTING: nothing is remediated"))
    out = [head, "", "agents:"]
    out.append(table(["REPLICA", "ALIVE", "ROLE", "VERSION", "UP", "LAST BEAT (UTC)"], [
        [a["replica"], "yes" if a["alive"] else "no", a["role"], a["version"] or "?",
         _age(a["uptime_s"]), _clock(a["last_beat"])] for a in report["agents"]])
        if report["agents"] else "  none seen by heartbeat")
    out += ["", "targets:"]
    out.append(table(["TARGET", "MEMORY", "DISK", "CPU", "SOURCE", "READ", "POLLED",
                      "EVERY (SET / SEEN)", "PROBLEM"], [
        [t["name"], _pct(t["memory_pct"]), _pct(t["disk_pct"]), _pct(t["cpu_pct"]),
         t["source"] or "-", _ago(t["read_age_s"]), _ago(t["last_poll_age_s"]), _cadence(t),
         t["last_error"][:70] or "-"] for t in report["targets"]])
        if report["targets"] else "  none polled")
    out += ["", "open incidents:"]
    out.append(table(["ID", "STATE", "TARGET", "KIND", "AGE", "IN STATE", "DEADLINE (UTC)",
                      "ACKNOWLEDGED BY", "SILENCED"], [
        [str(i["id"]), i["state"], i["target"], i["kind"], _age(i["age_s"]),
         _age(i["in_state_s"]), _clock(i["deadline_at"]), i["acknowledged_by"] or "-",
         f"by silence {i['silenced_by']}" if i["silenced_by"] else "-"]
        for i in report["incidents"]]) if report["incidents"] else "  none")
    out += ["", "approvals waiting:"]
    out += [f"  incident {a['incident']} ({a['target']}:{a['kind']}): {a['action']} is held"
            f"\n    approve it: {a['approve']}" for a in report["approvals"]] or ["  none"]
    out += ["", "channels:"]
    out.append(table(["CHANNEL", "PENDING", "FAILING", "OLDEST (UTC)", "LAST ERROR"], [
        [c["channel"], str(c["pending"]), str(c["failing"]), _clock(c["oldest_pending_at"]),
         c["last_error"][:80] or "-"] for c in report["channels"]])
        if report["channels"] else "  nothing waiting")
    out += ["", "silences:"]
    out += [f"  {s['id']}  {s['target']}{':' + s['kind'] if s['kind'] else ''} until "
            f"{_clock(s['ends_at'])} UTC by {s['actor']}: {s['reason']}"
            for s in report["silences"]] or ["  none"]
    return "\n".join(out)


def _cadence(target: dict[str, Any]) -> str:
    """What the configuration says (with --config) and the gap seen between the last polls."""
    configured = target["cadence_configured_s"]
    effective = target["cadence_effective_s"]
    said = f"{configured[0]:g}s, fast {configured[1]:g}s" if configured else "(--config)"
    seen = f"{effective:.1f}s" if effective is not None else "-"
    return f"{said} / {seen}"


def _ago(seconds: float | None) -> str:
    from incident_fsm.reports.format import age

    return "-" if seconds is None else f"{age(seconds)} ago"
