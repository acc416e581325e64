"""What the commands share: their common options, the `When` time type, and the store they open."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import click

from incident_fsm.errors import SchemaNotReady, StoreUnavailable
from incident_fsm.persistence import database

T = TypeVar("T")

database_url_option = click.option(
    "--database-url",
    envvar=database.ENV_DATABASE_URL,
    default=None,
    metavar="URL",
    help="SQLAlchemy URL (env INCIDENT_FSM_DATABASE_URL; default sqlite:///incident_fsm.db).",
)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    envvar="INCIDENT_FSM_CONFIG", help="TOML configuration (env INCIDENT_FSM_CONFIG).")


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


def with_store(url: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
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

