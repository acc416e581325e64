"""The `incident-fsm` command line: the operator's edge of the library.

Errors become one clear line here and nowhere else (`--debug` shows the
traceback). Exit codes: 0 success, 1 runtime failure (e.g. database
unreachable), 2 bad usage or bad input.
"""

from __future__ import annotations

import getpass
import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import anyio
import click

from incident_fsm.errors import (
    IncidentFSMError,
    InvalidInput,
    InvalidTransition,
    SchemaNotReady,
    StoreError,
    StoreUnavailable,
)
from incident_fsm.persistence import database

F = TypeVar("F", bound=Callable[..., Any])

database_url_option = click.option(
    "--database-url",
    envvar=database.ENV_DATABASE_URL,
    default=None,
    metavar="URL",
    help="SQLAlchemy URL (env INCIDENT_FSM_DATABASE_URL; default sqlite:///incident_fsm.db).",
)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


class When(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A point in time: ISO 8601 (UTC if no zone) or an age like 30m, 2h, 7d."""

    name = "when"
    _AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        age = self._AGE.match(text)
        if age:
            unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
            return datetime.now(UTC) - timedelta(seconds=float(age.group(1)) * unit)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is neither ISO 8601 nor an age like 30m, 2h, 7d", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _with_store(url: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(store)` on a fresh store for `url` and close it.

    The database must exist and be at head: a command never creates a
    SQLite file, nor reads tables of another revision.
    """
    from incident_fsm.persistence.store import Store

    resolved = database.resolve_url(url)
    state = database.schema_state(resolved)
    if not state.exists:
        raise StoreUnavailable(f"no database at {database.redact(resolved)} (the agent creates "
                               "it when it starts; --database-url or "
                               f"{database.ENV_DATABASE_URL} says where it is)")
    if not state.at_head:
        raise SchemaNotReady(f"database {state.describe()}: run `incident-fsm db upgrade "
                             f"--database-url {database.redact(resolved)}`")

    async def main() -> T:
        async with Store(resolved) as store:
            return await work(store)

    return anyio.run(main)


T = TypeVar("T")


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
    schema = database.schema_state(url)  # reads only: a missing SQLite file stays missing
    if not schema.exists:
        click.echo(f"current: none (no database at {database.redact(url)} yet)  "
                   f"head: {schema.head}  (`incident-fsm db upgrade` creates it)")
        return
    state = "up to date" if schema.at_head else "needs `incident-fsm db upgrade`"
    click.echo(f"current: {schema.current or 'empty'}  head: {schema.head}  ({state})")


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="INCIDENT_FSM_CONFIG", help="TOML configuration (env INCIDENT_FSM_CONFIG).")
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


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="INCIDENT_FSM_CONFIG", help="TOML configuration (env INCIDENT_FSM_CONFIG).")
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


@cli.command()
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
    click.echo("\n" + closing_advice(url, results))
    if any(r.incident_id is None for r in results):
        raise click.ClickException("a scenario did not finish in time (see above)")


@cli.command()
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
    from incident_fsm.fsm.diagrams import markdown_table, mermaid, render_image
    from incident_fsm.models import IncidentId

    visited: list[str] = []
    if incident_id is not None:
        timeline = _with_store(database_url,
                               lambda store: store.timeline(IncidentId(incident_id)))
        visited = [t.dest for t in timeline.transitions]
        click.echo(f"%% incident {incident_id}: " + " → ".join(visited))
    if output is not None:
        _refuse_without_graphviz(output)
        render_image(output, visited=visited)
        click.echo(f"wrote {output}")
    else:
        click.echo(mermaid(visited=visited) if fmt == "mermaid" else markdown_table())


