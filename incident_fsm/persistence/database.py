"""Where the database is and how to connect to it: URL resolution, engines, migrations.

The URL comes from, in order: an explicit value (`--database-url`), the
`INCIDENT_FSM_DATABASE_URL` environment variable, or a SQLite file
`incident_fsm.db` in the working directory. Postgres URLs use psycopg 3
(`postgresql+psycopg://...`); plain `postgresql://` is accepted and mapped
to it. Passwords are never printed: use `redact` for anything shown.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from incident_fsm.errors import InvalidInput, SchemaNotReady, StoreUnavailable

ENV_DATABASE_URL = "INCIDENT_FSM_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///incident_fsm.db"

#: Seconds to wait for a connection, a lock, or a statement before giving up.
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT = 30
#: Seconds a pooled Postgres connection may sit unused before it is pinged at checkout
#: (sooner only if its socket has something to read: see `_ping_idle_connections`).
PING_IDLE_AFTER = 60.0

#: The migration revision this code reads and writes. Spelled out so that checking a
#: database needs no Alembic in the process; a test keeps it equal to the scripts' head.
SCHEMA_HEAD = "76a3fd56519d"


def resolve_url(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The database URL to use, normalised and validated (see module docstring)."""
    env = os.environ if environ is None else environ
    raw = explicit or env.get(ENV_DATABASE_URL) or DEFAULT_DATABASE_URL
    try:
        url = make_url(raw)
    except ArgumentError:
        raise InvalidInput(
            f"database URL is not a valid SQLAlchemy URL: {_redact_raw(raw)}"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidInput(
            f"database URL must be sqlite:/// or postgresql+psycopg://, got {redact(url)}"
        )
    if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
        raise InvalidInput(
            f"Postgres needs the psycopg 3 driver (postgresql+psycopg://): {redact(url)}"
        )
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise InvalidInput("SQLite needs a file (sqlite:///path.db): an in-memory database "
                           "would vanish between connections")
    return url.render_as_string(hide_password=False)


def redact(url: str | URL) -> str:
    """The URL with its password hidden, safe for logs and messages."""
    return (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)


def _redact_raw(raw: str) -> str:
    # Unparseable: show only the scheme, it may still hold a password.
    return raw.split(":", 1)[0] + ":..." if ":" in raw else "<invalid>"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, connections: int = 5, kept: int | None = None) -> Engine:
    """An engine with timeouts everywhere and SQLite set up for safe concurrent writers.

    `connections`: how many calls may use a Postgres connection at once (a store's
    worker threads, all lanes). The pool allows twice that many, and keeps `kept`
    of them (default: `connections`) open while idle: a call abandoned on a silent
    network (see `Store.call_timeout`) holds its connection until the socket gives
    up, and the calls after it need their own.
    """
    kept = connections if kept is None else kept
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            parsed,
            connect_args={"timeout": STATEMENT_TIMEOUT, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    engine = sa.create_engine(
        parsed,
        pool_size=kept,
        max_overflow=2 * connections - kept,
        pool_timeout=STATEMENT_TIMEOUT,
        connect_args=_POSTGRES_CONNECT_ARGS,
    )
    _ping_idle_connections(engine)
    return engine


_POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    # A dead peer on a silent network is noticed in about 25 s, so an
    # abandoned call (see Store.call_timeout) gives its connection back.
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
    "keepalives_count": 3,
    # Lock waits count towards this too, so no write can hang forever.
    "options": f"-c statement_timeout={STATEMENT_TIMEOUT * 1000}",
}


def driver_connect_args(engine: Engine) -> dict[str, Any]:
    """What psycopg's `connect` needs for a connection of its own to a Postgres engine's
    database, with the same timeouts as the pool's (password included: never print it)."""
    _, params = engine.dialect.create_connect_args(engine.url)
    return {**params, **_POSTGRES_CONNECT_ARGS}


