"""The read commands: incidents, show, history, stats and the state graph; none writes anything."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import click

from incident_fsm.cli.common import When, database_url_option, json_option, with_store
from incident_fsm.errors import InvalidInput

#: Seconds between two reads of `history --follow`.
FOLLOW_EVERY = 1.0


@click.command()
@click.option("--format", "fmt", type=click.Choice(["mermaid", "table"]), default="mermaid",
              show_default=True, help="Mermaid diagram, or the edge table as Markdown.")
@click.option("--incident", "incident_id", type=click.IntRange(min=1), default=None,
              help="Highlight the states this incident went through.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write SVG or PNG (by the suffix) instead; needs Graphviz installed.")
@database_url_option
def graph(fmt: str, incident_id: int | None, output: str | None,
          database_url: str | None) -> None:
    """Print the incident state graph, drawn from the machine's table.

    Example: incident-fsm graph --incident 3 > incident-3.mmd
    """
    from incident_fsm.fsm.diagrams import markdown_table, mermaid, mermaid_path, render_image
    from incident_fsm.models import IncidentId

    visited: list[str] = []
    steps: list[tuple[str | None, str]] = []
    if incident_id is not None:
        timeline = with_store(database_url,
                               lambda store: store.timeline(IncidentId(incident_id)))
        visited = [t.dest for t in timeline.transitions]
        steps = [(t.source, t.dest) for t in timeline.transitions]
        click.echo(f"%% incident {incident_id}: " + " → ".join(visited))
    if output is not None:
        render_image(output, visited=visited)
        click.echo(f"wrote {output}")
    elif fmt == "table":
        click.echo(markdown_table())
    else:
        # With an incident: a flowchart, the one Mermaid diagram with link styles.
        click.echo(mermaid_path(steps) if incident_id is not None else mermaid())


@click.command()
@database_url_option
@click.option("--state", "states", multiple=True, metavar="STATE",
              help="Only these states (repeatable): detected, remediating, verifying, "
                   "resolved, escalated.")
@click.option("--open", "only_open", is_flag=True, help="Only incidents not yet resolved.")
@click.option("--kind", help="Only this problem kind, e.g. disk_high.")
@click.option("--target", help="Only this target.")
@click.option("--since", type=When(), help="Opened at or after (ISO 8601 or an age: 2h, 7d).")
@click.option("--until", type=When(), help="Opened before (ISO 8601 or an age).")
@click.option("--waiting-approval", "waiting", is_flag=True,
              help="Only incidents whose held action waits for an operator's approval.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
def incidents(database_url: str | None, states: tuple[str, ...], only_open: bool,
              kind: str | None, target: str | None, since: datetime | None,
              until: datetime | None, waiting: bool, limit: int, as_json: bool) -> None:
    """List incidents, newest first: state, age, who acknowledged it, its summary.

    Example: incident-fsm incidents --open --target api --since 24h
    """
    from incident_fsm.fsm.graph import OPEN_STATES
    from incident_fsm.reports.format import approve_command, incidents_table, to_json

    wanted = states or (tuple(s.value for s in OPEN_STATES) if only_open else ())

    async def read(store: Any) -> tuple[list[Any], dict[int, str], dict[int, str]]:
        rows = await store.list_incidents(states=wanted, kind=kind, target=target,
                                          since=since, until=until, limit=limit)
        held: dict[int, str] = {}
        if waiting:
            held = {o.incident.incident_id: o.held_action
                    for o in await store.open_incidents() if o.held_action is not None}
            rows = [r for r in rows if r.incident_id in held]
        return rows, await store.acknowledgements([r.incident_id for r in rows]), held

    rows, acknowledged, held = with_store(database_url, read)
    if as_json:
        click.echo(to_json([{**json.loads(to_json(r)),
                             "acknowledged_by": acknowledged.get(r.incident_id),
                             **({"held_action": held[r.incident_id]} if waiting else {})}
                            for r in rows]))
        return
    click.echo(incidents_table(rows, now=datetime.now(UTC), acknowledged=acknowledged))
    for row in rows if waiting else ():
        click.echo(f"  {row.id}: {held[row.incident_id]} is held; approve it: "
                   f"{approve_command(row.id)}")


@click.command()
@database_url_option
@click.argument("incident_id", type=click.IntRange(min=1), metavar="ID")
@json_option
def show(database_url: str | None, incident_id: int, as_json: bool) -> None:
    """Show one incident: state, strikes, deadline, and its whole timeline.

    Example: incident-fsm show 3
    """
    from incident_fsm.models import IncidentId
    from incident_fsm.reports.format import covering, timeline_text, to_json

    now = datetime.now(UTC)

    async def read(store: Any) -> tuple[Any, list[Any], list[Any]]:
        timeline = await store.timeline(IncidentId(incident_id))
        silences = await store.silences(now=now, include_ended=True,
                                        target=timeline.incident.target)
        return (timeline, covering(silences, timeline.incident, now),
                await store.labels_of(IncidentId(incident_id)))

    timeline, silences, labels = with_store(database_url, read)
    if as_json:
        data = json.loads(to_json(timeline))
        data["silences"] = json.loads(to_json(silences))
        data["labels"] = json.loads(to_json(labels))
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(timeline_text(timeline, silences, labels))


@click.command()
@database_url_option
@click.option("--since", type=When(), default="24h", show_default=True,
              help="From (ISO 8601 or an age).")
@click.option("--until", type=When(), help="Until (ISO 8601 or an age).")
@click.option("--target", help="Only this target.")
@click.option("--kind", help="Only this problem kind.")
@click.option("--limit", type=click.IntRange(1, 100000), default=1000, show_default=True)
@click.option("--follow", "-f", is_flag=True,
              help="Then print new steps as they happen, until interrupted (like journalctl -f); "
                   "with --json one object per line.")
@json_option
def history(database_url: str | None, since: datetime, until: datetime | None,
            target: str | None, kind: str | None, limit: int, follow: bool,
            as_json: bool) -> None:
    """Every transition across incidents in a time range, oldest first.

    Example: incident-fsm history --since 12h --target api --follow
    """
    from incident_fsm.reports.format import history_table, to_json

    if follow and until is not None:
        raise InvalidInput("--follow prints what happens from now on: it takes no --until")
    if not follow:
        rows = with_store(database_url, lambda store: store.history(
            since=since, until=until, target=target, kind=kind, limit=limit))
        if as_json:
            click.echo(to_json([{"transition": t, "incident": i} for t, i in rows]))
        else:
            click.echo(history_table(rows))
        return
    with contextlib.suppress(KeyboardInterrupt):
        with_store(database_url, lambda store: _follow(
            store, since=since, target=target, kind=kind, limit=limit, as_json=as_json))


@click.command()
@database_url_option
@click.option("--since", type=When(), help="Only incidents opened (checks made) since then.")
@json_option
def stats(database_url: str | None, since: datetime | None, as_json: bool) -> None:
    """Statistics: resolution times, escalation rate, action success, delivery, health checks.

    Example: incident-fsm stats --since 7d
    """
    from incident_fsm.remediation.ranking import learned_rankings
    from incident_fsm.reports.format import statistics_text, to_json

    async def work(store: Any) -> Any:
        result = await store.statistics(since=since)
        return (result, await learned_rankings(store, [k.kind for k in result.kinds]),
                await store.label_counts(since=since))

    result, rankings, labels = with_store(database_url, work)
    if as_json:
        data = json.loads(to_json(result))
        data["ranking"] = {k: [r.as_dict() for r in ranked] for k, ranked in rankings.items()}
        data["labels"] = labels
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(statistics_text(result, rankings, labels))


async def _follow(store: Any, *, since: datetime, target: str | None, kind: str | None,
                  limit: int, as_json: bool) -> None:
    """Print the steps since `since`, then each new one as it is written, until cancelled."""
    import anyio

    from incident_fsm.reports.format import history_lines, to_json

    seen: set[tuple[int, int]] = set()
    header = not as_json
    while True:
        rows = await store.history(since=since, target=target, kind=kind, limit=limit)
        new = [(t, i) for t, i in rows if (t.incident_id, t.seq) not in seen]
        since = max([since, *(t.at for t, _ in new)])
        if as_json:
            for t, i in new:
                click.echo(json.dumps(json.loads(to_json({"transition": t, "incident": i}))))
        elif new:
            click.echo(history_lines(new, header=header))
            header = False
        # The next read starts at the newest time seen: only the steps at that time are
        # read again, so only those need remembering (memory stays flat).
        seen = {(t.incident_id, t.seq) for t, _ in rows if t.at >= since}
        await anyio.sleep(FOLLOW_EVERY)
