"""Never act without persistence: the agent acts only on a database whose schema is at head.

Embedded and standalone alike: a fresh SQLite file is migrated first; a
Postgres database without the schema stops the start, naming the command;
a database that cannot be reached at start is waited for, and nothing is
probed or run until its schema has been seen. Database errors say why in
one line, and read-only commands never create a file.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from incident_fsm import Agent, lifespan
from incident_fsm.cli import main as cli
from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.errors import SchemaNotReady, StoreUnavailable
from incident_fsm.persistence import database
from incident_fsm.persistence.store import Store
from incident_fsm.settings import AgentSettings, Settings

from .conftest import _empty_postgres, create_database, drop_database
from .scenario import ENV, sim_settings, until
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio


def test_the_code_knows_the_head_of_its_migrations() -> None:
    # The agent checks schemas without loading Alembic: its idea of head must be the scripts'.
    assert database.head_revision() == database.SCHEMA_HEAD


async def test_embedded_on_a_fresh_sqlite_file_migrates_first_and_then_acts(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    state = ServiceState(leaked_memory_pct=60.0)  # 60 + 40 load: memory 100 %
    async with Simulator(state) as sim:
        settings = sim_settings(sim, url)
        app = type("App", (), {"state": type("State", (), {})()})()
        async with lifespan(settings, environ=ENV)(app), Store(url) as store:

            async def resolved() -> bool:
                rows = await store.list_incidents(limit=10)
                return any(i.state == "resolved" for i in rows)

            await until(resolved, within=30)
            rows = await store.list_incidents(limit=10)
    assert database.schema_state(url).at_head
    assert [i.incident_id for i in rows] == [1]  # a real row, never a provisional id
    assert state.requests["POST /v1/services/srv-web/restart"] == 1


async def test_postgres_without_the_schema_refuses_to_start_and_names_the_command() -> None:
    url = create_database()  # empty: no migration applied
    try:
        state = ServiceState(leaked_memory_pct=60.0)
        async with Simulator(state) as sim:
            with pytest.raises(SchemaNotReady) as refused:
                async with Agent(sim_settings(sim, url), environ=ENV):
                    pytest.fail("the agent started on a database without its schema")
            assert sum(state.requests.values()) == 0  # not even a probe
        message = str(refused.value)
        assert "incident-fsm db upgrade --database-url postgresql+psycopg://" in message
        assert "empty" in message
        engine = database.create_engine(url)
        try:
            with engine.connect() as conn:
                assert sa.inspect(conn).get_table_names() == []  # nothing was written
        finally:
            engine.dispose()
    finally:
        drop_database(url)


def test_run_on_postgres_without_the_schema_exits_1_naming_the_command(tmp_path: Path) -> None:
    url = create_database()
    try:
        config = tmp_path / "agent.toml"
        config.write_text('[[targets]]\nname = "api"\nbase_url = "http://127.0.0.1:9"\n')
        proc = subprocess.run(
            [sys.executable, "-c", "from incident_fsm.cli.main import main; main()", "run",
             "--config", str(config),
             "--database-url", url],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 1, proc.stderr
        assert "run `incident-fsm db upgrade --database-url" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    finally:
        drop_database(url)


async def test_a_database_away_at_start_is_waited_for_and_nothing_acts_meanwhile(
        postgres_url: str) -> None:
    _empty_postgres(postgres_url)  # the session's database: no incident of earlier tests
    parsed = sa.engine.make_url(postgres_url)
    async with TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
        url = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False)
        proxy.cut("refuse")
        state = ServiceState(leaked_memory_pct=60.0)
        async with Simulator(state) as sim:
            settings = sim_settings(sim, url)
            settings = replace(settings, agent=replace(settings.agent, leader_election=False))
            agent = Agent(settings, environ=ENV)
            entered = anyio.current_time()
            async with agent:
                # The host is not held up by the agent's database (connects time out in 5 s).
                assert anyio.current_time() - entered < 4.0
                await anyio.sleep(1.5)
                assert sum(state.requests.values()) == 0  # nothing probed, nothing run
                proxy.restore()

                async def restarted() -> bool:
                    return state.requests["POST /v1/services/srv-web/restart"] == 1

                await until(restarted, within=60)


def test_database_errors_name_their_cause_in_one_line(tmp_path: Path) -> None:
    missing_dir = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    with pytest.raises(StoreUnavailable, match=r"the directory .*/no/such does not exist$"):
        database.schema_state(missing_dir)
    refused = "postgresql+psycopg://postgres:hunter2@127.0.0.1:9/test"
    with pytest.raises(StoreUnavailable) as caught:
        database.schema_state(refused)
    text = str(caught.value)
    assert "connection refused" in text and "hunter2" not in text and "\n" not in text
    assert text.endswith("is the database server running there?")


async def test_a_write_to_missing_tables_is_a_schema_error_not_an_outage(
        tmp_path: Path) -> None:
    path = tmp_path / "dropped.db"
    url = f"sqlite:///{path}"
    database.upgrade(url)
    engine = database.create_engine(url)
    with engine.begin() as conn:
        for table in ("notification", "action_run", "transition", "incident"):
            conn.execute(sa.text(f"DROP TABLE {table}"))
    engine.dispose()
    async with Store(url) as store:
        with pytest.raises(SchemaNotReady, match=r"tables are missing: run `incident-fsm db "
                                                 r"upgrade`; nothing was written$"):
            await store.list_incidents(limit=1)


def test_read_commands_on_a_path_with_no_database_create_no_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    for args in (["incidents"], ["show", "1"], ["stats"], ["history"]):
        result = CliRunner().invoke(cli.cli, [*args, "--database-url", f"sqlite:///{path}"])
        assert result.exit_code == 1, (args, result.output)
        assert f"no database at sqlite:///{path}" in result.output
        assert not path.exists()


def test_read_commands_on_an_old_schema_name_the_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    database.upgrade(url, "aa0454ec9f58")
    result = CliRunner().invoke(cli.cli, ["incidents", "--database-url", url])
    assert result.exit_code == 1
    assert "is at revision aa0454ec9f58, this agent needs" in result.output
    assert "run `incident-fsm db upgrade --database-url" in result.output


def test_run_waits_for_a_database_it_cannot_reach_instead_of_exiting(tmp_path: Path) -> None:
    import signal
    import time

    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nleader_election = false\n\n'
                      '[[targets]]\nname = "api"\nbase_url = "http://127.0.0.1:9"\n')
    proc = subprocess.Popen(
        [sys.executable, "-c", "from incident_fsm.cli.main import main; main()", "run",
         "--config", str(config), "--log-level", "INFO",
         "--database-url", "postgresql+psycopg://postgres@127.0.0.1:9/none"],
        stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        time.sleep(4.0)  # a refused connect is immediate: it would have exited by now
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "connection refused" in err and "the agent waits for it" in err
    assert "database still unavailable" in err  # retried while it waited
    assert "Health check" not in err  # nothing was polled meanwhile


async def test_the_agent_may_be_told_to_migrate_postgres_itself() -> None:
    url = create_database()
    try:
        async with Agent(sim_settings_without_target(url), environ=ENV, migrate=True):
            pass
        assert database.schema_state(url).at_head
    finally:
        drop_database(url)


def sim_settings_without_target(url: str) -> Settings:
    return Settings(agent=AgentSettings(database_url=url, leader_election=False))


def test_db_current_on_a_path_with_no_database_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    result = CliRunner().invoke(cli.cli, ["db", "current", "--database-url", f"sqlite:///{path}"])
    assert result.exit_code == 0, result.output
    assert "current: none (no database at" in result.output
    assert not path.exists()


def test_db_upgrade_names_the_cause_in_one_line(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'nodir' / 'a.db'}"
    result = CliRunner().invoke(cli.cli, ["db", "upgrade", "--database-url", missing])
    assert result.exit_code == 1
    assert result.output.strip().endswith(f"the directory {tmp_path / 'nodir'} does not exist")
    refused = "postgresql+psycopg://postgres@127.0.0.1:9/none"
    result = CliRunner().invoke(cli.cli, ["db", "upgrade", "--database-url", refused])
    assert result.exit_code == 1
    assert "cannot migrate" in result.output and "connection refused" in result.output
    assert len(result.output.strip().splitlines()) == 1
