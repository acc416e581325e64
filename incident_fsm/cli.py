"""The `incident-fsm` command line: the operator's edge of the library.

Errors become one clear line here and nowhere else (`--debug` shows the
traceback). Exit codes: 0 success, 1 runtime failure (e.g. database
unreachable), 2 bad usage or bad input.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from . import database
from .errors import IncidentFSMError, InvalidInput, InvalidTransition, StoreError, StoreUnavailable

F = TypeVar("F", bound=Callable[..., Any])

database_url_option = click.option(
    "--database-url",
    envvar=database.ENV_DATABASE_URL,
    default=None,
    metavar="URL",
    help="SQLAlchemy URL (env INCIDENT_FSM_DATABASE_URL; default sqlite:///incident_fsm.db).",
)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _exit_code(exc: IncidentFSMError) -> int:
    if isinstance(exc, StoreUnavailable):
        return 1
    if isinstance(exc, InvalidInput | InvalidTransition | StoreError):
        return 2
    return 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Incident controller for a web service: incidents, history and the state graph.

    Example: incident-fsm db upgrade && incident-fsm graph
    """
    ctx.obj = {"debug": debug}


@cli.group()
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
    current = database.current_revision(url)
    head = database.head_revision()
    state = "up to date" if current == head else "needs `incident-fsm db upgrade`"
    click.echo(f"current: {current or 'empty'}  head: {head}  ({state})")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["mermaid", "table"]), default="mermaid",
              show_default=True, help="Mermaid diagram, or the edge table as Markdown.")
def graph(fmt: str) -> None:
    """Print the incident state graph, drawn from the machine's table.

    Example: incident-fsm graph > states.mmd
    """
    from .machine import markdown_table, mermaid

    click.echo(mermaid() if fmt == "mermaid" else markdown_table())


def main() -> None:
    """Console-script entry point: run the CLI, turning known errors into one line."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except IncidentFSMError as exc:
        if debug:
            raise
        _fail(str(exc), _exit_code(exc))
    except Exception as exc:
        if debug:
            raise
        # A DB or network error from a driver: name its class, never its text (it may hold secrets).
        _fail(f"unexpected {type(exc).__name__}; run again with --debug for details", 1)
