"""The commands that prepare and run the agent: db, check, run, and the demo."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import click

from incident_fsm.cli.common import config_option, database_url_option, json_option
from incident_fsm.errors import StoreUnavailable
from incident_fsm.persistence import database


@click.group()
def db() -> None:
    """Database migrations.

    Example: incident-fsm db upgrade --database-url postgresql+psycopg://postgres@127.0.0.1/incidents
    """


@db.command("upgrade")
@database_url_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(database_url: str | None, revision: str) -> None:
    """Apply migrations up to REVISION (default: the latest).

    Example: incident-fsm db upgrade
    """
    url = database.resolve_url(database_url)
    database.upgrade(url, revision)
    click.echo(f"database {database.redact(url)} is at {database.current_revision(url)}")


@db.command("current")
@database_url_option
def db_current(database_url: str | None) -> None:
    """Print the migration revision the database is at, and the latest one.

    Example: incident-fsm db current
    """
    url = database.resolve_url(database_url)
    schema = database.schema_state(url)  # reads only: a missing SQLite file stays missing
    if not schema.exists:
        click.echo(f"current: none (no database at {database.redact(url)} yet)  "
                   f"head: {schema.head}  (`incident-fsm db upgrade` creates it)")
        return
    state = "up to date" if schema.at_head else "needs `incident-fsm db upgrade`"
    click.echo(f"current: {schema.current or 'empty'}  head: {schema.head}  ({state})")


@click.command()
@config_option
@database_url_option
@json_option
def check(config_path: str | None, database_url: str | None, as_json: bool) -> None:
    """Check everything the agent will need, changing nothing: one line per check.

    The configuration, each target's endpoints (readings shown), the secrets it
    names (names only), the database and its schema, each Render service (a
    GET), each channel's peer and credentials (nothing is delivered), cleanup
    roots and dependency checks. Exit 0 when nothing failed, 1 when a check
    failed, 2 when the configuration itself is invalid.

    Example: incident-fsm check --config /etc/incident-fsm/agent.toml
    """
    from incident_fsm.config import load_settings
    from incident_fsm.runtime.preflight import exit_code, report_json, report_text, run_checks

    settings = load_settings(config_path, overrides={"database_url": database_url})
    checks = anyio.run(lambda: run_checks(settings))
    click.echo(report_json(checks) if as_json else report_text(checks))
    sys.exit(exit_code(checks))


@click.command()
@config_option
@database_url_option
@click.option("--poll-interval", type=float, default=None, help="Seconds between checks.")
@click.option("--fast-poll-interval", type=float, default=None,
              help="Seconds between checks while something is suspect or open.")
@click.option("--auto-remediation/--no-auto-remediation", default=None,
              help="Act, or only record what would be done.")
@click.option("--pam/--no-pam", "pam_integration", default=None, help="Deliver to PAM or not.")
@click.option("--migrate/--no-migrate", default=None,
              help="Apply database migrations first (default: yes for SQLite, no for Postgres).")
@click.option("--log-level", default="DEBUG", show_default=True, envvar="INCIDENT_FSM_LOG_LEVEL",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Lowest level logged (env INCIDENT_FSM_LOG_LEVEL).")
def run(config_path: str | None, database_url: str | None, poll_interval: float | None,
        fast_poll_interval: float | None, auto_remediation: bool | None,
        pam_integration: bool | None, migrate: bool | None, log_level: str) -> None:
    """Run the agent until SIGTERM or Ctrl-C (then stop cleanly and exit 0).

    Example: incident-fsm run --config /etc/incident-fsm/agent.toml
    """
    from incident_fsm.config import ConfigError, load_settings

    settings = load_settings(config_path, overrides={
        "database_url": database_url, "poll_interval": poll_interval,
        "fast_poll_interval": fast_poll_interval, "auto_remediation": auto_remediation,
        "pam_integration": pam_integration})
    if settings.channels.pam_inprocess is not None:
        # Imported into this process, the manager would hold no user's socket: every
        # notification would wait forever.
        raise ConfigError("channels.pam_inprocess",
                          "needs the agent inside the service's own process (its lifespan, "
                          "with pam_manager=); a standalone agent reaches PAM through "
                          "[channels.pam_relay], mounted in the service")
    from incident_fsm.runtime.preflight import PreflightFailed, start_failures

    failures = start_failures(settings)
    if failures:
        raise PreflightFailed(failures)
    url = database.resolve_url(settings.agent.database_url)
    try:
        database.ensure_schema(url, migrate=migrate)
    except StoreUnavailable as exc:
        # Not a reason to exit (systemd may start us before the database): the agent
        # waits for it and acts on nothing until it has seen the schema.
        click.echo(f"warning: {exc}; the agent waits for it and acts on nothing until then",
                   err=True)
    if not settings.targets:
        click.echo("warning: no [[targets]] configured: nothing will be monitored", err=True)
    _quiet_tracebacks(log_level.upper())
    anyio.run(_serve, settings, migrate)


def _quiet_tracebacks(level: str) -> None:
    """loguru's default prints local variables in tracebacks, which can hold secrets."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level, diagnose=False, backtrace=False)


async def _serve(settings: Any, migrate: bool | None) -> None:
    """Run the agent; the first SIGTERM or SIGINT stops it cleanly."""
    import signal

    from loguru import logger

    from incident_fsm.runtime.agent import Agent

    agent = Agent(settings, migrate=migrate)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for received in signals:
                    logger.info("received {}: stopping", received.name)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await agent.run()
        tg.cancel_scope.cancel()  # the agent returned by itself (disabled)


@click.command()
@click.option("--database", "database_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE",
              help="The SQLite file the demo writes (default: incident_fsm_demo.db here). It "
                   "must not exist, or be one an earlier demo wrote; it is then replaced. The "
                   "demo never reads INCIDENT_FSM_DATABASE_URL.")
@click.option("--verbose", is_flag=True, help="Also show the agent's own log lines.")
def demo(database_path: str | None, verbose: bool) -> None:
    """Play the PRD scenarios against the built-in simulator, in a fresh database of its own.

    Example: incident-fsm demo   (then run the commands it prints to explore what happened)
    """
    import tempfile
    from pathlib import Path

    from incident_fsm.demo.scenarios import (
        DEFAULT_DATABASE,
        closing_advice,
        prepare_database,
        run_demo,
        summary_table,
    )

    url = prepare_database(Path(database_path or DEFAULT_DATABASE))
    _quiet_tracebacks("INFO" if verbose else "ERROR")
    click.echo(f"database: {database.redact(url)}")
    with tempfile.TemporaryDirectory(prefix="incident-fsm-demo-") as workdir:
        results = anyio.run(lambda: run_demo(url, workdir=Path(workdir), echo=click.echo))
    click.echo("\n" + summary_table(results))
    click.echo("\n" + closing_advice(url, results, program=typed_program()))
    if any(r.incident_id is None for r in results):
        raise click.ClickException("a scenario did not finish in time (see above)")


def typed_program(argv0: str | None = None) -> str:
    """How the user can run this command again: `incident-fsm` when that is on the PATH and
    is this one, else the path they typed (e.g. `.venv/bin/incident-fsm`)."""
    import os
    import shlex
    import shutil

    typed = sys.argv[0] if argv0 is None else argv0
    if os.path.basename(typed) != "incident-fsm":  # `python -m`, a test runner
        return "incident-fsm"
    found = shutil.which("incident-fsm")
    if found is not None and os.path.exists(typed) and os.path.samefile(found, typed):
        return "incident-fsm"
    return shlex.quote(typed)