def _refuse_without_graphviz(output: str) -> None:
    """Before drawing an SVG/PNG, name what is missing of Graphviz and how to install it."""
    import shutil
    from pathlib import Path

    from incident_fsm.extras import install_line, installed

    if Path(output).suffix.lower() not in (".svg", ".png"):
        return  # render_image refuses the suffix, naming the ones it draws
    missing = []
    if not installed("graphviz"):
        missing.append(f"the graphviz Python package ({install_line('graph')})")
    if shutil.which("dot") is None:
        # A system program: no pip extra brings it.
        missing.append("the `dot` program (e.g. apt-get install graphviz)")
    if missing:
        raise InvalidInput(f"SVG/PNG needs Graphviz, missing here: {' and '.join(missing)}; "
                           "the Mermaid text (the default) needs neither")


@cli.command()
@database_url_option
@click.option("--state", "states", multiple=True, metavar="STATE",
              help="Only these states (repeatable): detected, remediating, verifying, "
                   "resolved, escalated.")
@click.option("--open", "only_open", is_flag=True, help="Only incidents not yet resolved.")
@click.option("--kind", help="Only this problem kind, e.g. disk_high.")
@click.option("--target", help="Only this target.")
@click.option("--since", type=When(), help="Opened at or after (ISO 8601 or an age: 2h, 7d).")
@click.option("--until", type=When(), help="Opened before (ISO 8601 or an age).")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
def incidents(database_url: str | None, states: tuple[str, ...], only_open: bool,
              kind: str | None, target: str | None, since: datetime | None,
              until: datetime | None, limit: int, as_json: bool) -> None:
    """List incidents, newest first.

    Example: incident-fsm incidents --open --target api --since 24h
    """
    from incident_fsm.fsm.graph import OPEN_STATES
    from incident_fsm.reports.format import incidents_table, to_json

    wanted = states or (tuple(s.value for s in OPEN_STATES) if only_open else ())
    rows = _with_store(database_url, lambda store: store.list_incidents(
        states=wanted, kind=kind, target=target, since=since, until=until, limit=limit))
    click.echo(to_json(rows) if as_json else incidents_table(rows))


@cli.command()
@database_url_option
@click.argument("incident_id", type=click.IntRange(min=1), metavar="ID")
@json_option
def show(database_url: str | None, incident_id: int, as_json: bool) -> None:
    """Show one incident: state, strikes, deadline, and its whole timeline.

    Example: incident-fsm show 3
    """
    from incident_fsm.models import IncidentId
    from incident_fsm.reports.format import timeline_text, to_json

    timeline = _with_store(database_url, lambda store: store.timeline(IncidentId(incident_id)))
    click.echo(to_json(timeline) if as_json else timeline_text(timeline))


@cli.command()
@database_url_option
@click.option("--since", type=When(), default="24h", show_default=True,
              help="From (ISO 8601 or an age).")
@click.option("--until", type=When(), help="Until (ISO 8601 or an age).")
@click.option("--target", help="Only this target.")
@click.option("--kind", help="Only this problem kind.")
@click.option("--limit", type=click.IntRange(1, 100000), default=1000, show_default=True)
@json_option
def history(database_url: str | None, since: datetime, until: datetime | None,
            target: str | None, kind: str | None, limit: int, as_json: bool) -> None:
    """Every transition across incidents in a time range, oldest first.

    Example: incident-fsm history --since 12h --target api
    """
    from incident_fsm.reports.format import history_table, to_json

    rows = _with_store(database_url, lambda store: store.history(
        since=since, until=until, target=target, kind=kind, limit=limit))
    if as_json:
        click.echo(to_json([{"transition": t, "incident": i} for t, i in rows]))
    else:
        click.echo(history_table(rows))


@cli.command()
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
        return result, await learned_rankings(store, [k.kind for k in result.kinds])

    result, rankings = _with_store(database_url, work)
    if as_json:
        data = json.loads(to_json(result))
        data["ranking"] = {k: [r.as_dict() for r in ranked] for k, ranked in rankings.items()}
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(statistics_text(result, rankings))


