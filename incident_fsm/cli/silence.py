"""`silence`: maintenance windows, like Alertmanager's silences.

While a silence matches an incident's target (and kind, when it names one),
the agent still detects and records the incident but runs no automatic
action: it records what it would have done, as in monitor-only, and the
incident's opening notice says it is silenced. An operator's own
transitions (`force`) are never blocked. Silences end by themselves at
their end time, or early with `silence expire`; nothing is deleted.
"""

from __future__ import annotations

import getpass
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from incident_fsm.cli.common import When, database_url_option, json_option, with_store
from incident_fsm.errors import InvalidInput

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A length of time: 90s, 30m, 2h, 1d."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        found = _DURATION.match(str(value).strip())
        if not found:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 2h, 1d", param, ctx)
        if float(found.group(1)) <= 0:
            self.fail(f"{value!r}: a silence must last longer than that", param, ctx)
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
        return timedelta(seconds=float(found.group(1)) * unit)


@click.group()
def silence() -> None:
    """Pause automatic action on a target (or one problem kind of it) for a while.

    Example: incident-fsm silence add --target api --for 2h --reason "database upgrade"
    """


@silence.command("add")
@database_url_option
@click.option("--target", required=True, help="The target to silence (as in [[targets]]).")
@click.option("--kind", default=None, help="Only this problem kind (default: every kind).")
@click.option("--for", "length", type=Duration(), default=None, help="How long: 30m, 2h, 1d.")
@click.option("--until", "until", type=When(), default=None,
              help="Or until when (ISO 8601; UTC if no zone).")
@click.option("--reason", required=True, help="Why (shown wherever the silence is).")
@click.option("--actor", default=None, help="Who (default: your OS user name).")
@json_option
def add(database_url: str | None, target: str, kind: str | None, length: timedelta | None,
        until: datetime | None, reason: str, actor: str | None, as_json: bool) -> None:
    """Add a silence, starting now.

    Example: incident-fsm silence add --target api --kind memory_high --for 2h --reason "load test"
    """
    from incident_fsm.reports.format import to_json

    if (length is None) == (until is None):
        raise InvalidInput("give exactly one of --for and --until; nothing was written")
    now = datetime.now(UTC)
    ends = until if until is not None else now + (length or timedelta())
    who = actor if actor is not None else getpass.getuser()

    async def work(store: Any) -> tuple[Any, bool]:
        added = await store.add_silence(target=target, kind=kind, starts_at=now, ends_at=ends,
                                        actor=who, reason=reason, at=now)
        polled = await store.latest_checks(since=now - timedelta(hours=24), per_target=1)
        return added, target in polled

    added, known = with_store(database_url, work)
    if not known:
        click.echo(f"warning: no target named {target!r} was polled in the last 24 h (a typo?); "
                   "the silence is in place all the same", err=True)
    what = added.target if added.kind is None else f"{added.kind} on {added.target}"
    click.echo(to_json(added) if as_json else
               f"added silence {added.id}: {what} until "
               f"{added.ends_at:%Y-%m-%d %H:%M:%S} UTC, by {added.actor}: {added.reason}\n"
               "the agent obeys it within 5 s; end it early with: "
               f"incident-fsm silence expire {added.id}")


@silence.command("list")
@database_url_option
@click.option("--all", "include_ended", is_flag=True, help="Ended and expired ones too.")
@json_option
def list_(database_url: str | None, include_ended: bool, as_json: bool) -> None:
    """The silences in force or to come (with --all, every one).

    Example: incident-fsm silence list --all
    """
    from incident_fsm.reports.format import silences_table, to_json

    now = datetime.now(UTC)
    found = with_store(database_url, lambda store: store.silences(
        now=now, include_ended=include_ended))
    click.echo(to_json(found) if as_json else silences_table(found, now))


@silence.command("expire")
@database_url_option
@click.argument("silence_id", type=click.IntRange(min=1), metavar="ID")
@click.option("--actor", default=None, help="Who (default: your OS user name).")
@json_option
def expire(database_url: str | None, silence_id: int, actor: str | None, as_json: bool) -> None:
    """End a silence now: automatic action resumes within 5 s.

    Example: incident-fsm silence expire 4
    """
    from incident_fsm.reports.format import to_json

    who = actor if actor is not None else getpass.getuser()
    ended = with_store(database_url, lambda store: store.expire_silence(
        silence_id, actor=who, at=datetime.now(UTC)))
    click.echo(to_json(ended) if as_json else f"silence {ended.id} expired by {who}")
