"""The `incident-fsm` command line: the operator's edge of the library.

Errors become one clear line here and nowhere else (`--debug` shows the
traceback). Exit codes: 0 success, 1 runtime failure (e.g. database
unreachable), 2 bad usage or bad input.

This module is the root group and the console script; the commands live
beside it: the read commands in `read`, `db`, `check`, `run` and `demo` in
`operate`, the operator's transition in `force`, what they share in `common`.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from incident_fsm.about import VERSION
from incident_fsm.cli.backtest import backtest
from incident_fsm.cli.force import force
from incident_fsm.cli.operate import check, db, demo, run
from incident_fsm.cli.read import graph, history, incidents, show, stats
from incident_fsm.cli.silence import silence
from incident_fsm.cli.status import status
from incident_fsm.cli.trust import trust
from incident_fsm.errors import (
    IncidentFSMError,
    InvalidInput,
    InvalidTransition,
    SchemaNotReady,
    StoreError,
    StoreUnavailable,
)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _exit_code(exc: IncidentFSMError) -> int:
    if isinstance(exc, StoreUnavailable | SchemaNotReady):
        return 1
    if isinstance(exc, InvalidInput | InvalidTransition | StoreError):
        return 2
    return 1


class _Cli(click.Group):
    """The root group: turns known errors into one line and an exit code, here and only here."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            # One line, like every other error here; the command's --help has the rest.
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            _fail(f"{exc.format_message()} (see {where} --help)", 2)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except IncidentFSMError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            _fail(str(exc), _exit_code(exc))
        except Exception as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            # A driver or network error: its class only, its text may hold secrets or SQL.
            _fail(f"unexpected {type(exc).__name__}; run again with --debug for details", 1)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, "--version", "-V", prog_name="incident-fsm",
                      message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Incident controller for a web service: incidents, history and the state graph.

    Example: incident-fsm db upgrade && incident-fsm graph
    """
    ctx.obj = {"debug": debug}


for command in (status, incidents, show, history, stats, trust, backtest, graph, force, silence,
                check, db, run, demo):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli()
