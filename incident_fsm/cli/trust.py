"""`trust`: per action and problem kind, the record it earned and what it says about its tier.

The rules are in `incident_fsm.remediation.trust`. Nothing changes a tier by
itself: a promotion stays a configuration change made by a person (`tier`
of a command, `[actions.failover] tier`). An action's tier is the one its
latest attempt ran at, as recorded with it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from incident_fsm.cli.common import database_url_option, json_option, with_store


@click.command()
@database_url_option
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="How far back the record goes.")
@json_option
def trust(database_url: str | None, days: float, as_json: bool) -> None:
    """Which actions earned more authority, and which lost it: a recommendation per tier.

    Example: incident-fsm trust --days 30
    """
    from incident_fsm.remediation.trust import Run, judge_all
    from incident_fsm.reports.format import table, to_json

    since = datetime.now(UTC) - timedelta(days=days)
    records = with_store(database_url, lambda store: store.attempt_records(since=since))
    real = [(r.action, r.kind, Run(r.tier, r.worked, r.failed))
            for r in records if not r.dry_run]
    dry_real: dict[tuple[str, str], int] = {}
    for r in records:
        if r.dry_run and r.label == "real":
            dry_real[(r.action, r.kind)] = dry_real.get((r.action, r.kind), 0) + 1
    found = judge_all(real, dry_real, {}, days=days)
    if as_json:
        click.echo(to_json([vars(t) for t in found]))
        return
    click.echo(table(
        ["ACTION", "KIND", "TIER", "RUNS", "VERIFIED", "FAILED", "DRY RUNS (REAL)", "ADVICE",
         "WHY"],
        [[t.action, t.kind, t.tier, str(t.attempts), str(t.verified), str(t.failed),
          str(t.dry_runs_labelled_real), t.recommendation, t.why] for t in found])
        if found else f"no attempts in the last {days:g} days")
    if any(t.recommendation != "keep" for t in found):
        click.echo("\na tier changes only when a person changes it in the configuration")

