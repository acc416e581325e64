"""`backtest`: what a candidate configuration would have opened over the recorded readings.

The answer to the rollout's "what would these thresholds have done over the
last two days?" (see `incident_fsm.reports.backtest`). Read-only: nothing
is written, nothing is fetched from the targets.
"""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta

import click

from incident_fsm.cli.common import (
    When,
    config_option,
    database_url_option,
    json_option,
    with_store,
)


@click.command()
@database_url_option
@config_option
@click.option("--since", type=When(), default="48h", show_default=True,
              help="Start of the window: ISO 8601 or an age like 48h, 7d.")
@click.option("--until", type=When(), default=None,
              help="End of the window (default now): ISO 8601 or an age.")
@click.option("--target", default=None, metavar="NAME", help="Only this target.")
@json_option
def backtest(database_url: str | None, config_path: str | None, since: datetime,
             until: datetime | None, target: str | None, as_json: bool) -> None:
    """Replay recorded readings under a candidate configuration; compare with what opened.

    The candidate is --config (default INCIDENT_FSM_CONFIG: the live
    configuration, which should reproduce the live incidents). Lists the
    incidents it would open beside those that opened: added, removed,
    unchanged; then the gaps and limits of the record.

    Example: incident-fsm backtest --since 48h --config candidate.toml
    """
    from incident_fsm.config import load_settings
    from incident_fsm.reports.backtest import backtest as run_backtest
    from incident_fsm.reports.backtest import backtest_json, backtest_text
    from incident_fsm.reports.format import to_json

    settings = load_settings(config_path)
    if not settings.targets:
        raise click.UsageError("the configuration names no targets: give the candidate "
                               "configuration with --config FILE")
    names = [t.name for t in settings.targets]
    if target is not None and target not in names:
        raise click.UsageError(f"unknown target {target!r}; the configuration has "
                               + ", ".join(names))
    # A short-lived process that allocates a few objects per recorded poll: the
    # collector need not scan everything imported so far, again and again.
    gc.freeze()
    now = datetime.now(UTC)
    end = until or now
    if since >= end:
        raise click.UsageError("--since must be before --until")
    if end - since > timedelta(days=31):
        raise click.UsageError("the window is longer than 31 days: give a shorter one")
    report = with_store(
        database_url or settings.agent.database_url,
        lambda store: run_backtest(store, settings, since=since, until=end, target=target,
                                   candidate=config_path or "the built-in defaults", now=now))
    click.echo(to_json(backtest_json(report)) if as_json else backtest_text(report))