def _ping_idle_connections(engine: Engine) -> None:
    # `pool_pre_ping` costs a round trip on every checkout, a fifth of a step's time, and
    # most of an idle agent's round trips. A server that restarted or ended the session
    # closed the socket (after a last error message): it has something to read, which
    # costs no round trip to see. Only a connection idle so long that a silent network
    # may have dropped it (a NAT's or firewall's timeout) is pinged for real. If one
    # died unseen all the same, that one call fails and the pool drops every connection.
    @sa.event.listens_for(engine, "connect")
    @sa.event.listens_for(engine, "checkin")
    def used(dbapi_connection: Any, record: Any) -> None:
        record.info["used_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle = time.monotonic() - record.info.get("used_at", 0.0)
        if idle < PING_IDLE_AFTER and not _readable(dbapi_connection):
            return
        try:
            # In autocommit, so the ping opens no transaction: the caller may want none.
            dbapi_connection.autocommit = True
            try:
                dbapi_connection.execute("SELECT 1")
            finally:
                dbapi_connection.autocommit = False
        except Exception as exc:
            # The pool takes a fresh connection instead (at most three times).
            raise sa.exc.DisconnectionError() from exc


def _readable(dbapi_connection: Any) -> bool:
    """An idle Postgres connection with bytes waiting: most likely the server's goodbye."""
    try:
        ready, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True  # no usable socket: let the ping find out
    return bool(ready)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling starts transactions lazily and as
    # DEFERRED, which lets two writers both read, then one fail to upgrade its
    # lock. Taking the write lock at BEGIN (IMMEDIATE) serialises writers
    # cleanly; busy_timeout makes the second one wait instead of failing.
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={STATEMENT_TIMEOUT * 1000}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# --- migrations -----------------------------------------------------------------


def migrations_dir() -> Path:
    """The Alembic scripts: inside the installed package, or the repository's `migrations/`."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_migrations"
    if packaged.is_dir():
        return packaged
    return package.parent / "migrations"


def alembic_config(url: str) -> Any:
    """An Alembic `Config` for `url`, independent of the working directory."""
    from alembic.config import Config  # migrations only: kept out of the running agent

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolation would choke on a '%' in a password.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate `url` to `revision`; `StoreUnavailable` names the cause when it cannot."""
    from alembic import command

    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise StoreUnavailable(f"cannot migrate {redact(url)}: the directory {path.parent} "
                               "does not exist")
    try:
        command.upgrade(alembic_config(url), revision)
    except sa.exc.DBAPIError as exc:
        raise StoreUnavailable(f"cannot migrate {redact(url)}: {describe_failure(exc)}") from None


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.migration import MigrationContext

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    if head is None:  # pragma: no cover - the repository always ships a revision
        raise RuntimeError("no migrations found")
    return head


# --- is the schema there? ----------------------------------------------------------


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: its revision, the one this code needs, whether it exists."""

    url: str
    current: str | None
    head: str = SCHEMA_HEAD
    #: False for a SQLite file that is not there yet (nothing was created to find out)
    exists: bool = True

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        where = redact(self.url)
        if not self.exists:
            return f"no database at {where} yet"
        if self.at_head:
            return f"{where} is at {self.current} (head)"
        return f"{where} is at revision {self.current or 'empty'}, this agent needs {self.head}"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, None for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def schema_state(url: str) -> SchemaState:
    """Read the database's revision without creating or changing anything.

    A SQLite file that does not exist is reported as such, not created. Raises
    `StoreUnavailable` naming the cause when the database cannot be read.
    """
    path = sqlite_path(url)
    if path is not None:
        return _sqlite_schema_state(url, path)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return SchemaState(url, None)
            found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            return SchemaState(url, str(found) if found is not None else None)
    except sa.exc.DBAPIError as exc:
        raise StoreUnavailable(f"cannot read {redact(url)}: {describe_failure(exc)}") from None
    finally:
        engine.dispose()


def _sqlite_schema_state(url: str, path: Path) -> SchemaState:
    if not path.parent.is_dir():
        raise StoreUnavailable(f"cannot use {redact(url)}: the directory {path.parent} "
                               "does not exist")
    if not path.exists():
        return SchemaState(url, None, exists=False)
    # Imported here: an agent on Postgres never loads SQLite's driver (0.8 MB of RSS).
    import sqlite3

    try:
        # Read-only URI: a check must never create or convert the file.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               timeout=STATEMENT_TIMEOUT)
        try:
            has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                               "AND name = 'alembic_version'").fetchone()
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone() \
                if has else None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot read {redact(url)}: {describe_failure(exc)}") from None
    return SchemaState(url, str(row[0]) if row else None)


def describe_failure(exc: BaseException) -> str:
    """One line naming why a database call failed, in words of our own.

    Drivers' messages can carry SQL, parameters and URLs, so they are only
    matched here, never repeated; an unknown failure is named by its class.
    """
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).lower()
    for needles, meaning in _FAILURES:
        if any(n in text for n in needles):
            return meaning
    return f"{type(orig).__name__} (no more detail is shown: it may hold data)"


_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("no such table", "undefinedtable", "relation \"") ,
     "tables are missing: run `incident-fsm db upgrade`"),
    (("connection refused",), "connection refused: is the database server running there?"),
    (("password authentication failed", "authentication failed"),
     "authentication failed: check the user and password"),
    (("does not exist",), "the database (or role) named in the URL does not exist"),
    (("could not translate host name", "name or service not known",
      "nodename nor servname", "temporary failure in name resolution"),
     "the host name does not resolve"),
    (("timeout expired", "timed out", "canceling statement due to statement timeout"),
     "the database did not answer in time"),
    (("server closed the connection", "terminating connection", "connection already closed",
      "consuming input failed", "ssl syscall error"),
     "the connection was closed by the server or the network"),
    (("unable to open database file",),
     "the file cannot be opened (missing directory or no permission)"),
    (("readonly database", "attempt to write a readonly"),
     "the database file is read-only for this user"),
    (("database is locked",), "the database file stayed locked by another writer"),
    (("disk i/o error", "database or disk is full"), "the disk failed or is full"),
    (("file is not a database", "file is encrypted"), "the file is not a SQLite database"),
)


_UPGRADE_CHILD = """
import os, sys
from incident_fsm.persistence import database
url = os.environ["INCIDENT_FSM_SCHEMA_URL"]
try:
    database.upgrade(url)
except Exception as exc:
    print("FAILED", database.describe_failure(exc))
    sys.exit(1)
"""


def upgrade_in_child(url: str, *, timeout: float = 300.0) -> None:
    """Migrate `url` to head in a short-lived child process.

    Alembic costs a process about 6 MB it never gives back, and the agent
    runs for months, so only the child loads it. The URL travels in the
    child's environment, never on its command line. Blocking: call it from a
    worker thread inside an event loop.
    """
    done = subprocess.run(
        [sys.executable, "-c", _UPGRADE_CHILD], env={**os.environ, "INCIDENT_FSM_SCHEMA_URL": url},
        capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        said = [line for line in done.stdout.splitlines() if line.startswith("FAILED ")]
        why = said[-1].removeprefix("FAILED ") if said else "the migration process failed"
        raise StoreUnavailable(f"cannot migrate {redact(url)}: {why}")


def ensure_schema(url: str, *, migrate: bool | None = None) -> SchemaState:
    """Make sure the agent may act on `url`: at head, migrating first when allowed.

    `migrate` defaults to yes for SQLite (a fresh file is the documented
    embedded default) and no for Postgres, where a schema change is an
    operator's step: there this raises `SchemaNotReady` naming the command.
    """
    state = schema_state(url)
    if state.at_head:
        return state
    if migrate if migrate is not None else is_sqlite(url):
        upgrade_in_child(url)
        state = schema_state(url)
        if state.at_head:
            return state
    raise SchemaNotReady(f"database {state.describe()}: run `incident-fsm db upgrade "
                         f"--database-url {redact(url)}` first (or let the agent migrate it: "
                         "`incident-fsm run --migrate`, `lifespan(..., migrate=True)`)")