@cli.command()
@database_url_option
@click.argument("incident_id", type=click.IntRange(min=1), metavar="ID")
@click.argument("trigger", type=click.Choice(["acknowledge", "approve", "resolve", "escalate"]))
@click.option("--reason", required=True, help="Why (recorded with the transition).")
@click.option("--actor", default=None, help="Who (default: your OS user name).")
@click.option("--action", "action_name", default=None,
              help="With approve: the action to run (default: the one that was held).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="INCIDENT_FSM_CONFIG",
              help="The agent's TOML (env INCIDENT_FSM_CONFIG): its deadlines and channels, "
                   "and the actions --action may name. Required with --action.")
@json_option
def force(database_url: str | None, incident_id: int, trigger: str, reason: str,
          actor: str | None, action_name: str | None, config_path: str | None,
          as_json: bool) -> None:
    """Fire an operator transition, checked against the state graph and recorded with who and why.

    Example: incident-fsm force 3 approve --reason "failover approved by on-call" --actor alice
    """
    from loguru import logger

    if action_name is not None and trigger != "approve":
        raise InvalidInput("--action goes only with approve")
    if action_name is not None and config_path is None:
        # Without it nothing says what the agent could run: a typo would be approved,
        # notified as an action taken, spend a strike and fail.
        raise InvalidInput("--action needs the agent's configuration (--config FILE or env "
                           "INCIDENT_FSM_CONFIG) to check the name against the actions of "
                           "the incident's target; nothing was written")
    # The engine's own line about the step is for the agent's log, not this terminal.
    quiet = not (click.get_current_context().find_root().obj or {}).get("debug")
    if quiet:
        logger.disable("incident_fsm.fsm.engine")
    try:
        _force_command(database_url, incident_id, trigger, reason, actor, action_name,
                       config_path, as_json)
    finally:
        if quiet:
            logger.enable("incident_fsm.fsm.engine")


def _force_command(database_url: str | None, incident_id: int, trigger: str, reason: str,
                   actor: str | None, action_name: str | None, config_path: str | None,
                   as_json: bool) -> None:
    from incident_fsm.config import load_settings
    from incident_fsm.fsm.steps import MachinePolicy
    from incident_fsm.notify.policy import policy_from_settings
    from incident_fsm.reports.format import to_json

    who = actor if actor is not None else getpass.getuser()
    settings = load_settings(config_path)
    outbox = policy_from_settings(settings)
    policy = MachinePolicy.from_settings(settings.agent)
    # The agent's own database unless one is named: force acts where the agent does.
    url = database_url or settings.agent.database_url
    forced = _with_store(url, lambda store: _force(
        store, incident_id=incident_id, trigger=trigger, reason=reason, actor=who,
        action_name=action_name, outbox=outbox, policy=policy, settings=settings,
        configured=config_path is not None))
    incident = forced.incident
    if as_json:
        click.echo(to_json(incident))
    else:
        click.echo(f"incident {incident.id} is now {incident.state} ({trigger} by {who})")
    if config_path is None:
        click.echo("note: no configuration (--config / INCIDENT_FSM_CONFIG): deadlines are the "
                   f"defaults (and INCIDENT_FSM_* variables): {_force_deadlines(policy)}",
                   err=True)
    if not forced.agents:
        waiting = (f"the approved {forced.action} waits until one runs, and so do the step's "
                   "notifications" if forced.action else
                   "the step's notifications wait in the outbox until one runs")
        click.echo("warning: no agent has been seen alive (no current heartbeat in the "
                   f"database): {waiting}", err=True)


def _force_deadlines(policy: Any) -> str:
    """The deadline an incident gets on entering each state, as `force` applies them."""
    from incident_fsm.vocabulary import State

    start = datetime.now(UTC)
    parts = []
    for state in (State.DETECTED, State.REMEDIATING, State.VERIFYING, State.ESCALATED):
        deadline = policy.deadline_for(state, start)
        parts.append(f"{state.value} {(deadline - start).total_seconds():g}s")
    return ", ".join(parts)


