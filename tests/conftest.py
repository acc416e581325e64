"""Shared fixtures: a real Postgres (a throwaway database per run) and SQLite, built by Alembic.

Postgres comes from INCIDENT_FSM_TEST_POSTGRES_URL (default: the local
server as user postgres). When it is unreachable, Postgres tests fail
loudly under CI=true and are skipped with a message elsewhere.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from incident_fsm.fsm.engine import IncidentEngine
from incident_fsm.fsm.steps import MachinePolicy
from incident_fsm.persistence import database
from incident_fsm.persistence.store import Store
from incident_fsm.testing import ManualClock

from .tcp_proxy import TcpProxy

ADMIN_URL = os.environ.get(
    "INCIDENT_FSM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TABLES = ("notification", "action_run", "transition", "incident_label", "incident",
          "health_check", "lease", "silence")


@pytest.fixture
def anyio_backend() -> str:
    # transitions' AsyncMachine calls asyncio directly.
    return "asyncio"


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_or_skip() -> str:
    """The admin URL if Postgres answers; fail under CI, skip elsewhere."""
    try:
        with psycopg.connect(_libpq(ADMIN_URL), connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL unreachable at {database.redact(ADMIN_URL)}: {type(exc).__name__}"
        if IN_CI:
            pytest.fail(message + " (CI=true: Postgres tests must run)", pytrace=False)
        pytest.skip(message + " -- start it or set INCIDENT_FSM_TEST_POSTGRES_URL")
    return ADMIN_URL


def create_database() -> str:
    """A new, empty Postgres database; returns its URL."""
    admin = postgres_or_skip()
    name = f"ifsm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_libpq(ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One throwaway database for the whole run, schema built by `alembic upgrade head`."""
    url = create_database()
    try:
        database.upgrade(url)
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    database.upgrade(f"sqlite:///{path}")
    return path


def _empty_postgres(url: str) -> None:
    engine = database.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        _empty_postgres(url)
        return url
    template: Path = request.getfixturevalue("sqlite_template")
    target = tmp_path / "incidents.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 29, 3, 0, tzinfo=UTC))


@pytest.fixture
async def store(db_url: str, clock: ManualClock) -> AsyncIterator[Store]:
    async with Store(db_url) as s:
        clock.wait_for_idle(lambda: s.idle)
        yield s


@pytest.fixture
def policy() -> MachinePolicy:
    return MachinePolicy()


@pytest.fixture
def engine(store: Store, clock: ManualClock, policy: MachinePolicy) -> IncidentEngine:
    return IncidentEngine(store, clock=clock, policy=policy)


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    """An empty Postgres database behind a loopback proxy the test can cut."""
    _empty_postgres(postgres_url)
    url = make_url(postgres_url)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as p:
        yield p
