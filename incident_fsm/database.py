"""Where the database is and how to connect to it: URL resolution, engines, migrations.

The URL comes from, in order: an explicit value (`--database-url`), the
`INCIDENT_FSM_DATABASE_URL` environment variable, or a SQLite file
`incident_fsm.db` in the working directory. Postgres URLs use psycopg 3
(`postgresql+psycopg://...`); plain `postgresql://` is accepted and mapped
to it. Passwords are never printed: use `redact` for anything shown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from .errors import InvalidInput

ENV_DATABASE_URL = "INCIDENT_FSM_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///incident_fsm.db"

#: Seconds to wait for a connection, a lock, or a statement before giving up.
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT = 30


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


def create_engine(url: str) -> Engine:
    """An engine with timeouts everywhere and SQLite set up for safe concurrent writers."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            parsed,
            connect_args={"timeout": STATEMENT_TIMEOUT, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=STATEMENT_TIMEOUT,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT,
            # A dead peer on a silent network is noticed in about 25 s, so an
            # abandoned call (see Store.call_timeout) gives its connection back.
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3,
            # Lock waits count towards this too, so no write can hang forever.
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT * 1000}",
        },
    )


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
    packaged = Path(__file__).parent / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


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
    from alembic import command

    command.upgrade(alembic_config(url), revision)


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