@dataclass(frozen=True)
class _Forced:
    """What `force` did: the incident afterwards, the action it approved, the agents alive."""

    incident: Any
    action: str | None
    agents: list[tuple[str, datetime]]


async def _force(store: Any, *, incident_id: int, trigger: str, reason: str, actor: str,
                 action_name: str | None, outbox: Any, policy: Any,
                 settings: Any, configured: bool = False) -> _Forced:
    from incident_fsm.clock import SystemClock
    from incident_fsm.fsm.engine import IncidentEngine
    from incident_fsm.fsm.graph import operator_triggers_from, triggers_from
    from incident_fsm.fsm.steps import ActionIntent
    from incident_fsm.models import IncidentId
    from incident_fsm.vocabulary import Verdict

    iid = IncidentId(incident_id)
    incident = await store.get_incident(iid)
    if trigger not in triggers_from(incident.state):
        # Say what the graph allows before asking about a held action.
        raise InvalidTransition(incident_id=iid, state=incident.state, trigger=trigger,
                                allowed=operator_triggers_from(incident.state))
    intent = None
    if trigger == "approve":
        held = await _held_action(store, iid)
        if action_name is not None:
            tiers = await _approvable(settings, target=incident.target, kind=incident.kind)
            if action_name not in tiers:
                unknown_target = all(t.name != incident.target for t in settings.targets)
                hint = (f"; {incident.target} is not a [[targets]] entry of the configuration"
                        if unknown_target else "")
                raise InvalidInput(
                    f"'{action_name}' is not an action the agent may run for {incident.kind} "
                    f"on {incident.target} (configured: {', '.join(tiers) or 'none'}){hint}; "
                    "nothing was written")
            name, tier = action_name, tiers[action_name]
        else:
            if held is None:
                raise InvalidInput(
                    f"incident {incident_id} has no held action; name one with --action")
            name, tier = str(held["action"]), str(held.get("tier", "approval"))
            if configured and any(t.name == incident.target for t in settings.targets):
                # Held under another configuration, maybe: the agent would refuse to run it.
                tiers = await _approvable(settings, target=incident.target, kind=incident.kind)
                if name not in tiers:
                    raise InvalidInput(
                        f"the held action '{name}' is not one the configuration allows for "
                        f"{incident.kind} on {incident.target} (configured: "
                        f"{', '.join(tiers) or 'none'}); nothing was written")
        intent = ActionIntent(name, tier, Verdict.APPROVED, f"approved by {actor}: {reason}")
    clock = SystemClock()
    engine = IncidentEngine(store, clock=clock, outbox=outbox, policy=policy)
    moved = await engine.fire(iid, trigger, actor=actor, reason=reason,
                              details={"forced": True}, intent=intent)
    agents = await store.agents_seen(clock.now())
    return _Forced(moved, None if intent is None else intent.action, agents)


async def _approvable(settings: Any, *, target: str, kind: str) -> dict[str, str]:
    """Action name -> tier of what the agent may run for `kind` on `target`, best first.

    The agent's own choice: the target's actions under the configuration,
    narrowed by the policy for the kind (`[policy]` or the default list).
    """
    import httpx

    from incident_fsm.remediation.actions.catalog import Catalog
    from incident_fsm.remediation.policy import candidates

    # The actions only keep the client for when they run; none runs here.
    async with httpx.AsyncClient() as http:
        available = Catalog.from_settings(settings, http=http).for_target(target)
        names = candidates(kind, available=available, override=settings.policy or None)
        return {name: str(available[name].tier) for name in names}


async def _held_action(store: Any, incident_id: Any) -> dict[str, Any] | None:
    """The action of the latest step that held one (its details name it), if any."""
    timeline = await store.timeline(incident_id)
    for step in reversed(timeline.transitions):
        if step.details.get("verdict") == "hold" and step.details.get("action"):
            return dict(step.details)
    return None


def main() -> None:
    """Console-script entry point."""
    cli()
